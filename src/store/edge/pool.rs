//! The open-shard pool: one [`Slot`] per shard directory, in a bounded LRU.
//!
//! Each open shard holds file descriptors and memory maps, so only a bounded
//! number stay open; the bound is lowered at start to fit `vm.max_map_count`.
//! A shard leaves the pool only when no request (and no rewrite) holds its
//! slot, and it is closed under the pool lock so that no second handle can
//! open the same directory while it flushes.
//!
//! Locking: each slot has one `RwLock`. Reads share it; writes, flushes,
//! closes and the swap of a rewrite take it exclusively, because
//! `EdgeShard::flush` (which `Drop` also runs) panics if an update holds the
//! shard's internal locks. A write applies its update under the lock and
//! releases it before its flush, so that writes arriving meanwhile are
//! applied too and one flush makes them all durable (group commit); each is
//! acknowledged only after a flush that covers it. Reads may see a write
//! before it is acknowledged, never one that failed to apply.
//!
//! A flush that fails (an I/O error) fails every write it covered, with 503.
//! The slot is then retired: its shard closes, it refuses from then on, and
//! the pool hands the next request a fresh slot that reopens the directory
//! from its files, after dropping their pages from the page cache (which may
//! hold what the failed sync could not write, marked clean). The files hold
//! what the last good flush wrote, plus whatever the closing flush managed
//! to write, so a refused write may still land, whole, like a write whose
//! answer timed out (a retry with the same `Idempotency-Key` settles it, by
//! writing it again). The same holds for every write applied before a close
//! whose flush failed (a rewrite's, an erase's): retiring the slot fails them.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use lru::LruCache;
use parking_lot::{Condvar, Mutex, RwLock};
use qdrant_edge::{
    CreateIndex, EdgeShard, FieldIndexOperations, KeywordIndexParams, PayloadFieldSchema,
    PayloadSchemaParams, PayloadSchemaType, PointOperations, UpdateOperation, WithPayloadInterface,
    WithVector,
};

use super::{engine_err, owner_path, shard_config};
use super::{fault, files};
use crate::store::StoreError;

/// Memory maps a small user's open shard holds (measured: 100 open shards
/// added 2,294 maps to the process; a shard of 1,600 memories after a rewrite
/// holds 26): sizes the default count bound. The pool also evicts by the
/// maps its shards really hold (see [`Slot::maps`]).
pub const MAPS_PER_OPEN_SHARD: usize = 24;

/// Maps left for everything else in the process (model, runtime, libraries).
pub const MAPS_HEADROOM: usize = 4096;

/// Default WAL growth allowed past twice the size a shard's WAL had right
/// after its last rewrite, before it is rewritten again.
pub const WAL_GROWTH_BYTES: u64 = 4 * 1024 * 1024;

/// The largest LRU bound that fits under the kernel's `vm.max_map_count`,
/// or `wanted` when the limit cannot be read or is high enough.
pub fn fit_open_shards(wanted: usize, max_map_count: Option<usize>) -> usize {
    match max_map_count {
        Some(limit) if wanted * MAPS_PER_OPEN_SHARD + MAPS_HEADROOM > limit => {
            (limit.saturating_sub(MAPS_HEADROOM) / MAPS_PER_OPEN_SHARD).max(1)
        }
        _ => wanted,
    }
}

/// Reads `vm.max_map_count` (Linux).
pub fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One shard directory: `None` until opened, and again after erase.
pub struct Slot {
    /// The shard's directory name (its collection name).
    pub name: String,
    /// The shard's directory.
    pub dir: PathBuf,
    /// Whether the shard's owner index is a tenant index (shared-tier
    /// names, which several users' memories share).
    pub tenant_index: bool,
    /// The open shard, if any.
    pub shard: RwLock<Option<EdgeShard>>,
    /// Bumped whenever the open shard is replaced or closed, so that a rewrite
    /// swaps in its copy only over the very shard it copied.
    generation: AtomicU64,
    /// While a rewrite copies this shard, the writes acknowledged meanwhile,
    /// in order, to be replayed onto the copy before the swap. Only changed
    /// under the shard's write lock.
    pub journal: Mutex<Option<Vec<UpdateOperation>>>,
    /// WAL bytes past which the shard is due for a rewrite.
    wal_limit: AtomicU64,
    /// Growth allowed on top of twice the baseline (see [`WAL_GROWTH_BYTES`]).
    wal_growth: u64,
    /// Set when a swap failed midway: the directory is only repaired at the
    /// next start, so until then the shard refuses to serve.
    broken: AtomicBool,
    /// Set when a write failed to flush: this slot's shard is closed for
    /// good and the pool replaces the slot (see the module docs).
    retired: AtomicBool,
    /// Set on the slot that replaces a retired one: the page cache may hold
    /// what the failed flush claimed to write, so the shard's cached pages
    /// are dropped before it opens and it is read from the disk.
    distrust_cache: AtomicBool,
    /// Memory maps the open shard holds, estimated at open by its files
    /// (each WAL segment, vector chunk, payload page and index file is one
    /// map; measured: 26 maps for 32 files); 0 while closed.
    maps: AtomicUsize,
    /// Deletes since the shard was opened or last rewritten (1 at open when
    /// a purge is pending): a rewrite can only shrink a shard that has some.
    dead: AtomicU64,
    /// Updates applied so far (their sequence numbers).
    applied: AtomicU64,
    /// Which applied updates are flushed, and whether a flush is running.
    commit: Mutex<Commit>,
    /// Signalled when a flush ends.
    committed: Condvar,
}

/// Group-commit state of a slot.
#[derive(Default)]
struct Commit {
    /// Every update up to this sequence number is durable.
    flushed: u64,
    /// Whether some caller is flushing now (the others wait for it).
    flushing: bool,
    /// Whether a flush failed: every update not yet flushed then is lost
    /// (and the slot is retired, so no later update exists).
    failed: bool,
}

/// Clears `flushing` and wakes the waiters if a flush unwinds, so that a
/// failed flush never leaves a shard's writers waiting for good.
struct FlushingReset<'a>(&'a Slot);

impl Drop for FlushingReset<'_> {
    fn drop(&mut self) {
        self.0.commit.lock().flushing = false;
        self.0.committed.notify_all();
    }
}

impl Slot {
    fn new(name: String, dir: PathBuf, wal_growth: u64, tenant_index: bool) -> Self {
        Self {
            name,
            dir,
            tenant_index,
            shard: RwLock::new(None),
            generation: AtomicU64::new(0),
            journal: Mutex::new(None),
            wal_limit: AtomicU64::new(wal_growth),
            wal_growth,
            broken: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            distrust_cache: AtomicBool::new(false),
            maps: AtomicUsize::new(0),
            dead: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            commit: Mutex::new(Commit::default()),
            committed: Condvar::new(),
        }
    }

    /// Which open shard this is (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks the open shard as replaced or closed.
    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Refuses service until restart (see the field).
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// Whether the slot was retired after a failed flush.
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Closes the shard held in `guard` (the slot's exclusive lock) after a
    /// failed write or close and retires the slot: a rewrite copying it is
    /// cancelled, every write applied and not yet flushed fails (its writer
    /// gets 503, never an acknowledgement), and the pool replaces the slot on
    /// the next request.
    pub fn retire(&self, guard: &mut Option<EdgeShard>) {
        *self.journal.lock() = None;
        if let Some(shard) = guard.take() {
            fault::close(shard, &self.name);
        }
        self.retired.store(true, Ordering::Release);
        self.maps.store(0, Ordering::Release);
        self.bump_generation();
        self.commit.lock().failed = true;
        self.committed.notify_all();
    }

    /// Sets the rewrite bound from the WAL size right after the last rewrite.
    pub fn set_wal_baseline(&self, baseline: u64) {
        self.wal_limit
            .store(2 * baseline + self.wal_growth, Ordering::Release);
    }

    /// Whether the WAL has grown past its bound.
    pub fn wal_over_limit(&self) -> bool {
        files::wal_bytes(&self.dir) > self.wal_limit.load(Ordering::Acquire)
    }

    /// The maps the open shard is estimated to hold.
    pub fn maps(&self) -> usize {
        self.maps.load(Ordering::Acquire)
    }

    /// Re-estimates the maps from the shard's files (after an open or a swap).
    pub fn count_maps(&self) {
        self.maps
            .store(files::file_count(&self.dir), Ordering::Release);
    }

    /// Counts a delete; returns the deletes since the last rewrite.
    pub fn add_dead(&self) -> u64 {
        self.dead.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Deletes since the shard was opened or last rewritten.
    pub fn dead(&self) -> u64 {
        self.dead.load(Ordering::Acquire)
    }

    /// Restarts the count after a rewrite that kept `left` deleted points.
    pub fn reset_dead(&self, left: u64) {
        self.dead.store(left, Ordering::Release);
    }

    /// Opens the shard if its directory exists (or `create` is set).
    /// Returns false when there is nothing to open.
    pub fn ensure_open(&self, create: bool) -> Result<bool, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "a shard rewrite failed midway; restart to repair it".into(),
            ));
        }
        if self.shard.read().is_some() {
            return Ok(true);
        }
        let mut guard = self.shard.write();
        if guard.is_some() {
            return Ok(true);
        }
        // Checked under the lock: `retire` closes the shard under it, and a
        // request that found this slot just before must not reopen the
        // directory behind the pool's back.
        if self.retired() {
            return Err(StoreError::Unavailable(
                "a write to this shard failed; it is reopening".into(),
            ));
        }
        let exists = self.dir.join("edge_config.json").is_file();
        if !exists && !create {
            return Ok(false);
        }
        if !exists {
            std::fs::create_dir_all(&self.dir).map_err(engine_err)?;
        } else if self.distrust_cache.swap(false, Ordering::AcqRel) {
            files::drop_cached_pages(&self.dir);
        }
        let shard = EdgeShard::load(&self.dir, Some(shard_config())).map_err(engine_err)?;
        if !files::is_set_up(&self.dir) {
            // New, or its set-up was cut short by a failure: done again
            // before it serves. Closed through `fault` if that fails, since
            // its `Drop` flushes and may panic.
            if let Err(e) = set_up(&shard, &self.dir, self.tenant_index) {
                fault::close(shard, &self.name);
                return Err(e);
            }
        }
        self.set_wal_baseline(files::read_baseline(&self.dir));
        let pending = files::purge_pending_since(&self.dir).is_some();
        self.reset_dead(u64::from(pending));
        self.count_maps();
        *guard = Some(shard);
        self.bump_generation();
        Ok(true)
    }

    /// Runs `f` on the open shard under the shared lock; `None` if there is
    /// no shard.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&EdgeShard) -> Result<R, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        if !self.ensure_open(false)? {
            return Ok(None);
        }
        let guard = self.shard.read();
        match guard.as_ref() {
            Some(shard) => f(shard).map(Some),
            // Erased between open and read: nothing to read.
            None => Ok(None),
        }
    }

    /// Applies an update under the exclusive lock (`before` runs first under
    /// the same lock) and returns once it is durable. Updates applied while
    /// another flush runs share the next one (group commit). The update joins
    /// the journal of a rewrite in progress.
    pub fn update(
        &self,
        create: bool,
        op: UpdateOperation,
        before: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<Option<()>, StoreError> {
        let applied = self.write(create, |shard| {
            before()?;
            let copy = self.journal.lock().is_some().then(|| op.clone());
            let undo = undo_of(shard, &op);
            if let Err(e) = shard.update(op) {
                // An upsert can fail after some of its points were applied
                // (a segment refusing a new file); take those out again so
                // that the next flush cannot make half of a refused write
                // durable.
                if let Some(undo) = undo {
                    let _ = shard.update(undo);
                }
                return Err(engine_err(e));
            }
            if let (Some(op), Some(journal)) = (copy, self.journal.lock().as_mut()) {
                journal.push(op);
            }
            Ok(self.applied.fetch_add(1, Ordering::AcqRel) + 1)
        })?;
        match applied {
            Some(seq) => self.commit(seq).map(Some),
            None => Ok(None),
        }
    }

    /// Waits until update number `seq` is flushed, flushing it if no other
    /// caller is. A flush takes the exclusive lock (qdrant-edge's flush must
    /// not overlap an update) and covers every update applied before it.
    fn commit(&self, seq: u64) -> Result<(), StoreError> {
        let mut state = self.commit.lock();
        loop {
            if state.flushed >= seq {
                return Ok(());
            }
            if state.failed {
                return Err(StoreError::Unavailable(
                    "the shard's flush failed (an I/O error); the write may not have landed".into(),
                ));
            }
            if state.flushing {
                self.committed.wait(&mut state);
                continue;
            }
            state.flushing = true;
            drop(state);
            // Whatever happens to this flush (qdrant-edge panics on I/O
            // errors), the next waiter must be able to take over.
            let reset = FlushingReset(self);
            let (covered, flushed) = {
                let mut guard = self.shard.write();
                let covered = self.applied.load(Ordering::Acquire);
                // No shard: it was closed after this update by an erase
                // (which removed it) or a rewrite's swap (whose copy holds
                // it, synced); a close that lost it retired the slot, and
                // `failed` is set.
                let flushed = guard.as_ref().map_or(Ok(()), fault::flush);
                if let Err(e) = &flushed {
                    tracing::error!(shard = %self.name, error = %e, "write failed; closing the shard");
                    self.retire(&mut guard);
                }
                (covered, flushed)
            };
            std::mem::forget(reset);
            state = self.commit.lock();
            match flushed {
                Ok(()) => state.flushed = state.flushed.max(covered),
                Err(_) => state.failed = true,
            }
            state.flushing = false;
            self.committed.notify_all();
        }
    }

    /// Applies `op` and returns its sequence number without waiting for the
    /// flush, as a writer does just before it waits in `commit`.
    #[cfg(test)]
    pub(super) fn apply_unflushed(&self, op: UpdateOperation) -> u64 {
        self.write(false, |shard| {
            shard.update(op).map_err(engine_err)?;
            Ok(self.applied.fetch_add(1, Ordering::AcqRel) + 1)
        })
        .expect("applied")
        .expect("the shard is open")
    }

    /// Waits for update `seq` to be flushed, as its writer does.
    #[cfg(test)]
    pub(super) fn flushed(&self, seq: u64) -> Result<(), StoreError> {
        self.commit(seq)
    }

    /// Runs `f` on the open shard under the exclusive lock.
    pub fn write<R>(
        &self,
        create: bool,
        f: impl FnOnce(&EdgeShard) -> Result<R, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        loop {
            if !self.ensure_open(create)? {
                return Ok(None);
            }
            let guard = self.shard.write();
            if let Some(shard) = guard.as_ref() {
                return f(shard).map(Some);
            }
            // Erased between open and write: open again.
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shard) = self.shard.get_mut().take() {
            fault::close(shard, &self.name);
        }
    }
}

/// The update that takes out again the points `op` would add to `shard`
/// (those it does not hold yet: an upsert over existing points, such as
/// two racing retries under one `Idempotency-Key`, must not delete them).
fn undo_of(shard: &EdgeShard, op: &UpdateOperation) -> Option<UpdateOperation> {
    let UpdateOperation::PointOperation(
        points @ (PointOperations::UpsertPoints(_) | PointOperations::UpsertPointsConditional(_)),
    ) = op
    else {
        return None;
    };
    let ids = points.point_ids()?;
    let held: HashSet<_> = shard
        .retrieve(
            &ids,
            Some(WithPayloadInterface::Bool(false)),
            Some(WithVector::Bool(false)),
        )
        .ok()?
        .into_iter()
        .map(|record| record.id)
        .collect();
    let ids: Vec<_> = ids.into_iter().filter(|id| !held.contains(id)).collect();
    (!ids.is_empty())
        .then(|| UpdateOperation::PointOperation(PointOperations::DeletePoints { ids }))
}

/// Makes a shard that was just created (or whose set-up failed) ready to
/// serve: the owner index, then a sync of every directory it made (its
/// segments, its WAL) and of its entry in the shards directory, which must
/// outlive a power loss with the first write they hold, then the marker.
fn set_up(shard: &EdgeShard, dir: &Path, tenant_index: bool) -> Result<(), StoreError> {
    create_owner_index(shard, tenant_index)?;
    files::sync_tree(dir)?;
    if let Some(root) = dir.parent() {
        files::sync_dir(root)?;
    }
    files::mark_set_up(dir)
}

/// Creates the keyword index on the owner field, which every read filters
/// on: a tenant index in a shard that several users share.
pub fn create_owner_index(shard: &EdgeShard, tenant_index: bool) -> Result<(), StoreError> {
    let field_schema = if tenant_index {
        PayloadFieldSchema::FieldParams(PayloadSchemaParams::Keyword(KeywordIndexParams {
            is_tenant: Some(true),
            ..KeywordIndexParams::default()
        }))
    } else {
        PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)
    };
    shard
        .update(UpdateOperation::FieldIndexOperation(
            FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: owner_path(),
                field_schema: Some(field_schema),
            }),
        ))
        .map_err(engine_err)
}

/// The bounded LRU of slots.
pub struct Pool {
    root: PathBuf,
    cap: usize,
    /// Memory maps the open shards may hold together.
    map_budget: AtomicUsize,
    wal_growth: u64,
    /// Whether new shards get a tenant index (see [`Slot::tenant_index`]).
    tenant_index: bool,
    slots: Mutex<LruCache<String, Arc<Slot>>>,
    /// Shards whose swap failed midway: refused until a restart repairs
    /// them, even after their slot leaves the pool.
    broken: Mutex<HashSet<String>>,
    /// Set at shutdown: no shard opens any more.
    closed: AtomicBool,
}

impl Pool {
    /// An empty pool for shards under `root`, keeping at most `cap` idle
    /// shards holding at most `map_budget` maps together, whose WALs may grow
    /// by `wal_growth` past twice their baseline; `tenant_index` where users
    /// share shards.
    pub fn new(
        root: &Path,
        cap: usize,
        map_budget: usize,
        wal_growth: u64,
        tenant_index: bool,
    ) -> Self {
        let cap = cap.max(1);
        Self {
            root: root.to_owned(),
            cap,
            map_budget: AtomicUsize::new(map_budget),
            wal_growth,
            tenant_index,
            slots: Mutex::new(LruCache::new(
                NonZeroUsize::new(cap).expect("max(1) is non-zero"),
            )),
            broken: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Halves the memory maps this pool's open shards may hold, for a
    /// second pool beside it; returns the other half.
    pub fn halve_map_budget(&self) -> usize {
        let whole = self.map_budget.load(Ordering::Acquire);
        self.map_budget.store(whole - whole / 2, Ordering::Release);
        whole / 2
    }

    /// Shards in the pool: open, or opening for a request.
    pub fn open(&self) -> usize {
        self.slots.lock().len()
    }

    /// Refuses `slot`'s shard until the next start (see [`Pool::broken`]).
    pub fn mark_broken(&self, slot: &Slot) {
        self.broken.lock().insert(slot.name.clone());
        slot.mark_broken();
    }

    /// The slot of shard `name`, created closed if it is not in the pool;
    /// refused once the pool is closed.
    pub fn slot(&self, name: &str) -> Result<Arc<Slot>, StoreError> {
        let mut pool = self.slots.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("shutting down".into()));
        }
        let mut replaced_retired = false;
        if let Some(slot) = pool.get(name) {
            if !slot.retired() {
                return Ok(slot.clone());
            }
            // Its shard is closed (see `Slot::retire`); a fresh slot reopens
            // the directory. Requests still holding the old one get 503.
            pool.pop(name);
            replaced_retired = true;
        }
        let slot = Arc::new(Slot::new(
            name.to_owned(),
            self.root.join(name),
            self.wal_growth,
            self.tenant_index,
        ));
        if replaced_retired {
            slot.distrust_cache.store(true, Ordering::Release);
        }
        if self.broken.lock().contains(name) {
            slot.mark_broken();
        }
        // Counted before it opens, so that making room for it accounts for it.
        slot.count_maps();
        // `push` never evicts on its own here: capacity is managed below so
        // that a shard in use is never closed under a running request.
        let grown = NonZeroUsize::new(pool.len() + 1).expect("len + 1 is non-zero");
        pool.resize(grown);
        pool.push(name.to_owned(), slot.clone());
        self.evict_idle(&mut pool);
        Ok(slot)
    }

    fn evict_idle(&self, pool: &mut LruCache<String, Arc<Slot>>) {
        let mut maps: usize = pool.iter().map(|(_, slot)| slot.maps()).sum();
        if pool.len() <= self.cap && maps <= self.map_budget.load(Ordering::Acquire) {
            return;
        }
        // Oldest first, until both the count and the maps fit; only slots
        // that nobody else holds (the pool's Arc is the only one) may close.
        let mut len = pool.len();
        let mut idle = Vec::new();
        for (name, slot) in pool.iter().rev() {
            if len <= self.cap && maps <= self.map_budget.load(Ordering::Acquire) {
                break;
            }
            if Arc::strong_count(slot) == 1 {
                idle.push(name.clone());
                len -= 1;
                maps = maps.saturating_sub(slot.maps());
            }
        }
        for name in idle {
            // Dropping the slot drops the shard, which flushes it. This happens
            // under the pool lock on purpose: nobody can reopen the directory
            // until the flush is done.
            pool.pop(&name);
        }
        let len = pool.len();
        pool.resize(NonZeroUsize::new(len.max(self.cap)).expect("max(cap>=1) is non-zero"));
    }

    /// Closes the pool: no shard opens from now on. Waits up to `patience`
    /// for the requests that hold a shard to let go, then closes every
    /// shard (one still held closes when its last holder lets go, and no
    /// second handle can open it meanwhile). Returns how many slots there were.
    pub fn close(&self, patience: std::time::Duration) -> usize {
        self.closed.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + patience;
        loop {
            let held = self
                .slots
                .lock()
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) > 1)
                .count();
            if held == 0 || std::time::Instant::now() >= deadline {
                if held > 0 {
                    tracing::warn!(held, "closing the store while requests still hold shards");
                }
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut pool = self.slots.lock();
        let n = pool.len();
        pool.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_shard_bound_fits_under_the_map_limit() {
        assert_eq!(fit_open_shards(256, Some(65_530)), 256);
        assert_eq!(fit_open_shards(256, None), 256);
        let fitted = fit_open_shards(10_000, Some(65_530));
        assert!(fitted * MAPS_PER_OPEN_SHARD + MAPS_HEADROOM <= 65_530);
        assert!(fitted > 2_000);
        assert_eq!(fit_open_shards(10, Some(100)), 1);
    }

    #[test]
    fn a_write_applied_before_its_shard_closed_without_a_flush_is_never_acknowledged() {
        use qdrant_edge::{
            Payload, PointId, PointInsertOperations, PointStructPersisted, VectorStructPersisted,
        };
        let root = tempfile::tempdir().unwrap();
        let pool = Pool::new(root.path(), 4, usize::MAX, WAL_GROWTH_BYTES, false);
        let slot = pool.slot("s").unwrap();
        let point = PointStructPersisted {
            id: PointId::Uuid(uuid::Uuid::now_v7()),
            vector: VectorStructPersisted::Single(vec![1.0; crate::embed::DIMENSIONS]),
            payload: Some(Payload(Default::default())),
        };
        let op = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(vec![point]),
        ));
        assert!(slot.ensure_open(true).unwrap());
        let seq = slot.apply_unflushed(op);
        // A close whose flush failed (a rewrite's, an erase's) retires it.
        slot.retire(&mut slot.shard.write());
        let answer = slot.flushed(seq);
        assert!(
            answer.is_err(),
            "acknowledged a write nothing flushed: {answer:?} seq {seq}"
        );
    }

    #[test]
    fn the_slot_that_replaces_a_retired_one_drops_the_cached_pages_before_it_opens() {
        let root = tempfile::tempdir().unwrap();
        let pool = Pool::new(root.path(), 4, usize::MAX, WAL_GROWTH_BYTES, false);
        let first = pool.slot("s").unwrap();
        assert!(first.ensure_open(true).unwrap());
        assert!(!first.distrust_cache.load(Ordering::Acquire));
        first.retire(&mut first.shard.write());
        let second = pool.slot("s").unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "a fresh slot");
        assert!(second.distrust_cache.load(Ordering::Acquire));
        assert!(second.ensure_open(false).unwrap());
        assert!(
            !second.distrust_cache.load(Ordering::Acquire),
            "the pages were dropped as it opened"
        );
    }

    #[test]
    fn idle_shards_close_when_their_maps_pass_the_budget() {
        let root = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..5 {
                std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
            }
        }
        // Room for 10 shards by count, but for only 10 maps: two shards.
        let pool = Pool::new(root.path(), 10, 10, WAL_GROWTH_BYTES, false);
        pool.slot("a").unwrap();
        pool.slot("b").unwrap();
        let held = pool.slot("a").unwrap();
        pool.slot("c").unwrap();
        // "c" pushed the maps to 15: the oldest idle shard ("b", since "a"
        // is held) closed; "a" stayed although it is older.
        let names: Vec<String> = pool.slots.lock().iter().map(|(n, _)| n.clone()).collect();
        assert!(names.contains(&"a".to_owned()), "{names:?}");
        assert!(!names.contains(&"b".to_owned()), "{names:?}");
        drop(held);
    }
}
