//! Moving a deployment between namespace tiers (`cordon tier migrate`), and
//! the start-up check that keeps a server from running over a layout it
//! would not read.
//!
//! A tier is a naming: per-user collections carry 32 hex characters of the
//! owner hash, shared ones 2 (or whatever `CORDON_COLLECTION_HEX_CHARS`
//! says). Memories move owner by owner, from every other naming found under
//! the deployment's prefix into the configured one: an owner's points are
//! copied with their vectors and payloads exactly as stored (sealed ones stay
//! sealed, under the same per-user key), the copy is read back and compared
//! point by point, and only then is the owner erased from the old layout.
//! Every step can run again: a point copied twice is the same point, and an
//! owner erased already has nothing left to move. So a run cut short at any
//! step (a crash, `kill -9`, a full disk) is finished by running the command
//! again, and no memory is ever in neither place.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Engine, NewMemory, StoreError};
use crate::owner::OwnerHash;

/// Points moved per page.
const PAGE: usize = 256;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MoveReport {
    /// Name lengths of the layouts emptied.
    pub layouts: Vec<usize>,
    /// Owners moved.
    pub owners: usize,
    /// Memories moved.
    pub memories: usize,
    /// Old collections removed once empty.
    pub removed: usize,
}

/// Refuses to serve over a layout of another tier: its memories would look
/// gone to their owners. An engine that cannot answer yet (Qdrant still
/// down) is let through with a warning, like the rest of a start without it.
pub async fn check_layout(engine: &dyn Engine) -> Result<(), StoreError> {
    match engine.other_layouts().await {
        Ok(others) if others.is_empty() => Ok(()),
        Ok(others) => Err(StoreError::Layout(format!(
            "collections named by {} hex characters of the owner hash are stored here, \
             a tier other than the configured one (CORDON_TIER, CORDON_COLLECTION_HEX_CHARS); \
             move them with `cordon tier migrate` (same settings, server stopped) or start \
             with the settings they were stored under",
            lengths(&others)
        ))),
        Err(StoreError::Unavailable(reason)) => {
            tracing::warn!(%reason, "the storage layout could not be checked at start");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn lengths(set: &BTreeSet<usize>) -> String {
    set.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Moves every owner of every other layout into `target`'s, except those
/// in `stay` (owner hashes, hex: users promoted out of the shared tier, who
/// keep their own collections); `open(len)` opens the engine naming
/// collections by `len` hex characters, and `progress(owners_done,
/// owners_total)` follows each layout.
pub async fn migrate(
    target: &dyn Engine,
    open: impl Fn(usize) -> Result<Arc<dyn Engine>, StoreError>,
    stay: &HashSet<String>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<MoveReport, StoreError> {
    let mut report = MoveReport::default();
    for len in target.other_layouts().await? {
        let source = open(len)?;
        let mut owners = source.owners().await?;
        owners.retain(|owner| !stay.contains(&owner.to_hex()));
        let total = owners.len() as u64;
        for (done, owner) in owners.iter().enumerate() {
            report.memories += move_owner(source.as_ref(), target, owner).await?;
            report.owners += 1;
            progress(done as u64 + 1, total);
        }
        report.removed += source.remove_empty().await?;
        source.shutdown().await;
        report.layouts.push(len);
    }
    Ok(report)
}

/// Copies one owner's memories from `source` to `target`, checks the copy,
/// then erases them from `source`; returns how many moved.
async fn move_owner(
    source: &dyn Engine,
    target: &dyn Engine,
    owner: &OwnerHash,
) -> Result<usize, StoreError> {
    let copied = copy(source, target, owner, PAGE, None).await?;
    let matched = matching(target, owner, &copied).await?;
    if matched != copied.len() {
        return Err(StoreError::Internal(format!(
            "{} of an owner's {} memories did not read back the same from the new layout; \
             nothing of this owner was erased from the old one",
            copied.len() - matched,
            copied.len()
        )));
    }
    source.erase(owner).await?;
    Ok(copied.len())
}

/// Writes the owner's points of `source` into `target`, `page` at a time
/// (at most `pages` pages, for tests that stop a move midway); returns the
/// payloads copied, by id.
async fn copy(
    source: &dyn Engine,
    target: &dyn Engine,
    owner: &OwnerHash,
    page: usize,
    pages: Option<usize>,
) -> Result<HashMap<Uuid, Map<String, Value>>, StoreError> {
    let mut copied = HashMap::new();
    let mut after = None;
    for _ in 0..pages.unwrap_or(usize::MAX) {
        let page = source.export_page(owner, after, page).await?;
        let mut memories = Vec::with_capacity(page.points.len());
        for point in page.points {
            copied.insert(point.id, point.payload.clone());
            let id = point.id;
            memories.push(NewMemory::from_stored(point).ok_or_else(|| {
                StoreError::Internal(format!(
                    "stored point {id} lacks its vector or creation time; nothing of this owner was erased"
                ))
            })?);
        }
        if !memories.is_empty() {
            target.upsert(owner, memories).await?;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(copied)
}

/// How many of `copied` the owner holds in `target` with the same payload.
async fn matching(
    target: &dyn Engine,
    owner: &OwnerHash,
    copied: &HashMap<Uuid, Map<String, Value>>,
) -> Result<usize, StoreError> {
    let mut after = None;
    let mut matched = 0;
    loop {
        let page = target.export_page(owner, after, PAGE).await?;
        matched += page
            .points
            .iter()
            .filter(|point| copied.get(&point.id) == Some(&point.payload))
            .count();
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(matched),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::embed::DIMENSIONS;
    use crate::secret::Secret;
    use crate::store::edge::{EdgeEngine, EdgeSettings};

    fn open(data: &std::path::Path, hex_chars: usize) -> Arc<EdgeEngine> {
        Arc::new(
            EdgeEngine::open(EdgeSettings {
                data_dir: data.to_owned(),
                collection_prefix: "cordon_".into(),
                name_hex_chars: hex_chars,
                max_open_shards: 16,
                drill_skip_read_filter: false,
                purge_after: Duration::from_secs(3600),
                wal_growth_bytes: crate::store::edge::pool::WAL_GROWTH_BYTES,
                min_free_bytes: 0,
            })
            .expect("the engine opens"),
        )
    }

    fn memory(owner: usize, n: usize) -> NewMemory {
        let mut vector = vec![0.0; DIMENSIONS];
        vector[(owner * 7 + n) % DIMENSIONS] = 1.0;
        let mut metadata = Map::new();
        metadata.insert("n".into(), Value::from(n));
        NewMemory {
            id: Uuid::now_v7(),
            text: format!("owner {owner} memory {n}"),
            metadata,
            created_at: 1_700_000_000_000 + n as i64,
            vector,
            request: None,
            sealed: None,
            expires_at: None,
            version: 1,
            updated_at: None,
            terms: Vec::new(),
        }
    }

    /// Each owner's (id, text, metadata) in `engine`, sorted.
    async fn held(engine: &dyn Engine, owner: &OwnerHash) -> Vec<(Uuid, String, Value)> {
        let page = engine.export_page(owner, None, 100).await.expect("reads");
        let mut held: Vec<_> = page
            .points
            .into_iter()
            .map(|p| {
                assert_eq!(p.vector.as_ref().map(Vec::len), Some(DIMENSIONS));
                (
                    p.id,
                    p.payload["text"].as_str().expect("text").to_owned(),
                    p.payload["metadata"].clone(),
                )
            })
            .collect();
        held.sort_by_key(|h| h.0);
        held
    }

    #[tokio::test]
    async fn a_move_cut_short_midway_or_before_its_erase_finishes_with_every_memory_once() {
        let data = tempfile::tempdir().expect("temp dir");
        let per_user = open(data.path(), 32);
        let secret = Secret::new(vec![9u8; 32]);
        let owners: Vec<OwnerHash> = (0..3)
            .map(|n| OwnerHash::derive(&secret, "t", &format!("user-{n}")))
            .collect();
        let mut before = Vec::new();
        for (o, owner) in owners.iter().enumerate() {
            let memories = (0..5).map(|n| memory(o, n)).collect();
            per_user.upsert(owner, memories).await.expect("stored");
            before.push(held(&per_user, owner).await);
        }
        let shared_edge = Arc::new(per_user.open_beside(2).expect("opens"));
        let shared: Arc<dyn Engine> = Arc::new(shared_edge.clone());
        // Cut short mid-copy: two of five copied; then copied in full, not erased.
        copy(&per_user, shared.as_ref(), &owners[0], 2, Some(1))
            .await
            .expect("copied");
        copy(&per_user, shared.as_ref(), &owners[1], PAGE, None)
            .await
            .expect("copied");
        assert_eq!(held(shared.as_ref(), &owners[0]).await.len(), 2);
        assert_eq!(
            shared.other_layouts().await.expect("listed"),
            BTreeSet::from([32])
        );
        check_layout(shared.as_ref())
            .await
            .expect_err("a half-moved deployment does not serve");

        let source = per_user.clone();
        let report = migrate(
            shared.as_ref(),
            |len| {
                assert_eq!(len, 32);
                Ok(Arc::new(source.clone()) as Arc<dyn Engine>)
            },
            &HashSet::new(),
            &|_, _| {},
        )
        .await
        .expect("the move finishes");
        assert_eq!((report.owners, report.memories), (3, 15));
        assert_eq!(report.layouts, [32]);
        // The move closed its source; the old layout is read afresh.
        let old_layout = Arc::new(shared_edge.open_beside(32).expect("opens"));
        for (o, owner) in owners.iter().enumerate() {
            assert_eq!(held(shared.as_ref(), owner).await, before[o], "owner {o}");
            assert!(held(&old_layout, owner).await.is_empty());
        }
        assert!(shared.other_layouts().await.expect("listed").is_empty());
        check_layout(shared.as_ref())
            .await
            .expect("one layout left");
    }
}
