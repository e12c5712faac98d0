//! The shared tier with promotion: users share collections until one's
//! memories pass a threshold, and that user then moves, online, to a
//! collection of their own.
//!
//! [`Tiered`] is an engine over two: the shared naming (a short hash prefix)
//! and the per-user one (32 hex characters), both of the same storage. A
//! user without a record in the [`Placements`] registry lives in their
//! shared collection. A move goes through the phases of [`Phase`]: while
//! `Copying`, every write goes to both collections (shared first) and reads
//! to the shared one, and the mover copies the user's memories over and
//! compares the two until a pass finds nothing to fix; at `Reading` reads
//! turn to the user's own collection, writes still to both; at `Clearing`
//! writes go to the own collection only, and the mover deletes the shared
//! copy (by owner filter: the shared collection stays); `Own` is the end.
//! At every phase one collection holds all of the user's memories and
//! serves every read, so no result is duplicated or missing during a move.
//!
//! Every operation routes by the phase it read, so no operation may run
//! under a phase older than the one the mover acts on. In one process (the
//! embedded engine, whose registry this process alone writes) each user's
//! operations hold a read lock that a phase change takes exclusively.
//! Replicas over one Qdrant share the registry but not the lock, so there
//! ([`Fleet`]) each process reads the registry again every second, routes
//! only by a read at most `valid` old (else it reads again or answers 503),
//! and cuts every operation off after `op_bound`; the mover, after each
//! phase change, waits until every operation that could have routed by the
//! phase before has ended (`settle`) before it acts on the new one.
//!
//! Each record names its mover, and every change is a compare and set on
//! the whole record, so one process moves a user at a time. A move cut
//! short by a crash resumes from the phase recorded: at the next start on
//! the embedded engine, and on Qdrant by any replica once the mover has
//! been silent for `lease`. An erase of a user who is moving marks them
//! `Erasing` (their requests answer 503), waits for the phase to settle,
//! removes them from both collections and then the record; a mover that
//! finds its record changed stops without writing again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use super::placement::{Phase, Placements, Record, now_ms};
use super::{Conditions, Engine, NewMemory, RawPage, RawPoint, Reseal, SearchQuery, StoreError};
use crate::locks::KeyedLocks;
use crate::owner::{DEFAULT_NAME_HEX_CHARS, OwnerHash};

/// Compare-and-fix passes a copy may take before the move waits for a
/// quieter moment (each pass that changes something is followed by another).
const CONVERGE_PASSES: usize = 8;

/// Points per page while copying.
const PAGE: usize = 256;

/// Users whose approximate memory count is kept for the promotion check.
const KEPT_COUNTS: usize = 65_536;

/// How processes that share one registry keep their routing in step.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// How often the registry is read again in the background.
    pub refresh: Duration,
    /// Oldest registry read an operation may route by.
    pub valid: Duration,
    /// Longest an operation's engine calls may take; they are cut off then.
    pub op_bound: Duration,
    /// A mover silent this long is presumed gone and its move taken over.
    pub lease: Duration,
}

impl Fleet {
    /// The timing every Cordon process over one Qdrant uses: a constant, so
    /// that a mover's wait covers every replica's requests whatever their
    /// own settings.
    pub const STANDARD: Fleet = Fleet {
        refresh: Duration::from_secs(1),
        valid: Duration::from_secs(5),
        op_bound: Duration::from_secs(10),
        // Long enough for a mover to read both copies of a large user
        // between two of its steps.
        lease: Duration::from_secs(600),
    };

    /// How long after a phase change every operation that routed by the
    /// phase before has ended: its registry read was at most `valid` old
    /// when it began, and it ran for at most `op_bound`.
    pub fn settle(&self) -> Duration {
        self.valid + self.op_bound + self.refresh
    }
}

/// Moves one process runs at a time (each holds a user's memories, with
/// vectors, from both collections while it compares them).
const CONCURRENT_MOVES: usize = 2;

/// The registry as this process last read it, with its own changes since.
struct View {
    records: HashMap<String, Record>,
    /// When the read it holds began (`None`: not read yet).
    read_at: Option<Instant>,
}

/// How a move ended.
enum Outcome {
    /// The user lives in their own collection now.
    Moved,
    /// An erase ended it.
    Erased,
    /// Another process moves this user, or its record changed under this
    /// mover (an erase, or a takeover after it went silent).
    Elsewhere,
}

/// The shared tier with promotion (see the module docs).
pub struct Tiered {
    prefix: String,
    shared: Arc<dyn Engine>,
    own: Arc<dyn Engine>,
    placements: Arc<dyn Placements>,
    /// Memories past which a user moves to their own collection (0: never).
    threshold: u64,
    /// This process, as records name their mover.
    me: Uuid,
    /// Set when other processes share the registry.
    fleet: Option<Fleet>,
    view: RwLock<View>,
    loading: tokio::sync::Mutex<()>,
    locks: KeyedLocks<OwnerHash>,
    counts: Mutex<LruCache<OwnerHash, u64>>,
    moving: Mutex<HashSet<OwnerHash>>,
    /// Users this process is erasing now (a mover leaves their mark alone).
    erasing: Mutex<HashSet<OwnerHash>>,
    /// When the last failed registry read began, and why it failed.
    failed_read: Mutex<Option<(Instant, String)>>,
    moves: tokio::sync::Semaphore,
    metrics: Arc<crate::metrics::Metrics>,
}

fn erasing() -> StoreError {
    StoreError::Unavailable("this user's memories are being erased; try again shortly".into())
}

impl Tiered {
    /// The tier over `shared` and `own`; the registry is read at the first
    /// request (Qdrant may still be down). `fleet` is set when other
    /// processes share the registry.
    pub fn open(
        prefix: &str,
        shared: Arc<dyn Engine>,
        own: Arc<dyn Engine>,
        placements: Arc<dyn Placements>,
        threshold: u64,
        fleet: Option<Fleet>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            prefix: prefix.to_owned(),
            shared,
            own,
            placements,
            threshold,
            me: Uuid::new_v4(),
            fleet,
            view: RwLock::new(View {
                records: HashMap::new(),
                read_at: None,
            }),
            loading: tokio::sync::Mutex::new(()),
            locks: KeyedLocks::default(),
            counts: Mutex::new(LruCache::new(
                NonZeroUsize::new(KEPT_COUNTS).expect("a non-zero constant"),
            )),
            moving: Mutex::new(HashSet::new()),
            erasing: Mutex::new(HashSet::new()),
            failed_read: Mutex::new(None),
            moves: tokio::sync::Semaphore::new(CONCURRENT_MOVES),
            metrics,
        })
    }

    /// Resumes every move a crash or a failure left unfinished. With a
    /// fleet, starts the background read of the registry, which takes over
    /// the moves whose mover went silent.
    pub async fn resume(self: &Arc<Self>) {
        if let Some(fleet) = self.fleet {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(this) = weak.upgrade() {
                    this.tick().await;
                    drop(this);
                    tokio::time::sleep(fleet.refresh).await;
                }
            });
            return;
        }
        if let Err(e) = self.fresh().await {
            tracing::warn!(error = %e, "the placement registry could not be read at start");
            return;
        }
        let unfinished: Vec<OwnerHash> = self
            .view
            .read()
            .records
            .iter()
            .filter(|(_, record)| record.phase.unfinished())
            .filter_map(|(hex, _)| OwnerHash::from_hex(hex))
            .collect();
        for owner in unfinished {
            tokio::spawn(self.clone().promote(owner));
        }
    }

    /// One background round of a fleet: reads the registry and takes over
    /// the unfinished moves whose mover has been silent past the lease.
    async fn tick(self: &Arc<Self>) {
        let Some(fleet) = self.fleet else {
            return;
        };
        {
            let _one = self.loading.lock().await;
            if let Err(e) = self.reload().await {
                tracing::debug!(error = %e, "the placement registry could not be read");
                return;
            }
        }
        let lease = fleet.lease.as_millis() as u64;
        let silent: Vec<OwnerHash> = self
            .view
            .read()
            .records
            .iter()
            .filter(|(_, r)| r.phase.unfinished() && now_ms().saturating_sub(r.changed_at) >= lease)
            .filter_map(|(hex, _)| OwnerHash::from_hex(hex))
            .collect();
        for owner in silent {
            if !self.moving.lock().contains(&owner) {
                tokio::spawn(self.clone().promote(owner));
            }
        }
    }

    /// Names of the per-user collections the registry accounts for.
    fn promoted_names(&self) -> HashSet<String> {
        self.view
            .read()
            .records
            .keys()
            .filter_map(|hex| OwnerHash::from_hex(hex))
            .map(|owner| owner.collection_name(&self.prefix, DEFAULT_NAME_HEX_CHARS))
            .collect()
    }

    /// Reads the registry again. The view is stamped with when the read
    /// began, since it holds what was there at that moment or later.
    async fn reload(&self) -> Result<(), StoreError> {
        let began = Instant::now();
        let records = match self.placements.load().await {
            Ok(records) => records,
            Err(e) => {
                *self.failed_read.lock() = Some((began, e.to_string()));
                return Err(e);
            }
        };
        *self.view.write() = View {
            records,
            read_at: Some(began),
        };
        Ok(())
    }

    /// Makes sure the view may route operations: read once at all, and
    /// with a fleet, read at most `valid` ago.
    async fn fresh(&self) -> Result<(), StoreError> {
        let stale = || match (self.view.read().read_at, self.fleet) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(at), Some(fleet)) => at.elapsed() > fleet.valid,
        };
        if !stale() {
            return Ok(());
        }
        let asked = Instant::now();
        let _one = self.loading.lock().await;
        if !stale() {
            return Ok(());
        }
        // A read that failed after this request began waiting answers it
        // too, so that a registry that is down costs each request one
        // failure, not a queue of them.
        if let Some((began, why)) = self.failed_read.lock().clone()
            && began >= asked
        {
            return Err(StoreError::Unavailable(why));
        }
        self.reload().await?;
        // A read that itself took longer than `valid` is too old already.
        if stale() {
            return Err(StoreError::Unavailable(
                "the placement registry answered too slowly to route by".into(),
            ));
        }
        Ok(())
    }

    /// The owner's phase, by a view fresh enough to route by.
    async fn phase(&self, owner: &OwnerHash) -> Result<Option<Phase>, StoreError> {
        self.fresh().await?;
        let phase = self
            .view
            .read()
            .records
            .get(&owner.to_hex())
            .map(|r| r.phase);
        if phase != Some(Phase::Erasing) || self.fleet.is_none() {
            return Ok(phase);
        }
        // An erase on another replica may have ended since the view was
        // read; the user is served again as soon as it has.
        let began = Instant::now();
        let found = self.placements.get(owner).await?;
        if self
            .fleet
            .is_some_and(|fleet| began.elapsed() > fleet.valid)
        {
            return Err(erasing());
        }
        self.note(owner, found);
        Ok(found.map(|r| r.phase))
    }

    /// Puts what this process changed (or found) into its view.
    fn note(&self, owner: &OwnerHash, record: Option<Record>) {
        let mut view = self.view.write();
        match record {
            Some(record) => view.records.insert(owner.to_hex(), record),
            None => view.records.remove(&owner.to_hex()),
        };
    }

    fn reads(&self, phase: Option<Phase>) -> Result<&Arc<dyn Engine>, StoreError> {
        match phase {
            None | Some(Phase::Copying) => Ok(&self.shared),
            Some(Phase::Reading | Phase::Clearing | Phase::Own) => Ok(&self.own),
            Some(Phase::Erasing) => Err(erasing()),
        }
    }

    fn targets(&self, phase: Option<Phase>) -> Result<Vec<&Arc<dyn Engine>>, StoreError> {
        match phase {
            None => Ok(vec![&self.shared]),
            Some(Phase::Copying | Phase::Reading) => Ok(vec![&self.shared, &self.own]),
            Some(Phase::Clearing | Phase::Own) => Ok(vec![&self.own]),
            Some(Phase::Erasing) => Err(erasing()),
        }
    }

    /// Runs `work`, cut off after the fleet's `op_bound` (the bound every
    /// mover's wait counts on).
    async fn bound<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.fleet {
            None => work.await,
            Some(fleet) => tokio::time::timeout(fleet.op_bound, work)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "storage did not answer within {:?}",
                        fleet.op_bound
                    )))
                }),
        }
    }

    /// Waits until no operation routed by a phase before the last change
    /// can still be running (nothing to wait for in one process: the lock
    /// saw to it).
    async fn settle(&self) {
        if let Some(fleet) = self.fleet {
            tokio::time::sleep(fleet.settle()).await;
        }
    }

    /// A read of the owner's memories, routed by their phase.
    async fn read<'a, T, F, Fut>(&'a self, owner: &'a OwnerHash, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(&'a Arc<dyn Engine>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        self.bound(op(self.reads(phase)?)).await
    }

    /// Runs a write of `added` memories on every collection the owner's
    /// phase sends it to, under the owner's lock.
    async fn write<'a, F, Fut>(
        self: &'a Arc<Self>,
        owner: &'a OwnerHash,
        added: usize,
        op: F,
    ) -> Result<(), StoreError>
    where
        F: Fn(&'a Arc<dyn Engine>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let phase = {
            let _held = self.locks.of(owner).read_owned().await;
            let phase = self.phase(owner).await?;
            let targets = self.targets(phase)?;
            self.bound(async {
                for engine in targets {
                    op(engine).await?;
                }
                Ok(())
            })
            .await?;
            phase
        };
        match phase {
            None => self.consider(owner, added),
            // A fleet's background read resumes stopped moves.
            Some(phase) if phase.unfinished() && self.fleet.is_none() => self.resume_one(owner),
            Some(_) => {}
        }
        Ok(())
    }

    /// Counts the owner's memories now and then, and starts their move once
    /// they pass the threshold.
    fn consider(self: &Arc<Self>, owner: &OwnerHash, added: usize) {
        let threshold = self.threshold;
        if threshold == 0 {
            return;
        }
        let due = match self.counts.lock().get_mut(owner) {
            Some(n) => {
                *n += added as u64;
                *n >= threshold
            }
            None => true,
        };
        if !due {
            return;
        }
        // Until the count answers, later writes add to 0 rather than start
        // counts of their own.
        self.counts.lock().put(owner.clone(), 0);
        let (this, owner) = (self.clone(), owner.clone());
        tokio::spawn(async move {
            let Ok(n) = this.shared.count(&owner).await else {
                return;
            };
            this.counts.lock().put(owner.clone(), n as u64);
            if n as u64 >= threshold {
                this.promote(owner).await;
            }
        });
    }

    fn resume_one(self: &Arc<Self>, owner: &OwnerHash) {
        if !self.moving.lock().contains(owner) {
            tokio::spawn(self.clone().promote(owner.clone()));
        }
    }

    /// Moves the owner to their own collection, from whatever phase the
    /// registry holds (or finishes their erase); one mover per owner in
    /// this process.
    pub async fn promote(self: Arc<Self>, owner: OwnerHash) {
        if !self.moving.lock().insert(owner.clone()) {
            return;
        }
        let result = match self.moves.acquire().await {
            Ok(_one_of_few) => self.advance(&owner).await,
            Err(_) => Err(StoreError::Unavailable("shutting down".into())),
        };
        self.moving.lock().remove(&owner);
        match result {
            Ok(Outcome::Moved) => {
                self.counts.lock().pop(&owner);
                self.metrics.promotion(true);
                tracing::info!(owner = %owner.log_tag(), "moved a user to a collection of their own");
                if self.fleet.is_some() {
                    tokio::spawn(self.clone().sweep(owner));
                }
            }
            Ok(Outcome::Erased) => {
                self.counts.lock().pop(&owner);
                tracing::info!(owner = %owner.log_tag(), "finished the erase of a user who was moving")
            }
            Ok(Outcome::Elsewhere) => {}
            Err(e) => {
                // Counted afresh only after another threshold's worth of
                // writes, so that a refusal (a full node) is not retried
                // at every write.
                self.counts.lock().put(owner.clone(), 0);
                self.metrics.promotion(false);
                tracing::warn!(
                    owner = %owner.log_tag(),
                    error = %e,
                    "a user's move stopped; it resumes later from the phase it reached"
                );
            }
        }
    }

    /// One wait after a move, deletes from the shared collection anything
    /// of the user's that landed there late: a write a replica sent before
    /// its deadline cut it off, which the engine applied after the shared
    /// copy was cleared.
    async fn sweep(self: Arc<Self>, owner: OwnerHash) {
        self.settle().await;
        let still_own = self
            .placements
            .get(&owner)
            .await
            .is_ok_and(|r| r.is_some_and(|r| r.phase == Phase::Own));
        if still_own && let Err(e) = self.bound(self.shared.erase(&owner)).await {
            tracing::warn!(owner = %owner.log_tag(), error = %e, "the sweep after a move failed");
        }
    }

    /// The record this process may move the owner under: a new one, its
    /// own, or one taken over from a silent mover; `None` if another
    /// process moves them or they are moved.
    async fn claim(&self, owner: &OwnerHash) -> Result<Option<Record>, StoreError> {
        let found = self.placements.get(owner).await?;
        self.note(owner, found);
        let mine = match found {
            None => {
                // The own collection is made first: a node that cannot
                // hold it refuses the move before any write is sent there.
                self.own.prepare(owner).await?;
                let wanted = Record::now(Phase::Copying, self.me);
                // Under the lock an erase takes: an erase that began
                // before the record is done before the copy starts, and
                // one after it sees the move and marks it.
                let _exclusive = self.locks.of(owner).write_owned().await;
                let held = self.placements.create(owner, wanted).await?;
                self.note(owner, held);
                held.filter(|held| *held == wanted)
            }
            Some(record) if record.phase == Phase::Own => None,
            // This process's erase of the user is still running.
            Some(record)
                if record.phase == Phase::Erasing && self.erasing.lock().contains(owner) =>
            {
                None
            }
            Some(record) if record.mover == self.me && record.phase != Phase::Erasing => {
                Some(record)
            }
            Some(record) => {
                if let Some(fleet) = self.fleet
                    && record.mover != self.me
                    && now_ms().saturating_sub(record.changed_at) < fleet.lease.as_millis() as u64
                {
                    return Ok(None);
                }
                let taken = Record::now(record.phase, self.me);
                let held = self.placements.replace(owner, &record, &taken).await?;
                held.then_some(taken)
            }
        };
        if let Some(mine) = mine {
            self.note(owner, Some(mine));
        }
        Ok(mine)
    }

    /// Takes the owner through the remaining phases.
    async fn advance(self: &Arc<Self>, owner: &OwnerHash) -> Result<Outcome, StoreError> {
        let Some(mut mine) = self.claim(owner).await? else {
            return Ok(Outcome::Elsewhere);
        };
        loop {
            if mine.phase == Phase::Own {
                return Ok(Outcome::Moved);
            }
            self.settle().await;
            let next = match mine.phase {
                Phase::Copying => {
                    if !self.converge(owner, &mut mine).await? {
                        return Ok(Outcome::Elsewhere);
                    }
                    Phase::Reading
                }
                Phase::Reading => Phase::Clearing,
                Phase::Clearing => {
                    if !self
                        .guarded(owner, &mut mine, self.shared.erase(owner))
                        .await?
                    {
                        return Ok(Outcome::Elsewhere);
                    }
                    Phase::Own
                }
                Phase::Erasing => {
                    self.finish_erase(owner, mine).await?;
                    return Ok(Outcome::Erased);
                }
                Phase::Own => unreachable!("the loop returns at Own before this match"),
            };
            match self.change(owner, &mine, next).await? {
                Some(record) => mine = record,
                None => return Ok(Outcome::Elsewhere),
            }
        }
    }

    /// Records the owner's next phase with no operation of theirs running
    /// in this process; `None` if the record is no longer `mine`.
    async fn change(
        &self,
        owner: &OwnerHash,
        mine: &Record,
        phase: Phase,
    ) -> Result<Option<Record>, StoreError> {
        let _exclusive = self.locks.of(owner).write_owned().await;
        let next = Record::now(phase, self.me);
        if self.placements.replace(owner, mine, &next).await? {
            self.note(owner, Some(next));
            return Ok(Some(next));
        }
        let found = self.placements.get(owner).await?;
        self.note(owner, found);
        Ok(None)
    }

    /// Whether the record is still `mine`; with a fleet it is touched, so
    /// that others see this mover alive.
    async fn still_mine(&self, owner: &OwnerHash, mine: &mut Record) -> Result<bool, StoreError> {
        if self.fleet.is_none() {
            return Ok(self.view.read().records.get(&owner.to_hex()) == Some(mine));
        }
        let touched = Record::now(mine.phase, self.me);
        if self.placements.replace(owner, mine, &touched).await? {
            *mine = touched;
            self.note(owner, Some(touched));
            return Ok(true);
        }
        Ok(false)
    }

    /// Runs one of the mover's writes if the record is still `mine`, under
    /// the owner's lock (an erase in this process waits for it) and within
    /// `op_bound` of the check (an erase elsewhere waits that long);
    /// `false` if the record changed.
    async fn guarded<T>(
        &self,
        owner: &OwnerHash,
        mine: &mut Record,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<bool, StoreError> {
        let _held = self.locks.of(owner).read_owned().await;
        // One deadline over the check and the write: the write ends within
        // `op_bound` of the moment the check could still succeed.
        self.bound(async {
            if !self.still_mine(owner, mine).await? {
                return Ok(false);
            }
            work.await?;
            Ok(true)
        })
        .await
    }

    /// Copies the owner's memories from the shared collection to their own
    /// and fixes what differs until a pass finds nothing: the own side is
    /// read first, so a dual write landing between the two reads is seen in
    /// the shared one (which writes reach first) and copied, never removed.
    /// `false` if the record changed meanwhile.
    async fn converge(&self, owner: &OwnerHash, mine: &mut Record) -> Result<bool, StoreError> {
        for _ in 0..CONVERGE_PASSES {
            let own = all(self.own.as_ref(), owner).await?;
            let shared = all(self.shared.as_ref(), owner).await?;
            let mut differ = Vec::new();
            for (id, point) in &shared {
                if own.get(id).map(|p| &p.payload) != Some(&point.payload) {
                    differ.push(NewMemory::from_stored(point.clone()).ok_or_else(|| {
                        StoreError::Internal(format!(
                            "stored point {id} lacks its vector or creation time"
                        ))
                    })?);
                }
            }
            let extra: Vec<Uuid> = own
                .keys()
                .filter(|id| !shared.contains_key(id))
                .copied()
                .collect();
            if differ.is_empty() && extra.is_empty() {
                return Ok(true);
            }
            for chunk in differ.chunks(PAGE) {
                if !self
                    .guarded(owner, mine, self.own.upsert(owner, chunk.to_vec()))
                    .await?
                {
                    return Ok(false);
                }
            }
            for chunk in extra.chunks(PAGE) {
                let own = &self.own;
                let deletes = async move {
                    for id in chunk {
                        own.delete(owner, *id).await?;
                    }
                    Ok(())
                };
                if !self.guarded(owner, mine, deletes).await? {
                    return Ok(false);
                }
            }
        }
        Err(StoreError::Unavailable(
            "the user's memories kept changing during the copy".into(),
        ))
    }

    /// Erases a user whose record says they are moving (or being erased):
    /// marks them `Erasing` over any move, waits for the phase to settle,
    /// and removes them from both collections and the registry.
    async fn erase_marked(self: &Arc<Self>, owner: &OwnerHash) -> Result<usize, StoreError> {
        // In a task of its own, so that a request dropped after the mark is
        // written does not leave the user marked until the lease ends.
        let (this, owner) = (self.clone(), owner.clone());
        tokio::spawn(async move {
            this.erasing.lock().insert(owner.clone());
            let erased = async {
                let mark = Record::now(Phase::Erasing, this.me);
                {
                    let _exclusive = this.locks.of(&owner).write_owned().await;
                    this.placements.put(&owner, &mark).await?;
                    this.note(&owner, Some(mark));
                }
                this.settle().await;
                this.finish_erase(&owner, mark).await
            }
            .await;
            this.erasing.lock().remove(&owner);
            erased
        })
        .await
        .map_err(|e| StoreError::Internal(format!("an erase task failed: {e}")))?
    }

    /// Removes the user from both collections, then their `mark`.
    async fn finish_erase(
        self: &Arc<Self>,
        owner: &OwnerHash,
        mark: Record,
    ) -> Result<usize, StoreError> {
        let _exclusive = self.locks.of(owner).write_owned().await;
        // Only while the mark is there: once an erase has removed it, the
        // user's new writes go to the shared collection and are theirs.
        let found = self.placements.get(owner).await?;
        if found != Some(mark) {
            self.note(owner, found);
            return Ok(0);
        }
        let shared = self.bound(self.shared.erase(owner)).await?;
        let own = self.bound(self.own.erase(owner)).await?;
        self.placements.remove(owner, &mark).await?;
        let found = self.placements.get(owner).await?;
        self.note(owner, found);
        self.counts.lock().pop(owner);
        if self.fleet.is_some() {
            tokio::spawn(self.clone().sweep_own(owner.clone()));
        }
        // Whichever side was complete when the erase began holds the most.
        Ok(shared.max(own))
    }

    /// One wait after an erase, drops the user's own collection again if
    /// they still have no record: a write a replica sent before its
    /// deadline cut it off, applied after the erase, would have made it
    /// anew.
    async fn sweep_own(self: Arc<Self>, owner: OwnerHash) {
        self.settle().await;
        if matches!(self.placements.get(&owner).await, Ok(None))
            && let Err(e) = self.bound(self.own.erase(&owner)).await
        {
            tracing::warn!(owner = %owner.log_tag(), error = %e, "the sweep after an erase failed");
        }
    }
}

/// Every point of the owner in `engine`, with vectors, by id.
async fn all(
    engine: &dyn Engine,
    owner: &OwnerHash,
) -> Result<HashMap<Uuid, RawPoint>, StoreError> {
    let mut points = HashMap::new();
    let mut after = None;
    loop {
        let page = engine.export_page(owner, after, PAGE).await?;
        points.extend(page.points.into_iter().map(|p| (p.id, p)));
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(points),
        }
    }
}

#[async_trait]
impl Engine for Arc<Tiered> {
    async fn upsert(&self, owner: &OwnerHash, memories: Vec<NewMemory>) -> Result<(), StoreError> {
        let added = memories.len();
        self.write(owner, added, |engine| {
            engine.upsert(owner, memories.clone())
        })
        .await
    }

    async fn insert_new(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        let added = memories.len();
        self.write(owner, added, |engine| {
            engine.insert_new(owner, memories.clone())
        })
        .await
    }

    async fn update_existing(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        self.write(owner, 0, |engine| {
            engine.update_existing(owner, memories.clone())
        })
        .await
    }

    async fn search(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<RawPoint>, StoreError> {
        self.read(owner, |engine| engine.search(owner, query)).await
    }

    async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<RawPoint>, StoreError> {
        self.read(owner, |engine| engine.get(owner, id)).await
    }

    async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        let targets = self.targets(phase)?;
        self.bound(async {
            for engine in targets {
                engine.delete(owner, id).await?;
            }
            Ok(())
        })
        .await
    }

    async fn scroll(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
        filter: &Conditions,
    ) -> Result<RawPage, StoreError> {
        self.read(owner, |engine| engine.scroll(owner, after, limit, filter))
            .await
    }

    async fn count_where(
        &self,
        owner: &OwnerHash,
        filter: &Conditions,
    ) -> Result<usize, StoreError> {
        self.read(owner, |engine| engine.count_where(owner, filter))
            .await
    }

    async fn replace(
        &self,
        owner: &OwnerHash,
        memory: NewMemory,
        expected: u64,
    ) -> Result<(), StoreError> {
        // Where a move has copied the memory, both copies are replaced under
        // the same condition, so the one read after the move is the latest.
        self.write(owner, 0, |engine| {
            engine.replace(owner, memory.clone(), expected)
        })
        .await
    }

    async fn delete_expired(&self, owner: &OwnerHash, now: i64) -> Result<usize, StoreError> {
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        let targets = self.targets(phase)?;
        self.bound(async {
            let mut most = 0;
            for engine in targets {
                most = most.max(engine.delete_expired(owner, now).await?);
            }
            Ok(most)
        })
        .await
    }

    async fn next_expiry(&self, owner: &OwnerHash, after: i64) -> Result<Option<i64>, StoreError> {
        self.read(owner, |engine| engine.next_expiry(owner, after))
            .await
    }

    async fn expiring(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(OwnerHash, i64)>, StoreError> {
        let mut owners: BTreeMap<String, i64> = BTreeMap::new();
        for engine in [&self.shared, &self.own] {
            for (owner, at) in engine.expiring(before, limit).await? {
                let earliest = owners.entry(owner.to_hex()).or_insert(at);
                *earliest = (*earliest).min(at);
            }
        }
        Ok(super::earliest(owners, limit))
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let phase = {
            let _exclusive = self.locks.of(owner).write_owned().await;
            match self.phase(owner).await? {
                None => return self.bound(self.shared.erase(owner)).await,
                // The record stays: a replica whose view is a moment old
                // still sends this user's writes to their own collection,
                // which is where every replica reads them. The shared
                // collection is cleared too, of any write that landed
                // there late.
                Some(Phase::Own) => {
                    return self
                        .bound(async {
                            let own = self.own.erase(owner).await?;
                            self.shared.erase(owner).await?;
                            Ok(own)
                        })
                        .await;
                }
                Some(phase) => phase,
            }
        };
        tracing::debug!(owner = %owner.log_tag(), ?phase, "erasing a user who is moving");
        self.erase_marked(owner).await
    }

    async fn holds_other_owners(&self, owner: &OwnerHash) -> Result<bool, StoreError> {
        self.read(owner, |engine| engine.holds_other_owners(owner))
            .await
    }

    async fn place(&self, owner: &OwnerHash) -> Result<String, StoreError> {
        self.read(owner, |engine| engine.place(owner)).await
    }

    async fn count(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        self.read(owner, |engine| engine.count(owner)).await
    }

    async fn holds_memories(&self) -> Result<bool, StoreError> {
        Ok(self.shared.holds_memories().await? || self.own.holds_memories().await?)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.shared.ready().await?;
        // Without a registry read recent enough, no request could be routed.
        self.fresh().await
    }

    async fn shutdown(&self) {
        self.shared.shutdown().await;
        self.own.shutdown().await;
    }

    fn written_by_others(&self) -> bool {
        self.shared.written_by_others()
    }

    fn open_shards(&self) -> usize {
        self.shared.open_shards() + self.own.open_shards()
    }

    async fn owners(&self) -> Result<Vec<OwnerHash>, StoreError> {
        let mut owners: BTreeSet<String> = BTreeSet::new();
        for engine in [&self.shared, &self.own] {
            owners.extend(engine.owners().await?.iter().map(OwnerHash::to_hex));
        }
        Ok(owners
            .iter()
            .filter_map(|hex| OwnerHash::from_hex(hex))
            .collect())
    }

    async fn reseal_all(
        &self,
        reseal: Reseal,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<usize, StoreError> {
        Ok(self.shared.reseal_all(reseal.clone(), progress).await?
            + self.own.reseal_all(reseal, progress).await?)
    }

    async fn export_page(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        self.read(owner, |engine| engine.export_page(owner, after, limit))
            .await
    }

    async fn other_layouts(&self) -> Result<BTreeSet<usize>, StoreError> {
        // Per-user names are promoted users' own collections; one that the
        // registry does not account for is another tier's layout.
        let mut others = self.shared.other_layouts().await?;
        others.remove(&DEFAULT_NAME_HEX_CHARS);
        self.fresh().await?;
        let promoted = self.promoted_names();
        for name in self.own.names().await? {
            // An empty one is a move's first step that a crash cut short
            // before its record was written.
            if !promoted.contains(&name) && self.own.holds_points_named(&name).await? {
                others.insert(DEFAULT_NAME_HEX_CHARS);
                break;
            }
        }
        Ok(others)
    }

    async fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = self.shared.names().await?;
        names.extend(self.own.names().await?);
        Ok(names)
    }

    async fn remove_empty(&self) -> Result<usize, StoreError> {
        Ok(self.shared.remove_empty().await? + self.own.remove_empty().await?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::embed::DIMENSIONS;
    use crate::secret::Secret;
    use crate::store::edge::{EdgeEngine, EdgeSettings};
    use crate::store::placement::FilePlacements;

    /// Both namings of one embedded data directory and its registry.
    struct Parts {
        _dir: tempfile::TempDir,
        shared: Arc<dyn Engine>,
        own: Arc<dyn Engine>,
        placements: Arc<dyn Placements>,
    }

    fn parts() -> Parts {
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = EdgeEngine::open(EdgeSettings {
            data_dir: dir.path().to_owned(),
            collection_prefix: "cordon_".into(),
            name_hex_chars: 1,
            max_open_shards: 16,
            drill_skip_read_filter: false,
            purge_after: Duration::from_secs(3600),
            wal_growth_bytes: crate::store::edge::pool::WAL_GROWTH_BYTES,
            min_free_bytes: 0,
        })
        .expect("opens");
        let own = shared.open_beside(32).expect("opens");
        Parts {
            placements: Arc::new(FilePlacements::open(dir.path()).expect("opens")),
            shared: Arc::new(Arc::new(shared)),
            own: Arc::new(Arc::new(own)),
            _dir: dir,
        }
    }

    fn tiered(p: &Parts, threshold: u64) -> Arc<Tiered> {
        Tiered::open(
            "cordon_",
            p.shared.clone(),
            p.own.clone(),
            p.placements.clone(),
            threshold,
            None,
            Arc::new(crate::metrics::Metrics::default()),
        )
    }

    fn owner(sub: &str) -> OwnerHash {
        OwnerHash::derive(&Secret::new(vec![5u8; 32]), "t", sub)
    }

    fn memory(n: usize) -> NewMemory {
        let mut vector = vec![0.0; DIMENSIONS];
        vector[n % DIMENSIONS] = 1.0;
        NewMemory {
            id: Uuid::now_v7(),
            text: format!("memory {n}"),
            metadata: Default::default(),
            created_at: n as i64,
            vector,
            request: None,
            sealed: None,
            expires_at: None,
            version: 1,
            updated_at: None,
            terms: Vec::new(),
        }
    }

    /// Every id the owner lists through `engine`, page by page, in order.
    async fn listed(engine: &dyn Engine, owner: &OwnerHash) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = engine
                .scroll(owner, after, 7, &Conditions::default())
                .await
                .expect("lists");
            ids.extend(page.points.iter().map(|p| p.id));
            match page.next {
                Some(next) => after = Some(next),
                None => return ids,
            }
        }
    }

    async fn until_own(tiered: &Arc<Tiered>, owner: &OwnerHash) {
        for _ in 0..600 {
            if tiered
                .view
                .read()
                .records
                .get(&owner.to_hex())
                .map(|r| r.phase)
                == Some(Phase::Own)
                && !tiered.moving.lock().contains(owner)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the move did not finish");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_user_past_the_threshold_moves_online_and_every_list_meanwhile_holds_each_memory_once()
     {
        let p = parts();
        let tiered = tiered(&p, 20);
        let engine: Arc<dyn Engine> = Arc::new(tiered.clone());
        let (alice, neighbour) = (owner("alice"), owner("neighbour"));
        engine
            .upsert(&neighbour, vec![memory(999)])
            .await
            .expect("stored");
        // Acknowledged ids, and ids whose delete has begun.
        let acked = Arc::new(Mutex::new(Vec::<Uuid>::new()));
        let deleting = Arc::new(Mutex::new(HashSet::<Uuid>::new()));
        let writer = {
            let (engine, alice, acked, deleting) = (
                engine.clone(),
                alice.clone(),
                acked.clone(),
                deleting.clone(),
            );
            tokio::spawn(async move {
                for n in 0..120 {
                    let m = memory(n);
                    let id = m.id;
                    engine.upsert(&alice, vec![m]).await.expect("stored");
                    acked.lock().push(id);
                    if n % 5 == 4 {
                        let gone = acked.lock()[n / 2];
                        deleting.lock().insert(gone);
                        engine.delete(&alice, gone).await.expect("deleted");
                    }
                }
            })
        };
        let mut lists = 0;
        while !writer.is_finished() {
            let must: BTreeSet<Uuid> = {
                let deleting = deleting.lock();
                acked
                    .lock()
                    .iter()
                    .filter(|id| !deleting.contains(id))
                    .copied()
                    .collect()
            };
            let ids = listed(engine.as_ref(), &alice).await;
            let seen: BTreeSet<Uuid> = ids.iter().copied().collect();
            assert_eq!(seen.len(), ids.len(), "a list held a memory twice");
            // A delete that began while the list ran may or may not show.
            let deleting = deleting.lock().clone();
            let missed: Vec<_> = must
                .iter()
                .filter(|id| !seen.contains(id) && !deleting.contains(id))
                .collect();
            assert!(
                missed.is_empty(),
                "a list missed acknowledged memories: {missed:?}"
            );
            lists += 1;
        }
        writer.await.expect("the writer finished");
        until_own(&tiered, &alice).await;
        assert!(lists > 3, "too few lists ran during the writes: {lists}");
        let expected: BTreeSet<Uuid> = {
            let deleting = deleting.lock();
            acked
                .lock()
                .iter()
                .filter(|id| !deleting.contains(id))
                .copied()
                .collect()
        };
        let ids = listed(engine.as_ref(), &alice).await;
        assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), expected);
        assert_eq!(ids.len(), expected.len());
        assert_eq!(
            p.shared.count(&alice).await.expect("counts"),
            0,
            "a shared copy stayed"
        );
        assert_eq!(p.own.count(&alice).await.expect("counts"), expected.len());
        assert_eq!(listed(engine.as_ref(), &neighbour).await.len(), 1);
        assert_eq!(p.shared.count(&neighbour).await.expect("counts"), 1);
    }

    #[tokio::test]
    async fn a_move_cut_short_at_any_phase_resumes_from_the_registry_and_loses_nothing() {
        for phase in [Phase::Copying, Phase::Reading, Phase::Clearing] {
            let p = parts();
            let alice = owner("alice");
            let memories: Vec<NewMemory> = (0..10).map(memory).collect();
            let ids: BTreeSet<Uuid> = memories.iter().map(|m| m.id).collect();
            p.shared
                .upsert(&alice, memories.clone())
                .await
                .expect("stored");
            // What a crash at `phase` leaves: a partial copy while copying,
            // a full one after; while clearing, part of the shared copy gone.
            let copied = if phase == Phase::Copying { 3 } else { 10 };
            p.own
                .upsert(&alice, memories[..copied].to_vec())
                .await
                .expect("copied");
            if phase == Phase::Clearing {
                p.shared
                    .delete(&alice, memories[0].id)
                    .await
                    .expect("deleted");
            }
            // Recorded by a process that is gone.
            p.placements
                .put(&alice, &Record::now(phase, Uuid::new_v4()))
                .await
                .expect("recorded");

            let tiered = tiered(&p, 1_000);
            let engine: Arc<dyn Engine> = Arc::new(tiered.clone());
            let seen: BTreeSet<Uuid> = listed(engine.as_ref(), &alice).await.into_iter().collect();
            assert_eq!(seen, ids, "before the resume, at {phase:?}");
            tiered.resume().await;
            until_own(&tiered, &alice).await;
            let after = listed(engine.as_ref(), &alice).await;
            assert_eq!(after.len(), 10, "at {phase:?}");
            assert_eq!(
                after.into_iter().collect::<BTreeSet<_>>(),
                ids,
                "at {phase:?}"
            );
            assert_eq!(p.shared.count(&alice).await.expect("counts"), 0);
        }
    }

    #[tokio::test]
    async fn an_erase_during_a_move_leaves_nothing_in_either_collection_or_the_registry() {
        let p = parts();
        let alice = owner("alice");
        let memories: Vec<NewMemory> = (0..10).map(memory).collect();
        p.shared
            .upsert(&alice, memories.clone())
            .await
            .expect("stored");
        p.own
            .upsert(&alice, memories[..4].to_vec())
            .await
            .expect("copied");
        p.placements
            .put(&alice, &Record::now(Phase::Copying, Uuid::new_v4()))
            .await
            .expect("recorded");
        let tiered = tiered(&p, 1_000);
        let engine: Arc<dyn Engine> = Arc::new(tiered.clone());
        assert_eq!(engine.erase(&alice).await.expect("erased"), 10);
        assert_eq!(p.shared.count(&alice).await.expect("counts"), 0);
        assert_eq!(p.own.count(&alice).await.expect("counts"), 0);
        assert!(p.placements.load().await.expect("loads").is_empty());
        tiered.resume().await;
        assert!(listed(engine.as_ref(), &alice).await.is_empty());
    }

    #[tokio::test]
    async fn a_late_second_finish_of_an_erase_leaves_what_was_stored_after_the_first_alone() {
        let p = parts();
        let alice = owner("alice");
        p.shared
            .upsert(&alice, (0..5).map(memory).collect())
            .await
            .expect("stored");
        let mark = Record::now(Phase::Erasing, Uuid::new_v4());
        p.placements.put(&alice, &mark).await.expect("marked");
        let tiered = tiered(&p, 1_000);
        let engine: Arc<dyn Engine> = Arc::new(tiered.clone());
        assert_eq!(tiered.finish_erase(&alice, mark).await.expect("erased"), 5);
        engine
            .upsert(&alice, vec![memory(9)])
            .await
            .expect("stored after the erase");
        assert_eq!(tiered.finish_erase(&alice, mark).await.expect("ends"), 0);
        assert_eq!(listed(engine.as_ref(), &alice).await.len(), 1);
    }

    #[tokio::test]
    async fn an_erase_cut_short_by_a_crash_is_finished_at_the_next_start() {
        let p = parts();
        let alice = owner("alice");
        p.shared
            .upsert(&alice, (0..5).map(memory).collect())
            .await
            .expect("stored");
        p.own
            .upsert(&alice, (0..3).map(memory).collect())
            .await
            .expect("copied");
        // Marked by a process that is gone.
        p.placements
            .put(&alice, &Record::now(Phase::Erasing, Uuid::new_v4()))
            .await
            .expect("marked");
        let tiered = tiered(&p, 1_000);
        tiered.resume().await;
        for _ in 0..600 {
            if p.placements.get(&alice).await.expect("reads").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.placements.get(&alice).await.expect("reads"), None);
        assert_eq!(p.shared.count(&alice).await.expect("counts"), 0);
        assert_eq!(p.own.count(&alice).await.expect("counts"), 0);
    }
}
