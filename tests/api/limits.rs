//! Per-user limits: a user over their request rate or their share of the
//! requests in flight gets 429 `rate_limited` naming the limit; other users
//! are not slowed by them.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app_with, token};

#[tokio::test]
async fn a_user_over_the_rate_limit_gets_429_naming_it_and_others_do_not() {
    let app = spawn_app_with(|s| {
        s.access.user_limits.requests_per_second = 1;
        s.access.user_limits.burst = 3;
    })
    .await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    for _ in 0..3 {
        assert_eq!(
            app.get("/v1/memories", &alice).await.status(),
            StatusCode::OK
        );
    }
    let r = app.get("/v1/memories", &alice).await;
    assert!(r.headers().contains_key("retry-after"));
    let message = assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(message.contains("user_requests_per_second"), "{message}");
    assert_eq!(app.get("/v1/memories", &bob).await.status(), StatusCode::OK);
    assert!(
        app.metrics()
            .await
            .contains("cordon_limit_hits_total{limit=\"user_requests_per_second\"} 1")
    );
}

#[tokio::test]
async fn a_user_past_their_share_of_requests_in_flight_gets_429_and_another_user_is_served() {
    let app = spawn_app_with(|s| s.access.user_limits.max_in_flight = 2).await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    let long: Vec<Value> = (0..16)
        .map(|i| json!({ "text": format!("{i} {}", "slow to embed ".repeat(120)) }))
        .collect();
    let body = json!({ "memories": long });
    let stores = (0..6).map(|_| {
        let (client, url, alice, body) = (
            app.client.clone(),
            app.url("/v1/memories"),
            alice.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(alice)
                .json(&body)
                .send()
                .await
                .expect("sent");
            let status = r.status();
            let code = r
                .json::<Value>()
                .await
                .ok()
                .map(|b| b["error"]["code"].clone());
            (status, code)
        })
    });
    let stores: Vec<_> = stores.collect();
    // While alice's stores run, bob is served.
    let r = app
        .post("/v1/memories", &bob, &json!({ "text": "bob" }))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut created = 0;
    let mut limited = 0;
    for store in stores {
        match store.await.expect("joins") {
            (StatusCode::CREATED, _) => created += 1,
            (StatusCode::TOO_MANY_REQUESTS, Some(code)) if code == "rate_limited" => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(created >= 2, "{created} created");
    assert!(limited >= 1, "none of six concurrent stores was limited");
}

#[tokio::test]
async fn a_store_past_the_memory_quota_is_413_naming_it_and_writes_nothing() {
    let app = spawn_app_with(|s| s.limits.max_memories_per_user = 3).await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    app.store_texts(&alice, &["one", "two"]).await;
    let r = app
        .post(
            "/v1/memories",
            &alice,
            &json!({ "memories": [{ "text": "three" }, { "text": "four" }] }),
        )
        .await;
    let message = assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded").await;
    assert!(message.contains("max_memories_per_user"), "{message}");
    let body = app.get_json("/v1/memories", &alice).await;
    assert_eq!(body["memories"].as_array().expect("array").len(), 2);
    // One more fits; other users have their own quota.
    app.store_texts(&alice, &["three"]).await;
    app.store_texts(&bob, &["b1", "b2", "b3"]).await;
}

#[tokio::test]
async fn a_store_past_the_byte_quota_is_413_and_a_delete_makes_room() {
    let app = spawn_app_with(|s| s.limits.max_bytes_per_user = 100).await;
    let alice = token("acme", "alice");
    // Text plus metadata as JSON: 40 + 2 ("{}") bytes each.
    let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
    let ids = app.store_texts(&alice, &[a.as_str(), b.as_str()]).await;
    let r = app
        .post("/v1/memories", &alice, &json!({ "text": c }))
        .await;
    let message = assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded").await;
    assert!(message.contains("max_bytes_per_user"), "{message}");
    let r = app
        .delete(&format!("/v1/memories/{}", ids[0]), &alice)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    app.store_texts(&alice, &[c.as_str()]).await;
    assert!(
        app.metrics()
            .await
            .contains("cordon_limit_hits_total{limit=\"max_bytes_per_user\"} 1")
    );
}

/// A connection from `ip` that sends nothing.
async fn idle_connection(app: &crate::helpers::TestApp, ip: [u8; 4]) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((ip, 0)))
        .expect("a local address");
    socket.connect(addr).await.expect("connects")
}

/// Whether the server closes `stream` within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn one_address_gets_at_most_its_share_of_connections_and_idle_ones_are_closed() {
    use std::time::Duration;
    let app = spawn_app_with(|s| {
        s.connections.per_address = 2;
        s.connections.idle = Duration::from_secs(1);
    })
    .await;
    let mut held = vec![
        idle_connection(&app, [127, 0, 0, 21]).await,
        idle_connection(&app, [127, 0, 0, 21]).await,
    ];
    let mut third = idle_connection(&app, [127, 0, 0, 21]).await;
    assert!(
        closed_within(&mut third, Duration::from_millis(500)).await,
        "a third connection from one address was kept"
    );
    // Another address is served meanwhile.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 22]))
        .build()
        .expect("client");
    let r = other
        .get(app.url("/v1/memories"))
        .bearer_auth(token("acme", "alice"))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::OK);
    // Connections that send nothing are closed after the idle limit, and
    // give their address's places back.
    for stream in &mut held {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "an idle connection stayed open"
        );
    }
    let mut again = idle_connection(&app, [127, 0, 0, 21]).await;
    assert!(
        !closed_within(&mut again, Duration::from_millis(300)).await,
        "the address's places did not come back"
    );
}
