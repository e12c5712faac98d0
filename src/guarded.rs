//! The store that handlers use: an engine whose every read passes the guard.
//!
//! This layer sits above both [`crate::store`] (the engines, which return
//! unverified points) and [`crate::guard`] (which checks them): it is the one
//! place that joins the two, so that neither depends on the other's caller.
//! With encryption at rest it is also where memories are sealed on the way
//! in and opened on the way out ([`crate::seal`]): a point must pass the
//! owner check, then open under its owner's key, then the guard again.

use std::sync::Arc;

use uuid::Uuid;

use crate::breach::Breaches;
use crate::guard::{Guard, Memory};
use crate::metrics::Metrics;
use crate::owner::OwnerHash;
use crate::seal::SealError;
use crate::seal::setup::SealGate;
use crate::store::{
    Bounds, Conditions, Engine, NewMemory, RawPoint, SearchQuery, StoreError, WriteMode,
};

/// The store handlers use: an engine whose every read passes the guard.
#[derive(Clone)]
pub struct GuardedStore {
    engine: Arc<dyn Engine>,
    guard: Guard,
    /// Set in collision drills: where requests that touch a shared
    /// collection are counted.
    census: Option<Arc<Metrics>>,
    /// Whether memories are encrypted at rest (and with what).
    sealing: Arc<SealGate>,
    /// The breach policy and quarantines (`None`: the guard drops and
    /// counts, and the read goes on).
    breaches: Option<Arc<Breaches>>,
}

/// The path of the quota's reads, which a quarantine does not refuse.
const TALLY: &str = "tally";

/// Memories read per page by a keyword search.
const PAGE: usize = 256;

/// Most memories one sealed read with a range condition looks through
/// before it answers with what it found.
const MAX_SCAN: usize = 10_000;

fn now_ms() -> i64 {
    crate::store::placement::now_ms() as i64
}

/// What a read found, which may be nothing.
trait Found {
    fn nothing() -> Self;
    fn is_empty(&self) -> bool;
}

impl Found for Vec<RawPoint> {
    fn nothing() -> Self {
        Vec::new()
    }
    fn is_empty(&self) -> bool {
        self.is_empty()
    }
}

impl Found for crate::store::RawPage {
    fn nothing() -> Self {
        Self::empty()
    }
    fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The memories not expired at `now`.
fn alive(mut memories: Vec<Memory>, now: i64) -> Vec<Memory> {
    memories.retain(|m| m.expires_at().is_none_or(|at| at > now));
    memories
}

/// Whether `memory`'s metadata meets every range (a missing or
/// non-numeric value meets none).
fn in_ranges(memory: &Memory, ranges: &[(String, Bounds)]) -> bool {
    ranges.iter().all(|(key, bounds)| {
        memory
            .metadata()
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .is_some_and(|v| bounds.holds(v))
    })
}

impl From<SealError> for StoreError {
    fn from(e: SealError) -> Self {
        // The key store is part of storage: a request it fails gets 503 and
        // says nothing more. An unreachable key store may come back; a key
        // that does not open is the operator's to fix, and is logged as an
        // error where storage errors become responses.
        match e {
            SealError::Vault(_) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Engine(e.to_string()),
        }
    }
}

/// What an erase removed.
#[derive(Debug, Clone)]
pub struct Erased {
    /// Memories deleted.
    pub deleted: usize,
    /// The id of the data key destroyed (sealed deployments, when the
    /// owner had one).
    pub key: Option<String>,
}

/// One page of verified memories.
#[derive(Debug)]
pub struct Page {
    /// Memories on this page, all the caller's own.
    pub memories: Vec<Memory>,
    /// Cursor for the next page.
    pub next: Option<Uuid>,
}

impl GuardedStore {
    /// Wraps an engine with the guard.
    pub fn new(engine: Arc<dyn Engine>, guard: Guard) -> Self {
        Self {
            engine,
            guard,
            census: None,
            sealing: Arc::new(SealGate::decided(None)),
            breaches: None,
        }
    }

    /// Applies `breaches`' policy to every guard drop, and its quarantines
    /// to every read.
    pub fn with_breaches(mut self, breaches: Arc<Breaches>) -> Self {
        self.breaches = Some(breaches);
        self
    }

    /// Refuses a read of `owner`'s when their collection is quarantined.
    /// Costs a place lookup only while some collection is.
    async fn refuse_quarantined(&self, owner: &OwnerHash) -> Result<(), StoreError> {
        let Some(breaches) = &self.breaches else {
            return Ok(());
        };
        if !breaches.any_quarantined() {
            return Ok(());
        }
        let place = self.engine.place(owner).await?;
        breaches.refuse_quarantined(&place)
    }

    /// Notes `filter` for a scope statement, if the request asked for one.
    fn note_filter(&self, owner: &OwnerHash, filter: &Conditions) {
        if crate::scope::wanted() {
            crate::scope::note_filter(crate::scope::describe(
                &owner.log_tag(),
                filter,
                self.census.is_none(),
            ));
        }
    }

    /// The engine below the guard, unchecked: for drills that count what
    /// the guard had to drop against what the engine returned.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Seals every memory written and opens every memory read as `gate`
    /// decides.
    pub fn with_sealing(mut self, gate: Arc<SealGate>) -> Self {
        self.sealing = gate;
        self
    }

    /// The caller's own points, opened when sealed, as memories. With
    /// `whole`, a point of the caller's that does not open fails the read
    /// instead of being left out.
    async fn admit(
        &self,
        owner: &OwnerHash,
        points: Vec<RawPoint>,
        path: &'static str,
        whole: bool,
    ) -> Result<Vec<Memory>, StoreError> {
        let memories = self.admit_expired_too(owner, points, path, whole).await?;
        Ok(alive(memories, now_ms()))
    }

    /// [`Self::admit`], expired memories included.
    async fn admit_expired_too(
        &self,
        owner: &OwnerHash,
        points: Vec<RawPoint>,
        path: &'static str,
        whole: bool,
    ) -> Result<Vec<Memory>, StoreError> {
        // Foreign points are the guard's to count; only the caller's own are
        // worth a key lookup.
        let read = points.len();
        let own = self.guard.owned(owner, points, path);
        let foreign = read - own.len();
        let breached = foreign > 0 && self.breaches.is_some();
        // Looked up once, and only when a statement or a breach needs it.
        if crate::scope::wanted() || breached {
            let place = self.engine.place(owner).await?;
            if let (true, Some(breaches)) = (breached, &self.breaches) {
                breaches.breached(owner, &place, path, foreign).await?;
            }
            crate::scope::note_read(place, read, foreign);
        }
        let own = match self.sealing.sealer()? {
            Some(sealer) => sealer.open(owner, own, path, whole).await?,
            None => own,
        };
        Ok(self.guard.admit(owner, own, path))
    }

    /// Also counts, in `metrics`, every call whose collection holds another
    /// owner's points. Costs one engine count per call: for collision drills.
    pub fn with_shared_census(mut self, metrics: Arc<Metrics>) -> Self {
        self.census = Some(metrics);
        self
    }

    /// Counts the call if `owner`'s collection is shared at this moment. A
    /// failed count is logged, not returned: it is a drill's diagnostic and
    /// must not fail the request it observes.
    async fn census(&self, owner: &OwnerHash) {
        let Some(metrics) = &self.census else { return };
        match self.engine.holds_other_owners(owner).await {
            Ok(true) => metrics.shared_collection_touched(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "shared-collection census failed"),
        }
    }

    /// Writes memories for `owner`.
    pub async fn put(&self, owner: &OwnerHash, memories: Vec<NewMemory>) -> Result<(), StoreError> {
        self.write(owner, memories, WriteMode::Upsert).await
    }

    /// Writes memories for `owner` whose ids hold no point yet; an id that
    /// does keeps its point (see [`Engine::insert_new`]).
    pub async fn put_new(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        self.write(owner, memories, WriteMode::InsertNew).await
    }

    /// Writes memories for `owner` over the points of their ids that still
    /// exist (see [`Engine::update_existing`]).
    pub async fn put_existing(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        self.write(owner, memories, WriteMode::UpdateExisting).await
    }

    async fn write(
        &self,
        owner: &OwnerHash,
        mut memories: Vec<NewMemory>,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        self.census(owner).await;
        let sealer = self.sealing.sealer()?;
        let _no_erase = match sealer {
            Some(sealer) => {
                let guard = sealer.lock_of(owner).read_owned().await;
                sealer.seal(owner, &mut memories).await?;
                Some(guard)
            }
            None => None,
        };
        match mode {
            WriteMode::Upsert => self.engine.upsert(owner, memories).await,
            WriteMode::InsertNew => self.engine.insert_new(owner, memories).await,
            WriteMode::UpdateExisting => self.engine.update_existing(owner, memories).await,
            WriteMode::UpdateIf(expected) => {
                let memory = memories.pop().ok_or_else(|| {
                    StoreError::Internal("a replacement without its memory".into())
                })?;
                self.engine.replace(owner, memory, expected).await
            }
        }
    }

    /// Writes `memory` over `owner`'s memory of its id if that is still at
    /// version `expected` (see [`Engine::replace`]); read it back to learn
    /// whether it was.
    pub async fn replace(
        &self,
        owner: &OwnerHash,
        memory: NewMemory,
        expected: u64,
    ) -> Result<(), StoreError> {
        self.write(owner, vec![memory], WriteMode::UpdateIf(expected))
            .await
    }

    /// Searches `owner`'s memories; expired ones are never among them.
    pub async fn search(
        &self,
        owner: &OwnerHash,
        mut query: SearchQuery,
    ) -> Result<Vec<Memory>, StoreError> {
        self.census(owner).await;
        self.refuse_quarantined(owner).await?;
        query.filter.alive_at = Some(now_ms());
        self.note_filter(owner, &query.filter);
        if self.sealing.sealer()?.is_none() {
            let points = self.engine.search(owner, query).await?;
            return self.admit(owner, points, "search", false).await;
        }
        // Range conditions on metadata cannot be asked of the engine, which
        // holds sealed metadata only: the opened memories meet them here,
        // out of a larger set of nearest ones, larger again until enough
        // pass or the owner has no more.
        let ranges = std::mem::take(&mut query.filter.ranges);
        let limit = query.limit;
        let mut asked = if ranges.is_empty() { limit } else { limit * 4 };
        loop {
            let points = self
                .sealed_read(owner, &query.filter, |filter| {
                    let query = SearchQuery {
                        limit: asked,
                        filter,
                        ..query.clone()
                    };
                    self.engine.search(owner, query)
                })
                .await?;
            let exhausted = points.len() < asked;
            let mut memories = self.admit(owner, points, "search", false).await?;
            memories.retain(|m| in_ranges(m, &ranges));
            if memories.len() >= limit || exhausted || asked >= MAX_SCAN {
                memories.truncate(limit);
                return Ok(memories);
            }
            asked = (asked * 4).min(MAX_SCAN);
        }
    }

    /// Runs `read` with `filter` sealed for `owner`: its metadata conditions
    /// as tags. Nothing when the owner has no key. A filter's tags come from
    /// the cached key; if another replica made the owner a new key since,
    /// they match nothing, so an empty answer is checked against the
    /// vault's key and read again with it.
    async fn sealed_read<R, F, Fut>(
        &self,
        owner: &OwnerHash,
        filter: &Conditions,
        read: F,
    ) -> Result<R, StoreError>
    where
        R: Found,
        F: Fn(Conditions) -> Fut,
        Fut: std::future::Future<Output = Result<R, StoreError>>,
    {
        let Some(sealer) = self.sealing.sealer()? else {
            return read(filter.clone()).await;
        };
        let tagged = filter.on_metadata();
        let mut sealed = filter.clone();
        let mut found = match sealer.seal_conditions(owner, &mut sealed).await? {
            true => read(sealed).await?,
            false => R::nothing(),
        };
        if tagged && found.is_empty() && sealer.renewed(owner).await? {
            let mut sealed = filter.clone();
            if sealer.seal_conditions(owner, &mut sealed).await? {
                found = read(sealed).await?;
            }
        }
        Ok(found)
    }

    /// One of `owner`'s memories, or `None` (also when it is someone else's).
    pub async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<Memory>, StoreError> {
        self.census(owner).await;
        self.guarded_get(owner, id).await
    }

    async fn guarded_get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<Memory>, StoreError> {
        self.refuse_quarantined(owner).await?;
        self.note_filter(owner, &Conditions::default());
        let point = self.engine.get(owner, id).await?;
        Ok(self
            .admit(owner, point.into_iter().collect(), "get", false)
            .await?
            .pop())
    }

    /// Deletes one of `owner`'s memories and returns it; `None` if it had
    /// none with this id.
    pub async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<Memory>, StoreError> {
        self.census(owner).await;
        let Some(memory) = self.guarded_get(owner, id).await? else {
            return Ok(None);
        };
        self.engine.delete(owner, id).await?;
        Ok(Some(memory))
    }

    /// A page of `owner`'s memories that meet `filter`.
    pub async fn list(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
        filter: &Conditions,
    ) -> Result<Page, StoreError> {
        self.page(owner, after, limit, filter, "list", false).await
    }

    /// A page of `owner`'s memories for the quota's count of their bytes:
    /// guarded like any read, but served in a quarantine too, since nothing
    /// of it leaves the process (so that writes go on in a quarantine).
    pub async fn tally_page(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.page(owner, after, limit, &Conditions::default(), TALLY, false)
            .await
    }

    /// A page of `owner`'s memories for an export, which fails rather than
    /// leave out a memory of theirs that does not open.
    pub async fn export_page(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.page(owner, after, limit, &Conditions::default(), "export", true)
            .await
    }

    async fn page(
        &self,
        owner: &OwnerHash,
        mut after: Option<Uuid>,
        limit: usize,
        filter: &Conditions,
        path: &'static str,
        whole: bool,
    ) -> Result<Page, StoreError> {
        self.census(owner).await;
        if path != TALLY {
            self.refuse_quarantined(owner).await?;
        }
        let mut filter = filter.clone();
        filter.alive_at = Some(now_ms());
        self.note_filter(owner, &filter);
        // Sealed metadata meets range conditions only once opened (see
        // `search`): pages are read until one holds a match or none remain.
        let ranges = match self.sealing.sealer()? {
            Some(_) => std::mem::take(&mut filter.ranges),
            None => Vec::new(),
        };
        // With ranges to apply here, pages are read larger than asked.
        let ask = if ranges.is_empty() {
            limit
        } else {
            limit.max(PAGE)
        };
        let mut scanned = 0;
        loop {
            let page = self
                .sealed_read(owner, &filter, |filter| async move {
                    self.engine.scroll(owner, after, ask, &filter).await
                })
                .await?;
            let (points, next) = (page.points, page.next);
            scanned += points.len();
            let mut memories = self.admit(owner, points, path, whole).await?;
            let last_own = memories.last().map(Memory::id);
            if !ranges.is_empty() {
                memories.retain(|m| in_ranges(m, &ranges));
                if memories.len() > limit {
                    memories.truncate(limit);
                    let last = memories.last().map(Memory::id);
                    return Ok(Page {
                        memories,
                        next: last,
                    });
                }
                if let (true, Some(last), Some(_)) = (memories.is_empty(), last_own, next) {
                    if scanned < MAX_SCAN {
                        after = Some(last);
                        continue;
                    }
                    // As much as one request reads: an empty page whose
                    // cursor reads on from there.
                    return Ok(Page {
                        memories,
                        next: Some(last),
                    });
                }
            }
            // The cursor handed out is always one of the caller's own ids; a
            // page the guard emptied (possible only when the engine filter
            // failed) is skipped rather than answered with a foreign cursor.
            match (memories.last().map(Memory::id), next) {
                (_, None) => {
                    return Ok(Page {
                        memories,
                        next: None,
                    });
                }
                (Some(last), Some(_)) => {
                    return Ok(Page {
                        memories,
                        next: Some(last),
                    });
                }
                (None, Some(next)) => after = Some(next),
            }
        }
    }

    /// Deletes all of `owner`'s memories (and their data key first, when
    /// sealed).
    pub async fn erase(&self, owner: &OwnerHash) -> Result<Erased, StoreError> {
        self.census(owner).await;
        let Some(sealer) = self.sealing.sealer()? else {
            return Ok(Erased {
                deleted: self.engine.erase(owner).await?,
                key: None,
            });
        };
        // The key goes first: should the erase stop halfway, what is left
        // is already unreadable, and a retry removes it.
        let _exclusive = sealer.lock_of(owner).write_owned().await;
        let key = sealer.shred(owner).await?;
        Ok(Erased {
            deleted: self.engine.erase(owner).await?,
            key,
        })
    }

    /// Whether memories are sealed at rest.
    pub fn sealed(&self) -> Result<bool, StoreError> {
        Ok(self.sealing.sealer()?.is_some())
    }

    /// The gate that decides sealing (the access log seals under it too).
    pub fn sealing(&self) -> &Arc<SealGate> {
        &self.sealing
    }

    /// How many of `owner`'s live memories there are, and how many of them
    /// hold each of `terms` (keyword term ids, as a query has them): the
    /// counts BM25's inverse document frequencies take.
    pub async fn term_counts(
        &self,
        owner: &OwnerHash,
        terms: &[i64],
    ) -> Result<(usize, Vec<usize>), StoreError> {
        let alive = Conditions::alive_at(now_ms());
        let n = self.engine.count_where(owner, &alive).await?;
        let mut counts = Vec::with_capacity(terms.len());
        for term in terms {
            let mut filter = Conditions {
                terms: vec![*term],
                ..alive.clone()
            };
            let keyed = match self.sealing.sealer()? {
                Some(sealer) => sealer.seal_conditions(owner, &mut filter).await?,
                None => true,
            };
            counts.push(match keyed {
                true => self.engine.count_where(owner, &filter).await?,
                false => 0,
            });
        }
        Ok((n, counts))
    }

    /// Up to `cap` of `owner`'s memories that meet `filter` and hold any of
    /// `terms` (keyword term ids, as a query has them), in id order.
    pub async fn holding_terms(
        &self,
        owner: &OwnerHash,
        terms: &[i64],
        filter: &Conditions,
        cap: usize,
    ) -> Result<Vec<Memory>, StoreError> {
        let filter = Conditions {
            terms: terms.to_vec(),
            ..filter.clone()
        };
        let mut out = Vec::new();
        let mut after = None;
        while out.len() < cap {
            let page = self
                .page(
                    owner,
                    after,
                    PAGE.min(cap - out.len()),
                    &filter,
                    "search",
                    false,
                )
                .await?;
            out.extend(page.memories);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// Deletes `owner`'s memories expired at `now`; how many.
    pub async fn delete_expired(&self, owner: &OwnerHash, now: i64) -> Result<usize, StoreError> {
        self.engine.delete_expired(owner, now).await
    }

    /// The earliest expiry after `after` among `owner`'s memories.
    pub async fn next_expiry(
        &self,
        owner: &OwnerHash,
        after: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.engine.next_expiry(owner, after).await
    }

    /// One of `owner`'s memories, expired or not (a keyed retry's read: an
    /// expired memory was stored, and stays gone).
    pub async fn get_expired_too(
        &self,
        owner: &OwnerHash,
        id: Uuid,
    ) -> Result<Option<Memory>, StoreError> {
        self.census(owner).await;
        self.refuse_quarantined(owner).await?;
        let point = self.engine.get(owner, id).await?;
        Ok(self
            .admit_expired_too(owner, point.into_iter().collect(), "get", false)
            .await?
            .pop())
    }

    /// Owners of memories that expire by `before`, with the earliest time
    /// (the sweep's scan; see [`Engine::expiring`]).
    pub async fn expiring(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(OwnerHash, i64)>, StoreError> {
        self.engine.expiring(before, limit).await
    }

    /// How many memories `owner` holds (a number, no memory passes out).
    pub async fn count(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        self.engine.count(owner).await
    }

    /// Whether other replicas write the same collections.
    pub fn written_by_others(&self) -> bool {
        self.engine.written_by_others()
    }

    /// Shards the engine holds open (the open-shards gauge).
    pub fn open_shards(&self) -> usize {
        self.engine.open_shards()
    }

    /// Whether the engine can serve requests.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.sealing.sealer()?;
        self.engine.ready().await
    }

    /// Flushes and closes the engine.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await
    }
}
