//! Bad input gets a 4xx JSON error that names the rule, and changes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, token};

async fn count(app: &TestApp, t: &str) -> usize {
    let body: Value = app.get_json("/v1/memories/export", t).await;
    body["memories"].as_array().expect("array").len()
}

async fn store_raw(app: &TestApp, t: &str, body: &'static str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/memories"))
        .bearer_auth(t)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn invalid_bodies_on_store_are_rejected_and_store_nothing() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;

    let m = assert_error(
        app.post("/v1/memories", &t, &json!({ "text": "" })).await,
        unprocessable,
        "invalid_request",
    )
    .await;
    assert!(m.contains("must not be empty"), "{m}");
    assert_error(
        app.post("/v1/memories", &t, &json!({ "text": "   \n" }))
            .await,
        unprocessable,
        "invalid_request",
    )
    .await;

    let m = assert_error(
        app.post("/v1/memories", &t, &json!({ "text": "x".repeat(2001) }))
            .await,
        unprocessable,
        "invalid_request",
    )
    .await;
    assert!(m.contains("2000 bytes"), "the message names the limit: {m}");

    let many: Vec<Value> = (0..17)
        .map(|i| json!({ "text": format!("t{i}") }))
        .collect();
    let m = assert_error(
        app.post("/v1/memories", &t, &json!({ "memories": many }))
            .await,
        unprocessable,
        "invalid_request",
    )
    .await;
    assert!(m.contains("limit is 16"), "{m}");
    assert_error(
        app.post("/v1/memories", &t, &json!({ "memories": [] }))
            .await,
        unprocessable,
        "invalid_request",
    )
    .await;

    // One bad item spoils the whole batch: nothing of it is stored.
    let batch = json!({ "memories": [{ "text": "fine" }, { "text": "" }] });
    assert_error(
        app.post("/v1/memories", &t, &batch).await,
        unprocessable,
        "invalid_request",
    )
    .await;

    // Wrong types.
    assert_error(
        app.post("/v1/memories", &t, &json!({ "text": 42 })).await,
        unprocessable,
        "invalid_request",
    )
    .await;
    assert_error(
        app.post("/v1/memories", &t, &json!({ "memories": "nope" }))
            .await,
        unprocessable,
        "invalid_request",
    )
    .await;
    assert_error(
        app.post(
            "/v1/memories",
            &t,
            &json!({ "text": "x", "metadata": [1, 2] }),
        )
        .await,
        unprocessable,
        "invalid_request",
    )
    .await;
    assert_error(
        app.post(
            "/v1/memories",
            &t,
            &json!({ "text": "x", "metadata": { "bad key!": 1 } }),
        )
        .await,
        unprocessable,
        "invalid_request",
    )
    .await;

    let m = assert_error(
        app.post(
            "/v1/memories",
            &t,
            &json!({ "text": "x", "metadata": { "blob": "y".repeat(2000) } }),
        )
        .await,
        unprocessable,
        "invalid_request",
    )
    .await;
    assert!(m.contains("1024 bytes"), "{m}");

    // Not JSON at all, and JSON under the wrong content type.
    assert_error(
        store_raw(&app, &t, "{\"text\": ").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    let r = app
        .client
        .post(app.url("/v1/memories"))
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body(r#"{"text":"x"}"#)
        .send()
        .await
        .expect("sent");
    assert_error(
        r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    // Over the body cap.
    let huge = json!({ "text": "z".repeat(300 * 1024) });
    assert_error(
        app.post("/v1/memories", &t, &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    assert_eq!(
        count(&app, &t).await,
        0,
        "a rejected request stored something"
    );
}

#[tokio::test]
async fn invalid_search_requests_are_rejected() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for body in [
        json!({ "query": "" }),
        json!({ "query": "x", "limit": 0 }),
        json!({ "query": "x", "limit": 101 }),
        json!({ "query": "x", "limit": -3 }),
        json!({ "query": "x", "limit": "ten" }),
        json!({ "query": "x", "min_score": 2.0 }),
        json!({ "query": "x", "filter": { "a": 1.5 } }),
        json!({ "query": "x", "filter": { "a": { "$ne": 1 } } }),
        json!({ "query": "x", "filter": { "owner": "x", "a.b": "y" } }),
        json!({ "limit": 3 }),
    ] {
        assert_error(
            app.post("/v1/memories/search", &t, &body).await,
            unprocessable,
            "invalid_request",
        )
        .await;
    }
}

#[tokio::test]
async fn bad_ids_and_list_parameters_are_rejected() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    assert_error(
        app.get("/v1/memories/not-a-uuid", &t).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
    assert_error(
        app.delete("/v1/memories/not-a-uuid", &t).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
    assert_error(
        app.get("/v1/memories/0190d6a4-0000-7000-8000-000000000000", &t)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/v1/memories?limit=0", &t).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_error(
        app.get("/v1/memories?limit=1000", &t).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_error(
        app.get("/v1/memories?cursor=zzz", &t).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["status"], "ready");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_json_error_shape() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    assert_error(
        app.get("/v1/nothing-here", &t).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let r = app
        .client
        .put(app.url("/v1/memories"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("sent");
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}
