//! Storing, searching, reading and deleting one user's memories.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{spawn_app, texts, token};

#[tokio::test]
async fn search_returns_the_semantically_closest_memory_first() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    app.store_texts(
        &t,
        &[
            "My daughter's birthday is on the 14th of March",
            "I am allergic to peanuts and shellfish",
            "The quarterly report is due next Friday",
            "I prefer window seats on long flights",
        ],
    )
    .await;

    let found = app.search_texts(&t, "what food should I avoid?", 4).await;
    assert_eq!(found.len(), 4);
    assert_eq!(found[0], "I am allergic to peanuts and shellfish");

    let found = app
        .search_texts(&t, "when is my kid's birthday party", 1)
        .await;
    assert_eq!(
        found,
        vec!["My daughter's birthday is on the 14th of March"]
    );
}

#[tokio::test]
async fn search_scores_are_descending_and_min_score_cuts_the_tail() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    app.store_texts(
        &t,
        &[
            "The cat sits on the mat",
            "Interest rates rose by half a point",
        ],
    )
    .await;

    let r = app
        .post(
            "/v1/memories/search",
            &t,
            &json!({ "query": "A feline is resting on a rug", "limit": 5 }),
        )
        .await;
    let body: Value = r.json().await.expect("json");
    let scores: Vec<f64> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|m| m["score"].as_f64().expect("score"))
        .collect();
    assert_eq!(scores.len(), 2);
    assert!(scores[0] > scores[1], "{scores:?}");

    let r = app
        .post(
            "/v1/memories/search",
            &t,
            &json!({ "query": "A feline is resting on a rug", "limit": 5, "min_score": 0.4 }),
        )
        .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(texts(&body["results"]), vec!["The cat sits on the mat"]);
}

#[tokio::test]
async fn a_metadata_filter_restricts_search_results() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let r = app
        .post(
            "/v1/memories",
            &t,
            &json!({ "memories": [
                { "text": "Standup is at 9:30 every weekday", "metadata": { "topic": "work", "priority": 2 } },
                { "text": "Yoga class is at 9:30 on Saturdays", "metadata": { "topic": "home", "priority": 1 } }
            ]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = app
        .post(
            "/v1/memories/search",
            &t,
            &json!({ "query": "what is at 9:30", "filter": { "topic": "home" } }),
        )
        .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        texts(&body["results"]),
        vec!["Yoga class is at 9:30 on Saturdays"]
    );
    assert_eq!(body["results"][0]["metadata"]["priority"], 1);

    let r = app
        .post(
            "/v1/memories/search",
            &t,
            &json!({ "query": "what is at 9:30", "filter": { "priority": 2 } }),
        )
        .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        texts(&body["results"]),
        vec!["Standup is at 9:30 every weekday"]
    );
}

#[tokio::test]
async fn a_stored_memory_can_be_read_and_deleted_by_id() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let r = app
        .post(
            "/v1/memories",
            &t,
            &json!({ "text": "Parking spot is B12", "metadata": { "kind": "fact" } }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.expect("json");
    let id = body["ids"][0].as_str().expect("id").to_owned();

    let r = app.get(&format!("/v1/memories/{id}"), &t).await;
    assert_eq!(r.status(), StatusCode::OK);
    let memory: Value = r.json().await.expect("json");
    assert_eq!(memory["id"], id.as_str());
    assert_eq!(memory["text"], "Parking spot is B12");
    assert_eq!(memory["metadata"]["kind"], "fact");
    assert!(memory["created_at"].as_i64().expect("created_at") > 0);

    let r = app.delete(&format!("/v1/memories/{id}"), &t).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/v1/memories/{id}"), &t).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/v1/memories/{id}"), &t).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn list_pages_through_every_memory_in_creation_order() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let all: Vec<String> = (0..7).map(|i| format!("note number {i}")).collect();
    for text in &all {
        // One request each, so creation order is the order of the texts.
        app.store_texts(&t, &[text.as_str()]).await;
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/memories?limit=3&cursor={c}"),
            None => "/v1/memories?limit=3".to_owned(),
        };
        let r = app.get(&path, &t).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json");
        seen.extend(texts(&body["memories"]));
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(seen, all);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn export_returns_everything_and_erase_removes_everything() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let texts_in: Vec<String> = (0..130).map(|i| format!("exported fact {i}")).collect();
    for chunk in texts_in.chunks(16) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        app.store_texts(&t, &refs).await;
    }
    let r = app.get("/v1/memories/export", &t).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let mut exported = texts(&body["memories"]);
    exported.sort();
    let mut expected = texts_in.clone();
    expected.sort();
    assert_eq!(exported, expected);

    let r = app.delete("/v1/memories", &t).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["deleted"], 130);

    let r = app.get("/v1/memories/export", &t).await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["memories"].as_array().expect("array").len(), 0);
    assert!(app.search_texts(&t, "exported fact", 10).await.is_empty());
    // The user's shard directory is gone too.
    let shards = std::fs::read_dir(app.data_dir.join("shards"))
        .expect("shards dir")
        .count();
    assert_eq!(shards, 0);
}

#[tokio::test]
async fn paging_continues_past_a_cursor_whose_memory_was_deleted() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let all: Vec<String> = (0..5).map(|i| format!("entry {i}")).collect();
    for text in &all {
        app.store_texts(&t, &[text.as_str()]).await;
    }
    let first: Value = app.get_json("/v1/memories?limit=2", &t).await;
    assert_eq!(texts(&first["memories"]), all[..2]);
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();

    // The memory the cursor points at goes away before the next page.
    assert_eq!(
        app.delete(&format!("/v1/memories/{cursor}"), &t)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let mut seen = Vec::new();
    let mut next = Some(cursor);
    while let Some(c) = next {
        let page: Value = app
            .get_json(&format!("/v1/memories?limit=2&cursor={c}"), &t)
            .await;
        seen.extend(texts(&page["memories"]));
        next = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, all[2..]);
}
