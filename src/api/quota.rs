//! Per-user storage quotas: how many memories, and how many bytes of text
//! and metadata, one user may keep. A store that would pass either is
//! refused with 413 `quota_exceeded`, naming the quota, and writes nothing.
//!
//! The count is asked of the engine on every store (an exact count on the
//! owner's index). Bytes have no engine-side sum, so each process keeps a
//! user's total from one read of their memories, adds what it stores, and
//! reads again after a delete or erase, or once the total is older than
//! [`BYTES_TTL`] (other replicas' writes). Both are checked before the
//! write: concurrent stores of one user can pass a quota by what they carry
//! together, at most `CORDON_MAX_IN_FLIGHT_PER_USER` requests' worth.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::guarded::GuardedStore;
use crate::owner::OwnerHash;

/// How long a user's byte total is trusted before it is read again.
const BYTES_TTL: Duration = Duration::from_secs(30);

/// Users whose byte totals are kept.
const KEPT_TOTALS: usize = 10_000;

/// Page size when totalling a user's bytes.
const PAGE: usize = 100;

/// The quotas and the byte totals known so far.
pub struct Quotas {
    max_memories: u64,
    max_bytes: u64,
    totals: Mutex<LruCache<OwnerHash, (u64, Instant)>>,
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

    /// Adds a successful store to `owner`'s known total.
    pub fn stored(&self, owner: &OwnerHash, bytes: u64) {
        if let Some((total, _)) = self.totals.lock().get_mut(owner) {
            *total += bytes;
        }
    }

    /// Forgets `owner`'s total (after a delete or an erase).
    pub fn forget(&self, owner: &OwnerHash) {
        self.totals.lock().pop(owner);
    }

    async fn bytes(&self, store: &GuardedStore, owner: &OwnerHash) -> Result<u64, ApiError> {
        if let Some((total, at)) = self.totals.lock().get(owner)
            && at.elapsed() < BYTES_TTL
        {
            return Ok(*total);
        }
        let started = Instant::now();
        let mut total = 0;
        let mut after = None;
        loop {
            let page = store.list(owner, after, PAGE).await?;
            total += page.memories.iter().map(|m| m.stored_bytes()).sum::<u64>();
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.totals.lock().put(owner.clone(), (total, started));
        Ok(total)
    }
}
