//! Isolation in time: revocations, minimum token versions, tenant states
//! and the admin API that sets them, on the embedded engine.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, TestApp, assert_error, assert_unauthorized, claims, hs256, spawn_app, spawn_app_on,
    spawn_app_with, token,
};

/// Seconds since the epoch with milliseconds, as a JWT `iat` may carry.
fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A token for `(tenant, sub)` with `iat` and optional `ver`.
fn token_at(tenant: &str, sub: &str, iat: f64, ver: Option<u64>) -> String {
    let mut c = claims(tenant, sub);
    c["iat"] = json!(iat);
    if let Some(ver) = ver {
        c["ver"] = json!(ver);
    }
    hs256(&c)
}

async fn list_status(app: &TestApp, token: &str) -> StatusCode {
    app.get("/v1/memories", token).await.status()
}

async fn assert_revoked(app: &TestApp, token: &str) {
    let r = app.get("/v1/memories", token).await;
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_error(r, StatusCode::UNAUTHORIZED, "token_revoked").await;
}

async fn revoke(app: &TestApp, tenant: &str, sub: &str) -> Value {
    let r = app
        .admin(
            "/admin/v1/users/revoke",
            &json!({ "tenant": tenant, "sub": sub }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

#[tokio::test]
async fn a_revoked_token_is_refused_from_the_moment_the_admin_call_returns() {
    let app = spawn_app().await;
    let old = token_at("acme", "alice", now_secs_f64() - 5.0, None);
    let bob = token_at("acme", "bob", now_secs_f64() - 5.0, None);
    app.store_texts(&old, &["alice's note"]).await;
    assert_eq!(list_status(&app, &old).await, StatusCode::OK);

    let answer = revoke(&app, "acme", "alice").await;
    assert!(answer["revoked_before_ms"].as_u64().expect("cut-off") > 0);
    assert_eq!(answer["owner"].as_str().expect("tag").len(), 12);
    assert_revoked(&app, &old).await;

    // A token issued after the cut-off works, with the memories intact; other
    // users were never affected.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = token_at("acme", "alice", now_secs_f64(), None);
    let body = app.get_json("/v1/memories", &fresh).await;
    assert_eq!(body["memories"].as_array().expect("array").len(), 1);
    assert_eq!(list_status(&app, &bob).await, StatusCode::OK);
    assert!(
        app.metrics()
            .await
            .contains("cordon_auth_failures_total{reason=\"token_revoked\"} 1")
    );
}

#[tokio::test]
async fn a_token_without_iat_is_refused_once_its_user_was_revoked() {
    let app = spawn_app().await;
    let mut c = claims("acme", "alice");
    c.as_object_mut().expect("object").remove("iat");
    let no_iat = hs256(&c);
    assert_eq!(list_status(&app, &no_iat).await, StatusCode::OK);
    revoke(&app, "acme", "alice").await;
    assert_revoked(&app, &no_iat).await;
}

#[tokio::test]
async fn raising_the_minimum_version_refuses_older_tokens_only() {
    let app = spawn_app().await;
    let (v1, v2, none) = (
        token_at("acme", "alice", now_secs_f64(), Some(1)),
        token_at("acme", "alice", now_secs_f64(), Some(2)),
        token_at("acme", "alice", now_secs_f64(), None),
    );
    let r = app
        .admin(
            "/admin/v1/users/min-version",
            &json!({ "tenant": "acme", "sub": "alice", "min_version": 2 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["min_version"], 2);
    assert_revoked(&app, &v1).await;
    assert_revoked(&app, &none).await;
    assert_eq!(list_status(&app, &v2).await, StatusCode::OK);

    // A lower minimum is refused, not answered 200 and ignored: versions
    // only rise. The same one again is fine.
    let r = app
        .admin(
            "/admin/v1/users/min-version",
            &json!({ "tenant": "acme", "sub": "alice", "min_version": 1 }),
        )
        .await;
    let message = assert_error(r, StatusCode::CONFLICT, "min_version_only_rises").await;
    assert!(message.contains("is 2"), "{message}");
    assert_revoked(&app, &v1).await;
    let r = app
        .admin(
            "/admin/v1/users/min-version",
            &json!({ "tenant": "acme", "sub": "alice", "min_version": 2 }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn revocations_and_tenant_states_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let old = token_at("acme", "alice", now_secs_f64() - 5.0, None);
    let globex = token_at("globex", "gina", now_secs_f64(), None);
    let app = spawn_app_on(dir.path(), |_| {}).await;
    revoke(&app, "acme", "alice").await;
    let r = app
        .admin("/admin/v1/tenants/disable", &json!({ "tenant": "globex" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;

    let tenants = dir.path().join("tenants.json");
    std::fs::write(&tenants, r#"{"acme": "enabled", "globex": "enabled"}"#).expect("writes");
    let app = spawn_app_on(dir.path(), |s| s.access.tenants_file = Some(tenants)).await;
    assert_revoked(&app, &old).await;
    // The admin change is newer than the file's entry, so it still holds.
    assert_error(
        app.get("/v1/memories", &globex).await,
        StatusCode::FORBIDDEN,
        "tenant_disabled",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn disabling_a_tenant_without_a_tenants_file_refuses_its_tokens_with_403() {
    let app = spawn_app().await;
    let (alice, other) = (token("acme", "alice"), token("globex", "gina"));
    assert_eq!(list_status(&app, &alice).await, StatusCode::OK);

    let r = app
        .admin("/admin/v1/tenants/disable", &json!({ "tenant": "acme" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_error(
        app.get("/v1/memories", &alice).await,
        StatusCode::FORBIDDEN,
        "tenant_disabled",
    )
    .await;
    // Without a registry, tenants nobody disabled are let in as before.
    assert_eq!(list_status(&app, &other).await, StatusCode::OK);
    let r = app
        .admin("/admin/v1/tenants/enable", &json!({ "tenant": "acme" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(list_status(&app, &alice).await, StatusCode::OK);
}

#[tokio::test]
async fn with_the_registry_on_unknown_and_disabled_tenants_are_403() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tenants = dir.path().join("tenants.json");
    std::fs::write(&tenants, r#"{"acme": "enabled", "initech": "disabled"}"#).expect("writes");
    let app = spawn_app_with(|s| s.access.tenants_file = Some(tenants)).await;
    let (acme, initech, umbrella) = (
        token("acme", "alice"),
        token("initech", "ian"),
        token("umbrella", "uma"),
    );
    assert_eq!(list_status(&app, &acme).await, StatusCode::OK);
    assert_error(
        app.get("/v1/memories", &initech).await,
        StatusCode::FORBIDDEN,
        "tenant_disabled",
    )
    .await;
    assert_error(
        app.get("/v1/memories", &umbrella).await,
        StatusCode::FORBIDDEN,
        "tenant_unknown",
    )
    .await;

    // Disabling takes effect when the call returns; enabling gives access back.
    let r = app
        .admin("/admin/v1/tenants/disable", &json!({ "tenant": "acme" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_error(
        app.get("/v1/memories", &acme).await,
        StatusCode::FORBIDDEN,
        "tenant_disabled",
    )
    .await;
    for tenant in ["acme", "umbrella"] {
        let r = app
            .admin("/admin/v1/tenants/enable", &json!({ "tenant": tenant }))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(list_status(&app, &acme).await, StatusCode::OK);
    assert_eq!(list_status(&app, &umbrella).await, StatusCode::OK);
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_key_and_no_user_token_opens_it() {
    let app = spawn_app().await;
    let body = json!({ "tenant": "acme", "sub": "alice" });
    for key in [token("acme", "alice"), "not-the-admin-key".into()] {
        let r = app.post("/admin/v1/users/revoke", &key, &body).await;
        assert_unauthorized(r).await;
    }
    let r = app
        .client
        .post(app.url("/admin/v1/users/revoke"))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_unauthorized(r).await;
    // Nor does the admin key work as a user token.
    assert_unauthorized(app.get("/v1/memories", ADMIN_KEY).await).await;
    assert_eq!(
        list_status(&app, &token("acme", "alice")).await,
        StatusCode::OK
    );

    // Without a configured key there is no admin API at all.
    let off = spawn_app_with(|s| s.access.admin_key = None).await;
    let r = off.admin("/admin/v1/users/revoke", &body).await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn admin_status_counts_a_users_memories_without_their_text() {
    let app = spawn_app().await;
    let alice = token("acme", "alice");
    app.store_texts(&alice, &["secret plan one", "secret plan two"])
        .await;
    let r = app
        .admin(
            "/admin/v1/users/status",
            &json!({ "tenant": "acme", "sub": "alice" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("body");
    assert!(!text.contains("secret plan"), "{text}");
    assert!(!text.contains("alice"), "{text}");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["memories"], 2);
    assert_eq!(body["min_version"], 0);
    assert!(body["limits"]["max_items_per_request"].is_u64());

    let r = app
        .admin("/admin/v1/users/status", &json!({ "tenant": "acme" }))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_request_in_flight_when_the_revocation_returns_completes_as_before() {
    let app = spawn_app().await;
    let old = token_at("acme", "alice", now_secs_f64() - 5.0, None);
    // Sixteen long texts keep the store embedding for a while after its
    // token was checked.
    let long: Vec<Value> = (0..16)
        .map(
            |i| json!({ "text": format!("{i} {}", "a long memory about many things ".repeat(60)) }),
        )
        .collect();
    let store = {
        let (client, url, old) = (app.client.clone(), app.url("/v1/memories"), old.clone());
        tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(old)
                .json(&json!({ "memories": long }))
                .send()
                .await
                .expect("sent");
            (r.status(), std::time::Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    revoke(&app, "acme", "alice").await;
    let revoked_at = std::time::Instant::now();
    assert_revoked(&app, &old).await;
    let (status, finished_at) = store.await.expect("joins");
    assert!(
        finished_at > revoked_at,
        "the store finished before the revocation returned, so it was not in flight; make it longer"
    );
    // Checked once, at the start: a request already past the check completes.
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status_without_identities() {
    let app = spawn_app().await;
    let alice = token("acme", "alice");
    let ids = app.store_texts(&alice, &["a note"]).await;
    app.get_json(&format!("/v1/memories/{}", ids[0]), &alice)
        .await;
    let missing = "0190d6a4-0000-7000-8000-000000000000";
    let r = app.get(&format!("/v1/memories/{missing}"), &alice).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let metrics = app.metrics().await;
    for line in [
        "cordon_http_requests_total{route=\"/v1/memories\",method=\"POST\",status=\"201\"} 1",
        "cordon_http_requests_total{route=\"/v1/memories/{id}\",method=\"GET\",status=\"200\"} 1",
        "cordon_http_requests_total{route=\"/v1/memories/{id}\",method=\"GET\",status=\"404\"} 1",
        "cordon_http_request_duration_seconds_count{route=\"/v1/memories/{id}\",method=\"GET\"} 2",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    for secret in [ids[0].as_str(), missing, "alice", "acme"] {
        assert!(!metrics.contains(secret), "/metrics holds `{secret}`");
    }
}

#[tokio::test]
async fn with_a_metrics_token_metrics_answer_only_that_bearer() {
    const METRICS: &str = "test-metrics-token-0123456789abcdef-0123";
    let app = spawn_app_with(|s| {
        s.metrics_token = Some(cordon::secret::Secret::new(METRICS.as_bytes().to_vec()));
    })
    .await;
    let scrape = |bearer: Option<&str>| {
        let mut request = app.client.get(app.url("/metrics"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    assert_unauthorized(scrape(None).await.expect("answered")).await;
    assert_unauthorized(scrape(Some("wrong")).await.expect("answered")).await;
    let alice = token("acme", "alice");
    assert_unauthorized(scrape(Some(&alice)).await.expect("answered")).await;
    let r = scrape(Some(METRICS)).await.expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await.expect("text");
    assert!(
        body.contains("cordon_auth_failures_total{reason=\"metrics_token\"} 3"),
        "{body}"
    );
    // Guesses count towards the address's lockout, like wrong admin keys.
    let guesser = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 31]))
        .build()
        .expect("client");
    let mut last = StatusCode::OK;
    for _ in 0..25 {
        last = guesser
            .get(app.url("/metrics"))
            .bearer_auth("a guess")
            .send()
            .await
            .expect("answered")
            .status();
    }
    assert_eq!(
        last,
        StatusCode::TOO_MANY_REQUESTS,
        "20 guesses lock the address out"
    );
    // The other open routes stay open.
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .expect("answered")
            .status(),
        StatusCode::OK
    );
}
