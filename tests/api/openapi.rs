//! `GET /openapi.json`: the document lists every route the server answers,
//! with every method, and nothing it does not answer.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app, token};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Whether the server routes `method path` (anything but its own 405).
async fn routed(app: &TestApp, method: &str, path: &str) -> bool {
    let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
    let response = app
        .client
        .request(method, app.url(&concrete))
        .send()
        .await
        .expect("request");
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return true;
    }
    let body: Value = response.json().await.unwrap_or_default();
    body["error"]["code"] != "method_not_allowed"
}

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("the document is JSON")
}

#[tokio::test]
async fn every_route_and_method_the_server_answers_is_in_the_document() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for path in &app.route_paths {
        for method in METHODS {
            if routed(&app, method, path).await {
                assert!(
                    paths.get(path).and_then(|item| item.get(method)).is_some(),
                    "the server answers {} {path}, which /openapi.json does not list",
                    method.to_uppercase()
                );
            }
        }
    }
    // The router's paths were really read: the document's are among them.
    for path in paths.keys() {
        assert!(
            app.route_paths.contains(path),
            "/openapi.json lists {path}, which the router does not hold ({:?})",
            app.route_paths
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn every_documented_operation_is_answered_by_the_server() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            assert!(
                routed(&app, method, path).await,
                "/openapi.json lists {} {path}, which the server does not route",
                method.to_uppercase()
            );
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_document_names_the_bearer_scheme_and_the_error_shape() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let store = &doc["paths"]["/v1/memories"]["post"];
    assert_eq!(store["security"][0]["bearer"], serde_json::json!([]));
    let unauthorized = &store["responses"]["401"]["content"]["application/json"]["schema"];
    assert_eq!(unauthorized["$ref"], "#/components/schemas/ErrorBody");
    let error = &doc["components"]["schemas"]["ErrorDetail"]["properties"];
    assert!(error.get("code").is_some() && error.get("message").is_some());
    // What a client sends or gets, by name.
    for schema in ["MemoryInput", "SearchRequest", "Memory", "ListResponse"] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} is not in the document"
        );
    }
    // The document needs no token, but the API still does.
    let r = app.get("/v1/memories", "not-a-token").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.get("/v1/memories", &token("acme", "alice")).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
}
