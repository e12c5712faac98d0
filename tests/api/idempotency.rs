//! `Idempotency-Key`: a retried write returns the same ids and stores nothing
//! twice; a reused key with another body is refused; keys are per owner.

use std::path::Path;

use cordon::settings::Settings;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app_on, token};
use crate::qdrant::use_qdrant_at;

async fn store_with_key(app: &TestApp, bearer: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/memories"))
        .bearer_auth(bearer)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn ids_of(r: reqwest::Response) -> Vec<String> {
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.expect("json body");
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect()
}

async fn listed(app: &TestApp, bearer: &str) -> Vec<String> {
    let page = app.get_json("/v1/memories?limit=100", bearer).await;
    crate::helpers::texts(&page["memories"])
}

/// The whole contract, on whichever engine `configure` picks.
async fn retries_store_nothing_twice(dir: &Path, configure: impl Fn(&mut Settings) + Copy) {
    let alice = token("acme", "alice");
    let bob = token("acme", "bob");
    let batch = json!({ "memories": [{ "text": "dentist on friday" }, { "text": "call mum" }] });

    let app = spawn_app_on(dir, configure).await;
    let first = ids_of(store_with_key(&app, &alice, "order-17", &batch).await).await;
    let again = ids_of(store_with_key(&app, &alice, "order-17", &batch).await).await;
    assert_eq!(first, again, "a retry answers with the same ids");
    assert_eq!(
        listed(&app, &alice).await.len(),
        2,
        "and stores nothing new"
    );

    let other = json!({ "text": "something else entirely" });
    let r = store_with_key(&app, &alice, "order-17", &other).await;
    assert_error(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(
        listed(&app, &alice).await.len(),
        2,
        "the refused body wrote nothing"
    );

    // A retry after one of its memories was deleted does not bring it back.
    let r = app
        .delete(&format!("/v1/memories/{}", first[0]), &alice)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let retried = ids_of(store_with_key(&app, &alice, "order-17", &batch).await).await;
    assert_eq!(retried, first);
    assert_eq!(listed(&app, &alice).await, vec!["call mum"]);
    // The item left still tells another body apart.
    let other_pair = json!({ "memories": [{ "text": "x" }, { "text": "y" }] });
    let r = store_with_key(&app, &alice, "order-17", &other_pair).await;
    assert_error(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    // The same key from another user is another write.
    let bobs = ids_of(store_with_key(&app, &bob, "order-17", &batch).await).await;
    assert!(bobs.iter().all(|id| !first.contains(id)));
    assert_eq!(listed(&app, &bob).await.len(), 2);
    assert_eq!(listed(&app, &alice).await.len(), 1);
    app.stop().await;

    // Across a restart the key still answers with the first ids.
    let app = spawn_app_on(dir, configure).await;
    let after = ids_of(store_with_key(&app, &alice, "order-17", &batch).await).await;
    assert_eq!(after, first);
    assert_eq!(listed(&app, &alice).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_retried_write_with_the_same_key_stores_nothing_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    retries_store_nothing_twice(dir.path(), |_| {}).await;
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_retried_write_with_the_same_key_stores_nothing_twice_on_qdrant() {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let dir = tempfile::tempdir().expect("temp dir");
    // One prefix for both servers, so that the restart finds the collection.
    let prefix = format!(
        "cordon_idem_{}_",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let configure = |s: &mut Settings| {
        use_qdrant_at(s, url.clone());
        s.store.collection_prefix = prefix.clone();
    };
    retries_store_nothing_twice(dir.path(), &configure).await;
    // Leave nothing behind in the shared Qdrant.
    let app = spawn_app_on(dir.path(), &configure).await;
    for sub in ["alice", "bob"] {
        let r = app.delete("/v1/memories", &token("acme", sub)).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |_| {}).await;
    let alice = token("acme", "alice");
    let too_long = "k".repeat(256);
    for key in ["has space", too_long.as_str()] {
        let r = store_with_key(&app, &alice, key, &json!({ "text": "x" })).await;
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    }
    assert!(listed(&app, &alice).await.is_empty());
    app.stop().await;
}

/// Two stores under one key with different bodies, at the same moment, for
/// `rounds` keys: never both 201; the loser is 409 `idempotency_conflict`
/// (or, if it came second, 422 `idempotency_key_reused`), and the memory
/// stored is the winner's.
async fn racing_bodies_never_both_succeed(app: &TestApp, rounds: usize) {
    let alice = token("acme", "alice");
    for round in 0..rounds {
        let key = format!("race-{round}");
        let bodies = [
            json!({ "text": format!("first body of round {round}") }),
            json!({ "text": format!("second body of round {round}") }),
        ];
        let (a, b) = tokio::join!(
            store_with_key(app, &alice, &key, &bodies[0]),
            store_with_key(app, &alice, &key, &bodies[1]),
        );
        let (sa, sb) = (a.status(), b.status());
        let created = [sa, sb]
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "round {round}: {sa} and {sb}");
        let (winner, loser, body) = if sa == StatusCode::CREATED {
            (a, b, &bodies[0])
        } else {
            (b, a, &bodies[1])
        };
        let loser: Value = loser.json().await.expect("json error");
        let code = loser["error"]["code"].as_str().unwrap_or_default();
        assert!(
            ["idempotency_conflict", "idempotency_key_reused"].contains(&code),
            "round {round}: {loser}"
        );
        let id = &ids_of(winner).await[0];
        let stored = app.get_json(&format!("/v1/memories/{id}"), &alice).await;
        assert_eq!(stored["text"], body["text"], "round {round}");
    }
}

#[tokio::test]
async fn two_stores_racing_under_one_key_with_different_bodies_never_both_succeed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |_| {}).await;
    racing_bodies_never_both_succeed(&app, 20).await;
    app.stop().await;
}
