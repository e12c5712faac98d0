//! Every way a token can be wrong gets the same 401; the right token works.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_unauthorized, claims, hs256, now, repo_path, sign, spawn_app, token,
};

/// Calls an authenticated endpoint with `authorization` as the raw header.
async fn call(app: &TestApp, authorization: Option<String>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/memories/search"))
        .json(&json!({ "query": "anything" }));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.expect("request sent")
}

async fn rejected(app: &TestApp, token: String) {
    assert_unauthorized(call(app, Some(format!("Bearer {token}"))).await).await;
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("object").remove(key);
    claims
}

#[tokio::test]
async fn a_valid_hs256_token_is_accepted() {
    let app = spawn_app().await;
    let r = call(&app, Some(format!("Bearer {}", token("acme", "alice")))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_valid_rs256_token_from_the_configured_public_key_is_accepted() {
    let app = spawn_app().await;
    let pem = std::fs::read(repo_path("tests/fixtures/rsa-private.pem")).expect("fixture");
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    let t = sign(Algorithm::RS256, &key, &claims("acme", "alice"));
    let r = call(&app, Some(format!("Bearer {t}"))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_missing_or_malformed_authorization_header_is_401() {
    let app = spawn_app().await;
    assert_unauthorized(call(&app, None).await).await;
    assert_unauthorized(call(&app, Some("Bearer".into())).await).await;
    assert_unauthorized(call(&app, Some("Bearer not.a.jwt".into())).await).await;
    assert_unauthorized(call(&app, Some("Bearer ####".into())).await).await;
    let basic = format!("Basic {}", URL_SAFE_NO_PAD.encode("alice:pw"));
    assert_unauthorized(call(&app, Some(basic)).await).await;
    // A valid token under the wrong scheme is still refused.
    assert_unauthorized(call(&app, Some(format!("Token {}", token("acme", "alice")))).await).await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_401() {
    let app = spawn_app().await;
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"some-other-secret-that-is-also-32-bytes-long"),
        &claims("acme", "alice"),
    );
    rejected(&app, forged).await;
}

#[tokio::test]
async fn a_token_with_a_tampered_payload_is_401() {
    let app = spawn_app().await;
    let good = token("acme", "alice");
    let parts: Vec<&str> = good.split('.').collect();
    let other = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("acme", "bob")).expect("json"));
    rejected(&app, format!("{}.{}.{}", parts[0], other, parts[2])).await;
}

#[tokio::test]
async fn alg_none_is_401() {
    let app = spawn_app().await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("acme", "alice")).expect("json"));
    rejected(&app, format!("{header}.{payload}.")).await;
    rejected(&app, format!("{header}.{payload}")).await;
}

#[tokio::test]
async fn an_algorithm_that_is_not_configured_is_401() {
    let app = spawn_app().await;
    // Same secret, different HMAC algorithm: the key is pinned to HS256.
    let hs384 = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(crate::helpers::HS_SECRET.as_bytes()),
        &claims("acme", "alice"),
    );
    rejected(&app, hs384).await;
    // A well-formed EdDSA token, but no EdDSA key is configured.
    let pem = std::fs::read(repo_path("tests/fixtures/ed25519-private.pem")).expect("fixture");
    let ed = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(&pem).expect("ed key"),
        &claims("acme", "alice"),
    );
    rejected(&app, ed).await;
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_401() {
    // The classic algorithm confusion: the public key used as an HMAC secret.
    let app = spawn_app().await;
    let public = std::fs::read(repo_path("tests/fixtures/rsa-public.pem")).expect("fixture");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
        &claims("acme", "alice"),
    );
    rejected(&app, confused).await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_401() {
    let app = spawn_app().await;
    let base = claims("acme", "alice");
    rejected(&app, hs256(&with(base.clone(), "exp", json!(now() - 120)))).await;
    rejected(&app, hs256(&with(base.clone(), "nbf", json!(now() + 120)))).await;
    rejected(&app, hs256(&without(base, "exp"))).await;
}

#[tokio::test]
async fn a_wrong_issuer_or_audience_is_401() {
    let app = spawn_app().await;
    let base = claims("acme", "alice");
    rejected(
        &app,
        hs256(&with(base.clone(), "iss", json!("someone-else"))),
    )
    .await;
    rejected(
        &app,
        hs256(&with(base.clone(), "aud", json!("another-service"))),
    )
    .await;
    rejected(&app, hs256(&without(base.clone(), "iss"))).await;
    rejected(&app, hs256(&without(base, "aud"))).await;
}

#[tokio::test]
async fn a_missing_or_malformed_identity_claim_is_401() {
    let app = spawn_app().await;
    let base = claims("acme", "alice");
    rejected(&app, hs256(&without(base.clone(), "tenant"))).await;
    rejected(&app, hs256(&with(base.clone(), "tenant", json!(42)))).await;
    rejected(&app, hs256(&with(base.clone(), "tenant", json!("")))).await;
    rejected(&app, hs256(&with(base.clone(), "tenant", json!(["acme"])))).await;
    rejected(&app, hs256(&without(base.clone(), "sub"))).await;
    rejected(&app, hs256(&with(base.clone(), "sub", json!("")))).await;
    rejected(&app, hs256(&with(base, "sub", json!({ "id": "alice" })))).await;
}

#[tokio::test]
async fn an_oversized_token_is_401() {
    let app = spawn_app().await;
    let padded = with(claims("acme", "alice"), "pad", json!("x".repeat(9000)));
    rejected(&app, hs256(&padded)).await;
}

#[tokio::test]
async fn every_data_endpoint_requires_a_token() {
    let app = spawn_app().await;
    let id = "0190d6a4-0000-7000-8000-000000000000";
    let calls = [
        app.client
            .post(app.url("/v1/memories"))
            .json(&json!({ "text": "x" })),
        app.client.get(app.url("/v1/memories")),
        app.client.delete(app.url("/v1/memories")),
        app.client.get(app.url("/v1/memories/export")),
        app.client.get(app.url(&format!("/v1/memories/{id}"))),
        app.client.delete(app.url(&format!("/v1/memories/{id}"))),
        app.client
            .post(app.url("/v1/memories/search"))
            .json(&json!({ "query": "x" })),
        app.client
            .post(app.url("/v1/embeddings"))
            .json(&json!({ "input": "x" })),
    ];
    for request in calls {
        assert_unauthorized(request.send().await.expect("sent")).await;
    }
    assert!(
        app.metrics()
            .await
            .contains("cordon_auth_failures_total{reason=\"missing\"} 8")
    );
}
