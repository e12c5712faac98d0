//! Two replicas over one Qdrant server: what one replica does must hold on
//! the other (a disabled tenant, a key destroyed and made anew, a keyed
//! write, an erase of a shared-name collection). Each test needs a Qdrant
//! 1.18+ at `QDRANT_URL`.

use std::time::{Duration, Instant};

use cordon::settings::Settings;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{KEK_ONE, TestApp, assert_error, seal_with, spawn_app_with, texts, token};
use crate::qdrant::use_qdrant_at;

/// Two servers on one Qdrant under one fresh prefix, each adjusted by
/// `configure`.
async fn replicas(configure: impl Fn(&mut Settings)) -> (TestApp, TestApp) {
    let (a, b, _) = replicas_under_prefix(configure).await;
    (a, b)
}

/// [`replicas`], and their collection prefix.
pub async fn replicas_under_prefix(
    configure: impl Fn(&mut Settings),
) -> (TestApp, TestApp, String) {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let prefix = format!(
        "cordon_repl_{}_",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let setup = |s: &mut Settings| {
        use_qdrant_at(s, url.clone());
        s.store.collection_prefix = prefix.clone();
        s.access.poll_interval = Duration::from_millis(50);
        configure(s);
    };
    let a = spawn_app_with(&setup).await;
    let b = spawn_app_with(&setup).await;
    (a, b, prefix)
}

async fn listed(app: &TestApp, bearer: &str) -> Vec<String> {
    let page = app.get_json("/v1/memories?limit=100", bearer).await;
    texts(&page["memories"])
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_tenant_disabled_on_one_replica_without_a_tenants_file_is_refused_on_the_other() {
    let (a, b) = replicas(|_| {}).await;
    let alice = token("acme", "alice");
    assert_eq!(b.get("/v1/memories", &alice).await.status(), StatusCode::OK);
    let r = a
        .admin("/admin/v1/tenants/disable", &json!({ "tenant": "acme" }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let started = Instant::now();
    loop {
        let r = b.get("/v1/memories", &alice).await;
        if r.status() == StatusCode::FORBIDDEN {
            assert_error(r, StatusCode::FORBIDDEN, "tenant_disabled").await;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the other replica never refused the disabled tenant"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_replica_whose_cached_key_was_destroyed_elsewhere_reads_what_was_sealed_since() {
    let (a, b) = replicas(|s| seal_with(s, KEK_ONE, None)).await;
    let alice = token("acme", "alice");
    a.store_texts(&alice, &["sealed under the first key"]).await;
    // B opens it, and so caches alice's first key.
    assert_eq!(listed(&b, &alice).await, ["sealed under the first key"]);

    // A erases alice (destroying that key) and seals new memories under a
    // new one.
    assert_eq!(
        a.delete("/v1/memories", &alice).await.status(),
        StatusCode::OK
    );
    let r = a
        .post(
            "/v1/memories",
            &alice,
            &json!({ "text": "sealed under the second key", "metadata": { "room": "b" } }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // B's filter tags come from the key it cached: a filtered search finds
    // the new memory all the same.
    let r = b
        .post(
            "/v1/memories/search",
            &alice,
            &json!({ "query": "sealed", "filter": { "room": "b" } }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let found: Value = r.json().await.expect("json");
    assert_eq!(texts(&found["results"]), ["sealed under the second key"]);
    assert_eq!(listed(&b, &alice).await, ["sealed under the second key"]);
    let export = b.get("/v1/memories/export", &alice).await;
    assert_eq!(export.status(), StatusCode::OK);
    let body: Value = export.json().await.expect("a complete export");
    assert_eq!(texts(&body["memories"]), ["sealed under the second key"]);
    let metrics = b.metrics().await;
    assert!(
        !metrics.contains("cordon_unsealing_failures_total{"),
        "nothing was dropped as undecryptable: {metrics}"
    );
    for app in [&a, &b] {
        app.delete("/v1/memories", &alice).await;
    }
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn two_stores_racing_under_one_key_on_two_replicas_never_both_succeed() {
    let (a, b) = replicas(|_| {}).await;
    let alice = token("acme", "alice");
    let mut kept: Vec<String> = Vec::new();
    for round in 0..20 {
        let key = format!("race-{round}");
        // Bodies of different lengths: a longer loser must leave nothing.
        let bodies = [
            json!({ "memories": [{ "text": format!("first body of round {round}") }] }),
            json!({ "memories": [
                { "text": format!("second body of round {round}, one") },
                { "text": format!("second body of round {round}, two") },
            ] }),
        ];
        let send = |app: &TestApp, body: &Value| {
            app.client
                .post(app.url("/v1/memories"))
                .bearer_auth(&alice)
                .header("Idempotency-Key", key.clone())
                .json(body)
                .send()
        };
        let (ra, rb) = tokio::join!(send(&a, &bodies[0]), send(&b, &bodies[1]));
        let (ra, rb) = (ra.expect("answered"), rb.expect("answered"));
        let statuses = [ra.status(), rb.status()];
        let created = statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "round {round}: {statuses:?}");
        let body = if ra.status() == StatusCode::CREATED {
            &bodies[0]
        } else {
            &bodies[1]
        };
        kept.extend(texts(&body["memories"]));
    }
    let mut listed = listed(&a, &alice).await;
    listed.sort();
    kept.sort();
    assert_eq!(listed, kept, "exactly the winners' memories are stored");
    a.delete("/v1/memories", &alice).await;
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn an_erase_on_a_shared_name_collection_never_loses_a_neighbours_write_from_another_replica()
{
    // One hex digit: 16 collections for everyone, so users share them.
    let (a, b, prefix) = replicas_under_prefix(|s| s.store.name_hex_chars = 1).await;
    let alice = token("acme", "alice");
    let alices = crate::helpers::owner_of("acme", "alice").collection_name("", 1);
    // Users whose collection name is alice's, a fresh one each round, so
    // that at each erase the collection holds alice's memory alone.
    let neighbours = (0..)
        .map(|i| format!("neighbour-{i}"))
        .filter(|sub| crate::helpers::owner_of("acme", sub).collection_name("", 1) == alices)
        .take(20);
    let mut acknowledged = 0;
    for (round, neighbour) in neighbours.enumerate() {
        a.store_texts(&alice, &[&format!("alice round {round}")])
            .await;
        let bob = token("acme", &neighbour);
        // The erase starts a little later each round, so that some round
        // lands its last steps on the neighbour's write.
        let erase = async {
            tokio::time::sleep(Duration::from_millis(round as u64)).await;
            a.delete("/v1/memories", &alice).await
        };
        let note = json!({ "text": "the neighbour's note" });
        let (erased, stored) = tokio::join!(erase, b.post("/v1/memories", &bob, &note));
        assert_eq!(erased.status(), StatusCode::OK);
        if stored.status() == StatusCode::CREATED {
            acknowledged += 1;
            assert_eq!(
                listed(&a, &bob).await,
                ["the neighbour's note"],
                "round {round}: an acknowledged write was lost"
            );
        }
        b.delete("/v1/memories", &bob).await;
    }
    assert!(acknowledged > 0);
    assert!(listed(&a, &alice).await.is_empty());
    // The erases emptied the shared collection; none dropped it.
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL");
    let qdrant = qdrant_client::Qdrant::from_url(&url)
        .skip_compatibility_check()
        .build()
        .expect("a client");
    let exists = qdrant
        .collection_exists(format!("{prefix}{alices}"))
        .await
        .expect("Qdrant answers");
    assert!(exists, "an erase dropped a shared-name collection");
}
