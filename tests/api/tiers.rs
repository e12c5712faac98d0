//! The shared tier with promotion, from outside: a user past the threshold
//! moves to a shard directory of their own while their neighbours stay shared,
//! every read answers the same before and after, a restart serves the moved
//! user (the start-up layout check accounts for them), and an erase removes
//! them from everywhere: on the embedded engine, and on Qdrant with two
//! replicas serving the user while one of them moves them.

use std::time::Duration;

use cordon::settings::{Settings, Tier};

use crate::helpers::{TestApp, owner_of, spawn_app_on, texts, token};

/// The data directory, where the test sees which shards hold whom.
struct Storage(std::path::PathBuf);

impl Storage {
    /// Whether a shard directory named `name` exists.
    async fn has(&self, name: &str) -> bool {
        self.0.join("shards").join(name).exists()
    }

    fn prefix(&self) -> &str {
        cordon::owner::COLLECTION_PREFIX
    }
}

fn shared_tier(s: &mut Settings) {
    s.store.tier = Tier::Shared;
    s.store.name_hex_chars = 2;
    s.store.promote_after = 5;
}

async fn listed(app: &TestApp, bearer: &str) -> Vec<String> {
    let mut all = texts(&app.get_json("/v1/memories?limit=100", bearer).await["memories"]);
    all.sort();
    all
}

async fn promotion_moves_a_large_user_and_keeps_every_read_the_same(
    storage: Storage,
    data_dir: &std::path::Path,
    configure: impl Fn(&mut Settings) + Clone,
) {
    let app = spawn_app_on(data_dir, configure.clone()).await;
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    let mut mine: Vec<String> = (0..8).map(|i| format!("alice keeps note {i}")).collect();
    let refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    app.store_texts(&alice, &refs).await;
    app.store_texts(&bob, &["bob's only note"]).await;
    mine.sort();
    let own = owner_of("acme", "alice").collection_name(storage.prefix(), 32);
    let bobs_own = owner_of("acme", "bob").collection_name(storage.prefix(), 32);
    // The move runs in the background: until it ends, reads answer as ever.
    let mut moved = false;
    for _ in 0..600 {
        assert_eq!(listed(&app, &alice).await, mine);
        if storage.has(&own).await && promoted(&app).await {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "alice was not moved to a collection of her own");
    assert!(
        !storage.has(&bobs_own).await,
        "bob, under the threshold, was moved"
    );
    assert_eq!(listed(&app, &bob).await, ["bob's only note"]);
    assert_eq!(
        app.search_texts(&alice, "alice keeps note 3", 1).await,
        ["alice keeps note 3"]
    );
    app.stop().await;

    let app = spawn_app_on(data_dir, configure).await;
    assert_eq!(listed(&app, &alice).await, mine, "after a restart");
    assert_eq!(
        app.delete("/v1/memories", &alice).await.status(),
        reqwest::StatusCode::OK
    );
    assert!(listed(&app, &alice).await.is_empty());
    assert!(
        !storage.has(&own).await,
        "the erase left alice's own collection"
    );
    assert_eq!(listed(&app, &bob).await, ["bob's only note"]);
    app.stop().await;
}

/// The texts `bearer` lists, sorted; a failure shows the server's answer.
async fn listed_ok(app: &TestApp, bearer: &str, round: i32) -> Vec<String> {
    let r = app.get("/v1/memories?limit=100", bearer).await;
    let status = r.status();
    let body = r.text().await.expect("a body");
    assert_eq!(status, reqwest::StatusCode::OK, "round {round}: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut all = texts(&body["memories"]);
    all.sort();
    all
}

/// Whether the server counts a finished move (`cordon_promotions_total`).
async fn promoted(app: &TestApp) -> bool {
    app.metrics()
        .await
        .lines()
        .any(|line| line.starts_with("cordon_promotions_total ") && !line.ends_with(" 0"))
}

#[tokio::test]
async fn on_the_embedded_engine_a_large_user_moves_out_of_the_shared_tier_online() {
    let dir = tempfile::tempdir().expect("temp dir");
    promotion_moves_a_large_user_and_keeps_every_read_the_same(
        Storage(dir.path().to_owned()),
        dir.path(),
        shared_tier,
    )
    .await;
}

#[tokio::test]
async fn sealed_memories_move_out_of_the_shared_tier_and_still_open_under_their_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let configure = |s: &mut Settings| {
        shared_tier(s);
        crate::helpers::seal_with(s, &"7a".repeat(32), None);
    };
    promotion_moves_a_large_user_and_keeps_every_read_the_same(
        Storage(dir.path().to_owned()),
        dir.path(),
        configure,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn on_qdrant_a_large_user_moves_while_two_replicas_serve_them() {
    // Each phase change is followed by a wait of 16 s (a view 5 s old, a
    // request cut off at 10 s, one refresh), so the move takes about a minute.
    let (a, b, prefix) = crate::replicas::replicas_under_prefix(shared_tier).await;
    let qdrant = qdrant_client::Qdrant::from_url(&std::env::var("QDRANT_URL").expect("QDRANT_URL"))
        .skip_compatibility_check()
        .build()
        .expect("client builds");
    let (alice, bob) = (token("acme", "alice"), token("acme", "bob"));
    let mut mine: Vec<String> = (0..8).map(|i| format!("alice keeps note {i}")).collect();
    let refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    a.store_texts(&alice, &refs).await;
    b.store_texts(&bob, &["bob's only note"]).await;
    mine.sort();
    let own = owner_of("acme", "alice").collection_name(&prefix, 32);
    let mut moved = false;
    for round in 0..1_500i32 {
        // Each replica routes by its own reading of the registry.
        let replica = if round % 2 == 0 { &a } else { &b };
        assert_eq!(
            listed_ok(replica, &alice, round).await,
            mine,
            "round {round}"
        );
        if promoted(&a).await || promoted(&b).await {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "alice was not moved to a collection of her own");
    assert!(
        qdrant
            .collection_exists(&own)
            .await
            .expect("Qdrant answers"),
        "alice has no collection of her own"
    );
    let bobs_own = owner_of("acme", "bob").collection_name(&prefix, 32);
    assert!(
        !qdrant
            .collection_exists(&bobs_own)
            .await
            .expect("Qdrant answers")
    );
    for replica in [&a, &b] {
        assert_eq!(listed_ok(replica, &alice, -1).await, mine);
        assert_eq!(listed_ok(replica, &bob, -1).await, ["bob's only note"]);
        assert_eq!(
            replica.search_texts(&alice, "alice keeps note 3", 1).await,
            ["alice keeps note 3"]
        );
    }
    assert_eq!(
        b.delete("/v1/memories", &alice).await.status(),
        reqwest::StatusCode::OK
    );
    for replica in [&a, &b] {
        assert!(listed_ok(replica, &alice, -1).await.is_empty());
        assert_eq!(listed_ok(replica, &bob, -1).await, ["bob's only note"]);
    }
    assert!(
        !qdrant
            .collection_exists(&own)
            .await
            .expect("Qdrant answers")
    );
    a.stop().await;
    b.stop().await;
}
