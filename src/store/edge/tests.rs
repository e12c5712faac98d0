//! Faults injected at each step of a shard rewrite, against a real engine on
//! disk: real I/O errors where the machine can make them (`chattr +i` on a
//! shard's segment directories makes qdrant-edge's flush fail), and failed
//! directory syncs reported by [`files::inject`] after the real sync.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::files::{self, inject};
use super::rewrite::Outcome;
use super::{EdgeEngine, EdgeSettings, pool};
use crate::embed::DIMENSIONS;
use crate::owner::OwnerHash;
use crate::secret::Secret;
use crate::store::{Engine, NewMemory};

const PREFIX: &str = "cordon_";

fn open(data: &Path) -> Arc<EdgeEngine> {
    open_named(data, 32)
}

/// An engine naming shards by `hex_chars` of the owner hash.
fn open_named(data: &Path, hex_chars: usize) -> Arc<EdgeEngine> {
    Arc::new(
        EdgeEngine::open(EdgeSettings {
            data_dir: data.to_owned(),
            collection_prefix: PREFIX.into(),
            name_hex_chars: hex_chars,
            max_open_shards: 16,
            drill_skip_read_filter: false,
            purge_after: Duration::from_secs(3600),
            wal_growth_bytes: pool::WAL_GROWTH_BYTES,
            min_free_bytes: 0,
        })
        .expect("the engine opens"),
    )
}

fn alice() -> OwnerHash {
    OwnerHash::derive(&Secret::new(vec![3u8; 32]), "t", "alice")
}

fn memory(text: &str, n: usize) -> NewMemory {
    let mut vector = vec![0.0; DIMENSIONS];
    vector[n % DIMENSIONS] = 1.0;
    NewMemory {
        id: Uuid::now_v7(),
        text: text.into(),
        metadata: Default::default(),
        created_at: 0,
        vector,
        request: None,
        sealed: None,
        expires_at: None,
        version: 1,
        updated_at: None,
        terms: Vec::new(),
    }
}

/// The texts of `owner`'s memories, sorted.
async fn texts(engine: &Arc<EdgeEngine>, owner: &OwnerHash) -> Vec<String> {
    let page = engine
        .scroll(owner, None, 100, &Default::default())
        .await
        .expect("scrolls");
    let mut texts: Vec<String> = page
        .points
        .iter()
        .map(|p| p.payload["text"].as_str().expect("plain text").to_owned())
        .collect();
    texts.sort();
    texts
}

/// Alice's shard holding "a" and "c", with "b" deleted (so a rewrite has
/// something to drop); returns the engine, the shards root and the name.
async fn shard_with_a_delete(data: &Path) -> (Arc<EdgeEngine>, PathBuf, String) {
    let engine = open(data);
    let owner = alice();
    let b = memory("b", 1);
    let b_id = b.id;
    engine
        .upsert(&owner, vec![memory("a", 0), b, memory("c", 2)])
        .await
        .expect("stored");
    engine.delete(&owner, b_id).await.expect("deleted");
    let name = owner.collection_name(PREFIX, 32);
    (engine, data.join("shards"), name)
}

async fn rewrite(engine: &Arc<EdgeEngine>, name: &str) -> Result<super::rewrite::Outcome, String> {
    let (engine, name) = (engine.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || engine.rewrite_blocking(&name))
        .await
        .expect("the rewrite's thread joins")
        .map_err(|e| e.to_string())
}

/// The segment directories of a shard, made immutable while held (a real
/// flush then fails: it cannot create its files); released when dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn segments_of(shard: &Path) -> Self {
        let dirs = std::fs::read_dir(shard.join("segments"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        let held = Self(dirs);
        held.chattr("+i");
        held
    }

    fn chattr(&self, flag: &str) -> bool {
        !self.0.is_empty()
            && Command::new("chattr")
                .arg(flag)
                .args(&self.0)
                .status()
                .is_ok_and(|s| s.success())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.chattr("-i");
    }
}

/// Makes the directories `fault` returns immutable the first time a
/// rewrite under `root` reaches `step`; [`release_all`] lifts it.
fn once_at(root: &Path, step: &'static str, fault: impl Fn() -> Immutable + Send + 'static) {
    let fired = std::sync::atomic::AtomicBool::new(false);
    inject::on_step(root, move |reached| {
        if reached == step && !fired.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // Held until the test lifts it from the whole tree.
            std::mem::forget(fault());
        }
    });
}

/// Lifts `chattr +i` from everything under `root` (a directory made
/// immutable may have been moved since).
fn release_all(root: &Path) {
    let _ = Command::new("chattr").args(["-R", "-i"]).arg(root).status();
}

/// Whether a test must skip because `chattr +i` does not work here; prints
/// the reason if so.
fn skipped_without_chattr() -> bool {
    let works = immutable_works();
    if !works {
        eprintln!("skipped: chattr +i does not work here (needs root on ext4 or tmpfs)");
    }
    !works
}

/// Whether `chattr +i` works on this file system (root on ext4 or tmpfs).
fn immutable_works() -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let sub = dir.path().join("d");
    std::fs::create_dir(&sub).expect("dir");
    let held = Immutable(vec![sub.clone()]);
    let works = held.chattr("+i") && std::fs::write(sub.join("f"), b"x").is_err();
    drop(held);
    works
}

/// Names in the shards root that start with `prefix`.
fn leftovers(root: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(root)
        .expect("shards root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn an_old_shard_whose_last_flush_fails_after_its_copy_is_ready_never_outlives_the_swap() {
    if skipped_without_chattr() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let (engine, root, name) = shard_with_a_delete(data.path()).await;
    let live = root.join(&name);
    once_at(&root, "swap-ready", move || Immutable::segments_of(&live));
    let outcome = rewrite(&engine, &name).await;
    release_all(&root);
    // The old shard's close failed (its flush could not create its files),
    // and the swap completed regardless: the copy holds every write.
    assert!(
        matches!(outcome, Ok(Outcome::Rewritten { points: 2, .. })),
        "{outcome:?}"
    );
    assert!(
        root.join(&name).join(files::BASELINE_FILE).is_file(),
        "the copy serves"
    );
    assert_eq!(leftovers(&root, ".swap-"), Vec::<String>::new());
    let owner = alice();
    engine
        .upsert(&owner, vec![memory("d", 3)])
        .await
        .expect("a write after the rewrite is acknowledged");
    assert_eq!(texts(&engine, &owner).await, ["a", "c", "d"]);
    engine.shutdown().await;
    drop(engine);

    let engine = open(data.path());
    assert_eq!(
        texts(&engine, &owner).await,
        ["a", "c", "d"],
        "start-up brought back an older copy"
    );
}

/// Rewrites alice's shard with the `call`-th sync of the shards root failing
/// (after the real sync), then checks that the copy serves, keeps taking
/// writes and is what the next start finds.
async fn rewrite_with_a_failed_root_sync(call: usize) {
    let data = tempfile::tempdir().expect("temp dir");
    let (engine, root, name) = shard_with_a_delete(data.path()).await;
    inject::fail_syncs(&root, &[call]);
    let outcome = rewrite(&engine, &name).await;
    assert!(
        inject::syncs_made(&root) >= call,
        "the failing sync was reached"
    );
    assert!(
        matches!(outcome, Ok(Outcome::Rewritten { points: 2, .. })),
        "{outcome:?}"
    );
    assert!(
        root.join(&name).join(files::BASELINE_FILE).is_file(),
        "the copy serves"
    );
    let owner = alice();
    assert_eq!(
        texts(&engine, &owner).await,
        ["a", "c"],
        "the shard is gone"
    );
    engine
        .upsert(&owner, vec![memory("d", 3)])
        .await
        .expect("stored");
    engine.shutdown().await;
    drop(engine);
    let engine = open(data.path());
    assert_eq!(texts(&engine, &owner).await, ["a", "c", "d"]);
    assert_eq!(
        leftovers(&root, "."),
        Vec::<String>::new(),
        "nothing left aside"
    );
}

#[tokio::test]
async fn a_failed_directory_sync_after_the_old_shard_moved_aside_never_deletes_the_copy() {
    // The root is synced after the copy's rename to `.swap-` (1), after the
    // old shard's move aside (2) and after the copy's rename into place (3).
    rewrite_with_a_failed_root_sync(2).await;
}

#[tokio::test]
async fn a_failed_directory_sync_after_the_swap_keeps_the_copy_serving() {
    rewrite_with_a_failed_root_sync(3).await;
}

#[tokio::test]
async fn a_copy_whose_flush_fails_gives_up_the_rewrite_and_the_process_keeps_running() {
    if skipped_without_chattr() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let (engine, root, name) = shard_with_a_delete(data.path()).await;
    let building = files::building_dir(&root, &name);
    once_at(&root, "copy-built", move || {
        Immutable::segments_of(&building)
    });
    // Before, the copy's failed flush panicked and its `Drop` flushed again
    // while unwinding: the process aborted here.
    let outcome = rewrite(&engine, &name).await;
    release_all(&root);
    assert!(outcome.is_err(), "{outcome:?}");
    let owner = alice();
    assert_eq!(texts(&engine, &owner).await, ["a", "c"]);
    engine
        .upsert(&owner, vec![memory("d", 3)])
        .await
        .expect("stored");
    // The next rewrite succeeds.
    let next = rewrite(&engine, &name).await;
    assert!(next.is_ok(), "{next:?}");
    assert_eq!(texts(&engine, &owner).await, ["a", "c", "d"]);
}

#[tokio::test]
async fn a_shard_whose_set_up_failed_is_set_up_again_at_its_next_open() {
    let data = tempfile::tempdir().expect("temp dir");
    let engine = open(data.path());
    let owner = alice();
    let name = owner.collection_name(PREFIX, 32);
    let dir = data.path().join("shards").join(&name);
    // The first sync of the new shard's directory fails.
    inject::fail_syncs(&dir, &[1]);
    let first = engine.upsert(&owner, vec![memory("a", 0)]).await;
    assert!(first.is_err(), "{first:?}");
    assert!(!files::is_set_up(&dir));
    engine
        .upsert(&owner, vec![memory("b", 1)])
        .await
        .expect("the second attempt sets the shard up and stores");
    assert!(
        inject::syncs_made(&dir) >= 2,
        "its directories were synced again"
    );
    assert!(files::is_set_up(&dir));
    assert_eq!(texts(&engine, &owner).await, ["b"]);
}

#[tokio::test]
async fn a_write_waiting_on_an_erase_whose_close_failed_is_never_acknowledged() {
    if skipped_without_chattr() {
        return;
    }
    let data = tempfile::tempdir().expect("temp dir");
    let engine = open(data.path());
    let owner = alice();
    engine
        .upsert(&owner, vec![memory("a", 0)])
        .await
        .expect("stored");
    let name = owner.collection_name(PREFIX, 32);
    let root = data.path().join("shards");
    let slot = engine.pool.slot(&name).expect("the slot");
    // A write applied and waiting for its flush when the erase comes.
    let waiting = slot.apply_unflushed(upsert_of(memory("b", 1)));
    // The erase's close cannot flush, and the directory's removal fails
    // after the rename (its sync).
    let fault = Immutable::segments_of(&root.join(&name));
    inject::fail_syncs(&root, &[1]);
    let erased = engine.erase(&owner).await;
    drop(fault);
    release_all(&root);
    assert!(erased.is_err(), "{erased:?}");
    assert!(
        slot.flushed(waiting).is_err(),
        "acknowledged a write that no flush wrote"
    );
}

/// An upsert of `memory` for alice, as the engine builds it.
fn upsert_of(memory: NewMemory) -> qdrant_edge::UpdateOperation {
    let (id, vector, payload) = memory.into_parts(&alice().to_hex());
    qdrant_edge::UpdateOperation::PointOperation(qdrant_edge::PointOperations::UpsertPoints(
        qdrant_edge::PointInsertOperations::PointsList(vec![qdrant_edge::PointStructPersisted {
            id: qdrant_edge::PointId::Uuid(id),
            vector: qdrant_edge::VectorStructPersisted::Single(vector),
            payload: Some(qdrant_edge::Payload(payload)),
        }]),
    ))
}

/// Whether the shard in `dir` indexes the owner field as a tenant index.
fn owner_index_is_tenant(dir: &Path) -> bool {
    let shard = qdrant_edge::EdgeShard::load(dir, None).expect("the shard loads");
    let info = shard.info();
    drop(shard);
    let index = info
        .payload_schema
        .get(&super::owner_path())
        .expect("the owner field is indexed");
    matches!(
        &index.params,
        Some(qdrant_edge::PayloadSchemaParams::Keyword(params)) if params.is_tenant == Some(true)
    )
}

#[tokio::test]
async fn a_shared_tier_shard_indexes_owners_as_tenants_and_keeps_its_other_users_through_an_erase_and_a_rewrite()
 {
    let data = tempfile::tempdir().expect("temp dir");
    let engine = open_named(data.path(), 1);
    let secret = Secret::new(vec![3u8; 32]);
    let owner = alice();
    let name = owner.collection_name(PREFIX, 1);
    let neighbour = (0..)
        .map(|n| OwnerHash::derive(&secret, "t", &format!("user-{n}")))
        .find(|other| other.collection_name(PREFIX, 1) == name)
        .expect("one owner in 16 shares the first hex character");
    engine
        .upsert(&owner, vec![memory("a", 0)])
        .await
        .expect("stored");
    engine
        .upsert(&neighbour, vec![memory("n", 1)])
        .await
        .expect("stored");
    assert_eq!(engine.erase(&owner).await.expect("erased"), 1);
    assert_eq!(texts(&engine, &neighbour).await, ["n"]);
    assert!(matches!(
        rewrite(&engine, &name).await,
        Ok(Outcome::Rewritten { .. })
    ));
    assert!(texts(&engine, &owner).await.is_empty());
    assert_eq!(texts(&engine, &neighbour).await, ["n"]);
    engine.shutdown().await;
    drop(engine);
    assert!(owner_index_is_tenant(
        &data.path().join("shards").join(&name)
    ));

    let private = tempfile::tempdir().expect("temp dir");
    let engine = open(private.path());
    engine
        .upsert(&owner, vec![memory("a", 0)])
        .await
        .expect("stored");
    engine.shutdown().await;
    drop(engine);
    let dir = private
        .path()
        .join("shards")
        .join(owner.collection_name(PREFIX, 32));
    assert!(
        !owner_index_is_tenant(&dir),
        "a user's own shard keeps a plain index"
    );
}

#[tokio::test]
async fn a_deleted_memorys_purge_falls_to_the_engine_of_its_shards_naming_only() {
    let data = tempfile::tempdir().expect("temp dir");
    let (engine, _root, name) = shard_with_a_delete(data.path()).await;
    engine.shutdown().await;
    drop(engine);
    // The shared naming (2 hex characters) beside the per-user one (32):
    // only the per-user engine may rewrite a per-user shard.
    let shared = open_named(data.path(), 2);
    assert!(!shared.due.lock().contains_key(&name));
    let own = shared.open_beside(32).expect("opens");
    assert!(own.due.lock().contains_key(&name));
}
