//! Encryption at rest on the embedded engine: what a copied data directory
//! holds, what a copied record opens to, what erase leaves, and rotation.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cordon::app::Application;
use cordon::seal::file_vault::FileVault;
use cordon::seal::kek::{Kek, LocalKek};
use cordon::seal::migrate;
use cordon::seal::rotate::rotate;
use cordon::seal::setup::keyring;
use cordon::seal::vault::{Marker, Vault};
use cordon::secret::Secret;
use cordon::store::edge::{EdgeEngine, EdgeSettings};
use cordon::store::{Engine, NewMemory, Sealed};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    KEK_ONE, KEK_TWO, TestApp, files_containing, files_containing_any, owner_of, seal_with,
    settings, spawn_app_on, texts, token,
};

/// Stores, for each user, one memory whose text and metadata value are
/// unique canaries; returns (user, text canary, metadata canary).
async fn store_canaries(app: &TestApp, users: &[&str]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for user in users {
        let text = format!("canary-text-{}", uuid::Uuid::new_v4().simple());
        let meta = format!("canary-meta-{}", uuid::Uuid::new_v4().simple());
        let r = app
            .post(
                "/v1/memories",
                &token("acme", user),
                &json!({ "text": format!("{text} likes green tea"), "metadata": { "label": meta, "n": 7 } }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        out.push((user.to_string(), text, meta));
    }
    out
}

async fn list(app: &TestApp, user: &str) -> Vec<String> {
    let body = app
        .get_json("/v1/memories?limit=100", &token("acme", user))
        .await;
    texts(&body["memories"])
}

fn sealed_settings(s: &mut cordon::settings::Settings) {
    seal_with(s, KEK_ONE, None);
}

#[tokio::test]
async fn sealed_canaries_of_several_users_are_nowhere_in_the_data_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), sealed_settings).await;
    let canaries = store_canaries(&app, &["alice", "bob", "carol"]).await;
    for (user, text, meta) in &canaries {
        // Everything still reads back, metadata filters included.
        assert_eq!(list(&app, user).await.len(), 1);
        let r = app
            .post(
                "/v1/memories/search",
                &token("acme", user),
                &json!({ "query": "tea", "filter": { "label": meta, "n": 7 } }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.expect("json");
        let found = texts(&body["results"]);
        assert_eq!(found.len(), 1, "{user}");
        assert!(found[0].starts_with(text.as_str()));
        assert_eq!(body["results"][0]["metadata"]["label"], meta.as_str());
        let other = app
            .post(
                "/v1/memories/search",
                &token("acme", user),
                &json!({ "query": "tea", "filter": { "label": "something else" } }),
            )
            .await;
        let other: Value = other.json().await.expect("json");
        assert!(texts(&other["results"]).is_empty());
    }
    app.stop().await;
    for (_, text, meta) in &canaries {
        for needle in [text, meta] {
            let found = files_containing(dir.path(), needle.as_bytes());
            assert!(found.is_empty(), "{needle} in {found:?}");
        }
    }
}

#[tokio::test]
async fn without_a_kek_the_same_search_finds_the_canaries_on_disk() {
    // The control for the test above: the byte search does find plain text.
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |_| {}).await;
    let canaries = store_canaries(&app, &["alice"]).await;
    app.stop().await;
    let (_, text, meta) = &canaries[0];
    assert!(!files_containing(dir.path(), text.as_bytes()).is_empty());
    assert!(!files_containing(dir.path(), meta.as_bytes()).is_empty());
}

fn edge(dir: &Path) -> std::sync::Arc<EdgeEngine> {
    let s = settings(dir);
    let engine = EdgeEngine::open(EdgeSettings {
        data_dir: dir.to_owned(),
        collection_prefix: s.store.collection_prefix,
        name_hex_chars: s.store.name_hex_chars,
        max_open_shards: 8,
        drill_skip_read_filter: false,
        purge_after: Duration::from_secs(60),
        wal_growth_bytes: s.store.wal_growth_bytes,
        min_free_bytes: 0,
    })
    .expect("engine opens");
    std::sync::Arc::new(engine)
}

/// Sealed memories for alice, a plain note for bob, and then, as an
/// attacker with write access would, alice's first record copied into bob's
/// collection with its owner field rewritten: same id, same ciphertext.
async fn copy_a_sealed_record_into_bobs_collection(dir: &Path) {
    let app = spawn_app_on(dir, sealed_settings).await;
    store_canaries(&app, &["alice"]).await;
    app.store_texts(&token("acme", "bob"), &["bob's own note"])
        .await;
    app.stop().await;

    let engine = edge(dir);
    let (alice, bob) = (owner_of("acme", "alice"), owner_of("acme", "bob"));
    let page = engine
        .scroll(&alice, None, 10, &Default::default())
        .await
        .expect("scroll");
    let point = &page.points[0];
    let blob = point.payload["sealed"].as_str().expect("sealed payload");
    let copy = NewMemory {
        id: point.id,
        text: String::new(),
        metadata: Default::default(),
        created_at: 1,
        vector: vec![0.05; cordon::embed::DIMENSIONS],
        request: None,
        sealed: Some(Sealed {
            blob: blob.to_owned(),
            tags: Vec::new(),
        }),
        expires_at: None,
        version: 1,
        updated_at: None,
        terms: Vec::new(),
    };
    engine.upsert(&bob, vec![copy]).await.expect("copied");
    engine.shutdown().await;
}

#[tokio::test]
async fn a_sealed_record_copied_into_another_users_collection_does_not_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_a_sealed_record_into_bobs_collection(dir.path()).await;

    let app = spawn_app_on(dir.path(), sealed_settings).await;
    assert_eq!(list(&app, "bob").await, ["bob's own note"]);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("cordon_unsealing_failures_total{path=\"list\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_export_that_meets_a_record_that_does_not_open_is_cut_short() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_a_sealed_record_into_bobs_collection(dir.path()).await;

    let app = spawn_app_on(dir.path(), sealed_settings).await;
    let r = app.get("/v1/memories/export", &token("acme", "bob")).await;
    // The failure comes with the first page, before any byte was sent, or
    // later as a body cut short: either way no client can take the export
    // for a complete one.
    if r.status() == StatusCode::OK {
        let body = r.bytes().await.unwrap_or_default();
        assert!(
            serde_json::from_slice::<serde_json::Value>(&body).is_err(),
            "an export missing a record parsed as complete: {}",
            String::from_utf8_lossy(&body)
        );
    } else {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    app.stop().await;
}

#[tokio::test]
async fn after_an_erase_restored_shard_files_yield_nothing_readable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), sealed_settings).await;
    let canaries = store_canaries(&app, &["alice"]).await;
    app.stop().await;
    // A backup of the shards, taken before the erase.
    let backup = tempfile::tempdir().expect("temp dir");
    copy_dir(&dir.path().join("shards"), &backup.path().join("shards"));

    let app = spawn_app_on(dir.path(), sealed_settings).await;
    let r = app.delete("/v1/memories", &token("acme", "alice")).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
    assert!(
        files_containing(
            &dir.path().join("keys"),
            owner_of("acme", "alice").to_hex().as_bytes()
        )
        .is_empty(),
        "the wrapped key is still there"
    );

    // The backup put back: the ciphertext is there, the key is not.
    std::fs::remove_dir_all(dir.path().join("shards")).expect("removed");
    copy_dir(&backup.path().join("shards"), &dir.path().join("shards"));
    let app = spawn_app_on(dir.path(), sealed_settings).await;
    assert!(list(&app, "alice").await.is_empty());
    let r = app
        .post(
            "/v1/memories/search",
            &token("acme", "alice"),
            &json!({ "query": "tea" }),
        )
        .await;
    let body: Value = r.json().await.expect("json");
    assert!(texts(&body["results"]).is_empty());
    app.stop().await;
    let (_, text, _) = &canaries[0];
    assert!(files_containing(dir.path(), text.as_bytes()).is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("created");
    for entry in std::fs::read_dir(from).expect("readable").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copied");
        }
    }
}

#[tokio::test]
async fn rotation_keeps_every_memory_readable_and_the_old_kek_then_opens_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), sealed_settings).await;
    let users = ["alice", "bob", "carol"];
    store_canaries(&app, &users).await;
    app.stop().await;

    let mut s = settings(dir.path());
    seal_with(&mut s, KEK_TWO, Some(KEK_ONE));
    let ring = keyring(s.seal.as_ref().expect("sealed")).expect("keyring");
    let vault = FileVault::new(dir.path());
    let mut seen = Vec::new();
    let report = rotate(&ring, &vault, |done, total| seen.push((done, total)))
        .await
        .expect("rotated");
    assert_eq!((report.rotated, report.failed), (3, 0));
    assert_eq!(seen.last(), Some(&(3, 3)));
    // Run again (as after an interruption): nothing left to do.
    let again = rotate(&ring, &vault, |_, _| {}).await.expect("rotated");
    assert_eq!((again.rotated, again.current), (0, 3));

    let app = spawn_app_on(dir.path(), |s| seal_with(s, KEK_TWO, None)).await;
    for user in users {
        assert_eq!(list(&app, user).await.len(), 1, "{user}");
    }
    app.stop().await;

    // The old KEK opens none of the keys, and a server given it alone
    // refuses to start rather than answer 503 to everyone.
    let old = LocalKek::parse(&Secret::new(KEK_ONE.as_bytes().to_vec())).expect("a KEK");
    for wrapped in vault.all().await.expect("listed") {
        let owner = cordon::owner::OwnerHash::from_hex(&wrapped.owner).expect("owner");
        let bytes = BASE64.decode(&wrapped.wrapped).expect("base64");
        assert!(old.unwrap(&owner, &bytes).await.is_err());
    }
    let message = build_error(dir.path(), |s| seal_with(s, KEK_ONE, None)).await;
    assert!(message.contains("neither CORDON_KEK"), "{message}");
}

async fn build_error(
    dir: &Path,
    configure: impl FnOnce(&mut cordon::settings::Settings),
) -> String {
    let mut s = settings(dir);
    configure(&mut s);
    let embedder = cordon::embed::Embedder::start(&s.embed).expect("model");
    match Application::build_with_embedder(s, embedder).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_kek_on_plain_memories_and_no_kek_on_sealed_ones_both_refuse_to_start() {
    let plain = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(plain.path(), |_| {}).await;
    app.store_texts(&token("acme", "alice"), &["plain"]).await;
    app.stop().await;
    let message = build_error(plain.path(), sealed_settings).await;
    assert!(message.contains("cordon keys migrate"), "{message}");

    let sealed = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(sealed.path(), sealed_settings).await;
    app.store_texts(&token("acme", "alice"), &["sealed"]).await;
    app.stop().await;
    let message = build_error(sealed.path(), |_| {}).await;
    assert!(message.contains("CORDON_KEK"), "{message}");
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn on_a_qdrant_server_memories_are_sealed_keys_rotate_and_erase_shreds() {
    use cordon::seal::qdrant_vault::QdrantVault;
    use cordon::seal::vault::WrappedDek;

    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let prefix = format!(
        "cordon_test_{}_",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let on_qdrant = |s: &mut cordon::settings::Settings, kek: &str, previous: Option<&str>| {
        crate::qdrant::use_qdrant_at(s, url.clone());
        s.store.collection_prefix = prefix.clone();
        seal_with(s, kek, previous);
    };
    let users = ["alice", "bob", "carol"];
    let app = crate::helpers::spawn_app_with(|s| on_qdrant(s, KEK_ONE, None)).await;
    let canaries = store_canaries(&app, &users).await;
    for (user, text, meta) in &canaries {
        let r = app
            .post(
                "/v1/memories/search",
                &token("acme", user),
                &json!({ "query": "tea", "filter": { "label": meta } }),
            )
            .await;
        let body: Value = r.json().await.expect("json");
        let found = texts(&body["results"]);
        assert_eq!(found.len(), 1, "{user}");
        assert!(found[0].starts_with(text.as_str()));
    }
    match std::env::var_os("QDRANT_STORAGE_DIR") {
        Some(storage) => {
            // The control: a deployment without a KEK on the same Qdrant,
            // whose canary the same search must find.
            let plain = crate::helpers::spawn_app_with(|s| {
                crate::qdrant::use_qdrant_at(s, url.clone());
            })
            .await;
            let control = format!("canary-plain-{}", uuid::Uuid::new_v4().simple());
            plain
                .store_texts(&token("acme", "zed"), &[control.as_str()])
                .await;
            let mut needles: Vec<&[u8]> = vec![control.as_bytes()];
            for (_, text, meta) in &canaries {
                needles.push(text.as_bytes());
                needles.push(meta.as_bytes());
            }
            let found = files_containing_any(Path::new(&storage), &needles);
            assert!(
                found.iter().any(|(i, _)| *i == 0),
                "the control is not found"
            );
            let leaked: Vec<_> = found.iter().filter(|(i, _)| *i > 0).collect();
            assert!(leaked.is_empty(), "canaries on disk: {leaked:?}");
            plain.delete("/v1/memories", &token("acme", "zed")).await;
            plain.stop().await;
        }
        None => eprintln!(
            "skipped the byte search of Qdrant's storage: set QDRANT_STORAGE_DIR to it (.ci/run does)"
        ),
    }
    app.stop().await;

    // Rotation, from outside any server, while none runs.
    let mut s = settings(Path::new("/nonexistent"));
    on_qdrant(&mut s, KEK_TWO, Some(KEK_ONE));
    let ring = keyring(s.seal.as_ref().expect("sealed")).expect("keyring");
    let vault = QdrantVault::new(&s.store.qdrant, &prefix).expect("vault");
    let report = rotate(&ring, &vault, |_, _| {}).await.expect("rotated");
    assert_eq!((report.rotated, report.failed), (3, 0));

    let app = crate::helpers::spawn_app_with(|s| on_qdrant(s, KEK_TWO, None)).await;
    for user in users {
        assert_eq!(list(&app, user).await.len(), 1, "{user}");
    }
    let r = app.delete("/v1/memories", &token("acme", "alice")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        vault.get(&owner_of("acme", "alice")).await.expect("read"),
        None,
        "erase left alice's key"
    );
    app.stop().await;

    let mut s = settings(Path::new("/nonexistent"));
    on_qdrant(&mut s, KEK_ONE, None);
    let embedder = cordon::embed::Embedder::start(&s.embed).expect("model");
    match Application::build_with_embedder(s, embedder).await {
        Ok(_) => panic!("a server with the old KEK alone started"),
        Err(e) => assert!(e.to_string().contains("neither CORDON_KEK"), "{e}"),
    }

    // Two replicas: one has bob's key cached, the other erases bob. A store
    // on the first afterwards must not be sealed under the destroyed key.
    let one = crate::helpers::spawn_app_with(|s| on_qdrant(s, KEK_TWO, None)).await;
    let two = crate::helpers::spawn_app_with(|s| on_qdrant(s, KEK_TWO, None)).await;
    let bob = token("acme", "bob");
    assert_eq!(
        list(&one, "bob").await.len(),
        1,
        "bob's key is now cached on one"
    );
    assert_eq!(
        two.delete("/v1/memories", &bob).await.status(),
        StatusCode::OK
    );
    one.store_texts(&bob, &["after the erase"]).await;
    assert_eq!(list(&two, "bob").await, ["after the erase"]);
    assert_eq!(list(&one, "bob").await, ["after the erase"]);
    one.stop().await;
    two.stop().await;

    // The vault's writes: the first key created wins, and a key destroyed
    // meanwhile is not brought back by a re-wrap.
    let dave = owner_of("acme", "dave");
    let wrapped = |kek: &str, bytes: &str| WrappedDek {
        owner: dave.to_hex(),
        kek: kek.into(),
        wrapped: bytes.into(),
    };
    let first = vault
        .create(&dave, wrapped("k1", "AAAA"))
        .await
        .expect("created");
    let second = vault
        .create(&dave, wrapped("k1", "BBBB"))
        .await
        .expect("kept");
    assert_eq!(first, second);
    assert_eq!(first.wrapped, "AAAA");
    vault.destroy(&dave).await.expect("destroyed");
    assert!(
        !vault
            .rewrap(&dave, "k1", wrapped("k2", "CCCC"))
            .await
            .expect("ran")
    );
    assert_eq!(vault.get(&dave).await.expect("read"), None);

    // Tidy the test's users away.
    let app = crate::helpers::spawn_app_with(|s| on_qdrant(s, KEK_TWO, None)).await;
    for user in users {
        app.delete("/v1/memories", &token("acme", user)).await;
    }
    app.stop().await;
}

async fn search_by_label(app: &TestApp, user: &str, label: &str) -> Vec<String> {
    let r = app
        .post(
            "/v1/memories/search",
            &token("acme", user),
            &json!({ "query": "tea", "filter": { "label": label } }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    texts(&body["results"])
}

#[tokio::test]
async fn migrate_seals_a_plain_data_directory_leaving_no_plain_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |_| {}).await;
    let canaries = store_canaries(&app, &["alice", "bob"]).await;
    app.stop().await;

    let mut s = settings(dir.path());
    sealed_settings(&mut s);
    let report = migrate::run(&s, &|_, _| {}).await.expect("migrated");
    assert_eq!((report.owners, report.sealed), (2, 2));
    let again = migrate::run(&s, &|_, _| {}).await.expect("migrated");
    assert_eq!(again.sealed, 0, "a second run seals nothing twice");
    for (_, text, meta) in &canaries {
        for needle in [text, meta] {
            let found = files_containing(dir.path(), needle.as_bytes());
            assert!(found.is_empty(), "{needle} in {found:?}");
        }
    }

    let app = spawn_app_on(dir.path(), sealed_settings).await;
    for (user, text, meta) in &canaries {
        let found = search_by_label(&app, user, meta).await;
        assert_eq!(found.len(), 1, "{user}");
        assert!(found[0].starts_with(text.as_str()));
    }
    app.stop().await;
    let message = build_error(dir.path(), |_| {}).await;
    assert!(message.contains("CORDON_KEK"), "{message}");
}

#[tokio::test]
async fn an_interrupted_migration_keeps_every_server_off_until_it_is_run_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_app_on(dir.path(), |_| {}).await;
    app.store_texts(&token("acme", "alice"), &["plain"]).await;
    app.stop().await;
    FileVault::new(dir.path())
        .mark(Marker::Sealing)
        .await
        .expect("marked");
    for configure in [
        sealed_settings as fn(&mut cordon::settings::Settings),
        |_| {},
    ] {
        let message = build_error(dir.path(), configure).await;
        assert!(message.contains("cordon keys migrate"), "{message}");
    }
    let mut s = settings(dir.path());
    sealed_settings(&mut s);
    migrate::run(&s, &|_, _| {}).await.expect("migrated");
    let app = spawn_app_on(dir.path(), sealed_settings).await;
    assert_eq!(list(&app, "alice").await, ["plain"]);
    app.stop().await;
}

#[tokio::test]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn migrate_seals_a_plain_deployment_on_a_qdrant_server() {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL, the gRPC URL of a Qdrant 1.18+");
    let prefix = format!(
        "cordon_test_{}_",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let on_qdrant = |s: &mut cordon::settings::Settings, sealed: bool| {
        crate::qdrant::use_qdrant_at(s, url.clone());
        s.store.collection_prefix = prefix.clone();
        if sealed {
            seal_with(s, KEK_ONE, None);
        }
    };
    let app = crate::helpers::spawn_app_with(|s| on_qdrant(s, false)).await;
    let canaries = store_canaries(&app, &["alice", "bob"]).await;
    app.stop().await;

    let mut s = settings(Path::new("/nonexistent"));
    on_qdrant(&mut s, true);
    let report = migrate::run(&s, &|_, _| {}).await.expect("migrated");
    assert_eq!((report.owners, report.sealed), (2, 2));

    let app = crate::helpers::spawn_app_with(|s| on_qdrant(s, true)).await;
    for (user, text, meta) in &canaries {
        let found = search_by_label(&app, user, meta).await;
        assert_eq!(found.len(), 1, "{user}");
        assert!(found[0].starts_with(text.as_str()));
        app.delete("/v1/memories", &token("acme", user)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_sealed_filter_matches_an_element_of_a_metadata_array_as_a_plain_one_does() {
    for sealed in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = spawn_app_on(dir.path(), |s| {
            if sealed {
                sealed_settings(s)
            }
        })
        .await;
        let alice = token("acme", "alice");
        let r = app
            .post(
                "/v1/memories",
                &alice,
                &json!({ "text": "green tea at four", "metadata": { "label": ["drinks", "habits"] } }),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(
            search_by_label(&app, "alice", "habits").await.len(),
            1,
            "sealed: {sealed}"
        );
        assert!(search_by_label(&app, "alice", "food").await.is_empty());
        app.stop().await;
    }
}

#[tokio::test]
async fn a_sealed_memorys_keyword_terms_are_keyed_and_still_found() {
    let text = "Locker 7719 holds my gym bag";
    let plain_terms = cordon::keyword::Keywords::new().terms(text);
    assert!(!plain_terms.is_empty());
    for sealed in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = spawn_app_on(dir.path(), |s| {
            if sealed {
                sealed_settings(s);
            }
        })
        .await;
        app.store_texts(&token("acme", "alice"), &[text]).await;
        let r = app
            .post(
                "/v1/memories/search",
                &token("acme", "alice"),
                &json!({ "query": "locker 7719", "mode": "keyword" }),
            )
            .await;
        let body: Value = r.json().await.expect("json");
        assert_eq!(texts(&body["results"]), [text], "sealed: {sealed}");
        app.stop().await;
        let engine = edge(dir.path());
        let page = engine
            .export_page(&owner_of("acme", "alice"), None, 10)
            .await
            .expect("raw read");
        let stored: Vec<i64> = page.points[0].payload["terms"]
            .as_array()
            .expect("terms stored")
            .iter()
            .filter_map(Value::as_i64)
            .collect();
        assert_eq!(stored.len(), plain_terms.len());
        let shared = stored.iter().filter(|t| plain_terms.contains(t)).count();
        if sealed {
            assert_eq!(shared, 0, "a sealed memory holds a plain term id");
        } else {
            assert_eq!(shared, plain_terms.len());
        }
        engine.shutdown().await;
    }
}
