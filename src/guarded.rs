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

use crate::guard::{Guard, Memory};
use crate::metrics::Metrics;
use crate::owner::OwnerHash;
use crate::seal::SealError;
use crate::seal::setup::SealGate;
use crate::store::{Engine, NewMemory, RawPoint, SearchQuery, StoreError, WriteMode};

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
        let Some(sealer) = self.sealing.sealer()? else {
            return Ok(self.guard.admit(owner, points, path));
        };
        // Foreign points are the guard's to count; only the caller's own are
        // worth a key lookup.
        let own = self.guard.owned(owner, points, path);
        let opened = sealer.open(owner, own, path, whole).await?;
        Ok(self.guard.admit(owner, opened, path))
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
        }
    }

    /// Searches `owner`'s memories.
    pub async fn search(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<Memory>, StoreError> {
        self.census(owner).await;
        let Some(sealer) = self.sealing.sealer()? else {
            let points = self.engine.search(owner, query).await?;
            return self.admit(owner, points, "search", false).await;
        };
        let filtered = !query.metadata.is_empty();
        let mut sealed = query.clone();
        let mut points = match sealer.seal_query(owner, &mut sealed).await? {
            true => self.engine.search(owner, sealed).await?,
            false => Vec::new(),
        };
        // A filter's tags come from the cached key. If another replica made
        // the owner a new key since, they match nothing: find out before
        // answering "nothing", and search again with the vault's key.
        if filtered && points.is_empty() && sealer.renewed(owner).await? {
            let mut sealed = query;
            if sealer.seal_query(owner, &mut sealed).await? {
                points = self.engine.search(owner, sealed).await?;
            }
        }
        self.admit(owner, points, "search", false).await
    }

    /// One of `owner`'s memories, or `None` (also when it is someone else's).
    pub async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<Memory>, StoreError> {
        self.census(owner).await;
        self.guarded_get(owner, id).await
    }

    async fn guarded_get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<Memory>, StoreError> {
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

    /// A page of `owner`'s memories.
    pub async fn list(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.page(owner, after, limit, "list", false).await
    }

    /// A page of `owner`'s memories for an export, which fails rather than
    /// leave out a memory of theirs that does not open.
    pub async fn export_page(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.page(owner, after, limit, "export", true).await
    }

    async fn page(
        &self,
        owner: &OwnerHash,
        mut after: Option<Uuid>,
        limit: usize,
        path: &'static str,
        whole: bool,
    ) -> Result<Page, StoreError> {
        self.census(owner).await;
        loop {
            let page = self.engine.scroll(owner, after, limit).await?;
            let memories = self.admit(owner, page.points, path, whole).await?;
            // The cursor handed out is always one of the caller's own ids; a
            // page the guard emptied (possible only when the engine filter
            // failed) is skipped rather than answered with a foreign cursor.
            match (memories.last().map(Memory::id), page.next) {
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

    /// Deletes all of `owner`'s memories.
    pub async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        self.census(owner).await;
        let Some(sealer) = self.sealing.sealer()? else {
            return self.engine.erase(owner).await;
        };
        // The key goes first: should the erase stop halfway, what is left
        // is already unreadable, and a retry removes it.
        let _exclusive = sealer.lock_of(owner).write_owned().await;
        sealer.shred(owner).await?;
        self.engine.erase(owner).await
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
