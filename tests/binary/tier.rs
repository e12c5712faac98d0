//! `cordon tier migrate` as an operator runs it: a server refuses to start
//! over another tier's layout, a move killed with `kill -9` at any moment
//! finishes when run again, and every user then reads back exactly what they
//! stored, in the shared tier and back in the per-user one, on both engines.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{cordon, exported, mint, on_qdrant, serve_with, start_failure, store_request};

const USERS: usize = 12;

/// A `cordon` command for the deployment under test, in `tier`.
type Deployment<'a> = &'a dyn Fn(&str) -> Command;

/// Each user's export (text, metadata), sorted, after storing three memories each.
async fn seed(deployment: Deployment<'_>, tokens: &[String]) -> Vec<Vec<(String, Value)>> {
    let client = reqwest::Client::new();
    let server = serve_with(deployment("per-user"));
    let mut held = Vec::new();
    for (n, token) in tokens.iter().enumerate() {
        let memories: Vec<Value> = (0..3)
            .map(|i| json!({ "text": format!("user {n} note {i}"), "metadata": { "i": i } }))
            .collect();
        let r = store_request(&client, &server, token, &json!({ "memories": memories }))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), StatusCode::CREATED);
        held.push(read(&client, &server, token).await);
    }
    held
}

async fn read(
    client: &reqwest::Client,
    server: &super::Server,
    token: &str,
) -> Vec<(String, Value)> {
    exported(client, server, token)
        .await
        .iter()
        .map(|m| {
            (
                m["text"].as_str().expect("text").to_owned(),
                m["metadata"].clone(),
            )
        })
        .collect()
}

/// Runs `cordon tier migrate` in `tier`, killed with SIGKILL after each of
/// `cuts` (ms), then once to the end; returns what the last run printed.
fn migrate(deployment: Deployment<'_>, tier: &str, cuts: &[u64]) -> String {
    for ms in cuts {
        let mut child = deployment(tier)
            .args(["tier", "migrate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cordon tier migrate starts");
        std::thread::sleep(Duration::from_millis(*ms));
        let _ = child.kill();
        child.wait().expect("reaped");
    }
    let out = deployment(tier)
        .args(["tier", "migrate"])
        .output()
        .expect("cordon tier migrate runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn assert_everyone_reads(
    deployment: Deployment<'_>,
    tier: &str,
    tokens: &[String],
    held: &[Vec<(String, Value)>],
) {
    let client = reqwest::Client::new();
    let server = serve_with(deployment(tier));
    for (n, token) in tokens.iter().enumerate() {
        assert_eq!(
            read(&client, &server, token).await,
            held[n],
            "user {n} in the {tier} tier"
        );
    }
    let r = client
        .post(format!("{}/v1/memories/search", server.base))
        .bearer_auth(&tokens[0])
        .json(&json!({ "query": "user 0 note 1", "limit": 1 }))
        .send()
        .await
        .expect("sent");
    let found: Value = r.json().await.expect("json");
    assert_eq!(found["results"][0]["text"], "user 0 note 1", "{found}");
}

async fn a_move_between_tiers_survives_kill_9_and_keeps_every_memory(
    deployment: Deployment<'_>,
    data_dir: &Path,
) {
    let tokens: Vec<String> = (0..USERS)
        .map(|n| mint(data_dir, "acme", &format!("user-{n}")))
        .collect();
    let held = seed(deployment, &tokens).await;

    let err = start_failure(&mut deployment("shared"));
    assert!(err.contains("cordon tier migrate"), "{err}");

    // A cut may land after a run's work and before its message, so the
    // proof is the layout: a server starts only once nothing is left in the
    // old one, and every user then reads back all of theirs.
    migrate(deployment, "shared", &[150, 300, 450]);
    assert_everyone_reads(deployment, "shared", &tokens, &held).await;
    let again = migrate(deployment, "shared", &[]);
    assert!(again.contains("nothing to move"), "{again}");

    let err = start_failure(&mut deployment("per-user"));
    assert!(err.contains("cordon tier migrate"), "{err}");
    migrate(deployment, "per-user", &[200, 400]);
    assert_everyone_reads(deployment, "per-user", &tokens, &held).await;
}

#[tokio::test]
async fn on_the_embedded_engine_a_move_between_tiers_survives_kill_9_and_keeps_every_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_owned();
    let deployment = move |tier: &str| {
        let mut command = cordon(&path);
        command.env("CORDON_TIER", tier);
        command
    };
    a_move_between_tiers_survives_kill_9_and_keeps_every_memory(&deployment, dir.path()).await;
    // A user still moving out of the shared tier would be copied half done.
    let registry = dir.path().join("placements.json");
    std::fs::write(
        &registry,
        format!(r#"[{{"owner":"{}","phase":"copying"}}]"#, "ab".repeat(32)),
    )
    .expect("written");
    let out = deployment("shared")
        .args(["tier", "migrate"])
        .output()
        .expect("cordon tier migrate runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 users are moving"), "{err}");
    std::fs::remove_file(&registry).expect("removed");
    let shards: Vec<String> = std::fs::read_dir(dir.path().join("shards"))
        .expect("shards")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("cordon_"))
        .collect();
    assert!(
        shards.iter().all(|name| name.len() == "cordon_".len() + 32),
        "{shards:?}"
    );
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn on_qdrant_a_move_between_tiers_survives_kill_9_and_keeps_every_memory() {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = format!("tier_{}_", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let path = dir.path().to_owned();
    let deployment = move |tier: &str| {
        let mut command = cordon(&path);
        on_qdrant(&mut command, &url, &prefix);
        command.env("CORDON_TIER", tier);
        command
    };
    a_move_between_tiers_survives_kill_9_and_keeps_every_memory(&deployment, dir.path()).await;
}

#[tokio::test]
async fn sealed_memories_move_between_tiers_still_sealed_and_readable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_owned();
    let deployment = move |tier: &str| {
        let mut command = cordon(&path);
        command
            .env("CORDON_TIER", tier)
            .env("CORDON_KEK", "5e".repeat(32));
        command
    };
    a_move_between_tiers_survives_kill_9_and_keeps_every_memory(&deployment, dir.path()).await;
    assert!(
        !super::keys::holds(&dir.path().join("shards"), b"user 3 note 1"),
        "a moved memory's text is in the clear"
    );
}
