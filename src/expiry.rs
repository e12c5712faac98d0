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
//! The sweeper keeps, per owner, the earliest time one of their memories
//! expires: from the writes this process makes (each expiring store or
//! update notes its owner and time), from a scan of the whole deployment at
//! start, and, after each visit, from the owner's next expiry. Where other
//! replicas write the same collections, the scan is repeated every
//! [`RESCAN`], for what a replica that stopped had noted.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::api::Quotas;
use crate::guarded::GuardedStore;
use crate::metrics::Metrics;
use crate::owner::OwnerHash;

/// How often the deployment is scanned again where replicas share it.
pub const RESCAN: Duration = Duration::from_secs(3600);

/// Deletes expired memories, owner by owner.
pub struct Sweeper {
    store: GuardedStore,
    quotas: Arc<Quotas>,
    metrics: Arc<Metrics>,
    every: Duration,
    /// Owners to visit, each with the earliest time (Unix ms) one of their
    /// memories expires: one entry per owner, however many memories.
    due: Mutex<HashMap<OwnerHash, i64>>,
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
            due: Mutex::new(HashMap::new()),
        })
    }

    /// Notes that one of `owner`'s memories expires at `at` (Unix ms).
    pub fn note(&self, owner: &OwnerHash, at: i64) {
        let mut due = self.due.lock();
        let earliest = due.entry(owner.clone()).or_insert(at);
        *earliest = (*earliest).min(at);
    }

    /// Deletes the memories of every noted owner that expired by `now`,
    /// and notes each owner's next expiry; returns how many were deleted.
    /// An owner whose visit fails is noted again for the next sweep.
    pub async fn sweep(&self, now: i64) -> usize {
        let owners: Vec<OwnerHash> = {
            let mut due = self.due.lock();
            let owners: Vec<OwnerHash> = due
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(owner, _)| owner.clone())
                .collect();
            for owner in &owners {
                due.remove(owner);
            }
            owners
        };
        let mut deleted = 0;
        for owner in owners {
            match self.visit(&owner, now).await {
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::warn!(owner = %owner.log_tag(), error = %e, "expiry sweep failed; retried at the next");
                    self.note(&owner, now);
                }
            }
        }
        deleted
    }

    /// Deletes `owner`'s memories expired by `now` and notes their next.
    async fn visit(&self, owner: &OwnerHash, now: i64) -> Result<usize, crate::store::StoreError> {
        let n = self.store.delete_expired(owner, now).await?;
        if n > 0 {
            // Their byte total is listed again at their next store.
            self.quotas.forget(owner);
            self.metrics.expired(n);
            tracing::debug!(owner = %owner.log_tag(), deleted = n, "expired memories deleted");
        }
        if let Some(next) = self.store.next_expiry(owner, now).await? {
            self.note(owner, next);
        }
        Ok(n)
    }

    /// Notes every owner the deployment holds expiring memories of.
    pub async fn scan(&self) -> Result<usize, crate::store::StoreError> {
        let found = self.store.expiring(i64::MAX, usize::MAX).await?;
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
