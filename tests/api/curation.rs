//! Memories that agents curate: updates in place, expiry, filters and
//! duplicates caught on write, over the real server.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    KEK_ONE, TestApp, files_containing, seal_with, spawn_app, spawn_app_with, texts, token,
};

async fn patch(
    app: &TestApp,
    id: &str,
    user: &str,
    body: &Value,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .patch(app.url(&format!("/v1/memories/{id}")))
        .bearer_auth(token("acme", user))
        .json(body);
    if let Some(tag) = if_match {
        request = request.header("If-Match", tag);
    }
    request.send().await.expect("request sent")
}

async fn store(app: &TestApp, user: &str, body: Value) -> Value {
    let r = app.post("/v1/memories", &token("acme", user), &body).await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Stores one memory for `user`; its id.
async fn store_one(app: &TestApp, user: &str, body: Value) -> String {
    store(app, user, body).await["ids"][0]
        .as_str()
        .expect("an id")
        .to_owned()
}

/// `cordon_memories_expired_total` of `app`'s metrics.
async fn expired_total(app: &TestApp) -> u64 {
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("cordon_memories_expired_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

async fn search(app: &TestApp, user: &str, body: Value) -> Vec<Value> {
    let r = app
        .post("/v1/memories/search", &token("acme", user), &body)
        .await;
    let status = r.status();
    let body: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{body}");
    body["results"].as_array().expect("results").clone()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

#[tokio::test]
async fn a_patched_memory_is_found_by_its_new_text_and_not_its_old() {
    let app = spawn_app().await;
    let stored = store(
        &app,
        "alice",
        json!({"text": "My locker code is 4410", "metadata": {"kind": "code"}}),
    )
    .await;
    let id = stored["ids"][0].as_str().expect("id");
    store(&app, "alice", json!({"text": "I enjoy hiking in the Alps"})).await;
    let r = patch(
        &app,
        id,
        "alice",
        &json!({"text": "My favourite dessert is lemon tart"}),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["id"], id);
    assert_eq!(body["version"], 2);
    assert_eq!(body["metadata"]["kind"], "code", "metadata untouched");
    assert!(body["updated_at"].as_i64().is_some());

    let dessert = search(
        &app,
        "alice",
        json!({"query": "what dessert do I like", "limit": 1}),
    )
    .await;
    assert_eq!(dessert[0]["id"], id);
    assert_eq!(dessert[0]["text"], "My favourite dessert is lemon tart");
    let all = app.get_json("/v1/memories", &token("acme", "alice")).await;
    let listed = texts(&all["memories"]);
    assert_eq!(listed.len(), 2, "an update adds no memory");
    assert!(!listed.iter().any(|t| t.contains("locker")), "{listed:?}");
    let got = app
        .get(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    assert_eq!(got.headers()["etag"], "\"2\"");
}

#[tokio::test]
async fn a_stale_if_match_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let id = store_one(&app, "alice", json!({"text": "Flight to Oslo on May 3"})).await;
    let first = patch(
        &app,
        &id,
        "alice",
        &json!({"text": "Flight to Oslo on May 4"}),
        Some("\"1\""),
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    let stale = patch(
        &app,
        &id,
        "alice",
        &json!({"text": "Flight to Oslo on May 9"}),
        Some("\"1\""),
    )
    .await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.headers()["etag"], "\"2\"");
    let body: Value = stale.json().await.expect("json");
    assert_eq!(body["error"]["code"], "precondition_failed");
    let now = app
        .get_json(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    assert_eq!(now["text"], "Flight to Oslo on May 4");
    assert_eq!(now["version"], 2);
    let malformed = patch(&app, &id, "alice", &json!({"text": "x y"}), Some("two")).await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metadata_merges_by_default_null_removes_a_key_and_replace_replaces() {
    let app = spawn_app().await;
    let id = store_one(
        &app,
        "alice",
        json!({"text": "Prefers window seats", "metadata": {"a": 1, "b": "x", "c": true}}),
    )
    .await;
    let merged: Value = patch(
        &app,
        &id,
        "alice",
        &json!({"metadata": {"a": 2, "b": null, "d": "new"}}),
        None,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(merged["metadata"], json!({"a": 2, "c": true, "d": "new"}));
    let replaced: Value = patch(
        &app,
        &id,
        "alice",
        &json!({"metadata": {"only": 1}, "metadata_mode": "replace"}),
        None,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(replaced["metadata"], json!({"only": 1}));
    assert_eq!(replaced["version"], 3);
    for bad in [
        json!({}),
        json!({"txt": "typo"}),
        json!({"metadata_mode": "replace"}),
    ] {
        let r = patch(&app, &id, "alice", &bad, None).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test]
async fn a_foreign_memory_id_is_404_on_patch_and_is_left_alone() {
    let app = spawn_app().await;
    let id = store_one(&app, "alice", json!({"text": "Alice's secret plan"})).await;
    let r = patch(&app, &id, "mallory", &json!({"text": "overwritten"}), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = patch(
        &app,
        &id,
        "mallory",
        &json!({"text": "overwritten"}),
        Some("*"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let kept = app
        .get_json(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    assert_eq!(kept["text"], "Alice's secret plan");
    assert_eq!(kept["version"], 1);
}

#[tokio::test]
async fn an_updated_memorys_old_text_leaves_every_file() {
    let app = spawn_app_with(|s| s.store.purge_after = Duration::ZERO).await;
    let old = format!("old-canary-{}", uuid::Uuid::new_v4().simple());
    let id = store_one(&app, "alice", json!({"text": format!("{old} was my PIN")})).await;
    assert!(!files_containing(&app.data_dir, old.as_bytes()).is_empty());
    let r = patch(&app, &id, "alice", &json!({"text": "my PIN changed"}), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let start = Instant::now();
    while !files_containing(&app.data_dir, old.as_bytes()).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "old text still on disk"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = app
        .get_json(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    assert_eq!(now["text"], "my PIN changed");
}

/// Every way a user reads memories, as the texts each returns.
async fn every_read(app: &TestApp, user: &str, id: &str) -> Vec<(String, Vec<String>)> {
    let t = token("acme", user);
    let listed = app.get_json("/v1/memories", &t).await;
    let found = search(app, user, json!({"query": "parking spot"})).await;
    let export = app.get_json("/v1/memories/export", &t).await;
    let got = app.get(&format!("/v1/memories/{id}"), &t).await;
    let got = match got.status() {
        StatusCode::OK => vec![
            got.json::<Value>().await.expect("json")["text"]
                .as_str()
                .expect("text")
                .to_owned(),
        ],
        StatusCode::NOT_FOUND => vec![],
        other => panic!("get answered {other}"),
    };
    vec![
        ("list".into(), texts(&listed["memories"])),
        ("search".into(), texts(&Value::Array(found))),
        ("export".into(), texts(&export["memories"])),
        ("get".into(), got),
    ]
}

#[tokio::test]
async fn an_expired_memory_is_gone_from_every_read_at_once() {
    let app = spawn_app().await;
    let expires = now_ms() + 4000;
    let stored = store(
        &app,
        "alice",
        json!({"text": "My parking spot today is C14", "expires_at": expires}),
    )
    .await;
    let id = stored["ids"][0].as_str().expect("id").to_owned();
    store(
        &app,
        "alice",
        json!({"text": "My parking spot at home is in the garage", "ttl_seconds": 3600}),
    )
    .await;
    for (read, found) in every_read(&app, "alice", &id).await {
        if read == "get" {
            assert_eq!(found.len(), 1, "{read}");
        } else {
            assert_eq!(found.len(), 2, "{read}: {found:?}");
        }
    }
    let shown = app
        .get_json(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    assert_eq!(shown["expires_at"], expires);
    let wait = (expires - now_ms()).max(0) as u64 + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    for (read, found) in every_read(&app, "alice", &id).await {
        assert!(
            !found.iter().any(|t| t.contains("C14")),
            "{read} still returns the expired memory: {found:?}"
        );
        if read != "get" {
            assert_eq!(
                found.len(),
                1,
                "{read} lost the memory that has not expired"
            );
        }
    }
    let r = patch(&app, &id, "alice", &json!({"text": "revived"}), None).await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "an expired memory cannot be updated back"
    );
}

#[tokio::test]
async fn expiry_inputs_are_checked() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    for bad in [
        json!({"text": "x", "expires_at": now_ms() - 1000}),
        json!({"text": "x", "ttl_seconds": 0}),
        json!({"text": "x", "ttl_seconds": 60, "expires_at": now_ms() + 60_000}),
        json!({"text": "x", "duplicate_threshold": 1.5}),
    ] {
        let r = app.post("/v1/memories", &t, &bad).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test]
async fn a_deployment_ttl_applies_unless_a_store_says_never() {
    let app = spawn_app_with(|s| s.memory.default_ttl = Some(Duration::from_secs(4))).await;
    let short = store(
        &app,
        "alice",
        json!({"text": "The wifi password is on the fridge"}),
    )
    .await;
    let kept = store(
        &app,
        "alice",
        json!({"text": "I was born in Porto", "expires_at": null}),
    )
    .await;
    let short_id = short["ids"][0].as_str().expect("id");
    let shown = app
        .get_json(&format!("/v1/memories/{short_id}"), &token("acme", "alice"))
        .await;
    assert!(shown["expires_at"].as_i64().is_some());
    let shown_at = shown["expires_at"].as_i64().expect("an expiry");
    tokio::time::sleep(Duration::from_millis(
        (shown_at - now_ms()).max(0) as u64 + 50,
    ))
    .await;
    let listed = app.get_json("/v1/memories", &token("acme", "alice")).await;
    assert_eq!(texts(&listed["memories"]), ["I was born in Porto"]);
    assert_eq!(listed["memories"][0]["id"], kept["ids"][0]);
}

#[tokio::test]
async fn the_sweep_deletes_expired_memories_for_good_and_only_the_owners() {
    // One hex character of the owner hash per name: every user shares one
    // of 16 collections, so users below share one.
    let app = spawn_app_with(|s| {
        s.store.name_hex_chars = 1;
        s.memory.sweep_every = Duration::from_millis(200);
    })
    .await;
    let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    for user in &users {
        store(
            &app,
            user,
            json!({"text": format!("{user} keeps this"), "metadata": {"keep": true}}),
        )
        .await;
        store(
            &app,
            user,
            json!({"text": format!("{user} forgets this"), "ttl_seconds": 1}),
        )
        .await;
    }
    // Sweeps run; each user then holds exactly their kept memory, in storage
    // too (the engine's count, which reads no payload, says so).
    let start = Instant::now();
    loop {
        let expired = expired_total(&app).await;
        if expired == users.len() as u64 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "swept {expired}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for user in &users {
        let listed = app.get_json("/v1/memories", &token("acme", user)).await;
        assert_eq!(texts(&listed["memories"]), [format!("{user} keeps this")]);
    }
}

#[tokio::test]
async fn search_and_list_filter_by_time_range_and_any_of() {
    for sealed in [false, true] {
        let app = spawn_app_with(|s| {
            if sealed {
                seal_with(s, KEK_ONE, None);
            }
        })
        .await;
        let t = token("acme", "alice");
        let before = now_ms();
        store(&app, "alice", json!({"text": "Order A-100 cost 12 euros", "metadata": {"price": 12, "shop": "north"}})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let middle = now_ms();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store(&app, "alice", json!({"text": "Order A-200 cost 30 euros", "metadata": {"price": 30, "shop": "south"}})).await;
        store(&app, "alice", json!({"text": "Order A-300 cost 55.5 euros", "metadata": {"price": 55.5, "shop": "east"}})).await;
        store(
            &app,
            "bob",
            json!({"text": "Order B-1 cost 20 euros", "metadata": {"price": 20, "shop": "north"}}),
        )
        .await;
        let query = |filter: Value| json!({"query": "order cost", "filter": filter});
        let mut found = texts(&Value::Array(
            search(
                &app,
                "alice",
                query(json!({"price": {"gte": 12, "lt": 55.5}})),
            )
            .await,
        ));
        found.sort();
        assert_eq!(
            found,
            ["Order A-100 cost 12 euros", "Order A-200 cost 30 euros"],
            "sealed: {sealed}"
        );
        let mut found = texts(&Value::Array(
            search(
                &app,
                "alice",
                query(json!({"shop": {"in": ["north", "east"]}})),
            )
            .await,
        ));
        found.sort();
        assert_eq!(
            found,
            ["Order A-100 cost 12 euros", "Order A-300 cost 55.5 euros"],
            "sealed: {sealed}"
        );
        let found = texts(&Value::Array(
            search(&app, "alice", json!({"query": "order cost", "created_after": middle, "filter": {"price": {"gt": 40}}})).await,
        ));
        assert_eq!(found, ["Order A-300 cost 55.5 euros"], "sealed: {sealed}");
        let found = texts(&Value::Array(
            search(&app, "alice", json!({"query": "order cost", "created_before": middle, "created_after": before - 1})).await,
        ));
        assert_eq!(found, ["Order A-100 cost 12 euros"], "sealed: {sealed}");
        let filter = urlencode(r#"{"price":{"gt":20},"shop":{"in":["south","east","north"]}}"#);
        let listed = app
            .get_json(&format!("/v1/memories?filter={filter}&limit=1"), &t)
            .await;
        assert_eq!(
            texts(&listed["memories"]),
            ["Order A-200 cost 30 euros"],
            "sealed: {sealed}"
        );
        let cursor = listed["next_cursor"].as_str().expect("a next page");
        let next = app
            .get_json(
                &format!("/v1/memories?filter={filter}&limit=1&cursor={cursor}"),
                &t,
            )
            .await;
        assert_eq!(
            texts(&next["memories"]),
            ["Order A-300 cost 55.5 euros"],
            "sealed: {sealed}"
        );
        let listed = app
            .get_json(&format!("/v1/memories?created_after={middle}"), &t)
            .await;
        assert_eq!(texts(&listed["memories"]).len(), 2, "sealed: {sealed}");
        let bad = app
            .get(&format!("/v1/memories?filter={}", urlencode("[1]")), &t)
            .await;
        assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
        app.stop().await;
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_near_duplicate_store_adds_no_second_copy() {
    let app = spawn_app().await;
    let first = store(&app, "alice", json!({"text": "I am allergic to peanuts"})).await;
    let id = first["ids"][0].clone();
    assert!(first.get("duplicate").is_none(), "no threshold, no flags");
    let r = app
        .post(
            "/v1/memories",
            &token("acme", "alice"),
            &json!({"text": "I'm allergic to peanuts", "duplicate_threshold": 0.9}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "nothing new");
    let again: Value = r.json().await.expect("json");
    assert_eq!(again["ids"][0], id);
    assert_eq!(again["duplicate"], json!([true]));
    // Another user's identical memory is no duplicate of Alice's.
    let bobs = store(
        &app,
        "bob",
        json!({"text": "I am allergic to peanuts", "duplicate_threshold": 0.9}),
    )
    .await;
    assert_ne!(bobs["ids"][0], id);
    assert_eq!(bobs["duplicate"], json!([false]));
    // Within one batch, and next to a new fact.
    let batch = store(
        &app,
        "alice",
        json!({"memories": [
            {"text": "My sister lives in Lyon", "duplicate_threshold": 0.9},
            {"text": "My sister lives in Lyon.", "duplicate_threshold": 0.9},
            {"text": "I am allergic to peanuts!", "duplicate_threshold": 0.9},
        ]}),
    )
    .await;
    assert_eq!(batch["duplicate"], json!([false, true, true]));
    assert_eq!(batch["ids"][1], batch["ids"][0]);
    assert_eq!(batch["ids"][2], id);
    let listed = app.get_json("/v1/memories", &token("acme", "alice")).await;
    assert_eq!(texts(&listed["memories"]).len(), 2);
}

#[tokio::test]
async fn a_deployment_duplicate_threshold_applies_to_keyed_stores_too() {
    let app = spawn_app_with(|s| s.memory.duplicate_threshold = Some(0.9)).await;
    store(
        &app,
        "alice",
        json!({"text": "I work at the harbour office"}),
    )
    .await;
    let keyed = app
        .client
        .post(app.url("/v1/memories"))
        .bearer_auth(token("acme", "alice"))
        .header("Idempotency-Key", "k-1")
        .json(&json!({"text": "I work at the harbour office."}))
        .send()
        .await
        .expect("sent");
    assert_eq!(keyed.status(), StatusCode::OK);
    let body: Value = keyed.json().await.expect("json");
    assert_eq!(body["duplicate"], json!([true]));
    let listed = app.get_json("/v1/memories", &token("acme", "alice")).await;
    assert_eq!(texts(&listed["memories"]).len(), 1);
}

/// Orders that differ only in their codes, among other memories: the dense
/// model cannot tell the codes apart.
fn orders() -> Vec<String> {
    let mut texts: Vec<String> = [
        "A-88231", "A-83218", "A-82813", "A-88123", "A-81823", "A-88312", "A-83821",
    ]
    .iter()
    .map(|code| format!("Order {code} is on its way"))
    .collect();
    texts.extend(
        [
            "The blue kettle from last week's delivery was order A-88213, and its lid is cracked",
            "I like to run along the river on Sundays",
            "My manager is called Priya",
            "The dentist appointment is on the 14th",
            "Locker 7719 holds my gym bag",
            "I prefer tea to coffee in the morning",
        ]
        .map(String::from),
    );
    texts
}

#[tokio::test]
async fn a_hybrid_search_finds_an_exact_code_that_a_semantic_search_misses() {
    for sealed in [false, true] {
        let app = spawn_app_with(|s| {
            if sealed {
                seal_with(s, KEK_ONE, None);
            }
        })
        .await;
        let texts_stored = orders();
        let refs: Vec<&str> = texts_stored.iter().map(String::as_str).collect();
        app.store_texts(&token("acme", "alice"), &refs).await;
        // Bob's memories hold the code too; they must not count for Alice.
        app.store_texts(&token("acme", "bob"), &["Order A-88213 A-88213 is Bob's"])
            .await;
        let target =
            "The blue kettle from last week's delivery was order A-88213, and its lid is cracked";
        let ask = |mode: &str| json!({"query": "order A-88213", "limit": 3, "mode": mode});
        let semantic = texts(&Value::Array(search(&app, "alice", ask("semantic")).await));
        let keyword = texts(&Value::Array(search(&app, "alice", ask("keyword")).await));
        let hybrid = texts(&Value::Array(search(&app, "alice", ask("hybrid")).await));
        println!("sealed {sealed}\nsemantic {semantic:?}\nkeyword {keyword:?}\nhybrid {hybrid:?}");
        assert!(
            !semantic.iter().any(|t| t == target),
            "semantic: {semantic:?}"
        );
        assert_eq!(keyword.first().map(String::as_str), Some(target), "keyword");
        assert!(hybrid.iter().any(|t| t == target), "hybrid: {hybrid:?}");
        assert!(!keyword.iter().any(|t| t.contains("Bob")));
        let locker = search(&app, "alice", json!({"query": "7719", "mode": "keyword"})).await;
        assert_eq!(
            texts(&Value::Array(locker)),
            ["Locker 7719 holds my gym bag"]
        );
        let none = search(&app, "alice", json!({"query": "zebra", "mode": "keyword"})).await;
        assert!(none.is_empty());
        let r = app
            .post(
                "/v1/memories/search",
                &token("acme", "alice"),
                &json!({"query": "x", "mode": "keyword", "min_score": 0.5}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        app.stop().await;
    }
}

async fn keyed_store(app: &TestApp, user: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/memories"))
        .bearer_auth(token("acme", user))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn a_keyed_retry_after_an_update_leaves_the_update() {
    let app = spawn_app().await;
    let body = json!({"text": "Dinner with Ana on Friday"});
    let first: Value = keyed_store(&app, "alice", "k-1", &body)
        .await
        .json()
        .await
        .expect("json");
    let id = first["ids"][0].as_str().expect("id").to_owned();
    let r = patch(
        &app,
        &id,
        "alice",
        &json!({"text": "Dinner with Ana on Saturday"}),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let again = keyed_store(&app, "alice", "k-1", &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let now = app
        .get_json(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    assert_eq!(
        (now["text"].as_str(), now["version"].as_u64()),
        (Some("Dinner with Ana on Saturday"), Some(2))
    );
    // The same key with other expiry options is another body.
    let other = keyed_store(
        &app,
        "alice",
        "k-1",
        &json!({"text": "Dinner with Ana on Friday", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_keyed_retry_after_expiry_does_not_bring_the_memory_back() {
    let app = spawn_app().await;
    let body = json!({"text": "The gate code today is 1942", "ttl_seconds": 1});
    let first: Value = keyed_store(&app, "alice", "k-2", &body)
        .await
        .json()
        .await
        .expect("json");
    let id = first["ids"][0].as_str().expect("id").to_owned();
    let shown = app
        .get_json(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    let at = shown["expires_at"].as_i64().expect("an expiry");
    tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64 + 50)).await;
    let again = keyed_store(&app, "alice", "k-2", &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let got = app
        .get(&format!("/v1/memories/{id}"), &token("acme", "alice"))
        .await;
    assert_eq!(got.status(), StatusCode::NOT_FOUND);
    let listed = app.get_json("/v1/memories", &token("acme", "alice")).await;
    assert!(texts(&listed["memories"]).is_empty());
}

#[tokio::test]
async fn the_sweep_finds_each_later_expiry_of_a_user() {
    let app = spawn_app_with(|s| s.memory.sweep_every = Duration::from_millis(200)).await;
    store(
        &app,
        "alice",
        json!({"text": "first to go", "ttl_seconds": 1}),
    )
    .await;
    store(
        &app,
        "alice",
        json!({"text": "second to go", "ttl_seconds": 2}),
    )
    .await;
    store(&app, "alice", json!({"text": "stays"})).await;
    let start = Instant::now();
    loop {
        let expired = expired_total(&app).await;
        if expired == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "swept {expired} of 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = app.get_json("/v1/memories", &token("acme", "alice")).await;
    assert_eq!(texts(&listed["memories"]), ["stays"]);
}

/// Updates, expiry, filters, keyword search and duplicates in one pass, on
/// a deployment that `configure` makes: each must take effect in every
/// setting it can meet.
async fn every_feature_takes_effect(configure: impl FnOnce(&mut cordon::settings::Settings)) {
    let app = spawn_app_with(configure).await;
    let t = token("acme", "alice");
    let id = store_one(
        &app,
        "alice",
        json!({"text": "My locker code is 4410", "metadata": {"price": 5, "shop": "north"}}),
    )
    .await;
    let r = patch(
        &app,
        &id,
        "alice",
        &json!({"text": "Order K-55120 is a blue kettle"}),
        Some("\"1\""),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let stale = patch(&app, &id, "alice", &json!({"text": "stale"}), Some("\"1\"")).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let foreign = patch(&app, &id, "mallory", &json!({"text": "mine now"}), None).await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    store(&app, "alice", json!({"text": "Order K-55121 is a red teapot", "metadata": {"price": 50, "shop": "south"}})).await;
    let short = store(
        &app,
        "alice",
        json!({"text": "The parking spot today is C14", "ttl_seconds": 2}),
    )
    .await;
    let short_id = short["ids"][0].as_str().expect("id").to_owned();
    let found = search(
        &app,
        "alice",
        json!({"query": "K-55120", "mode": "keyword"}),
    )
    .await;
    assert_eq!(found[0]["id"], id.as_str(), "keyword: {found:?}");
    let ranged = search(&app, "alice", json!({"query": "order", "filter": {"price": {"lt": 10}, "shop": {"in": ["north", "east"]}}})).await;
    assert_eq!(
        texts(&Value::Array(ranged)),
        ["Order K-55120 is a blue kettle"]
    );
    let dup = store(
        &app,
        "alice",
        json!({"text": "Order K-55121 is a red teapot.", "duplicate_threshold": 0.9}),
    )
    .await;
    assert_eq!(dup["duplicate"], json!([true]));
    let at = app.get_json(&format!("/v1/memories/{short_id}"), &t).await["expires_at"]
        .as_i64()
        .expect("an expiry");
    tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64 + 50)).await;
    let listed = texts(&app.get_json("/v1/memories", &t).await["memories"]);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed.iter().any(|l| l.contains("C14")));
    let found = search(&app, "alice", json!({"query": "parking spot C14"})).await;
    assert!(
        !texts(&Value::Array(found))
            .iter()
            .any(|l| l.contains("C14"))
    );
    app.delete("/v1/memories", &t).await;
    app.stop().await;
}

fn shared_tier(s: &mut cordon::settings::Settings) {
    s.store.tier = cordon::settings::Tier::Shared;
    s.store.name_hex_chars = 2;
}

#[tokio::test]
async fn every_feature_takes_effect_sealed_and_in_the_shared_tier_on_the_embedded_engine() {
    for (sealed, shared) in [(false, true), (true, false), (true, true)] {
        every_feature_takes_effect(|s| {
            if sealed {
                seal_with(s, KEK_ONE, None);
            }
            if shared {
                shared_tier(s);
            }
        })
        .await;
    }
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn every_feature_takes_effect_on_qdrant_sealed_or_not_in_either_tier() {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    for (sealed, shared) in [(false, false), (false, true), (true, false), (true, true)] {
        every_feature_takes_effect(|s| {
            crate::qdrant::use_qdrant_at(s, url.clone());
            s.store.qdrant.timeout = Duration::from_secs(10);
            if sealed {
                seal_with(s, KEK_ONE, None);
            }
            if shared {
                shared_tier(s);
            }
        })
        .await;
    }
}
