//! Memories outlive the process that stored them.

use reqwest::StatusCode;

use cordon::app::Application;

use crate::helpers::{settings, spawn_app_on, token};

#[tokio::test]
async fn memories_survive_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = token("acme", "alice");
    let bob = token("acme", "bob");

    let app = spawn_app_on(dir.path(), |_| {}).await;
    let ids = app
        .store_texts(&alice, &["the spare key is under the blue flowerpot"])
        .await;
    app.store_texts(&bob, &["bob's locker code is 7731"]).await;
    app.stop().await;

    let app = spawn_app_on(dir.path(), |_| {}).await;
    let found = app.search_texts(&alice, "where is the spare key", 5).await;
    assert_eq!(found, vec!["the spare key is under the blue flowerpot"]);
    assert_eq!(
        app.get(&format!("/v1/memories/{}", ids[0]), &alice)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.search_texts(&bob, "locker", 5).await,
        vec!["bob's locker code is 7731"]
    );
    // Writes keep working on the reopened shards.
    app.store_texts(&alice, &["a second note after the restart"])
        .await;
    assert_eq!(app.search_texts(&alice, "note", 5).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_small_shard_cache_evicts_and_reopens_without_losing_data() {
    // Two open shards at most for eight users: every round trip reopens.
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |s| s.store.max_open_shards = 2).await;
    for i in 0..8 {
        app.store_texts(
            &token("acme", &format!("u{i}")),
            &[&format!("note of u{i}")],
        )
        .await;
    }
    for i in 0..8 {
        let found = app
            .search_texts(&token("acme", &format!("u{i}")), "note", 5)
            .await;
        assert_eq!(found, vec![format!("note of u{i}")]);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |_| {}).await;
    let second = Application::build(settings(dir.path())).await;
    let err = second
        .err()
        .expect("the second server must not start")
        .to_string();
    assert!(err.contains("in use by another cordon process"), "{err}");
    app.stop().await;
    // Once the first has stopped, the directory is free again.
    let again = spawn_app_on(dir.path(), |_| {}).await;
    again.stop().await;
}
