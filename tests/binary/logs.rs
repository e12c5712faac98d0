//! What the server's own log holds at its most verbose: `RUST_LOG=trace`
//! over real requests, searched byte for byte for what must never be
//! logged.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{SECRET, Server, cordon, mint, on_qdrant, serve_with, store_request, terminate};

const ADMIN_KEY: &str = "logs-test-admin-key-0123456789abcdefghij";
const SERVER_SECRET: &str = "logs-test-server-secret-0123456789abcdef";
const TEXT: &str = "the locker code is zebra-quartz-7719 and nobody may know";

/// Runs every kind of request once, as alice, an admin and a stranger.
async fn every_kind_of_request(server: &Server, alice: &str) {
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base);
    let body = json!({ "text": TEXT, "metadata": { "room": "b" } });
    let stored = store_request(&client, server, alice, &body)
        .send()
        .await
        .expect("answered");
    assert_eq!(stored.status(), StatusCode::CREATED);
    let ids: Value = stored.json().await.expect("json");
    let id = ids["ids"][0].as_str().expect("id").to_owned();
    let search = client
        .post(url("/v1/memories/search"))
        .bearer_auth(alice)
        .json(&json!({ "query": "locker code", "filter": { "room": "b" } }))
        .send()
        .await
        .expect("answered");
    assert_eq!(search.status(), StatusCode::OK);
    for path in [
        format!("/v1/memories/{id}"),
        "/v1/memories".into(),
        "/v1/memories/export".into(),
    ] {
        let r = client
            .get(url(&path))
            .bearer_auth(alice)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.bytes().await.expect("body");
    }
    let mcp = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "recall", "arguments": { "query": "locker code" } } });
    let r = client
        .post(url("/mcp"))
        .bearer_auth(alice)
        .header("accept", "application/json, text/event-stream")
        .json(&mcp)
        .send()
        .await
        .expect("answered");
    r.bytes().await.expect("body");
    let r = client
        .get(url("/v1/memories"))
        .bearer_auth(format!("{alice}x"))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for (path, body) in [
        (
            "/admin/v1/users/status",
            json!({ "tenant": "acme", "sub": "alice" }),
        ),
        (
            "/admin/v1/users/revoke",
            json!({ "tenant": "acme", "sub": "alice" }),
        ),
    ] {
        let r = client
            .post(url(path))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = client
        .delete(url("/v1/memories"))
        .bearer_auth(alice)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "revoked by now");
}

/// Asserts that `log` holds none of the run's secrets, its token, the
/// full name of alice's collection, or her memory's text.
fn assert_clean(log: &str, alice: &str, prefix: &str) {
    let owner = OwnerHash::derive(&Secret::new(SERVER_SECRET.as_bytes()), "acme", "alice");
    let collection = owner.collection_name(prefix, 32);
    assert!(
        log.contains(" TRACE ") && log.contains("qdrant"),
        "the run logged at trace, the engine's lines included: {:.2000}",
        log
    );
    for (what, needle) in [
        ("alice's token", alice),
        (
            "the token's signature",
            alice.rsplit('.').next().unwrap_or(alice),
        ),
        ("the admin key", ADMIN_KEY),
        ("the JWT secret", SECRET),
        ("the server secret", SERVER_SECRET),
        ("the collection name", collection.as_str()),
        ("the full owner hash", owner.to_hex().as_str()),
        ("the memory's text", TEXT),
        ("a piece of the text", "zebra-quartz"),
    ] {
        assert!(
            !log.contains(needle),
            "the trace log holds {what}: {:.300}",
            log.lines().find(|l| l.contains(needle)).unwrap_or_default()
        );
    }
}

fn traced(data: &Path) -> Command {
    let mut command = cordon(data);
    command
        .env("RUST_LOG", "trace")
        .env("CORDON_SERVER_SECRET", SERVER_SECRET)
        .env("CORDON_ADMIN_KEY", ADMIN_KEY);
    command
}

async fn run_and_stop(command: Command, data: &Path) -> (String, String) {
    let server = serve_with(command);
    let alice = mint(data, "acme", "alice");
    every_kind_of_request(&server, &alice).await;
    terminate(&server);
    for _ in 0..100 {
        if server
            .log
            .lock()
            .expect("log")
            .contains("shutdown complete")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log.lock().expect("log").clone();
    (log, alice)
}

#[tokio::test]
async fn a_trace_level_log_of_real_requests_holds_no_token_key_or_collection_name() {
    let data = tempfile::tempdir().expect("temp dir");
    let (log, alice) = run_and_stop(traced(data.path()), data.path()).await;
    assert_clean(&log, &alice, cordon::owner::COLLECTION_PREFIX);
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_trace_level_log_on_the_qdrant_engine_holds_no_token_key_or_collection_name() {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let data = tempfile::tempdir().expect("temp dir");
    let prefix = format!(
        "cordon_logs_{}_",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut command = traced(data.path());
    on_qdrant(&mut command, &url, &prefix);
    let (log, alice) = run_and_stop(command, data.path()).await;
    assert_clean(&log, &alice, &prefix);
}
