//! The embedded engine: one qdrant-edge shard directory per user.
//!
//! Shards live under `<data_dir>/shards/<collection name>`, are created on the
//! first write and opened lazily on first use. Open shards sit in a bounded LRU
//! because each holds file descriptors and memory maps. qdrant-edge is
//! synchronous and does disk I/O, so every call runs on tokio's blocking pool.
//!
//! Durability: qdrant-edge 0.7 never replays its WAL when a shard is loaded
//! (`EdgeShard::load` opens the WAL but does not read it), so a write is only
//! durable once the segments are flushed. Every write is therefore flushed
//! before it is acknowledged; there is no faster, weaker mode.
//!
//! Locking: each shard has one `RwLock`. Reads share it; writes, flushes and
//! closes take it exclusively, because `EdgeShard::flush` (which `Drop` also
//! runs) panics if an update holds the shard's internal locks. A shard leaves
//! the LRU only when no request holds it, and it is closed under the pool lock
//! so that no second handle can open the same directory while it flushes.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ahash::AHashSet;
use async_trait::async_trait;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, DEFAULT_VECTOR_NAME, Distance, EdgeConfig,
    EdgeOptimizersConfig, EdgeShard, EdgeVectorParams, FieldCondition, FieldIndexOperations,
    Filter, HasIdCondition, JsonPath, Match, MatchValue, NamedQuery, Payload, PayloadFieldSchema,
    PayloadSchemaType, PointId, PointInsertOperations, PointOperations, PointStructPersisted,
    QueryEnum, QueryRequest, ScoringQuery, ScrollRequest, UpdateOperation, ValueVariants,
    VectorStructPersisted, WalOptions, WithPayloadInterface, WithVector,
};
use uuid::Uuid;

use super::{
    Engine, METADATA_FIELD, MetaValue, NewMemory, OWNER_FIELD, RawPage, RawPoint, SearchQuery,
    StoreError,
};
use crate::embed::DIMENSIONS;
use crate::owner::OwnerHash;

/// WAL segment size per shard: small, because thousands of shards each
/// preallocate one (the 32 MiB default would cost 32 MiB of disk per user).
const WAL_SEGMENT_BYTES: usize = 1024 * 1024;

/// Memory maps one open shard holds (measured: 100 open shards added 2,294
/// maps to the process, 256 added 5,869; rounded up).
pub const MAPS_PER_OPEN_SHARD: usize = 24;

/// Maps left for everything else in the process (model, runtime, libraries).
const MAPS_HEADROOM: usize = 4096;

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

/// Settings of the embedded engine.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Root data directory; shards go under `shards/`.
    pub data_dir: PathBuf,
    /// Prefix of shard directory names.
    pub collection_prefix: String,
    /// Hex characters of the owner hash in a shard's name.
    pub name_hex_chars: usize,
    /// Most shards kept open at once (exceeded only while all are in use).
    pub max_open_shards: usize,
    /// Collision drill only: leave the owner condition out of read filters
    /// so that the guard alone separates users who share a shard.
    pub drill_skip_read_filter: bool,
}

/// One shard slot: `None` until opened, and again after erase.
struct Slot {
    dir: PathBuf,
    shard: RwLock<Option<EdgeShard>>,
}

/// The embedded qdrant-edge engine.
pub struct EdgeEngine {
    settings: EdgeSettings,
    root: PathBuf,
    pool: Mutex<LruCache<String, Arc<Slot>>>,
    // Held for the engine's lifetime; the OS releases it if the process dies.
    _lock: std::fs::File,
}

fn engine_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// The storage settings every user shard is created with (the benchmarks'
/// bare-engine baseline uses them too, so that it measures the same storage).
pub fn shard_config() -> EdgeConfig {
    EdgeConfig {
        on_disk_payload: true,
        vectors: HashMap::from([(
            DEFAULT_VECTOR_NAME.to_string(),
            EdgeVectorParams {
                size: DIMENSIONS,
                distance: Distance::Cosine,
                on_disk: Some(true),
                multivector_config: None,
                datatype: None,
                quantization_config: None,
                hnsw_config: None,
            },
        )]),
        sparse_vectors: HashMap::new(),
        hnsw_config: Default::default(),
        quantization_config: None,
        optimizers: EdgeOptimizersConfig::default(),
        wal_options: Some(WalOptions {
            segment_capacity: WAL_SEGMENT_BYTES,
            segment_queue_len: 0,
            retain_closed: NonZeroUsize::MIN,
        }),
    }
}

fn owner_path() -> JsonPath {
    JsonPath::try_from(OWNER_FIELD).expect("the owner field name is a valid JSON path")
}

fn owner_condition(owner: &OwnerHash) -> Condition {
    Condition::Field(FieldCondition::new_match(
        owner_path(),
        Match::Value(MatchValue {
            value: ValueVariants::String(owner.to_hex()),
        }),
    ))
}

fn metadata_condition(key: &str, value: &MetaValue) -> Result<Condition, StoreError> {
    let value = match value {
        MetaValue::Str(s) => ValueVariants::String(s.clone()),
        MetaValue::Int(i) => ValueVariants::Integer(*i),
        MetaValue::Bool(b) => ValueVariants::Bool(*b),
    };
    // Keys are validated by the API to a plain identifier charset, so this
    // path cannot step outside the metadata object.
    let path = JsonPath::try_from(format!("{METADATA_FIELD}.{key}").as_str())
        .map_err(|()| StoreError::Engine(format!("metadata key `{key}` is not a valid path")))?;
    Ok(Condition::Field(FieldCondition::new_match(
        path,
        Match::Value(MatchValue { value }),
    )))
}

fn has_id(id: Uuid) -> Condition {
    let ids: AHashSet<PointId> = [PointId::Uuid(id)].into_iter().collect();
    Condition::HasId(HasIdCondition::from(ids))
}

fn filter(must: Vec<Condition>) -> Option<Filter> {
    if must.is_empty() {
        return None;
    }
    Some(Filter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    })
}

fn to_raw(id: PointId, score: Option<f32>, payload: Option<Payload>) -> Option<RawPoint> {
    let PointId::Uuid(id) = id else {
        // Cordon only writes UUID ids; anything else is not ours to return.
        tracing::warn!(?id, "skipped a point with a numeric id");
        return None;
    };
    Some(RawPoint {
        id,
        score,
        payload: payload.map(|p| p.0).unwrap_or_default(),
    })
}

impl Slot {
    /// Opens the shard if its directory exists (or `create` is set).
    /// Returns false when there is nothing to open.
    fn ensure_open(&self, create: bool) -> Result<bool, StoreError> {
        if self.shard.read().is_some() {
            return Ok(true);
        }
        let mut guard = self.shard.write();
        if guard.is_some() {
            return Ok(true);
        }
        let exists = self.dir.join("edge_config.json").is_file();
        if !exists && !create {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).map_err(engine_err)?;
        let shard = EdgeShard::load(&self.dir, Some(shard_config())).map_err(engine_err)?;
        if !exists {
            // The owner field is filtered on by every read.
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: owner_path(),
                        field_schema: Some(PayloadFieldSchema::FieldType(
                            PayloadSchemaType::Keyword,
                        )),
                    }),
                ))
                .map_err(engine_err)?;
        }
        *guard = Some(shard);
        Ok(true)
    }

    fn read<R>(
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

    /// Runs an update and flushes it while holding the shard exclusively.
    fn update(&self, create: bool, op: UpdateOperation) -> Result<Option<()>, StoreError> {
        self.write(create, |shard| {
            shard.update(op).map_err(engine_err)?;
            // Safe: we hold the slot exclusively, so no update is running.
            shard.flush();
            Ok(())
        })
    }

    fn write<R>(
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

impl EdgeEngine {
    /// Opens the engine over `settings.data_dir`; shards open lazily.
    pub fn open(mut settings: EdgeSettings) -> Result<Self, StoreError> {
        let limit = max_map_count();
        let fitted = fit_open_shards(settings.max_open_shards, limit);
        if fitted < settings.max_open_shards {
            tracing::warn!(
                wanted = settings.max_open_shards,
                using = fitted,
                vm_max_map_count = limit.unwrap_or_default(),
                "each open shard holds about {MAPS_PER_OPEN_SHARD} memory maps; lowered the open-shard bound to fit vm.max_map_count (raise it, e.g. to 262144, to keep more shards open)"
            );
            settings.max_open_shards = fitted;
        }
        let root = settings.data_dir.join("shards");
        std::fs::create_dir_all(&root).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", root.display()))
        })?;
        // Two processes on one data directory would open the same shard twice.
        let lock_path = settings.data_dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        lock.try_lock().map_err(|_| {
            StoreError::Unavailable(format!(
                "{} is in use by another cordon process",
                settings.data_dir.display()
            ))
        })?;
        empty_trash(&root)?;
        let cap = NonZeroUsize::new(settings.max_open_shards.max(1)).expect("max(1) is non-zero");
        Ok(Self {
            settings,
            root,
            pool: Mutex::new(LruCache::new(cap)),
            _lock: lock,
        })
    }

    fn slot(&self, owner: &OwnerHash) -> Arc<Slot> {
        let name = owner.collection_name(
            &self.settings.collection_prefix,
            self.settings.name_hex_chars,
        );
        let mut pool = self.pool.lock();
        if let Some(slot) = pool.get(&name) {
            return slot.clone();
        }
        let slot = Arc::new(Slot {
            dir: self.root.join(&name),
            shard: RwLock::new(None),
        });
        // `push` never evicts on its own here: capacity is managed below so
        // that a shard in use is never closed under a running request.
        let grown = NonZeroUsize::new(pool.len() + 1).expect("len + 1 is non-zero");
        pool.resize(grown);
        pool.push(name, slot.clone());
        self.evict_idle(&mut pool);
        slot
    }

    fn evict_idle(&self, pool: &mut LruCache<String, Arc<Slot>>) {
        let cap = self.settings.max_open_shards.max(1);
        if pool.len() <= cap {
            return;
        }
        // Oldest first; only slots that no request holds (the pool's Arc is
        // the only one) may close.
        let idle: Vec<String> = pool
            .iter()
            .rev()
            .filter(|(_, slot)| Arc::strong_count(slot) == 1)
            .map(|(name, _)| name.clone())
            .take(pool.len() - cap)
            .collect();
        for name in idle {
            // Dropping the slot drops the shard, which flushes it. This happens
            // under the pool lock on purpose: nobody can reopen the directory
            // until the flush is done.
            pool.pop(&name);
        }
        let len = pool.len();
        pool.resize(NonZeroUsize::new(len.max(cap)).expect("max(cap>=1) is non-zero"));
    }

    fn read_filter(&self, owner: &OwnerHash, mut extra: Vec<Condition>) -> Option<Filter> {
        if !self.settings.drill_skip_read_filter {
            extra.insert(0, owner_condition(owner));
        }
        filter(extra)
    }

    async fn blocking<R: Send + 'static>(
        f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Internal(format!("blocking task failed: {e}")))?
    }

    fn upsert_blocking(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        let owner_hex = owner.to_hex();
        let points: Vec<PointStructPersisted> = memories
            .into_iter()
            .map(|m| {
                let (id, vector, payload) = m.into_parts(&owner_hex);
                PointStructPersisted {
                    id: PointId::Uuid(id),
                    vector: VectorStructPersisted::Single(vector),
                    payload: Some(Payload(payload)),
                }
            })
            .collect();
        self.slot(owner).update(
            true,
            UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                PointInsertOperations::PointsList(points),
            )),
        )?;
        Ok(())
    }

    fn scroll_blocking(
        &self,
        owner: &OwnerHash,
        filter: Option<Filter>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        let page = self.slot(owner).read(|shard| {
            // `offset` is inclusive; ask for one more and skip the cursor itself.
            let (records, next) = shard
                .scroll(ScrollRequest {
                    offset: after.map(PointId::Uuid),
                    limit: Some(limit + usize::from(after.is_some())),
                    filter,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(engine_err)?;
            let records = records
                .into_iter()
                .filter_map(|r| to_raw(r.id, None, r.payload))
                .collect();
            Ok(RawPage::after_cursor(records, after, limit, next.is_some()))
        })?;
        Ok(page.unwrap_or_else(RawPage::empty))
    }
}

#[async_trait]
impl Engine for Arc<EdgeEngine> {
    async fn upsert(&self, owner: &OwnerHash, memories: Vec<NewMemory>) -> Result<(), StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || this.upsert_blocking(&owner, memories)).await
    }

    async fn search(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<RawPoint>, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let extra = query
                .metadata
                .iter()
                .map(|(k, v)| metadata_condition(k, v))
                .collect::<Result<Vec<_>, _>>()?;
            let request = QueryRequest {
                prefetches: vec![],
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: query.vector.into(),
                    using: None,
                }))),
                filter: this.read_filter(&owner, extra),
                score_threshold: query.min_score.map(Into::into),
                limit: query.limit,
                offset: 0,
                params: None,
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(true),
            };
            let found = this
                .slot(&owner)
                .read(|shard| shard.query(request).map_err(engine_err))?
                .unwrap_or_default();
            Ok(found
                .into_iter()
                .filter_map(|p| to_raw(p.id, Some(p.score), p.payload))
                .collect())
        })
        .await
    }

    async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<RawPoint>, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let filter = this.read_filter(&owner, vec![has_id(id)]);
            let page = this.scroll_blocking(&owner, filter, None, 1)?;
            Ok(page.points.into_iter().next())
        })
        .await
    }

    async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            // Deletes always carry the owner condition, drill or not.
            let filter = filter(vec![owner_condition(&owner), has_id(id)]).expect("two conditions");
            this.slot(&owner).update(
                false,
                UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(filter)),
            )?;
            Ok(())
        })
        .await
    }

    async fn scroll(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let filter = this.read_filter(&owner, vec![]);
            this.scroll_blocking(&owner, filter, after, limit)
        })
        .await
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let slot = this.slot(&owner);
            if !slot.ensure_open(false)? {
                return Ok(0);
            }
            let mut guard = slot.shard.write();
            let Some(shard) = guard.as_ref() else {
                return Ok(0);
            };
            let mine = filter(vec![owner_condition(&owner)]);
            let removed = shard
                .count(CountRequest {
                    filter: mine.clone(),
                    exact: true,
                })
                .map_err(engine_err)?;
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(mine.expect("one condition")),
                ))
                .map_err(engine_err)?;
            let left = shard
                .count(CountRequest {
                    filter: None,
                    exact: true,
                })
                .map_err(engine_err)?;
            if left == 0 {
                // Nobody else's points live here: remove the shard entirely.
                // Dropping it flushes; we hold the slot exclusively.
                drop(guard.take());
                discard_dir(&this.root, &slot.dir)?;
            } else {
                // A shared (collided) shard keeps the other owners' points.
                shard.flush();
            }
            Ok(removed)
        })
        .await
    }

    async fn holds_other_owners(&self, owner: &OwnerHash) -> Result<bool, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let others = Filter {
                should: None,
                min_should: None,
                must: None,
                must_not: Some(vec![owner_condition(&owner)]),
            };
            let found = this.slot(&owner).read(|shard| {
                shard
                    .count(CountRequest {
                        filter: Some(others),
                        exact: true,
                    })
                    .map_err(engine_err)
            })?;
            Ok(found.unwrap_or(0) > 0)
        })
        .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        EdgeEngine::blocking(move || {
            // Writable data directory is what "ready" means for this engine.
            let probe = root.join(".ready-probe");
            std::fs::write(&probe, b"ok")
                .and_then(|_| std::fs::remove_file(&probe))
                .map_err(|e| StoreError::Unavailable(format!("data directory not writable: {e}")))
        })
        .await
    }

    async fn shutdown(&self) {
        let this = self.clone();
        let _ = EdgeEngine::blocking(move || {
            let mut pool = this.pool.lock();
            let n = pool.len();
            // Dropping each slot flushes and closes its shard.
            pool.clear();
            tracing::info!(shards = n, "closed all shards");
            Ok(())
        })
        .await;
    }
}

/// Prefix of shard directories on their way out.
const TRASH_PREFIX: &str = ".trash-";

/// Removes a shard directory so that a crash midway cannot leave a
/// half-deleted shard under a live name: rename first (atomic), then delete.
fn discard_dir(root: &Path, dir: &Path) -> Result<(), StoreError> {
    let trash = root.join(format!("{TRASH_PREFIX}{}", Uuid::new_v4()));
    match std::fs::rename(dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(engine_err(format!("cannot remove {}: {e}", dir.display()))),
    }
    std::fs::remove_dir_all(&trash)
        .map_err(|e| engine_err(format!("cannot remove {}: {e}", trash.display())))
}

/// Finishes removals that a crash interrupted.
fn empty_trash(root: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(root).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(TRASH_PREFIX)
        {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
    }
    Ok(())
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
}
