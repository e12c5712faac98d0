//! Shard rewrites: deleted text leaves the disk, the WAL stays bounded, and
//! no acknowledged write is lost to a rewrite or to a crash in the middle of one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_on, spawn_app_with, token};

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

/// Waits until no file under `dir` holds `needle`, or panics after `limit`.
async fn wait_until_gone(dir: &Path, needle: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let found = files_containing(dir, needle);
        if found.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "`{needle}` still on disk after {limit:?} in {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(app: &TestApp, token: &str) -> usize {
    let mut n = 0;
    let mut cursor = String::new();
    loop {
        let page = app
            .get_json(&format!("/v1/memories?limit=100{cursor}"), token)
            .await;
        n += page["memories"].as_array().expect("memories").len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return n,
        }
    }
}

fn shard_dirs(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("shards"))
        .expect("shards dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

fn wal_bytes(shard: &Path) -> u64 {
    std::fs::read_dir(shard.join("wal"))
        .expect("wal dir")
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn a_deleted_memory_leaves_no_text_in_any_file() {
    let app = spawn_app_with(|s| s.store.purge_after = Duration::ZERO).await;
    let alice = token("acme", "alice");
    let kept = "kept-canary-5b1f0e the boiler code is 4471";
    let gone = "gone-canary-9c2d7a the old alarm code was 1234";
    let ids = app.store_texts(&alice, &[kept, gone]).await;
    // The search proves it can see text: both are on disk before the delete.
    assert!(!files_containing(&app.data_dir, "gone-canary-9c2d7a").is_empty());

    let r = app
        .delete(&format!("/v1/memories/{}", ids[1]), &alice)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    wait_until_gone(&app.data_dir, "gone-canary-9c2d7a", Duration::from_secs(20)).await;

    assert!(!files_containing(&app.data_dir, "kept-canary-5b1f0e").is_empty());
    let kept_one = app
        .get_json(&format!("/v1/memories/{}", ids[0]), &alice)
        .await;
    assert_eq!(kept_one["text"], kept);
    assert_eq!(
        app.get(&format!("/v1/memories/{}", ids[1]), &alice)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.search_texts(&alice, "boiler code", 5).await, vec![kept]);
    app.stop().await;
}

#[tokio::test]
async fn a_shard_whose_wal_outgrows_its_bound_is_rewritten_to_its_live_size() {
    let growth = 256 * 1024;
    let app = spawn_app_with(|s| s.store.wal_growth_bytes = growth).await;
    let alice = token("acme", "alice");
    let mut ids = Vec::new();
    for round in 0..12 {
        let texts: Vec<String> = (0..16)
            .map(|i| format!("note {round}-{i}: something worth keeping"))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        ids.extend(app.store_texts(&alice, &refs).await);
    }
    // Nothing deleted yet: however large the WAL, a rewrite could not
    // shrink it, so none ran.
    let shard = shard_dirs(&app.data_dir).pop().expect("alice's shard");
    assert!(wal_bytes(&shard) > growth);
    assert!(!shard.join("cordon-rewrite.json").exists());
    // Half of them go: the WAL only grows meanwhile.
    for id in ids.iter().step_by(2) {
        let r = app.delete(&format!("/v1/memories/{id}"), &alice).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    // 96 live memories; a rewrite brings the WAL back near their size, and
    // from then on it stays under twice that plus the growth allowance.
    let start = Instant::now();
    loop {
        let baseline = std::fs::read(shard.join("cordon-rewrite.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["wal_bytes"].as_u64());
        if let Some(baseline) = baseline
            && wal_bytes(&shard) <= 2 * baseline + growth + 1024 * 1024
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no rewrite: WAL at {} bytes",
            wal_bytes(&shard)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&app, &alice).await, 96);
    app.stop().await;
}

#[tokio::test]
async fn writes_racing_rewrites_are_all_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |s| {
        s.store.purge_after = Duration::ZERO;
        s.store.wal_growth_bytes = 64 * 1024;
    })
    .await;
    let alice = token("acme", "alice");
    let mut live = Vec::new();
    let mut deleted = Vec::new();
    // Every delete schedules a rewrite at once, so rewrites run while this
    // loop keeps writing into the same shard.
    for round in 0..40 {
        let texts: Vec<String> = (0..4).map(|i| format!("race {round}-{i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids = app.store_texts(&alice, &refs).await;
        let r = app
            .delete(&format!("/v1/memories/{}", ids[0]), &alice)
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        deleted.push(ids[0].clone());
        live.extend(ids.into_iter().skip(1));
    }
    // Checked while rewrites may still run, and again after a restart.
    assert_all_kept(&app, &alice, &live, &deleted, "before the restart").await;
    app.stop().await;
    let app = spawn_app_on(dir.path(), |_| {}).await;
    assert_all_kept(&app, &alice, &live, &deleted, "after the restart").await;
    app.stop().await;
}

async fn assert_all_kept(
    app: &TestApp,
    token: &str,
    live: &[String],
    deleted: &[String],
    when: &str,
) {
    let mut lost = Vec::new();
    for (i, id) in live.iter().enumerate() {
        let r = app.get(&format!("/v1/memories/{id}"), token).await;
        if r.status() != StatusCode::OK {
            lost.push(i);
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged memories lost {when}: {lost:?} of {}",
        live.len()
    );
    for id in deleted {
        let r = app.get(&format!("/v1/memories/{id}"), token).await;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "deleted {id} came back {when}"
        );
    }
    assert_eq!(count(app, token).await, live.len(), "{when}");
}

#[tokio::test]
async fn a_rewrite_interrupted_before_or_during_its_swap_is_finished_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = token("acme", "alice");
    let app = spawn_app_on(dir.path(), |_| {}).await;
    let ids = app
        .store_texts(&alice, &["the spare key is in the shed"])
        .await;
    app.stop().await;
    let shard = shard_dirs(dir.path()).pop().expect("alice's shard");
    let name = shard
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let shards = dir.path().join("shards");
    // A crash after the old shard moved aside, before its rewrite moved in...
    std::fs::rename(&shard, shards.join(format!(".swap-{name}"))).expect("rename");
    // ...and a rewrite of another shard that never finished.
    std::fs::create_dir_all(shards.join(".rewrite-cordon_0123").join("wal")).expect("mkdir");

    let app = spawn_app_on(dir.path(), |_| {}).await;
    let memory = app
        .get_json(&format!("/v1/memories/{}", ids[0]), &alice)
        .await;
    assert_eq!(memory["text"], "the spare key is in the shed");
    let names: Vec<String> = std::fs::read_dir(&shards)
        .expect("shards")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![name], "only the live shard is left");
    app.stop().await;
}

#[tokio::test]
async fn export_streams_every_memory_in_order() {
    let app = spawn_app_with(|_| {}).await;
    let alice = token("acme", "alice");
    let mut ids = Vec::new();
    for round in 0..16 {
        let texts: Vec<String> = (0..16).map(|i| format!("export {round}-{i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        ids.extend(app.store_texts(&alice, &refs).await);
    }
    let r = app.get("/v1/memories/export", &alice).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Streamed: no length is known up front.
    assert!(r.headers().get("content-length").is_none());
    let body: Value = r.json().await.expect("a complete JSON document");
    let got: Vec<&str> = body["memories"]
        .as_array()
        .expect("memories")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(got, ids, "all 256 memories, in creation order");
    // An empty export is still a document.
    let bob = token("acme", "bob");
    let empty = app.get_json("/v1/memories/export", &bob).await;
    assert_eq!(empty, json!({ "memories": [] }));
    app.stop().await;
}
