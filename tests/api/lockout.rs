//! Lockout: many rejected attempts within a window earn 429 `locked_out`
//! for a cool-down; nobody else is affected.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error, spawn_app_with, token};

async fn app_with_threshold(threshold: u32) -> TestApp {
    spawn_app_with(|s| {
        s.access.lockout.threshold = threshold;
        s.access.lockout.not_found_threshold = threshold;
        s.access.lockout.window = Duration::from_secs(60);
        s.access.lockout.cooldown = Duration::from_secs(120);
    })
    .await
}

/// A client whose connections come from `ip` (any 127.x address is local).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .expect("client")
}

async fn list(app: &TestApp, client: &reqwest::Client, token: &str) -> reqwest::Response {
    client
        .get(app.url("/v1/memories"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn an_address_sending_bad_tokens_is_locked_out_and_other_addresses_are_not() {
    let app = app_with_threshold(5).await;
    let (attacker, neighbour) = (client_from([127, 0, 0, 2]), client_from([127, 0, 0, 3]));
    for _ in 0..5 {
        let r = list(&app, &attacker, "not-a-token").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = list(&app, &attacker, "not-a-token").await;
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((100..=120).contains(&retry), "Retry-After {retry}");
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "locked_out").await;

    // Another address with a bad token still gets the plain 401; a valid
    // token is its owner's principal, served from either address.
    let r = list(&app, &neighbour, "not-a-token").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let alice = token("acme", "alice");
    assert_eq!(list(&app, &attacker, &alice).await.status(), StatusCode::OK);
    assert!(
        app.metrics()
            .await
            .contains("cordon_lockouts_total{principal=\"client\"} 1")
    );
}

#[tokio::test]
async fn a_caller_probing_other_users_ids_is_locked_out_and_nobody_else_is() {
    let app = app_with_threshold(4).await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    let bobs = app.store_texts(&bob, &["bob's memory"]).await;
    for _ in 0..4 {
        let r = app.get(&format!("/v1/memories/{}", bobs[0]), &alice).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let r = app.get("/v1/memories", &alice).await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "locked_out").await;
    let r = app
        .post("/v1/memories", &alice, &json!({ "text": "x" }))
        .await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "locked_out").await;

    // The owner of those ids, and everyone else, carry on.
    let body = app
        .get_json(&format!("/v1/memories/{}", bobs[0]), &bob)
        .await;
    assert_eq!(body["text"], "bob's memory");
    let carol = token("acme", "carol");
    assert_eq!(
        app.get("/v1/memories", &carol).await.status(),
        StatusCode::OK
    );
    assert!(
        app.metrics()
            .await
            .contains("cordon_lockouts_total{principal=\"owner\"} 1")
    );
}

#[tokio::test]
async fn a_threshold_of_zero_never_locks_anyone_out() {
    let app = app_with_threshold(0).await;
    let alice = token("acme", "alice");
    let missing = "0190d6a4-0000-7000-8000-000000000000";
    for _ in 0..30 {
        let r = app.get(&format!("/v1/memories/{missing}"), &alice).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        app.get("/v1/memories", &alice).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_expired_or_revoked_token_from_a_locked_out_address_still_gets_its_401() {
    let app = app_with_threshold(3).await;
    let shared = client_from([127, 0, 0, 4]);
    for _ in 0..3 {
        let r = list(&app, &shared, "not-a-token").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = list(&app, &shared, "not-a-token").await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "locked_out").await;

    // A client behind the same address whose token expired must learn to
    // refresh it, not to wait.
    let mut expired = crate::helpers::claims("acme", "alice");
    expired["exp"] = json!(crate::helpers::now() - 120);
    let r = list(&app, &shared, &crate::helpers::hs256(&expired)).await;
    crate::helpers::assert_unauthorized(r).await;

    let mut old = crate::helpers::claims("acme", "bob");
    old["iat"] = json!(crate::helpers::now() - 10);
    let old = crate::helpers::hs256(&old);
    let r = app
        .admin(
            "/admin/v1/users/revoke",
            &json!({ "tenant": "acme", "sub": "bob" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = list(&app, &shared, &old).await;
    assert_error(r, StatusCode::UNAUTHORIZED, "token_revoked").await;
}

async fn list_as(app: &TestApp, forwarded_for: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/memories"))
        .bearer_auth(token)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_the_forwarded_address() {
    let app = spawn_app_with(|s| {
        s.access.lockout.threshold = 3;
        s.access.proxies = cordon::settings::TrustedProxies::new(
            cordon::settings::TrustedProxies::parse_ranges("127.0.0.1").expect("valid"),
            cordon::settings::ClientHeader::XForwardedFor,
        );
    })
    .await;
    // The client forges a left entry; the proxy appends the address it saw.
    for _ in 0..3 {
        let r = list_as(&app, "198.51.100.1, 203.0.113.9", "forged").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = list_as(&app, "198.51.100.1, 203.0.113.9", "forged").await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "locked_out").await;
    // Another client behind the same proxy is not locked out.
    let r = list_as(&app, "203.0.113.10", "forged").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_forwarded_address_from_an_untrusted_peer_is_not_believed() {
    let app = app_with_threshold(3).await;
    // Each request claims another address; all count against the peer.
    for n in 0..3 {
        let r = list_as(&app, &format!("203.0.113.{n}"), "forged").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = list_as(&app, "203.0.113.200", "forged").await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "locked_out").await;
}
