//! Expiry: memories that live until a time, and the sweep that deletes them.
//!
//! A memory may carry an expiry time. Every read leaves out a memory whose
//! time has come (the engines' filters, then the guarded store once more),
//! so it is gone from every answer at that moment. Deleting it for good is
//! the [`Sweeper`]'s work: a background task that runs away from any
//! request, yet always on behalf of one owner. Each of its deletions names
//! the owner it is for and carries the owner condition down to the engine,
//! so a sweep for one user cannot touch another's memories, even where
//! shortened names put both in one collection.
//!
//! The sweeper learns whom to visit from the writes this process makes
//! (each expiring store or update notes its owner and time) and from a scan
//! of the whole deployment at start. Where other replicas write the same
//! collections, the scan is repeated every [`RESCAN`], for what a replica
//! that stopped had noted.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::api::Quotas;
use crate::guarded::GuardedStore;
use crate::metrics::Metrics;
use crate::owner::OwnerHash;

/// How often the deployment is scanned again where replicas share it.
pub const RESCAN: Duration = Duration::from_secs(3600);

/// Most owners one scan returns; the rest are found by the next.
const SCAN_OWNERS: usize = 100_000;

/// Deletes expired memories, owner by owner.
pub struct Sweeper {
    store: GuardedStore,
    quotas: Arc<Quotas>,
    metrics: Arc<Metrics>,
    every: Duration,
    /// Owners to visit, by the sweep time (Unix ms, rounded up to a tick)
    /// from which one of their memories has expired.
    due: Mutex<BTreeMap<i64, HashSet<OwnerHash>>>,
}

impl Sweeper {
    /// A sweeper of `store` that visits every `every`.
    pub fn new(
        store: GuardedStore,
        quotas: Arc<Quotas>,
        metrics: Arc<Metrics>,
        every: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            quotas,
            metrics,
            every,
            due: Mutex::new(BTreeMap::new()),
        })
    }

    /// Notes that one of `owner`'s memories expires at `at` (Unix ms).
    pub fn note(&self, owner: &OwnerHash, at: i64) {
        // Rounded up to the tick, so that one owner's many memories expiring
        // within a tick cost one entry.
        let tick = (self.every.as_millis() as i64).max(1);
        let slot = at.div_euclid(tick).saturating_add(1).saturating_mul(tick);
        self.due
            .lock()
            .entry(slot)
            .or_default()
            .insert(owner.clone());
    }

    /// Deletes the memories of every noted owner that expired by `now`;
    /// returns how many. An owner whose deletion fails is noted again for
    /// the next sweep.
    pub async fn sweep(&self, now: i64) -> usize {
        let owners: HashSet<OwnerHash> = {
            let mut due = self.due.lock();
            let later = due.split_off(&(now + 1));
            std::mem::replace(&mut *due, later)
                .into_values()
                .flatten()
                .collect()
        };
        let mut deleted = 0;
        for owner in owners {
            match self.store.delete_expired(&owner, now).await {
                Ok(0) => {}
                Ok(n) => {
                    deleted += n;
                    // Their byte total is listed again at their next store.
                    self.quotas.forget(&owner);
                    self.metrics.expired(n);
                    tracing::debug!(owner = %owner.log_tag(), deleted = n, "expired memories deleted");
                }
                Err(e) => {
                    tracing::warn!(owner = %owner.log_tag(), error = %e, "expiry sweep failed; retried at the next");
                    self.note(&owner, now);
                }
            }
        }
        deleted
    }

    /// Notes every owner the deployment holds expiring memories of.
    pub async fn scan(&self) -> Result<usize, crate::store::StoreError> {
        let found = self.store.expiring(i64::MAX, SCAN_OWNERS).await?;
        for (owner, at) in &found {
            self.note(owner, *at);
        }
        Ok(found.len())
    }

    /// Runs the scan and then the sweeps in the background, until the
    /// sweeper is dropped.
    pub fn start(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.every;
        let rescan = self.store.written_by_others();
        tokio::spawn(async move {
            let mut scanned: Option<tokio::time::Instant> = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let due = match scanned {
                    None => true,
                    Some(at) => rescan && at.elapsed() >= RESCAN,
                };
                if due {
                    match this.scan().await {
                        Ok(n) => {
                            scanned = Some(tokio::time::Instant::now());
                            tracing::debug!(owners = n, "expiry scan done");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "expiry scan failed; retried at the next tick")
                        }
                    }
                }
                this.sweep(now_ms()).await;
            }
        });
    }
}

/// The time now, Unix milliseconds.
pub fn now_ms() -> i64 {
    crate::store::placement::now_ms() as i64
}
