//! `GET /v1/memories/export` while it streams: a consistent view, the
//! token's standing re-checked, and the request limits held for as long as
//! the body is open.
//!
//! The exports here are read by a raw HTTP/1.0 client whose socket has a
//! small receive buffer, and are about 12 MB, more than the kernel's send
//! buffer (4 MiB at most by default) and the server's own buffering hold,
//! so that the server waits on the socket until the test reads on: what
//! happens meanwhile (a store, a revocation) is then known to happen while
//! the export is open.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use cordon::settings::Settings;

use crate::helpers::{TestApp, assert_error, spawn_app_with, token};

/// Memories each test user holds: about 12 MB of export.
const MEMORIES: usize = 1500;

/// A memory text of about 7,900 bytes that embeds fast: the long run is
/// one unknown word to the tokenizer.
fn filler(i: usize) -> String {
    format!("export filler {i} {}", "z".repeat(7900))
}

/// A test server whose texts may be as long as [`filler`]'s.
async fn app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(|s| {
        s.limits.max_text_bytes = 8192;
        configure(s);
    })
    .await
}

/// Stores [`MEMORIES`] filler memories for `bearer`.
async fn fill(app: &TestApp, bearer: &str) {
    for start in (0..MEMORIES).step_by(16) {
        let memories: Vec<Value> = (start..(start + 16).min(MEMORIES))
            .map(|i| json!({ "text": filler(i) }))
            .collect();
        let r = app
            .post("/v1/memories", bearer, &json!({ "memories": memories }))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
}

/// An export whose body the test has not read yet.
struct OpenExport {
    stream: TcpStream,
    /// The status line.
    status: String,
    /// Body bytes read with the headers.
    body: Vec<u8>,
}

/// Starts an export over a socket with a 4 KiB receive buffer and reads its
/// status line and headers only.
async fn open_export(app: &TestApp, bearer: &str) -> OpenExport {
    let addr = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let mut stream = socket.connect(addr).await.expect("connects");
    let request = format!(
        "GET /v1/memories/export HTTP/1.0\r\nHost: cordon\r\nAuthorization: Bearer {bearer}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("headers within 30 s")
            .expect("reads");
        assert!(n > 0, "connection closed before the headers ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ASCII headers");
    OpenExport {
        stream,
        status: head.lines().next().unwrap_or_default().to_owned(),
        body: Vec::new(),
    }
}

impl OpenExport {
    /// Reads the rest of the body, to the connection's end.
    async fn finish(mut self) -> Vec<u8> {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.stream.read_to_end(&mut self.body),
        )
        .await
        .expect("the export ends within 60 s")
        .expect("reads");
        self.body
    }
}

/// Lets the server run into the full socket.
async fn let_it_block() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_export_delivers_nothing_stored_after_it_began() {
    let app = app_with(|_| {}).await;
    let alice = token("acme", "alice");
    fill(&app, &alice).await;
    let export = open_export(&app, &alice).await;
    assert!(export.status.contains(" 200 "), "{}", export.status);
    let_it_block().await;
    app.store_texts(&alice, &["stored while the export ran"])
        .await;

    let body = export.finish().await;
    let parsed: Value = serde_json::from_slice(&body).expect("a complete export is valid JSON");
    let memories = parsed["memories"].as_array().expect("memories");
    assert_eq!(
        memories.len(),
        MEMORIES,
        "every memory from before it began"
    );
    assert!(
        memories
            .iter()
            .all(|m| m["text"] != "stored while the export ran"),
        "a memory stored after the export began reached it"
    );
}

#[tokio::test]
async fn an_export_opened_before_a_revocation_delivers_nothing_stored_after_it() {
    let app = app_with(|_| {}).await;
    let mut claims = crate::helpers::claims("acme", "alice");
    claims["iat"] = json!(crate::helpers::now() - 5);
    let old = crate::helpers::hs256(&claims);
    fill(&app, &old).await;
    let export = open_export(&app, &old).await;
    assert!(export.status.contains(" 200 "), "{}", export.status);
    let_it_block().await;

    let r = app
        .admin(
            "/admin/v1/users/revoke",
            &json!({ "tenant": "acme", "sub": "alice" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut claims = crate::helpers::claims("acme", "alice");
    claims["iat"] = json!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64()
    );
    let fresh = crate::helpers::hs256(&claims);
    app.store_texts(&fresh, &["stored after the revocation"])
        .await;

    let body = export.finish().await;
    assert!(
        memchr::memmem::find(&body, b"stored after the revocation").is_none(),
        "a memory stored after the revocation reached the revoked token's export"
    );
    assert!(
        serde_json::from_slice::<Value>(&body).is_err(),
        "the export went on after its token was revoked ({} bytes)",
        body.len()
    );
}

#[tokio::test]
async fn unread_exports_hold_their_users_slots_in_flight_and_other_users_are_served() {
    let app = app_with(|s| {
        s.access.user_limits.max_in_flight = 2;
        s.access.user_limits.wait = Duration::from_millis(100);
    })
    .await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    fill(&app, &alice).await;
    let first = open_export(&app, &alice).await;
    let second = open_export(&app, &alice).await;
    let_it_block().await;

    let r = app.get("/v1/memories", &alice).await;
    let message = assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(message.contains("max_in_flight_per_user"), "{message}");
    assert_eq!(app.get("/v1/memories", &bob).await.status(), StatusCode::OK);

    // Read to the end, the exports give their slots back.
    for export in [first, second] {
        let body = export.finish().await;
        serde_json::from_slice::<Value>(&body).expect("complete");
    }
    assert_eq!(
        app.get("/v1/memories", &alice).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unread_exports_count_against_the_global_cap_in_flight() {
    let app = app_with(|s| s.limits.max_in_flight = 2).await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    fill(&app, &alice).await;
    let _first = open_export(&app, &alice).await;
    let _second = open_export(&app, &alice).await;
    let_it_block().await;

    assert_error(
        app.get("/v1/memories", &bob).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    )
    .await;
}

#[tokio::test]
async fn an_export_nobody_reads_is_cut_off_after_the_stall_limit_and_frees_its_slot() {
    let app = app_with(|s| {
        s.connections.stall = Duration::from_secs(2);
        s.access.user_limits.max_in_flight = 1;
        s.access.user_limits.wait = Duration::from_millis(100);
    })
    .await;
    let alice = token("acme", "alice");
    fill(&app, &alice).await;
    let export = open_export(&app, &alice).await;
    let_it_block().await;
    assert_error(
        app.get("/v1/memories", &alice).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.get("/v1/memories", &alice).await.status(),
        StatusCode::OK,
        "the stalled export gave its slot back"
    );
    let body = export.finish().await;
    assert!(
        serde_json::from_slice::<Value>(&body).is_err(),
        "a cut-off export is no valid JSON ({} bytes)",
        body.len()
    );
}

#[tokio::test]
async fn an_export_past_the_stream_time_limit_is_cut_short() {
    let app = app_with(|s| {
        s.limits.request_timeout = Duration::from_secs(1);
        s.limits.stream_timeout = Duration::from_secs(2);
    })
    .await;
    let alice = token("acme", "alice");
    fill(&app, &alice).await;
    let mut export = open_export(&app, &alice).await;
    // A reader that keeps reading, too slowly to finish in time: it never
    // stalls, so only the total limit can end it.
    let mut chunk = vec![0u8; 64 * 1024];
    let started = std::time::Instant::now();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), export.stream.read(&mut chunk))
            .await
            .expect("the server ends the body")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        export.body.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        export.body.len() < 12_000_000,
        "the whole export went out ({} bytes)",
        export.body.len()
    );
    assert!(serde_json::from_slice::<Value>(&export.body).is_err());
}
