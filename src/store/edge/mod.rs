//! The embedded engine: one qdrant-edge shard directory per user.
//!
//! Shards live under `<data_dir>/shards/<collection name>`, are created on the
//! first write and opened lazily on first use; [`pool`] keeps the open ones
//! bounded, [`rewrite`] keeps each one's files bounded and free of deleted
//! text, [`files`] holds the directory steps that must survive a crash, and
//! [`fault`] turns qdrant-edge's panics on I/O errors into errors.
//! qdrant-edge is synchronous and does disk I/O, so every call runs on tokio's
//! blocking pool.
//!
//! Durability: qdrant-edge 0.7 never replays its WAL when a shard is loaded
//! (`EdgeShard::load` opens the WAL but does not read it), so a write is only
//! durable once the segments are flushed. Every write is therefore flushed
//! before it is acknowledged; there is no faster, weaker mode.

mod fault;
pub mod files;
pub mod pool;
pub mod rewrite;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ahash::AHashSet;
use async_trait::async_trait;
use parking_lot::Mutex;
use qdrant_edge::{
    Condition, ConditionalInsertOperation, CountRequest, DEFAULT_VECTOR_NAME, Distance, EdgeConfig,
    EdgeOptimizersConfig, EdgeVectorParams, FieldCondition, Filter, HasIdCondition, JsonPath,
    Match, MatchValue, NamedQuery, Payload, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QueryEnum, QueryRequest, ScoringQuery, ScrollRequest, UpdateMode,
    UpdateOperation, ValueVariants, VectorStructPersisted, WalOptions, WithPayloadInterface,
    WithVector,
};
use tokio::sync::Notify;
use uuid::Uuid;

pub use pool::{MAPS_PER_OPEN_SHARD, fit_open_shards, max_map_count};

use super::{
    Bounds, CREATED_FIELD, Conditions, EXPIRES_FIELD, Engine, METADATA_FIELD, MetaValue, NewMemory,
    OWNER_FIELD, RawPage, RawPoint, SearchQuery, StoreError, TAGS_FIELD, TERMS_FIELD,
    VERSION_FIELD, WriteMode, earliest, note_expiry,
};
use crate::embed::DIMENSIONS;
use crate::owner::OwnerHash;
use pool::{Pool, Slot};

/// WAL segment size per shard: small, because thousands of shards each
/// preallocate one (the 32 MiB default would cost 32 MiB of disk per user).
const WAL_SEGMENT_BYTES: usize = 1024 * 1024;

/// Every this many deletes since its last rewrite, a shard is checked (one
/// count) and rewritten at once if its deleted points are as many as its
/// live ones.
const DEAD_SHARE_MIN: u64 = 64;

/// How long shutdown waits for requests still holding a shard.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// How often the maintenance task looks for shards due for a rewrite.
const MAINTENANCE_TICK: Duration = Duration::from_millis(250);

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
    /// Longest time a deleted memory's text may stay in its shard's files
    /// before the shard is rewritten (the rewrite's own time comes on top).
    pub purge_after: Duration,
    /// WAL growth past twice its size after the last rewrite that makes a
    /// shard due for a rewrite (default [`pool::WAL_GROWTH_BYTES`]).
    pub wal_growth_bytes: u64,
    /// Free bytes the data directory keeps: stores are refused below it, and
    /// a rewrite waits until the copy fits above it. qdrant-edge writes
    /// through memory maps of sparse files, so on a full disk a write faults
    /// (SIGBUS, killing the process) rather than failing: the reserve keeps
    /// the engine from getting there.
    pub min_free_bytes: u64,
}

/// The embedded qdrant-edge engine.
pub struct EdgeEngine {
    settings: EdgeSettings,
    root: PathBuf,
    pool: Pool,
    /// Shards due for a rewrite, by name, with the moment they fall due.
    due: Mutex<HashMap<String, Instant>>,
    stopping: AtomicBool,
    stop: Notify,
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
    // Held for the engine's lifetime; the OS releases it if the process dies.
    _lock: std::fs::File,
}

pub(crate) fn engine_err(e: impl std::fmt::Display) -> StoreError {
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

/// Takes the data directory's lock, held for as long as the file is open.
/// Two processes on one data directory would open the same shard twice; an
/// offline command (`cordon keys rotate`) takes it too, so it cannot run
/// beside a server.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let lock_path = data_dir.join(".lock");
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
            data_dir.display()
        ))
    })?;
    Ok(lock)
}

pub(crate) fn owner_path() -> JsonPath {
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

fn tag_condition(tag: &str) -> Condition {
    let path = JsonPath::try_from(TAGS_FIELD).expect("the tags field name is a valid JSON path");
    Condition::Field(FieldCondition::new_match(
        path,
        Match::Value(MatchValue {
            value: ValueVariants::String(tag.to_owned()),
        }),
    ))
}

/// A condition written in Qdrant's filter language, for the kinds whose
/// types qdrant-edge does not export.
fn parsed(condition: serde_json::Value) -> Condition {
    serde_json::from_value(condition).expect("a condition literal Cordon wrote parses")
}

fn range_condition(field: &str, bounds: &Bounds) -> Condition {
    parsed(serde_json::json!({
        "key": field,
        "range": { "gt": bounds.gt, "gte": bounds.gte, "lt": bounds.lt, "lte": bounds.lte },
    }))
}

/// One of `conditions`, as a filter of its own.
fn any(conditions: Vec<Condition>) -> Condition {
    Condition::Filter(Filter {
        should: Some(conditions),
        min_should: None,
        must: None,
        must_not: None,
    })
}

/// Expired at `now`: an expiry time at or before it.
fn expired_condition(now: i64) -> Condition {
    range_condition(EXPIRES_FIELD, &Bounds::expired_at(now))
}

/// At version `expected`; a point stored before versions were is at 1.
fn version_condition(expected: u64) -> Condition {
    let exact = parsed(serde_json::json!({ "key": VERSION_FIELD, "match": { "value": expected } }));
    if expected == 1 {
        any(vec![
            exact,
            parsed(serde_json::json!({ "is_empty": { "key": VERSION_FIELD } })),
        ])
    } else {
        exact
    }
}

/// The conditions of `filter` that must hold and those that must not.
fn conditions(filter: &Conditions) -> Result<(Vec<Condition>, Vec<Condition>), StoreError> {
    let mut must = filter
        .metadata
        .iter()
        .map(|(k, v)| metadata_condition(k, v))
        .collect::<Result<Vec<_>, _>>()?;
    for (k, values) in &filter.any_of {
        let each = values
            .iter()
            .map(|v| metadata_condition(k, v))
            .collect::<Result<Vec<_>, _>>()?;
        must.push(any(each));
    }
    for (k, bounds) in &filter.ranges {
        must.push(range_condition(&format!("{METADATA_FIELD}.{k}"), bounds));
    }
    if !filter.created.is_open() {
        must.push(range_condition(CREATED_FIELD, &filter.created));
    }
    must.extend(filter.tags.iter().map(|t| tag_condition(t)));
    must.extend(
        filter
            .any_tags
            .iter()
            .map(|group| any(group.iter().map(|t| tag_condition(t)).collect())),
    );
    if !filter.terms.is_empty() {
        must.push(parsed(
            serde_json::json!({ "key": TERMS_FIELD, "match": { "any": filter.terms } }),
        ));
    }
    let must_not = filter.alive_at.map(expired_condition).into_iter().collect();
    Ok((must, must_not))
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
        vector: None,
    })
}

/// Every point in `shard`, whoever's (an exact count).
fn points_in(shard: &qdrant_edge::EdgeShard) -> Result<usize, StoreError> {
    shard
        .count(CountRequest {
            filter: None,
            exact: true,
        })
        .map_err(engine_err)
}

/// The dense vector of a record read with its vector.
fn dense(vector: Option<qdrant_edge::VectorStructInternal>) -> Option<Vec<f32>> {
    match vector? {
        qdrant_edge::VectorStructInternal::Single(v) => Some(v),
        _ => None,
    }
}

/// Deletes whose text a crash kept on disk, in shards of this naming, fall
/// due as they would have (a shard of the other naming is the other
/// engine's to rewrite, see [`EdgeEngine::open_beside`]).
fn due_purges(root: &std::path::Path, settings: &EdgeSettings) -> HashMap<String, Instant> {
    let now = (Instant::now(), SystemTime::now());
    files::pending_purges(root)
        .into_iter()
        .filter(|(name, _)| {
            crate::store::name_hex_len(name, &settings.collection_prefix)
                == Some(settings.name_hex_chars)
        })
        .map(|(name, since)| {
            let age = now.1.duration_since(since).unwrap_or_default();
            let wait = settings.purge_after.saturating_sub(age);
            (name, now.0 + wait)
        })
        .collect()
}

impl EdgeEngine {
    /// Opens the engine over `settings.data_dir`; shards open lazily. A
    /// rewrite or removal that a crash interrupted is finished first.
    pub fn open(mut settings: EdgeSettings) -> Result<Self, StoreError> {
        let limit = max_map_count();
        let fitted = fit_open_shards(settings.max_open_shards, limit);
        if fitted < settings.max_open_shards {
            tracing::warn!(
                wanted = settings.max_open_shards,
                using = fitted,
                vm_max_map_count = limit.unwrap_or_default(),
                "each open shard holds up to {MAPS_PER_OPEN_SHARD} memory maps; lowered the open-shard bound to fit vm.max_map_count (raise it, e.g. to 262144, to keep more shards open)"
            );
            settings.max_open_shards = fitted;
        }
        let root = settings.data_dir.join("shards");
        // Synced into its parent at every start, like every directory a
        // successful write depends on (a start that failed may have made it).
        std::fs::create_dir_all(&root)
            .map_err(|e| e.to_string())
            .and_then(|()| files::sync_dir(&settings.data_dir).map_err(|e| e.to_string()))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", root.display()))
            })?;
        let lock = lock_data_dir(&settings.data_dir)?;
        let repaired = files::repair(&root)?;
        if repaired != files::Repaired::default() {
            tracing::warn!(
                abandoned_rewrites = repaired.abandoned_rewrites,
                completed_swaps = repaired.completed_swaps,
                trash_removed = repaired.trash_removed,
                "repaired shard directories left by an interrupted run"
            );
        }
        let due = due_purges(&root, &settings);
        let map_budget = limit.map_or(usize::MAX, |l| l.saturating_sub(pool::MAPS_HEADROOM));
        let pool = Pool::new(
            &root,
            settings.max_open_shards,
            map_budget,
            settings.wal_growth_bytes,
            settings.name_hex_chars < crate::owner::DEFAULT_NAME_HEX_CHARS,
        );
        Ok(Self {
            settings,
            root,
            pool,
            due: Mutex::new(due),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            maintenance: Mutex::new(None),
            _lock: lock,
        })
    }

    /// A second engine over the same data directory, naming shards by
    /// `name_hex_chars` instead (for `cordon tier migrate`, which reads one
    /// layout and writes the other, and for promoted users' shards beside
    /// the shared ones). It shares this engine's lock; the two never open
    /// the same shard, since their names differ in length (each lists,
    /// purges and rewrites only names of its own), and they split the
    /// memory-map budget.
    pub fn open_beside(&self, name_hex_chars: usize) -> Result<Self, StoreError> {
        let settings = EdgeSettings {
            name_hex_chars,
            ..self.settings.clone()
        };
        let lock = self._lock.try_clone().map_err(|e| {
            StoreError::Unavailable(format!("cannot share the data directory lock: {e}"))
        })?;
        let half = self.pool.halve_map_budget();
        let pool = Pool::new(
            &self.root,
            settings.max_open_shards,
            half,
            settings.wal_growth_bytes,
            name_hex_chars < crate::owner::DEFAULT_NAME_HEX_CHARS,
        );
        Ok(Self {
            due: Mutex::new(due_purges(&self.root, &settings)),
            settings,
            root: self.root.clone(),
            pool,
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            maintenance: Mutex::new(None),
            _lock: lock,
        })
    }

    /// Starts the background task that rewrites shards as they fall due.
    /// Needs a tokio runtime; [`Engine::shutdown`] stops it.
    pub fn start_maintenance(self: &Arc<Self>) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(MAINTENANCE_TICK) => {}
                    () = this.stop.notified() => {}
                }
                if this.is_stopping() {
                    return;
                }
                for name in this.take_due() {
                    if this.is_stopping() {
                        return;
                    }
                    let job = this.clone();
                    let task_name = name.clone();
                    let result =
                        tokio::task::spawn_blocking(move || job.rewrite_blocking(&task_name)).await;
                    match result {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::error!(shard = %this.shard_tag(&name), error = %e, "shard rewrite failed; retrying later");
                            this.schedule(
                                &name,
                                Instant::now()
                                    + this.settings.purge_after.max(Duration::from_secs(5)),
                            );
                        }
                        Err(e) => {
                            tracing::error!(shard = %this.shard_tag(&name), error = %e, "shard rewrite panicked; retrying later");
                            this.schedule(
                                &name,
                                Instant::now()
                                    + this.settings.purge_after.max(Duration::from_secs(5)),
                            );
                        }
                    }
                }
            }
        });
        *self.maintenance.lock() = Some(task);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Names of shards whose rewrite is due now, removed from the schedule.
    fn take_due(&self) -> Vec<String> {
        let now = Instant::now();
        let mut due = self.due.lock();
        let ready: Vec<String> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &ready {
            due.remove(name);
        }
        ready
    }

    /// Schedules a rewrite of `name` at `at`, or earlier if already scheduled.
    fn schedule(&self, name: &str, at: Instant) {
        let mut due = self.due.lock();
        let entry = due.entry(name.to_owned()).or_insert(at);
        *entry = (*entry).min(at);
    }

    /// Drops any scheduled rewrite of `name`.
    fn unschedule(&self, name: &str) {
        self.due.lock().remove(name);
    }

    /// The purge delay for deleted text.
    fn purge_after(&self) -> Duration {
        self.settings.purge_after
    }

    /// Shards scheduled for a rewrite (due or not).
    pub fn scheduled_rewrites(&self) -> usize {
        self.due.lock().len()
    }

    /// A shard name for logs: the same 12 hex characters as an owner's tag.
    fn shard_tag(&self, name: &str) -> String {
        let hex = name
            .strip_prefix(&self.settings.collection_prefix)
            .unwrap_or(name);
        hex.chars().take(12).collect()
    }

    fn slot(&self, owner: &OwnerHash) -> Result<Arc<Slot>, StoreError> {
        let name = owner.collection_name(
            &self.settings.collection_prefix,
            self.settings.name_hex_chars,
        );
        self.pool.slot(&name)
    }

    /// Schedules a rewrite now when the shard has deleted points and its WAL
    /// has outgrown its bound, or when deleted points are a large share of
    /// it. A shard with nothing deleted is left alone: a rewrite could not
    /// shrink it (its WAL is its live memories).
    fn check_due(&self, slot: &Slot, dead: u64) {
        if dead == 0 {
            return;
        }
        let due = slot.wal_over_limit()
            || (dead >= DEAD_SHARE_MIN
                && dead.is_multiple_of(DEAD_SHARE_MIN)
                && slot
                    .read(|shard| {
                        let live = shard
                            .count(CountRequest {
                                filter: None,
                                exact: true,
                            })
                            .map_err(engine_err)?;
                        Ok(dead >= live as u64)
                    })
                    .ok()
                    .flatten()
                    .unwrap_or(false));
        if due {
            self.schedule(&slot.name, Instant::now());
        }
    }

    fn read_filter(&self, owner: &OwnerHash, mut extra: Vec<Condition>) -> Option<Filter> {
        if !self.settings.drill_skip_read_filter {
            extra.insert(0, owner_condition(owner));
        }
        filter(extra)
    }

    /// The read filter with `conditions` too.
    fn read_filter_where(
        &self,
        owner: &OwnerHash,
        extra: Vec<Condition>,
        conditions: &Conditions,
    ) -> Result<Option<Filter>, StoreError> {
        let (must, must_not) = self::conditions(conditions)?;
        let mut filter = self.read_filter(owner, extra.into_iter().chain(must).collect());
        if !must_not.is_empty() {
            filter
                .get_or_insert_with(|| Filter {
                    should: None,
                    min_should: None,
                    must: None,
                    must_not: None,
                })
                .must_not = Some(must_not);
        }
        Ok(filter)
    }

    async fn blocking<R: Send + 'static>(
        f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Internal(format!("blocking task failed: {e}")))?
    }

    /// Refuses a write that would grow storage when free space has fallen
    /// below the reserve plus `extra` bytes.
    fn check_space(&self, extra: u64) -> Result<(), StoreError> {
        if self.settings.min_free_bytes == 0 && extra == 0 {
            return Ok(());
        }
        let free = fs4::available_space(&self.root)
            .map_err(|e| StoreError::Unavailable(format!("cannot read free space: {e}")))?;
        let needed = self.settings.min_free_bytes + extra;
        if free < needed {
            return Err(StoreError::InsufficientStorage(format!(
                "{free} bytes free in the data directory, {needed} needed"
            )));
        }
        Ok(())
    }

    fn upsert_blocking(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        self.check_space(0)?;
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
        let points = PointInsertOperations::PointsList(points);
        let op = match mode {
            // One process writes this data directory (its lock), so the
            // API's per-key claim already settles racing keyed writes.
            WriteMode::Upsert | WriteMode::InsertNew => PointOperations::UpsertPoints(points),
            // Checked and applied under the shard's exclusive lock, so a
            // delete cannot fall between the two.
            WriteMode::UpdateExisting => {
                PointOperations::UpsertPointsConditional(ConditionalInsertOperation {
                    points_op: points,
                    condition: filter(vec![owner_condition(owner)]).expect("one condition"),
                    update_mode: Some(UpdateMode::UpdateOnly),
                })
            }
            // Not expired either: an update read just before the memory
            // expired must not bring it back.
            WriteMode::UpdateIf(expected) => {
                PointOperations::UpsertPointsConditional(ConditionalInsertOperation {
                    points_op: points,
                    condition: Filter {
                        should: None,
                        min_should: None,
                        must: Some(vec![owner_condition(owner), version_condition(expected)]),
                        must_not: Some(vec![expired_condition(
                            crate::store::placement::now_ms() as i64
                        )]),
                    },
                    update_mode: Some(UpdateMode::UpdateOnly),
                })
            }
        };
        let slot = self.slot(owner)?;
        // An update creates no shard: with none, there is nothing to update.
        let create = matches!(mode, WriteMode::Upsert | WriteMode::InsertNew);
        let replaces = matches!(mode, WriteMode::UpdateIf(_));
        let dir = slot.dir.clone();
        let applied = slot.update(create, UpdateOperation::PointOperation(op), || {
            // An update leaves the old text in the shard's files, as a
            // delete does: it goes at the same purge.
            if replaces {
                files::mark_purge_pending(&dir)
            } else {
                Ok(())
            }
        })?;
        if replaces && applied.is_some() {
            self.purge_later(&slot);
        } else {
            self.check_due(&slot, slot.dead());
        }
        Ok(())
    }

    fn delete_blocking(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
        // Deletes always carry the owner condition, drill or not.
        let filter = filter(vec![owner_condition(owner), has_id(id)]).expect("two conditions");
        let slot = self.slot(owner)?;
        self.delete_where(&slot, filter)
    }

    /// Deletes the points of `slot`'s shard that `filter` matches, and
    /// schedules the rewrite that takes their text out of its files.
    fn delete_where(&self, slot: &Slot, filter: Filter) -> Result<(), StoreError> {
        let dir = slot.dir.clone();
        let deleted = slot.update(
            false,
            UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(filter)),
            // Under the shard's lock, so that a rewrite's swap cannot fall
            // between the marker and the delete.
            || files::mark_purge_pending(&dir),
        )?;
        if deleted.is_some() {
            self.purge_later(slot);
        }
        Ok(())
    }

    /// Counts a dead point in `slot`'s shard (deleted, or replaced by an
    /// update) and schedules its purge.
    fn purge_later(&self, slot: &Slot) {
        let dead = slot.add_dead();
        self.schedule(&slot.name, Instant::now() + self.settings.purge_after);
        self.check_due(slot, dead);
    }

    fn delete_expired_blocking(&self, owner: &OwnerHash, now: i64) -> Result<usize, StoreError> {
        // The owner condition always: a shard can hold other owners' points
        // (shortened names), and this sweep is for one owner only.
        let expired =
            filter(vec![owner_condition(owner), expired_condition(now)]).expect("two conditions");
        let slot = self.slot(owner)?;
        let n = slot
            .read(|shard| {
                shard
                    .count(CountRequest {
                        filter: Some(expired.clone()),
                        exact: true,
                    })
                    .map_err(engine_err)
            })?
            .unwrap_or(0);
        if n == 0 {
            return Ok(0);
        }
        self.delete_where(&slot, expired)?;
        Ok(n)
    }

    fn expiring_blocking(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(OwnerHash, i64)>, StoreError> {
        let mut owners = std::collections::BTreeMap::new();
        let expired = filter(vec![expired_condition(before)]);
        for name in self.shard_names()? {
            if owners.len() >= limit {
                break;
            }
            let slot = self.pool.slot(&name)?;
            let mut after = None;
            loop {
                let page = slot.read(|shard| {
                    shard
                        .scroll(ScrollRequest {
                            offset: after.map(PointId::Uuid),
                            limit: Some(256),
                            filter: expired.clone(),
                            with_payload: Some(WithPayloadInterface::Bool(true)),
                            with_vector: WithVector::Bool(false),
                            order_by: None,
                        })
                        .map_err(engine_err)
                })?;
                let Some((records, next)) = page else { break };
                for record in &records {
                    if let Some(payload) = &record.payload {
                        note_expiry(&mut owners, &payload.0);
                    }
                }
                match next {
                    Some(PointId::Uuid(next)) => after = Some(next),
                    _ => break,
                }
            }
        }
        Ok(earliest(owners, limit))
    }

    fn scroll_blocking(
        &self,
        owner: &OwnerHash,
        filter: Option<Filter>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        self.scroll_with(owner, filter, after, limit, false)
    }

    /// [`Self::scroll_blocking`], with the points' vectors when `vectors`.
    fn scroll_with(
        &self,
        owner: &OwnerHash,
        filter: Option<Filter>,
        after: Option<Uuid>,
        limit: usize,
        vectors: bool,
    ) -> Result<RawPage, StoreError> {
        let page = self.slot(owner)?.read(|shard| {
            // `offset` is inclusive; ask for one more and skip the cursor itself.
            let (records, next) = shard
                .scroll(ScrollRequest {
                    offset: after.map(PointId::Uuid),
                    limit: Some(limit + usize::from(after.is_some())),
                    filter,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(vectors),
                    order_by: None,
                })
                .map_err(engine_err)?;
            let records = records
                .into_iter()
                .filter_map(|r| {
                    let vector = dense(r.vector);
                    to_raw(r.id, None, r.payload).map(|p| RawPoint { vector, ..p })
                })
                .collect();
            Ok(RawPage::after_cursor(records, after, limit, next.is_some()))
        })?;
        Ok(page.unwrap_or_else(RawPage::empty))
    }

    /// Removes the shard of `slot`, which holds no point, entirely. A
    /// rewrite copying it is cancelled. Its directory goes next, so a
    /// failing last flush does not matter.
    fn discard(
        &self,
        slot: &Slot,
        guard: &mut parking_lot::RwLockWriteGuard<'_, Option<qdrant_edge::EdgeShard>>,
    ) -> Result<(), StoreError> {
        *slot.journal.lock() = None;
        let closed = guard
            .take()
            .is_none_or(|shard| fault::close(shard, &slot.name));
        if !closed {
            // Writes applied before the erase and waiting for a flush get
            // 503: should the removal below fail, the directory that stays
            // never had them.
            slot.retire(guard);
        }
        slot.bump_generation();
        files::discard_dir(&self.root, &slot.dir)?;
        slot.count_maps();
        self.due.lock().remove(&slot.name);
        Ok(())
    }

    /// Removes every shard of this engine's naming that holds no point.
    fn remove_empty_blocking(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for name in self.shard_names()? {
            let slot = self.pool.slot(&name)?;
            if !slot.ensure_open(false)? {
                continue;
            }
            let mut guard = slot.shard.write();
            let Some(shard) = guard.as_ref() else {
                continue;
            };
            if points_in(shard)? == 0 {
                self.discard(&slot, &mut guard)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn erase_blocking(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let slot = self.slot(owner)?;
        if !slot.ensure_open(false)? {
            return Ok(0);
        }
        let mut guard = slot.shard.write();
        let Some(shard) = guard.as_ref() else {
            return Ok(0);
        };
        let mine = filter(vec![owner_condition(owner)]);
        let removed = shard
            .count(CountRequest {
                filter: mine.clone(),
                exact: true,
            })
            .map_err(engine_err)?;
        files::mark_purge_pending(&slot.dir)?;
        shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(mine.clone().expect("one condition")),
            ))
            .map_err(engine_err)?;
        if points_in(shard)? == 0 {
            self.discard(&slot, &mut guard)?;
        } else {
            // A shared (collided) shard keeps the other owners' points; the
            // erased ones' text goes at its next rewrite.
            if let Err(e) = fault::flush(shard) {
                slot.retire(&mut guard);
                return Err(e);
            }
            if let Some(journal) = slot.journal.lock().as_mut() {
                journal.push(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(mine.expect("one condition")),
                ));
            }
            drop(guard);
            self.schedule(&slot.name, Instant::now() + self.settings.purge_after);
        }
        Ok(removed)
    }
}

#[async_trait]
impl Engine for Arc<EdgeEngine> {
    async fn upsert(&self, owner: &OwnerHash, memories: Vec<NewMemory>) -> Result<(), StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || this.upsert_blocking(&owner, memories, WriteMode::Upsert))
            .await
    }

    async fn update_existing(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            this.upsert_blocking(&owner, memories, WriteMode::UpdateExisting)
        })
        .await
    }

    async fn search(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<RawPoint>, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let filter = this.read_filter_where(&owner, vec![], &query.filter)?;
            let request = QueryRequest {
                prefetches: vec![],
                query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: query.vector.into(),
                    using: None,
                }))),
                filter,
                score_threshold: query.min_score.map(Into::into),
                limit: query.limit,
                offset: 0,
                params: None,
                with_vector: WithVector::Bool(false),
                with_payload: WithPayloadInterface::Bool(true),
            };
            let found = this
                .slot(&owner)?
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

    async fn place(&self, owner: &OwnerHash) -> Result<String, StoreError> {
        Ok(owner.collection_name(
            &self.settings.collection_prefix,
            self.settings.name_hex_chars,
        ))
    }

    async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || this.delete_blocking(&owner, id)).await
    }

    async fn scroll(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
        conditions: &Conditions,
    ) -> Result<RawPage, StoreError> {
        let (this, owner, conditions) = (self.clone(), owner.clone(), conditions.clone());
        EdgeEngine::blocking(move || {
            let filter = this.read_filter_where(&owner, vec![], &conditions)?;
            this.scroll_blocking(&owner, filter, after, limit)
        })
        .await
    }

    async fn count_where(
        &self,
        owner: &OwnerHash,
        filter: &Conditions,
    ) -> Result<usize, StoreError> {
        let (this, owner, filter) = (self.clone(), owner.clone(), filter.clone());
        EdgeEngine::blocking(move || {
            // The owner condition always, drill or not: a count passes no
            // point through the guard.
            let (mut must, must_not) = conditions(&filter)?;
            must.insert(0, owner_condition(&owner));
            let filter = Some(Filter {
                should: None,
                min_should: None,
                must: Some(must),
                must_not: (!must_not.is_empty()).then_some(must_not),
            });
            Ok(this
                .slot(&owner)?
                .read(|shard| {
                    shard
                        .count(CountRequest {
                            filter,
                            exact: true,
                        })
                        .map_err(engine_err)
                })?
                .unwrap_or(0))
        })
        .await
    }

    async fn replace(
        &self,
        owner: &OwnerHash,
        memory: NewMemory,
        expected: u64,
    ) -> Result<(), StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            this.upsert_blocking(&owner, vec![memory], WriteMode::UpdateIf(expected))
        })
        .await
    }

    async fn delete_expired(&self, owner: &OwnerHash, now: i64) -> Result<usize, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || this.delete_expired_blocking(&owner, now)).await
    }

    async fn next_expiry(&self, owner: &OwnerHash, after: i64) -> Result<Option<i64>, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let later = Bounds {
                gt: Some(after as f64),
                ..Bounds::default()
            };
            let filter = filter(vec![
                owner_condition(&owner),
                range_condition(EXPIRES_FIELD, &later),
            ]);
            let mut owners = std::collections::BTreeMap::new();
            let mut cursor = None;
            loop {
                let page = this.scroll_blocking(&owner, filter.clone(), cursor, 256)?;
                for point in &page.points {
                    note_expiry(&mut owners, &point.payload);
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(owners.get(&owner.to_hex()).copied()),
                }
            }
        })
        .await
    }

    async fn expiring(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(OwnerHash, i64)>, StoreError> {
        let this = self.clone();
        EdgeEngine::blocking(move || this.expiring_blocking(before, limit)).await
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || this.erase_blocking(&owner)).await
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
            let found = this.slot(&owner)?.read(|shard| {
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

    async fn count(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            let mine = filter(vec![owner_condition(&owner)]);
            let found = this.slot(&owner)?.read(|shard| {
                shard
                    .count(CountRequest {
                        filter: mine,
                        exact: true,
                    })
                    .map_err(engine_err)
            })?;
            Ok(found.unwrap_or(0))
        })
        .await
    }

    async fn holds_memories(&self) -> Result<bool, StoreError> {
        let this = self.clone();
        EdgeEngine::blocking(move || {
            Ok(!this.shard_names()?.is_empty() || !this.other_layouts_blocking()?.is_empty())
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

    fn open_shards(&self) -> usize {
        self.pool.open()
    }

    async fn shutdown(&self) {
        // A rewrite in progress stops at its next page; its shard is untouched.
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
        let task = self.maintenance.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let this = self.clone();
        let _ = EdgeEngine::blocking(move || {
            // Dropping each slot flushes and closes its shard.
            let n = this.pool.close(SHUTDOWN_PATIENCE);
            tracing::info!(shards = n, "closed all shards");
            Ok(())
        })
        .await;
    }

    async fn owners(&self) -> Result<Vec<OwnerHash>, StoreError> {
        let this = self.clone();
        EdgeEngine::blocking(move || this.owners_blocking()).await
    }

    async fn export_page(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        let (this, owner) = (self.clone(), owner.clone());
        EdgeEngine::blocking(move || {
            // The owner's points only, even in a collision drill.
            let filter = filter(vec![owner_condition(&owner)]);
            this.scroll_with(&owner, filter, after, limit, true)
        })
        .await
    }

    async fn other_layouts(&self) -> Result<std::collections::BTreeSet<usize>, StoreError> {
        let this = self.clone();
        EdgeEngine::blocking(move || this.other_layouts_blocking()).await
    }

    async fn names(&self) -> Result<Vec<String>, StoreError> {
        let this = self.clone();
        EdgeEngine::blocking(move || this.shard_names()).await
    }

    async fn remove_empty(&self) -> Result<usize, StoreError> {
        let this = self.clone();
        EdgeEngine::blocking(move || this.remove_empty_blocking()).await
    }

    async fn holds_points_named(&self, name: &str) -> Result<bool, StoreError> {
        let (this, name) = (self.clone(), name.to_owned());
        EdgeEngine::blocking(move || {
            let slot = this.pool.slot(&name)?;
            if !slot.ensure_open(false)? {
                return Ok(false);
            }
            let guard = slot.shard.read();
            match guard.as_ref() {
                Some(shard) => Ok(points_in(shard)? > 0),
                None => Ok(false),
            }
        })
        .await
    }

    async fn reseal_all(
        &self,
        reseal: super::Reseal,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<usize, StoreError> {
        let this = self.clone();
        let names = EdgeEngine::blocking(move || this.shard_names()).await?;
        let total = names.len() as u64;
        let mut changed = 0;
        for (done, name) in names.into_iter().enumerate() {
            let (this, reseal) = (self.clone(), reseal.clone());
            changed += EdgeEngine::blocking(move || this.reseal_blocking(&name, &reseal)).await?;
            progress(done as u64 + 1, total);
        }
        Ok(changed)
    }
}
