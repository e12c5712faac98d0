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
//! Each user's operations hold a read lock that a phase change takes
//! exclusively, so no operation straddles two phases. That is exact for
//! one process, which is why promotion runs on the embedded engine only
//! (one process owns its data directory, and this one is the registry's
//! only writer): replicas over one Qdrant would each route by a registry
//! read at their own moment, which these phases alone do not make safe. Every step
//! repeats safely, and the registry records the phase reached, so a move cut
//! short at any step by a crash resumes from there at the next start (or
//! the user's next write). An erase removes the user from both collections
//! and the registry; a mover that finds the record gone removes what it
//! copied.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

use async_trait::async_trait;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use super::placement::{Phase, Placements};
use super::{Engine, NewMemory, RawPage, RawPoint, Reseal, SearchQuery, StoreError};
use crate::locks::KeyedLocks;
use crate::owner::{DEFAULT_NAME_HEX_CHARS, OwnerHash};

/// Compare-and-fix passes a copy may take before the move waits for a
/// quieter moment (each pass that changes something is followed by another).
const CONVERGE_PASSES: usize = 8;

/// Points per page while copying.
const PAGE: usize = 256;

/// Users whose approximate memory count is kept for the promotion check.
const KEPT_COUNTS: usize = 65_536;

/// The registry, read once and then kept in step with every change this
/// process makes (it is the registry's only writer).
struct View {
    phases: HashMap<String, Phase>,
    loaded: bool,
}

/// The shared tier with promotion (see the module docs).
pub struct Tiered {
    prefix: String,
    shared: Arc<dyn Engine>,
    own: Arc<dyn Engine>,
    placements: Arc<dyn Placements>,
    /// Memories past which a user moves to their own collection (0: never).
    threshold: u64,
    view: RwLock<View>,
    loading: tokio::sync::Mutex<()>,
    locks: KeyedLocks<OwnerHash>,
    counts: Mutex<LruCache<OwnerHash, u64>>,
    moving: Mutex<HashSet<OwnerHash>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Where one operation of a user goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Shared,
    Both,
    Own,
}

impl Route {
    fn writes(phase: Option<Phase>) -> Self {
        match phase {
            None => Route::Shared,
            Some(Phase::Copying | Phase::Reading) => Route::Both,
            Some(Phase::Clearing | Phase::Own) => Route::Own,
        }
    }
}

impl Tiered {
    /// The tier over `shared` and `own`; the registry is read at the first
    /// request (Qdrant may still be down).
    pub fn open(
        prefix: &str,
        shared: Arc<dyn Engine>,
        own: Arc<dyn Engine>,
        placements: Arc<dyn Placements>,
        threshold: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            prefix: prefix.to_owned(),
            shared,
            own,
            placements,
            threshold,
            view: RwLock::new(View {
                phases: HashMap::new(),
                loaded: false,
            }),
            loading: tokio::sync::Mutex::new(()),
            locks: KeyedLocks::default(),
            counts: Mutex::new(LruCache::new(
                NonZeroUsize::new(KEPT_COUNTS).expect("a non-zero constant"),
            )),
            moving: Mutex::new(HashSet::new()),
            metrics,
        })
    }

    /// Resumes every move a crash or a failure left unfinished (those that
    /// cannot be read now resume at their user's next write).
    pub async fn resume(self: &Arc<Self>) {
        if let Err(e) = self.load_view().await {
            tracing::warn!(error = %e, "the placement registry could not be read at start");
            return;
        }
        let unfinished: Vec<OwnerHash> = self
            .view
            .read()
            .phases
            .iter()
            .filter(|(_, phase)| **phase != Phase::Own)
            .filter_map(|(hex, _)| OwnerHash::from_hex(hex))
            .collect();
        for owner in unfinished {
            tokio::spawn(self.clone().promote(owner));
        }
    }

    /// Names of the per-user collections the registry accounts for.
    fn promoted_names(&self) -> HashSet<String> {
        self.view
            .read()
            .phases
            .keys()
            .filter_map(|hex| OwnerHash::from_hex(hex))
            .map(|owner| owner.collection_name(&self.prefix, DEFAULT_NAME_HEX_CHARS))
            .collect()
    }

    /// Reads the registry, the first time it is needed; one read at a time.
    async fn load_view(&self) -> Result<(), StoreError> {
        if self.view.read().loaded {
            return Ok(());
        }
        let _one = self.loading.lock().await;
        if self.view.read().loaded {
            return Ok(());
        }
        let phases = self.placements.load().await?;
        *self.view.write() = View {
            phases,
            loaded: true,
        };
        Ok(())
    }

    /// The owner's phase.
    async fn phase(&self, owner: &OwnerHash) -> Result<Option<Phase>, StoreError> {
        self.load_view().await?;
        Ok(self.view.read().phases.get(&owner.to_hex()).copied())
    }

    fn reads(&self, phase: Option<Phase>) -> &Arc<dyn Engine> {
        match phase {
            None | Some(Phase::Copying) => &self.shared,
            Some(_) => &self.own,
        }
    }

    fn targets(&self, route: Route) -> Vec<&Arc<dyn Engine>> {
        match route {
            Route::Shared => vec![&self.shared],
            Route::Both => vec![&self.shared, &self.own],
            Route::Own => vec![&self.own],
        }
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
            for engine in self.targets(Route::writes(phase)) {
                op(engine).await?;
            }
            phase
        };
        match phase {
            None => self.consider(owner, added),
            Some(Phase::Own) => {}
            Some(_) => self.resume_one(owner),
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
    /// registry holds; one mover per owner in this process.
    pub async fn promote(self: Arc<Self>, owner: OwnerHash) {
        if !self.moving.lock().insert(owner.clone()) {
            return;
        }
        let result = self.advance(&owner).await;
        self.moving.lock().remove(&owner);
        self.counts.lock().pop(&owner);
        match result {
            Ok(true) => {
                self.metrics.promotion(true);
                tracing::info!(owner = %owner.log_tag(), "moved a user to a collection of their own");
            }
            Ok(false) => {
                tracing::info!(owner = %owner.log_tag(), "a user's move ended with their erase")
            }
            Err(e) => {
                self.metrics.promotion(false);
                tracing::warn!(
                    owner = %owner.log_tag(),
                    error = %e,
                    "a user's move stopped; it resumes at their next write or the next start"
                );
            }
        }
    }

    /// Takes the owner through the remaining phases; `false` when an erase
    /// ended the move.
    async fn advance(&self, owner: &OwnerHash) -> Result<bool, StoreError> {
        let advanced = self.advance_from(owner).await;
        if advanced.is_err() && !self.view.read().phases.contains_key(&owner.to_hex()) {
            // Erased while the move failed: nothing would resume it, so
            // what it copied goes now.
            self.own.erase(owner).await?;
        }
        advanced
    }

    async fn advance_from(&self, owner: &OwnerHash) -> Result<bool, StoreError> {
        let mut first = true;
        loop {
            self.load_view().await?;
            let phase = self.view.read().phases.get(&owner.to_hex()).copied();
            let next = match phase {
                // Only a move that starts here creates the record; one that
                // finds it gone later was ended by an erase.
                None if first => {
                    first = false;
                    self.change(owner, Phase::Copying, true).await?;
                    continue;
                }
                None => {
                    self.own.erase(owner).await?;
                    return Ok(false);
                }
                Some(Phase::Copying) => {
                    self.converge(owner).await?;
                    Phase::Reading
                }
                Some(Phase::Reading) => Phase::Clearing,
                Some(Phase::Clearing) => {
                    self.shared.erase(owner).await?;
                    Phase::Own
                }
                Some(Phase::Own) => return Ok(true),
            };
            first = false;
            if !self.change(owner, next, false).await? {
                // Erased meanwhile: what this move copied goes too.
                self.own.erase(owner).await?;
                return Ok(false);
            }
        }
    }

    /// Records the owner's next phase with no operation of theirs running.
    /// `false` if the record was gone (`create` false).
    async fn change(
        &self,
        owner: &OwnerHash,
        phase: Phase,
        create: bool,
    ) -> Result<bool, StoreError> {
        let _exclusive = self.locks.of(owner).write_owned().await;
        let held = self.placements.set(owner, phase, create).await?;
        let mut view = self.view.write();
        if held {
            view.phases.insert(owner.to_hex(), phase);
        } else {
            view.phases.remove(&owner.to_hex());
        }
        Ok(held)
    }

    /// Copies the owner's memories from the shared collection to their own
    /// and fixes what differs until a pass finds nothing: the own side is
    /// read first, so a dual write landing between the two reads is seen in
    /// the shared one (which writes reach first) and copied, never removed.
    async fn converge(&self, owner: &OwnerHash) -> Result<(), StoreError> {
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
                return Ok(());
            }
            for chunk in differ.chunks(PAGE) {
                self.own.upsert(owner, chunk.to_vec()).await?;
            }
            for id in extra {
                self.own.delete(owner, id).await?;
            }
        }
        Err(StoreError::Unavailable(
            "the user's memories kept changing during the copy".into(),
        ))
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
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        self.reads(phase).search(owner, query).await
    }

    async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<RawPoint>, StoreError> {
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        self.reads(phase).get(owner, id).await
    }

    async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        for engine in self.targets(Route::writes(phase)) {
            engine.delete(owner, id).await?;
        }
        Ok(())
    }

    async fn scroll(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        self.reads(phase).scroll(owner, after, limit).await
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let _exclusive = self.locks.of(owner).write_owned().await;
        let phase = self.phase(owner).await?;
        let shared = self.shared.erase(owner).await?;
        let Some(phase) = phase else {
            return Ok(shared);
        };
        let own = self.own.erase(owner).await?;
        self.placements.remove(owner).await?;
        self.view.write().phases.remove(&owner.to_hex());
        self.counts.lock().pop(owner);
        Ok(if phase == Phase::Copying { shared } else { own })
    }

    async fn holds_other_owners(&self, owner: &OwnerHash) -> Result<bool, StoreError> {
        let phase = self.phase(owner).await?;
        self.reads(phase).holds_other_owners(owner).await
    }

    async fn count(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let _held = self.locks.of(owner).read_owned().await;
        let phase = self.phase(owner).await?;
        self.reads(phase).count(owner).await
    }

    async fn holds_memories(&self) -> Result<bool, StoreError> {
        Ok(self.shared.holds_memories().await? || self.own.holds_memories().await?)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.shared.ready().await
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
        let phase = self.phase(owner).await?;
        self.reads(phase).export_page(owner, after, limit).await
    }

    async fn other_layouts(&self) -> Result<BTreeSet<usize>, StoreError> {
        // Per-user names are promoted users' own collections; one that the
        // registry does not account for is another tier's layout.
        let mut others = self.shared.other_layouts().await?;
        others.remove(&DEFAULT_NAME_HEX_CHARS);
        self.load_view().await?;
        let promoted = self.promoted_names();
        if self
            .own
            .names()
            .await?
            .iter()
            .any(|name| !promoted.contains(name))
        {
            others.insert(DEFAULT_NAME_HEX_CHARS);
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
        }
    }

    /// Every id the owner lists through `engine`, page by page, in order.
    async fn listed(engine: &dyn Engine, owner: &OwnerHash) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = engine.scroll(owner, after, 7).await.expect("lists");
            ids.extend(page.points.iter().map(|p| p.id));
            match page.next {
                Some(next) => after = Some(next),
                None => return ids,
            }
        }
    }

    async fn until_own(tiered: &Arc<Tiered>, owner: &OwnerHash) {
        for _ in 0..600 {
            if tiered.view.read().phases.get(&owner.to_hex()) == Some(&Phase::Own)
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
            p.placements
                .set(&alice, phase, true)
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
            .set(&alice, Phase::Copying, true)
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
}
