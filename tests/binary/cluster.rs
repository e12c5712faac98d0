//! Cordon over a real three-node Qdrant cluster (`scripts/qdrant-cluster`),
//! as in production: two Cordon processes, collections kept on two nodes,
//! and one node killed with `kill -9` under a load of stores and searches.
//!
//! Runs when the Qdrant binary exists (`QDRANT_BIN`, default
//! `/opt/qdrant/qdrant`); skips with the reason otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Server, cordon, mint, on_qdrant, serve_with};

/// A three-node cluster on loopback, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    /// gRPC URL of each node, in node order.
    urls: Vec<String>,
}

impl Cluster {
    /// Starts one; `None` (with the reason) when there is no Qdrant binary.
    /// A cluster that does not start is a failure, not a skip.
    fn start() -> Option<Self> {
        let bin = std::env::var("QDRANT_BIN").unwrap_or_else(|_| "/opt/qdrant/qdrant".into());
        if !Path::new(&bin).is_file() {
            eprintln!("skipped: no Qdrant binary at {bin} (set QDRANT_BIN)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        // Ports apart from other runs' clusters, below the kernel's
        // ephemeral range (32768 and up) and away from the CI's Qdrant.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4;
        let base = 20_000 + ((std::process::id() % 60) * 4 + nth) * 40;
        let out = Command::new(script())
            .args(["start"])
            .arg(dir.path())
            .arg(base.to_string())
            .env("QDRANT_BIN", &bin)
            .output()
            .expect("the cluster script runs");
        assert!(
            out.status.success(),
            "the cluster did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let urls = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        Some(Self { dir, urls })
    }

    /// Runs `scripts/qdrant-cluster <verb> DIR <node>`.
    fn node(&self, verb: &str, node: usize) {
        let status = Command::new(script())
            .arg(verb)
            .arg(self.dir.path())
            .arg(node.to_string())
            .status()
            .expect("the cluster script runs");
        assert!(status.success(), "{verb} node {node}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/qdrant-cluster")
}

/// What the load saw: every status, and every acknowledged store.
#[derive(Default)]
struct Seen {
    statuses: Vec<(Instant, u16)>,
    stored: Vec<(usize, String, String)>,
    leaks: Vec<String>,
}

/// One user's load until `until`: a store, then a search, through the two
/// servers in turn. Every text carries the user's canary.
async fn load(
    user: usize,
    token: String,
    servers: Arc<Vec<String>>,
    until: Instant,
    seen: Arc<Mutex<Seen>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let canary = format!("[user-{user}]");
    let mut n = 0;
    while Instant::now() < until {
        let base = &servers[n % servers.len()];
        let text = format!("{canary} note {n} about the garden");
        let stored = client
            .post(format!("{base}/v1/memories"))
            .bearer_auth(&token)
            .json(&json!({ "text": text }))
            .send()
            .await;
        let status = stored.as_ref().map_or(0, |r| r.status().as_u16());
        if status == 201 {
            let body: Value = stored.expect("answered").json().await.expect("JSON");
            let id = body["ids"][0].as_str().expect("an id").to_owned();
            seen.lock().stored.push((user, id, text));
        }
        seen.lock().statuses.push((Instant::now(), status));
        let found = client
            .post(format!("{base}/v1/memories/search"))
            .bearer_auth(&token)
            .json(&json!({ "query": "a note about the garden", "limit": 20 }))
            .send()
            .await;
        let status = found.as_ref().map_or(0, |r| r.status().as_u16());
        if status == 200 {
            let body: Value = found.expect("answered").json().await.expect("JSON");
            for hit in body["results"].as_array().expect("results") {
                let text = hit["text"].as_str().unwrap_or_default();
                if !text.starts_with(&canary) {
                    seen.lock().leaks.push(text.to_owned());
                }
            }
        }
        seen.lock().statuses.push((Instant::now(), status));
        n += 1;
    }
}

#[tokio::test]
async fn a_node_killed_under_load_loses_no_acknowledged_write_and_leaks_nothing() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let prefix = format!("cl{}_", std::process::id());
    let replica = |url: &str| -> Server {
        let mut command = cordon(data.path());
        on_qdrant(&mut command, url, &prefix);
        command
            .env("CORDON_QDRANT_REPLICATION_FACTOR", "2")
            .env("CORDON_QDRANT_WRITE_CONSISTENCY", "1");
        serve_with(command)
    };
    // Two Cordon processes, each knowing every node and starting on its own
    // (node 1 for the first, node 2 for the second); node 1 is the one killed.
    let urls = &cluster.urls;
    let a = replica(&format!("{},{},{}", urls[0], urls[1], urls[2]));
    let b = replica(&format!("{},{},{}", urls[1], urls[2], urls[0]));
    let servers = Arc::new(vec![a.base.clone(), b.base.clone()]);
    let users: Vec<String> = (0..12)
        .map(|u| mint(data.path(), "acme", &format!("cluster-user-{u}")))
        .collect();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let until = Instant::now() + Duration::from_secs(24);
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(u, token)| {
            tokio::spawn(load(u, token.clone(), servers.clone(), until, seen.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let killed_at = Instant::now();
    cluster.node("kill", 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let back_at = Instant::now();
    cluster.node("restart", 1);
    for task in tasks {
        task.await.expect("load task");
    }
    let seen = std::mem::take(&mut *seen.lock());
    assert_eq!(
        seen.leaks,
        Vec::<String>::new(),
        "foreign memories returned"
    );
    let odd: Vec<u16> = seen
        .statuses
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| !(200..300).contains(s) && *s != 503)
        .collect();
    assert_eq!(odd, Vec::<u16>::new(), "answers other than 2xx or 503");
    let during: Vec<u16> = seen
        .statuses
        .iter()
        .filter(|(at, _)| *at >= killed_at && *at < back_at)
        .map(|(_, s)| *s)
        .collect();
    let served = during.iter().filter(|s| (200..300).contains(*s)).count();
    let share = served as f64 / during.len().max(1) as f64;
    eprintln!(
        "node 1 down: {served} of {} requests served ({:.1}%); {} stores acknowledged in all",
        during.len(),
        share * 100.0,
        seen.stored.len()
    );
    assert!(during.len() > 50, "the load ran while the node was down");
    assert!(share >= 0.98, "{served} of {} served", during.len());

    // Every acknowledged store reads back, through either server.
    let client = reqwest::Client::new();
    let mut lost = Vec::new();
    for (i, (user, id, text)) in seen.stored.iter().enumerate() {
        let base = &servers[i % servers.len()];
        let got = client
            .get(format!("{base}/v1/memories/{id}"))
            .bearer_auth(&users[*user])
            .send()
            .await
            .expect("answered");
        if got.status() != StatusCode::OK {
            lost.push((id.clone(), got.status()));
            continue;
        }
        let body: Value = got.json().await.expect("JSON");
        assert_eq!(body["text"], text.as_str());
    }
    assert_eq!(lost, Vec::new(), "acknowledged writes lost");
}

#[tokio::test]
async fn keyed_writes_racing_through_two_nodes_have_one_winner_on_every_copy() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let prefix = format!("race{}_", std::process::id());
    let replica = |url: &str| -> Server {
        let mut command = cordon(data.path());
        on_qdrant(&mut command, url, &prefix);
        command.env("CORDON_QDRANT_REPLICATION_FACTOR", "2");
        serve_with(command)
    };
    let urls = &cluster.urls;
    let a = replica(&format!("{},{},{}", urls[0], urls[1], urls[2]));
    let b = replica(&format!("{},{},{}", urls[1], urls[2], urls[0]));
    let alice = mint(data.path(), "acme", "alice");
    let client = reqwest::Client::new();
    let store = |base: &str, key: &str, text: &str| {
        client
            .post(format!("{base}/v1/memories"))
            .bearer_auth(&alice)
            .header("Idempotency-Key", key)
            .json(&json!({ "text": text }))
            .send()
    };
    let mut both = Vec::new();
    let mut split = Vec::new();
    for round in 0..30 {
        let key = format!("race-{round}");
        let (ra, rb) = tokio::join!(
            store(&a.base, &key, &format!("from a, round {round}")),
            store(&b.base, &key, &format!("from b, round {round}"))
        );
        let (ra, rb) = (ra.expect("answered"), rb.expect("answered"));
        if ra.status() == StatusCode::CREATED && rb.status() == StatusCode::CREATED {
            both.push(round);
        }
        let winner = if ra.status() == StatusCode::CREATED {
            ra
        } else {
            rb
        };
        if winner.status() != StatusCode::CREATED {
            continue;
        }
        let body: Value = winner.json().await.expect("JSON");
        let id = body["ids"][0].as_str().expect("an id").to_owned();
        // Each server reads from its own node first: both must see one text.
        let mut texts = Vec::new();
        for base in [&a.base, &b.base] {
            let got: Value = client
                .get(format!("{base}/v1/memories/{id}"))
                .bearer_auth(&alice)
                .send()
                .await
                .expect("answered")
                .json()
                .await
                .expect("JSON");
            texts.push(got["text"].as_str().unwrap_or_default().to_owned());
        }
        if texts[0] != texts[1] {
            split.push((round, texts));
        }
    }
    assert_eq!(
        both,
        Vec::<i32>::new(),
        "rounds where both attempts got 201"
    );
    assert_eq!(
        split,
        Vec::<(i32, Vec<String>)>::new(),
        "copies that disagree"
    );
}

#[tokio::test]
async fn past_its_collections_per_node_a_cluster_refuses_new_users_with_507_and_serves_the_others()
{
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let prefix = format!("cap{}_", std::process::id());
    let mut command = cordon(data.path());
    let urls = &cluster.urls;
    on_qdrant(&mut command, &urls.join(","), &prefix);
    // Three nodes, one copy each, three collections a node: nine in all,
    // the access log's among them.
    command.env("CORDON_QDRANT_MAX_COLLECTIONS_PER_NODE", "3");
    let server = serve_with(command);
    let client = reqwest::Client::new();
    let store = |token: String| {
        client
            .post(format!("{}/v1/memories", server.base))
            .bearer_auth(token)
            .json(&json!({ "text": "a first memory" }))
            .send()
    };
    let tokens: Vec<String> = (0..12)
        .map(|u| mint(data.path(), "acme", &format!("capped-user-{u}")))
        .collect();
    // All twelve first stores at once: none may pass the bound because the
    // others' collections did not exist yet when it was checked.
    let responses = futures::future::join_all(tokens.iter().map(|t| store(t.clone()))).await;
    let mut admitted = Vec::new();
    let mut refused = None;
    for (user, response) in responses.into_iter().enumerate() {
        let response = response.expect("answered");
        if response.status() == StatusCode::CREATED {
            admitted.push(user);
        } else {
            refused = Some(response);
        }
    }
    let refused = refused.expect("a user past the bound was refused");
    assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body: Value = refused.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "collection_limit");
    assert!(
        (1..=8).contains(&admitted.len()),
        "{} users had their collection made under a bound of 9",
        admitted.len()
    );
    let qdrant = qdrant_client::Qdrant::from_url(&urls[1])
        .skip_compatibility_check()
        .build()
        .expect("a client");
    let held = qdrant
        .list_collections()
        .await
        .expect("the cluster answers")
        .collections
        .len();
    assert!(
        held <= 9,
        "{held} collections under a bound of 3 on each of 3 nodes"
    );
    // Users with a collection are served as before.
    let again = store(tokens[admitted[0]].clone()).await.expect("answered");
    assert_eq!(again.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_cordon_started_while_its_first_node_is_down_serves_from_the_others() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.node("kill", 1);
    let data = tempfile::tempdir().expect("temp dir");
    let prefix = format!("down{}_", std::process::id());
    let mut command = cordon(data.path());
    on_qdrant(&mut command, &cluster.urls.join(","), &prefix);
    command.env("CORDON_QDRANT_REPLICATION_FACTOR", "2");
    let server = serve_with(command);
    let alice = mint(data.path(), "acme", "alice");
    let client = reqwest::Client::new();
    // The start-up checks move past the dead node within a few attempts.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = client
            .post(format!("{}/v1/memories", server.base))
            .bearer_auth(&alice)
            .json(&json!({ "text": "stored with node 1 down" }))
            .send()
            .await
            .expect("answered")
            .status();
        if status == StatusCode::CREATED || Instant::now() > deadline {
            break status;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status, StatusCode::CREATED, "never served with node 1 down");
}
