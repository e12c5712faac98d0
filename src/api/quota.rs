//! Per-user storage quotas: how many memories, and how many bytes of text
//! and metadata, one user may keep. A store that would pass either is
//! refused with 413 `quota_exceeded`, naming the quota, and writes nothing.
//!
//! The count is asked of the engine on every store (an exact count on the
//! owner's index). Bytes have no engine-side sum, so each process keeps a
//! running total per user: one listing of the user's memories sets it, every
//! store adds and every delete subtracts what it changed, and an erase sets
//! it to zero. The listing is repeated only every [`RECONCILE_EVERY`] (what
//! other replicas wrote meanwhile), never because of a delete, so no
//! request pattern turns into repeated full reads of a collection. Both are
//! checked before the write: concurrent stores of one user can pass a quota
//! by what they carry together, at most `CORDON_MAX_IN_FLIGHT_PER_USER`
//! requests' worth (and, with several replicas, what each admits between
//! two reconciles).

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::guarded::GuardedStore;
use crate::owner::OwnerHash;

/// How long a user's running byte total is trusted before it is listed again.
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// Users whose byte totals are kept.
const KEPT_TOTALS: usize = 10_000;

/// Page size when totalling a user's bytes.
const PAGE: usize = 100;

/// A user's running byte total and when it was last listed.
#[derive(Debug, Clone, Copy)]
struct Total {
    bytes: u64,
    listed: Instant,
}

/// The quotas and the byte totals known so far.
pub struct Quotas {
    max_memories: u64,
    max_bytes: u64,
    totals: Mutex<LruCache<OwnerHash, Total>>,
}

impl Quotas {
    /// Quotas as configured; 0 means none.
    pub fn new(max_memories: u64, max_bytes: u64) -> Self {
        Self {
            max_memories,
            max_bytes,
            totals: Mutex::new(LruCache::new(
                NonZeroUsize::new(KEPT_TOTALS).expect("a non-zero constant"),
            )),
        }
    }

    /// Refuses a store of `memories` memories holding `bytes` bytes that
    /// would take `owner` past a quota.
    pub async fn admit(
        &self,
        store: &GuardedStore,
        owner: &OwnerHash,
        memories: usize,
        bytes: u64,
    ) -> Result<(), ApiError> {
        if self.max_memories > 0 {
            let held = store.count(owner).await? as u64;
            if held + memories as u64 > self.max_memories {
                return Err(ApiError::QuotaExceeded {
                    quota: "max_memories_per_user",
                });
            }
        }
        if self.max_bytes > 0 {
            let held = self.bytes(store, owner).await?;
            if held + bytes > self.max_bytes {
                return Err(ApiError::QuotaExceeded {
                    quota: "max_bytes_per_user",
                });
            }
        }
        Ok(())
    }

    /// Adds a store to `owner`'s running total.
    pub fn stored(&self, owner: &OwnerHash, bytes: u64) {
        if let Some(total) = self.totals.lock().get_mut(owner) {
            total.bytes += bytes;
        }
    }

    /// Takes a deleted memory's bytes off `owner`'s running total.
    pub fn deleted(&self, owner: &OwnerHash, bytes: u64) {
        if let Some(total) = self.totals.lock().get_mut(owner) {
            total.bytes = total.bytes.saturating_sub(bytes);
        }
    }

    /// Forgets `owner`'s running total, which the next store lists anew
    /// (after deletions made away from a request, such as expiry).
    pub fn forget(&self, owner: &OwnerHash) {
        self.totals.lock().pop(owner);
    }

    /// `owner` holds nothing any more.
    pub fn erased(&self, owner: &OwnerHash) {
        self.totals.lock().put(
            owner.clone(),
            Total {
                bytes: 0,
                listed: Instant::now(),
            },
        );
    }

    async fn bytes(&self, store: &GuardedStore, owner: &OwnerHash) -> Result<u64, ApiError> {
        if let Some(total) = self.totals.lock().get(owner)
            && total.listed.elapsed() < RECONCILE_EVERY
        {
            return Ok(total.bytes);
        }
        let listed = Instant::now();
        let mut bytes = 0;
        let mut after = None;
        loop {
            let page = store.tally_page(owner, after, PAGE).await?;
            bytes += page.memories.iter().map(|m| m.stored_bytes()).sum::<u64>();
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.totals
            .lock()
            .put(owner.clone(), Total { bytes, listed });
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use serde_json::{Map, Value};
    use uuid::Uuid;

    use super::*;
    use crate::guard::Guard;
    use crate::metrics::Metrics;
    use crate::secret::Secret;
    use crate::store::edge::{EdgeEngine, EdgeSettings};
    use crate::store::{
        Conditions, Engine, NewMemory, RawPage, RawPoint, Reseal, SearchQuery, StoreError,
    };

    /// The embedded engine, counting the pages listed from it.
    struct Listing {
        inner: Arc<EdgeEngine>,
        scrolls: AtomicUsize,
    }

    #[async_trait]
    impl Engine for Listing {
        async fn upsert(&self, o: &OwnerHash, m: Vec<NewMemory>) -> Result<(), StoreError> {
            self.inner.upsert(o, m).await
        }
        async fn update_existing(
            &self,
            o: &OwnerHash,
            m: Vec<NewMemory>,
        ) -> Result<(), StoreError> {
            self.inner.update_existing(o, m).await
        }
        async fn search(&self, o: &OwnerHash, q: SearchQuery) -> Result<Vec<RawPoint>, StoreError> {
            self.inner.search(o, q).await
        }
        async fn get(&self, o: &OwnerHash, id: Uuid) -> Result<Option<RawPoint>, StoreError> {
            self.inner.get(o, id).await
        }
        async fn delete(&self, o: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
            self.inner.delete(o, id).await
        }
        async fn scroll(
            &self,
            o: &OwnerHash,
            after: Option<Uuid>,
            limit: usize,
            f: &Conditions,
        ) -> Result<RawPage, StoreError> {
            self.scrolls.fetch_add(1, Ordering::SeqCst);
            self.inner.scroll(o, after, limit, f).await
        }
        async fn count_where(&self, o: &OwnerHash, f: &Conditions) -> Result<usize, StoreError> {
            self.inner.count_where(o, f).await
        }
        async fn replace(&self, o: &OwnerHash, m: NewMemory, v: u64) -> Result<(), StoreError> {
            self.inner.replace(o, m, v).await
        }
        async fn delete_expired(&self, o: &OwnerHash, now: i64) -> Result<usize, StoreError> {
            self.inner.delete_expired(o, now).await
        }
        async fn next_expiry(&self, o: &OwnerHash, a: i64) -> Result<Option<i64>, StoreError> {
            self.inner.next_expiry(o, a).await
        }
        async fn expiring(
            &self,
            before: i64,
            limit: usize,
        ) -> Result<Vec<(OwnerHash, i64)>, StoreError> {
            self.inner.expiring(before, limit).await
        }
        async fn erase(&self, o: &OwnerHash) -> Result<usize, StoreError> {
            self.inner.erase(o).await
        }
        async fn holds_other_owners(&self, o: &OwnerHash) -> Result<bool, StoreError> {
            self.inner.holds_other_owners(o).await
        }
        async fn place(&self, o: &OwnerHash) -> Result<String, StoreError> {
            self.inner.place(o).await
        }
        async fn count(&self, o: &OwnerHash) -> Result<usize, StoreError> {
            self.inner.count(o).await
        }
        async fn holds_memories(&self) -> Result<bool, StoreError> {
            self.inner.holds_memories().await
        }
        async fn ready(&self) -> Result<(), StoreError> {
            self.inner.ready().await
        }
        async fn shutdown(&self) {
            self.inner.shutdown().await
        }
        async fn owners(&self) -> Result<Vec<OwnerHash>, StoreError> {
            self.inner.owners().await
        }
        async fn export_page(
            &self,
            o: &OwnerHash,
            after: Option<Uuid>,
            limit: usize,
        ) -> Result<RawPage, StoreError> {
            self.inner.export_page(o, after, limit).await
        }
        async fn other_layouts(&self) -> Result<std::collections::BTreeSet<usize>, StoreError> {
            self.inner.other_layouts().await
        }
        async fn remove_empty(&self) -> Result<usize, StoreError> {
            self.inner.remove_empty().await
        }
        async fn names(&self) -> Result<Vec<String>, StoreError> {
            self.inner.names().await
        }
        async fn reseal_all(
            &self,
            r: Reseal,
            p: &(dyn Fn(u64, u64) + Send + Sync),
        ) -> Result<usize, StoreError> {
            self.inner.reseal_all(r, p).await
        }
    }

    fn memory(text: &str) -> NewMemory {
        NewMemory {
            id: Uuid::now_v7(),
            text: text.to_owned(),
            metadata: Map::new(),
            created_at: 1,
            vector: vec![0.05; crate::embed::DIMENSIONS],
            request: None,
            sealed: None,
            expires_at: None,
            version: 1,
            updated_at: None,
            terms: Vec::new(),
        }
    }

    #[tokio::test]
    async fn deletes_and_stores_adjust_the_byte_total_without_listing_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let edge = EdgeEngine::open(EdgeSettings {
            data_dir: dir.path().to_owned(),
            collection_prefix: "cordon_".into(),
            name_hex_chars: 32,
            max_open_shards: 4,
            drill_skip_read_filter: false,
            purge_after: Duration::from_secs(60),
            wal_growth_bytes: crate::store::edge::pool::WAL_GROWTH_BYTES,
            min_free_bytes: 0,
        })
        .expect("engine opens");
        let engine = Arc::new(Listing {
            inner: Arc::new(edge),
            scrolls: AtomicUsize::new(0),
        });
        let store = GuardedStore::new(engine.clone(), Guard::new(Arc::new(Metrics::default())));
        let owner = OwnerHash::derive(&Secret::new(vec![3u8; 32]), "t", "alice");
        let texts = ["a".repeat(100), "b".repeat(200), "c".repeat(300)];
        let memories: Vec<NewMemory> = texts.iter().map(|t| memory(t)).collect();
        let ids: Vec<Uuid> = memories.iter().map(|m| m.id).collect();
        let each = |t: &str| crate::guard::stored_bytes(t, &Map::<String, Value>::new());
        store.put(&owner, memories).await.expect("stored");

        let quotas = Quotas::new(0, 1_000);
        quotas.admit(&store, &owner, 1, 0).await.expect("within");
        let listed = engine.scrolls.load(Ordering::SeqCst);
        assert!(listed >= 1, "the first check lists the memories once");

        let deleted = store
            .delete(&owner, ids[2])
            .await
            .expect("deletes")
            .expect("was there");
        quotas.deleted(&owner, deleted.stored_bytes());
        let room = 1_000 - each(&texts[0]) - each(&texts[1]);
        quotas
            .admit(&store, &owner, 1, room)
            .await
            .expect("the delete made room");
        assert!(matches!(
            quotas.admit(&store, &owner, 1, room + 1).await,
            Err(ApiError::QuotaExceeded { .. })
        ));
        quotas.stored(&owner, 10);
        assert!(matches!(
            quotas.admit(&store, &owner, 1, room - 9).await,
            Err(ApiError::QuotaExceeded { .. })
        ));
        quotas.erased(&owner);
        quotas
            .admit(&store, &owner, 1, 1_000)
            .await
            .expect("empty after an erase");
        assert_eq!(
            engine.scrolls.load(Ordering::SeqCst),
            listed,
            "nothing was listed again"
        );
    }
}
