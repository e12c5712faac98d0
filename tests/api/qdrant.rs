//! The Qdrant server engine behind the HTTP API: what clients see when Qdrant
//! is down, and that service comes back by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use cordon::settings::{Settings, StoreKind};
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::{TestApp, assert_error, spawn_app_with, texts, token};

pub fn use_qdrant_at(s: &mut Settings, url: String) {
    s.store.kind = StoreKind::Qdrant;
    s.store.collection_prefix = format!(
        "cordon_test_{}_",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    s.store.qdrant.url = url;
    s.store.qdrant.timeout = Duration::from_secs(2);
    s.store.qdrant.connect_timeout = Duration::from_millis(500);
}

async fn store(app: &TestApp, bearer: &str, text: &str) -> reqwest::Response {
    app.post("/v1/memories", bearer, &json!({ "text": text }))
        .await
}

async fn status_of(app: &TestApp, path: &str) -> StatusCode {
    app.get(path, "").await.status()
}

async fn assert_store_unavailable(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], "store_unavailable");
}

/// Polls `/readyz` until it answers `status`, for at most 3 s (its probe
/// is at most a second old).
async fn until_ready_is(app: &TestApp, status: StatusCode) {
    let started = std::time::Instant::now();
    while status_of(app, "/readyz").await != status {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "/readyz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn an_unreachable_qdrant_is_503_store_unavailable_and_not_ready() {
    let port = closed_port().await;
    let app = spawn_app_with(|s| use_qdrant_at(s, format!("http://127.0.0.1:{port}"))).await;
    let alice = token("acme", "alice");

    assert_store_unavailable(store(&app, &alice, "lost?").await).await;
    let search = app
        .post(
            "/v1/memories/search",
            &alice,
            &json!({ "query": "anything" }),
        )
        .await;
    assert_store_unavailable(search).await;
    assert_store_unavailable(app.get("/v1/memories", &alice).await).await;
    assert_eq!(
        status_of(&app, "/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The process itself is fine (liveness answers), but no token is served
    // while the revocations held in Qdrant cannot be read, the embeddings
    // endpoint included: it fails closed.
    assert_eq!(status_of(&app, "/healthz").await, StatusCode::OK);
    let embed = app
        .post("/v1/embeddings", &alice, &json!({ "input": "still here" }))
        .await;
    assert_store_unavailable(embed).await;
    app.stop().await;
}

/// Relay modes.
const UP: u8 = 0;
const REFUSING: u8 = 1;
const STALLED: u8 = 2;

/// A TCP relay to Qdrant that can be cut, stalled and restored, to take
/// "Qdrant" away from Cordon without touching the real server.
struct Relay {
    port: u16,
    mode: Arc<AtomicU8>,
    cut: watch::Sender<u64>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(UP));
        let (cut, _) = watch::channel(0u64);
        let (flag, cuts) = (mode.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                match flag.load(Ordering::SeqCst) {
                    // Refusing: close at once.
                    REFUSING => continue,
                    // Stalled: hold the connection open and answer nothing.
                    STALLED => {
                        tokio::spawn(async move {
                            let _ = cut.changed().await;
                            drop(inbound);
                        });
                        continue;
                    }
                    _ => {}
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { port, mode, cut }
    }

    /// Switches mode and drops every open connection.
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn service_resumes_by_itself_when_qdrant_comes_back() {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let Some(target) = url.strip_prefix("http://") else {
        panic!("this test relays plain gRPC; QDRANT_URL must start with http://");
    };
    let target = target.trim_end_matches('/').to_owned();
    let relay = Relay::start(target).await;
    let app =
        spawn_app_with(|s| use_qdrant_at(s, format!("http://127.0.0.1:{}", relay.port))).await;
    let alice = token("acme", "alice");

    assert_eq!(status_of(&app, "/readyz").await, StatusCode::OK);
    assert_eq!(
        store(&app, &alice, "before the outage").await.status(),
        StatusCode::CREATED
    );

    relay.set(REFUSING);
    assert_store_unavailable(store(&app, &alice, "during the outage").await).await;
    // Readiness answers from a probe at most a second old.
    until_ready_is(&app, StatusCode::SERVICE_UNAVAILABLE).await;

    // A Qdrant that accepts connections and never answers: the configured
    // deadline (2 s here) turns that into 503 too, not a hung request.
    relay.set(STALLED);
    let started = std::time::Instant::now();
    assert_store_unavailable(store(&app, &alice, "while stalled").await).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    relay.set(UP);
    let mut recovered = false;
    for _ in 0..50 {
        if store(&app, &alice, "after the outage").await.status() == StatusCode::CREATED {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "writes did not resume within 10 s of Qdrant returning"
    );
    until_ready_is(&app, StatusCode::OK).await;
    let listed = app.get_json("/v1/memories", &alice).await;
    assert_eq!(
        texts(&listed["memories"]),
        ["before the outage", "after the outage"]
    );
    // Erase removes the test's collection from the shared Qdrant.
    assert_eq!(
        app.delete("/v1/memories", &alice).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_store_past_the_collection_size_cap_is_507_and_writes_nothing() {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let app = spawn_app_with(|s| {
        use_qdrant_at(s, url);
        s.store.max_collection_points = 3;
    })
    .await;
    let alice = token("acme", "alice");
    app.store_texts(&alice, &["one", "two"]).await;
    let r = app
        .post(
            "/v1/memories",
            &alice,
            &json!({ "memories": [{ "text": "three" }, { "text": "four" }] }),
        )
        .await;
    assert_error(r, StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage").await;
    assert_eq!(
        app.get_json("/v1/memories", &alice).await["memories"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        store(&app, &alice, "three").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.delete("/v1/memories", &alice).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}
