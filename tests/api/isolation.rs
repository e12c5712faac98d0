//! One user's memories never reach another user: not by id, not by search,
//! not under load, and not when two users share a collection.

use std::collections::HashSet;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with, texts, token};

#[tokio::test]
async fn another_user_never_sees_a_canary_through_any_read_path() {
    let app = spawn_app().await;
    let alice = token("acme", "alice");
    let bob = token("acme", "bob");
    let canary = "alice-canary: my bank PIN is 4921";
    let ids = app.store_texts(&alice, &[canary]).await;
    app.store_texts(&bob, &["bob likes hiking in the alps"])
        .await;

    let found = app.search_texts(&bob, "what is my bank PIN", 10).await;
    assert_eq!(found, vec!["bob likes hiking in the alps"]);

    let r = app.get("/v1/memories?limit=100", &bob).await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        texts(&body["memories"]),
        vec!["bob likes hiking in the alps"]
    );

    let r = app.get("/v1/memories/export", &bob).await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        texts(&body["memories"]),
        vec!["bob likes hiking in the alps"]
    );

    // Alice's id is a plain 404 for Bob, indistinguishable from a random id.
    let foreign = app.get(&format!("/v1/memories/{}", ids[0]), &bob).await;
    let random = app
        .get("/v1/memories/0190d6a4-0000-7000-8000-000000000000", &bob)
        .await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    assert_eq!(random.status(), StatusCode::NOT_FOUND);
    let (a, b): (Value, Value) = (
        foreign.json().await.expect("json"),
        random.json().await.expect("json"),
    );
    assert_eq!(a, b);

    // Bob cannot delete it either, and it survives his erase.
    assert_eq!(
        app.delete(&format!("/v1/memories/{}", ids[0]), &bob)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/v1/memories", &bob).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get(&format!("/v1/memories/{}", ids[0]), &alice)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_same_subject_in_another_tenant_is_another_user() {
    let app = spawn_app().await;
    app.store_texts(&token("acme", "alice"), &["acme alice secret"])
        .await;
    assert!(
        app.search_texts(&token("globex", "alice"), "secret", 10)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_body_that_names_another_user_changes_nothing() {
    let app = spawn_app().await;
    let alice = token("acme", "alice");
    let mallory = token("acme", "mallory");
    app.store_texts(&alice, &["alice's diary entry"]).await;

    let r = app
        .post(
            "/v1/memories",
            &mallory,
            &json!({ "text": "planted by mallory", "user_id": "alice", "owner": "alice", "namespace": "alice", "tenant": "acme", "sub": "alice" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post(
            "/v1/memories/search",
            &mallory,
            &json!({ "query": "diary", "user_id": "alice", "owner": "alice", "namespace": "alice" }),
        )
        .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(texts(&body["results"]), vec!["planted by mallory"]);
    // And nothing landed in Alice's memories.
    assert_eq!(
        app.search_texts(&alice, "planted", 10).await,
        vec!["alice's diary entry"]
    );
}

/// Stores canaries for user `i` and reads them back every way; returns every
/// text any response carried.
async fn canary_round(app: &TestApp, tenant: &str, i: usize) -> (String, Vec<String>) {
    let user = format!("user-{i:03}");
    let t = token(tenant, &user);
    let prefix = format!("canary {tenant}/{user}:");
    let mine: Vec<String> = (0..3)
        .map(|n| format!("{prefix} secret number {n} for {user}"))
        .collect();
    let refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    let ids = app.store_texts(&t, &refs).await;

    let mut seen = Vec::new();
    seen.extend(app.search_texts(&t, "secret number for user", 20).await);
    seen.extend(
        app.search_texts(&t, &format!("canary {tenant}/user-000: secret"), 20)
            .await,
    );
    let body: Value = app.get_json("/v1/memories?limit=100", &t).await;
    seen.extend(texts(&body["memories"]));
    let body: Value = app.get_json("/v1/memories/export", &t).await;
    let exported = texts(&body["memories"]);
    assert_eq!(
        exported.len(),
        3,
        "{user} should see exactly its own 3 memories"
    );
    seen.extend(exported);
    for id in ids {
        let m: Value = app.get_json(&format!("/v1/memories/{id}"), &t).await;
        seen.push(m["text"].as_str().expect("text").to_owned());
    }
    (prefix, seen)
}

async fn assert_no_foreign_canaries(app: &TestApp, tenant: &str, users: usize) {
    let rounds = join_all((0..users).map(|i| canary_round(app, tenant, i))).await;
    let mut leaks = 0;
    for (prefix, seen) in &rounds {
        assert!(!seen.is_empty());
        leaks += seen
            .iter()
            .filter(|t| !t.starts_with(prefix.as_str()))
            .count();
    }
    assert_eq!(leaks, 0, "responses carried other users' canaries");
}

#[tokio::test]
async fn fifty_users_at_once_each_see_only_their_own_canaries() {
    let app = spawn_app().await;
    assert_no_foreign_canaries(&app, "load", 50).await;
    assert!(
        app.metrics()
            .await
            .contains("cordon_guard_dropped_total{path=\"search\"} 0")
    );
}

fn guard_drops(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cordon_guard_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn shard_count(app: &TestApp) -> usize {
    std::fs::read_dir(app.data_dir.join("shards"))
        .expect("shards dir")
        .count()
}

#[tokio::test]
async fn forced_collisions_are_caught_by_the_guard_and_never_leak() {
    // One hex character of the owner hash: 16 possible shard names for 40
    // users, so many share a shard. The drill also drops the owner condition
    // from engine reads, leaving the guard as the only thing between them.
    let app = spawn_app_with(|s| {
        s.store.name_hex_chars = 1;
        s.store.collision_drill = true;
        // What this measures is the guard's drop; the breach policy's
        // fail-closed answer is tested in `checks.rs`.
        s.checks.breach_policy = cordon::breach::BreachPolicy::Drop;
    })
    .await;
    assert_no_foreign_canaries(&app, "drill", 40).await;
    assert!(shard_count(&app) <= 16, "users did not share shards");
    let drops = guard_drops(&app.metrics().await);
    assert!(
        drops > 0,
        "the guard saw no foreign points, so the drill tested nothing"
    );
}

#[tokio::test]
async fn in_a_shared_shard_foreign_ids_are_404_and_erase_spares_the_neighbour() {
    let app = spawn_app_with(|s| {
        s.store.name_hex_chars = 1;
        s.store.collision_drill = true;
        // What this measures is the guard's drop; the breach policy's
        // fail-closed answer is tested in `checks.rs`.
        s.checks.breach_policy = cordon::breach::BreachPolicy::Drop;
    })
    .await;
    // Find two users whose shard names collide (1 of 16 buckets).
    let mut by_bucket: std::collections::HashMap<String, String> = Default::default();
    let mut pair = None;
    for i in 0..64 {
        let user = format!("u{i}");
        let before: HashSet<_> = std::fs::read_dir(app.data_dir.join("shards"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        app.store_texts(&token("t", &user), &[&format!("{user} private note")])
            .await;
        let after: HashSet<_> = std::fs::read_dir(app.data_dir.join("shards"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        if after.len() == before.len() {
            // No new shard: this user landed in an existing one. Find whose.
            for (other, _) in by_bucket.iter() {
                let seen = app
                    .search_texts(&token("t", other), "private note", 50)
                    .await;
                assert_eq!(seen, vec![format!("{other} private note")]);
            }
            pair = Some(user.clone());
            break;
        }
        let new = after
            .difference(&before)
            .next()
            .expect("one new shard")
            .clone();
        by_bucket.insert(user, new);
    }
    let late = pair.expect("some user collides within 64 tries");
    let drops_before = guard_drops(&app.metrics().await);

    // Every earlier user's id is a 404 for the late user, shared shard or not.
    for (other, _) in by_bucket.iter() {
        let body: Value = app
            .get_json("/v1/memories/export", &token("t", other))
            .await;
        let id = body["memories"][0]["id"].as_str().expect("id").to_owned();
        let r = app
            .get(&format!("/v1/memories/{id}"), &token("t", &late))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = app
            .delete(&format!("/v1/memories/{id}"), &token("t", &late))
            .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert!(guard_drops(&app.metrics().await) > drops_before);

    // Erasing the late user leaves every neighbour's memory in place.
    let r = app.delete("/v1/memories", &token("t", &late)).await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["deleted"], 1);
    for (other, _) in by_bucket.iter() {
        let body: Value = app
            .get_json("/v1/memories/export", &token("t", other))
            .await;
        assert_eq!(
            texts(&body["memories"]),
            vec![format!("{other} private note")]
        );
    }
}

#[tokio::test]
async fn with_short_names_and_the_engine_filter_on_the_guard_has_nothing_to_drop() {
    let app = spawn_app_with(|s| s.store.name_hex_chars = 1).await;
    assert_no_foreign_canaries(&app, "short", 30).await;
    assert_eq!(guard_drops(&app.metrics().await), 0);
}
