//! The server engine: one collection per user on a Qdrant server, over gRPC.
//!
//! With this engine Cordon holds no state of its own: any number of replicas
//! can serve the same users as long as they share the server secret. A user's
//! collection is created on first write (two replicas racing to create it is
//! fine: the loser finds it there), with settings chosen so that thousands of
//! mostly tiny collections stay affordable on one Qdrant node (see
//! [`create_collection`]). Every read carries the owner condition, and every
//! write waits for Qdrant to apply it before Cordon answers.
//!
//! Failures map to [`StoreError::Unavailable`] (503 `store_unavailable`);
//! the gRPC channel reconnects on the next call, so service resumes by
//! itself when Qdrant is back.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lru::LruCache;
use parking_lot::Mutex;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeleteCollectionBuilder, DeletePointsBuilder, Distance, FieldType, Filter,
    HnswConfigDiffBuilder, KeywordIndexParamsBuilder, OptimizersConfigDiffBuilder, PointId,
    PointStruct, PointsIdsList, PointsOperationResponse, Query, QueryPointsBuilder,
    ScrollPointsBuilder, SetPayloadPointsBuilder, UpdateMode, UpdateStatus, UpsertPointsBuilder,
    Value as QValue, VectorParamsBuilder, WalConfigDiffBuilder, WriteOrdering, WriteOrderingType,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use uuid::Uuid;

use super::{
    Bounds, CREATED_FIELD, Conditions, EXPIRES_FIELD, Engine, METADATA_FIELD, MetaValue, NewMemory,
    OWNER_FIELD, RawPage, RawPoint, SearchQuery, StoreError, TAGS_FIELD, TERMS_FIELD,
    VERSION_FIELD, WriteMode, earliest, note_expiry,
};
use crate::embed::DIMENSIONS;
use crate::locks::KeyedLocks;
use crate::owner::{DEFAULT_NAME_HEX_CHARS, OwnerHash};
use crate::settings::QdrantConnection;

/// Collections this process knows exist, so a write does not ask each time.
const KNOWN_COLLECTIONS: usize = 65_536;

/// How long a collection's point count is trusted by the size guard.
const SIZE_TTL: Duration = Duration::from_secs(10);

/// Candidates a graph search keeps (`hnsw_ef`). With Qdrant's default, a
/// search found 98.45% of the exact top 10 for one user of 100,000
/// memories; with 128, 99.35% to 99.85% over two index builds; 256 keeps a
/// margin above 99% for a little more time (`benches/RESULTS.md`, "Recall").
const HNSW_EF: u64 = 256;

/// Oldest Qdrant release this engine is written against.
const MIN_SERVER_MAJOR_MINOR: (u64, u64) = (1, 18);

/// Settings of the Qdrant server engine.
#[derive(Debug, Clone)]
pub struct QdrantSettings {
    /// Where the server is and how long to wait for it.
    pub connection: QdrantConnection,
    /// Prefix of every collection name this deployment owns.
    pub collection_prefix: String,
    /// Hex characters of the owner hash in a collection's name.
    pub name_hex_chars: usize,
    /// Collision drill only: leave the owner condition out of read filters
    /// so that the guard alone separates users who share a collection.
    pub drill_skip_read_filter: bool,
    /// Most points a write may leave in one collection (0: no cap).
    pub max_collection_points: u64,
    /// Most collections per Qdrant node, counting every collection on the
    /// cluster times the replication factor over the nodes named (0: no cap).
    pub max_collections_per_node: u64,
}

/// The Qdrant server engine.
pub struct QdrantEngine {
    nodes: Nodes,
    settings: QdrantSettings,
    known: Mutex<LruCache<String, ()>>,
    /// Point counts of collections, for the size guard: (points, read at).
    sizes: Mutex<LruCache<String, (u64, std::time::Instant)>>,
    /// Collections on the cluster, for the count guard, and when read.
    collection_count: Mutex<Option<(u64, std::time::Instant)>>,
    /// Collections this process is creating now: the bound counts them
    /// too, so that concurrent first stores cannot all pass it at once.
    creating: Arc<AtomicUsize>,
    /// Per collection: writes hold the read side, an erase that drops the
    /// collection the write side (so no write of this process lands in a
    /// collection being dropped). One lock per collection, so an erase
    /// holds up nobody else.
    collections: KeyedLocks<String>,
}

/// Whether Qdrant answered "no such collection".
fn is_not_found(e: &QdrantError) -> bool {
    matches!(e, QdrantError::ResponseError { status } if status.code() == tonic::Code::NotFound)
}

/// Maps a client error: a request Qdrant rejects as malformed is an engine
/// error (a bug here); everything else (down, slow, overloaded, failing) is
/// "unavailable", which clients may retry.
/// What kind of failure a Qdrant error is.
enum ErrorKind {
    /// The request itself is wrong: retrying cannot help.
    Request,
    /// Qdrant (or the node) could not serve it now.
    Unavailable,
}

fn store_err_ref(e: &QdrantError) -> ErrorKind {
    use tonic::Code;
    match e {
        QdrantError::ResponseError { status }
            if matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::Unimplemented
                    | Code::PermissionDenied
                    | Code::Unauthenticated
            ) =>
        {
            ErrorKind::Request
        }
        QdrantError::ConversionError(_) => ErrorKind::Request,
        _ => ErrorKind::Unavailable,
    }
}

pub(crate) fn store_err(e: QdrantError) -> StoreError {
    match store_err_ref(&e) {
        ErrorKind::Request => StoreError::Engine(e.to_string()),
        ErrorKind::Unavailable => StoreError::Unavailable(e.to_string()),
    }
}

fn owner_condition(owner: &OwnerHash) -> Condition {
    Condition::matches(OWNER_FIELD, owner.to_hex())
}

fn metadata_condition(key: &str, value: &MetaValue) -> Condition {
    // Keys are validated by the API to a plain identifier charset, so this
    // path cannot step outside the metadata object.
    let field = format!("{METADATA_FIELD}.{key}");
    match value {
        MetaValue::Str(s) => Condition::matches(field, s.clone()),
        MetaValue::Int(i) => Condition::matches(field, *i),
        MetaValue::Bool(b) => Condition::matches(field, *b),
    }
}

fn tag_condition(tag: &str) -> Condition {
    Condition::matches(TAGS_FIELD, tag.to_owned())
}

fn range_condition(field: impl Into<String>, bounds: &Bounds) -> Condition {
    Condition::range(
        field,
        qdrant_client::qdrant::Range {
            gt: bounds.gt,
            gte: bounds.gte,
            lt: bounds.lt,
            lte: bounds.lte,
        },
    )
}

/// One of `conditions`, as a filter of its own.
fn any(conditions: Vec<Condition>) -> Condition {
    Condition::from(Filter::should(conditions))
}

/// The conditions of `filter` that must hold and those that must not.
fn conditions(filter: &Conditions) -> (Vec<Condition>, Vec<Condition>) {
    let mut must: Vec<Condition> = filter
        .metadata
        .iter()
        .map(|(k, v)| metadata_condition(k, v))
        .collect();
    must.extend(
        filter
            .any_of
            .iter()
            .map(|(k, values)| any(values.iter().map(|v| metadata_condition(k, v)).collect())),
    );
    must.extend(
        filter
            .ranges
            .iter()
            .map(|(k, b)| range_condition(format!("{METADATA_FIELD}.{k}"), b)),
    );
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
        must.push(Condition::matches(TERMS_FIELD, filter.terms.clone()));
    }
    let must_not = filter.alive_at.map(expired_condition).into_iter().collect();
    (must, must_not)
}

/// Expired at `now`: an expiry time at or before it.
fn expired_condition(now: i64) -> Condition {
    range_condition(EXPIRES_FIELD, &Bounds::expired_at(now))
}

/// The time now, Unix milliseconds.
fn now_ms() -> i64 {
    super::placement::now_ms() as i64
}

/// At version `expected`; a point stored before versions were is at 1.
fn version_condition(expected: u64) -> Condition {
    let exact = Condition::matches(VERSION_FIELD, expected as i64);
    if expected == 1 {
        any(vec![exact, Condition::is_empty(VERSION_FIELD)])
    } else {
        exact
    }
}

fn to_raw(
    id: Option<PointId>,
    score: Option<f32>,
    payload: impl IntoIterator<Item = (String, QValue)>,
) -> Option<RawPoint> {
    let Some(PointIdOptions::Uuid(text)) = id.and_then(|id| id.point_id_options) else {
        // Cordon only writes UUID ids; anything else is not ours to return.
        tracing::warn!("skipped a point without a UUID id");
        return None;
    };
    let Ok(id) = Uuid::parse_str(&text) else {
        tracing::warn!("skipped a point with a malformed UUID id");
        return None;
    };
    Some(RawPoint {
        id,
        score,
        vector: None,
        payload: payload
            .into_iter()
            .map(|(k, v)| (k, v.into_json()))
            .collect(),
    })
}

/// Creates a user collection with settings for many small collections.
///
/// - vectors and payload on disk: an idle user costs page cache, not heap;
/// - a 1 MiB WAL with no segment created ahead (the defaults preallocate
///   32 MiB plus one spare segment per collection);
/// - one segment and one shard: a user's memories are few, and splitting them
///   only multiplies files, maps and threads;
/// - HNSW graphs on disk, built only past Qdrant's default indexing threshold
///   (about 6,500 memories at 384 dimensions); below it a search is an exact
///   scan of one user's vectors, which is both exact and fast at that size.
async fn create_collection(
    client: &Qdrant,
    name: &str,
    connection: &QdrantConnection,
    shared: bool,
) -> Result<(), QdrantError> {
    // A collection that many users share gets no global graph: every read is
    // filtered to one owner, so Qdrant builds a graph per owner (`payload_m`)
    // over the tenant index instead, as its multitenancy guide advises.
    let hnsw = if shared {
        HnswConfigDiffBuilder::default()
            .on_disk(true)
            .m(0)
            .payload_m(16)
    } else {
        HnswConfigDiffBuilder::default().on_disk(true)
    };
    client
        .create_collection(
            replicated(CreateCollectionBuilder::new(name), &connection.replication)
                .vectors_config(
                    VectorParamsBuilder::new(DIMENSIONS as u64, Distance::Cosine).on_disk(true),
                )
                .on_disk_payload(true)
                .hnsw_config(hnsw)
                .wal_config(
                    WalConfigDiffBuilder::default()
                        .wal_capacity_mb(1)
                        .wal_segments_ahead(0),
                )
                .optimizers_config(OptimizersConfigDiffBuilder::default().default_segment_number(1))
                .timeout(connection.timeout.as_secs().max(1)),
        )
        .await?;
    Ok(())
}

/// One collection this process is creating, counted until it is dropped.
struct Creating {
    count: Arc<AtomicUsize>,
    /// Other creations under way when this one began.
    others: usize,
}

impl Creating {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        Self {
            others: count.fetch_add(1, Ordering::AcqRel),
            count: count.clone(),
        }
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The dense vector of a point read with its vector.
fn dense(vectors: qdrant_client::qdrant::VectorsOutput) -> Option<Vec<f32>> {
    use qdrant_client::qdrant::vector_output::Vector;
    use qdrant_client::qdrant::vectors_output::VectorsOptions;
    match vectors.vectors_options? {
        VectorsOptions::Vector(output) => match output.into_vector() {
            Vector::Dense(dense) => Some(dense.data),
            _ => None,
        },
        VectorsOptions::Vectors(_) => None,
    }
}

/// The owner field's index: a tenant index (Qdrant keeps each owner's
/// points together and plans filtered reads per owner) where users share
/// collections, a plain keyword index where each has their own.
fn owner_index(name: &str, shared: bool) -> CreateFieldIndexCollectionBuilder {
    let index = CreateFieldIndexCollectionBuilder::new(name, OWNER_FIELD, FieldType::Keyword);
    if shared {
        index.field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true))
    } else {
        index
    }
    .wait(true)
}

/// The write ordering for `replication`. With one copy, Qdrant's default
/// (weak). With several, `medium`: every write of a collection goes through
/// one node (the live copy with the highest id), so that two insert-only
/// writes of one id racing through different nodes land in the same order
/// on every copy; with `weak`, measured on a three-node cluster, 8 of 30
/// such races had both writers confirmed and the copies disagreeing.
pub fn ordering(replication: &crate::settings::Replication) -> WriteOrdering {
    let kind = if replication.factor > 1 {
        WriteOrderingType::Medium
    } else {
        WriteOrderingType::Weak
    };
    WriteOrdering {
        r#type: kind as i32,
    }
}

/// Collections on each of `nodes` nodes when `total` collections keep
/// `factor` copies each, spread evenly (rounded up).
fn per_node(total: u64, factor: u32, nodes: usize) -> u64 {
    let copies = total * u64::from(factor);
    copies.div_ceil(nodes.max(1) as u64)
}

/// `builder` with the deployment's replication: a single shard, `factor`
/// copies of it, and `write_consistency` of them applying each write.
pub fn replicated(
    builder: CreateCollectionBuilder,
    replication: &crate::settings::Replication,
) -> CreateCollectionBuilder {
    builder
        .shard_number(1)
        .replication_factor(replication.factor)
        .write_consistency_factor(replication.write_consistency)
}

/// The Qdrant nodes this process talks to: one client per URL of
/// `CORDON_QDRANT_URL` (a comma-separated list of nodes of one cluster), and
/// the one in use. A call that finds its node unavailable moves on to the
/// next, so a Cordon process outlives the node it was talking to.
pub struct Nodes {
    clients: Vec<Qdrant>,
    active: AtomicUsize,
}

impl Nodes {
    /// A client per URL of `connection` (lazy: none connects before its
    /// first call).
    pub fn new(connection: &QdrantConnection) -> Result<Self, StoreError> {
        let clients = connection
            .url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| client_for(connection, url))
            .collect::<Result<Vec<_>, _>>()?;
        if clients.is_empty() {
            return Err(StoreError::Engine("CORDON_QDRANT_URL names no node".into()));
        }
        Ok(Self {
            clients,
            active: AtomicUsize::new(0),
        })
    }

    /// The client of the node in use.
    pub fn client(&self) -> &Qdrant {
        &self.clients[self.active()]
    }

    /// Which node is in use (an index into the URL list).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire) % self.clients.len()
    }

    /// How many nodes there are.
    pub fn count(&self) -> usize {
        self.clients.len()
    }

    /// Moves past `node` if `result`, from a call to it, says it is
    /// unavailable.
    pub fn check<T>(&self, node: usize, result: &Result<T, QdrantError>) {
        if let Err(e) = result
            && matches!(store_err_ref(e), ErrorKind::Unavailable)
        {
            self.failed(node);
        }
    }

    /// Moves past `node` if `result`, of work done on it, failed as
    /// unavailable.
    pub fn note<T>(&self, node: usize, result: &Result<T, StoreError>) {
        if let Err(StoreError::Unavailable(_)) = result {
            self.failed(node);
        }
    }

    /// Runs one call on the node in use within `timeout`: a timeout is
    /// `Unavailable`, and a node that fails the call as unavailable (or
    /// not at all) is left for the next one at the next call. The call's
    /// own error is the caller's to map.
    pub async fn call<T>(
        &self,
        timeout: std::time::Duration,
        call: impl std::future::Future<Output = Result<T, QdrantError>>,
    ) -> Result<Result<T, QdrantError>, StoreError> {
        let node = self.active();
        let result = tokio::time::timeout(timeout, call).await.map_err(|_| {
            self.failed(node);
            StoreError::Unavailable(format!("Qdrant did not answer within {timeout:?}"))
        })?;
        self.check(node, &result);
        Ok(result)
    }

    /// Creates the system collection `name` with `replication` unless it
    /// exists, each call within `timeout`. Replicas may race here: a
    /// creation that fails while the collection exists is success.
    pub async fn make_collection(
        &self,
        timeout: std::time::Duration,
        name: &str,
        replication: &crate::settings::Replication,
    ) -> Result<(), StoreError> {
        let exists = || async {
            self.call(timeout, self.client().collection_exists(name))
                .await?
                .map_err(store_err)
        };
        if exists().await? {
            return Ok(());
        }
        let created = self
            .call(
                timeout,
                self.client()
                    .create_collection(replicated(CreateCollectionBuilder::new(name), replication)),
            )
            .await?;
        match created {
            Err(e) if !exists().await? => Err(store_err(e)),
            _ => Ok(()),
        }
    }

    /// Moves past `node` after a call to it failed as unavailable, unless
    /// another call already did.
    pub fn failed(&self, node: usize) {
        let next = (node + 1) % self.clients.len();
        if self
            .active
            .compare_exchange(node, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && self.clients.len() > 1
        {
            tracing::warn!(
                node,
                next,
                "a Qdrant node is unavailable; moving to the next"
            );
        }
    }
}

/// Every point's payload, as JSON, of the system collection `name` (the
/// access log, the key vault), page by page, each call within `timeout`.
pub async fn scroll_payloads(
    client: &Qdrant,
    name: &str,
    filter: Option<Filter>,
    timeout: std::time::Duration,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, StoreError> {
    const PAGE: u32 = 1_000;
    let mut payloads = Vec::new();
    let mut offset = None;
    loop {
        let mut request = ScrollPointsBuilder::new(name)
            .limit(PAGE)
            .with_payload(true)
            .with_vectors(false);
        if let Some(filter) = filter.clone() {
            request = request.filter(filter);
        }
        if let Some(offset) = offset.take() {
            request = request.offset(offset);
        }
        let page = tokio::time::timeout(timeout, client.scroll(request))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("Qdrant did not answer within {timeout:?}"))
            })?
            .map_err(store_err)?;
        payloads.extend(
            page.result
                .into_iter()
                .map(|point| json_payload(point.payload)),
        );
        match page.next_page_offset {
            Some(next) => offset = Some(next),
            None => return Ok(payloads),
        }
    }
}

/// A Qdrant payload as a JSON object.
pub fn json_payload(
    payload: impl IntoIterator<Item = (String, QValue)>,
) -> serde_json::Map<String, serde_json::Value> {
    payload
        .into_iter()
        .map(|(k, v)| (k, v.into_json()))
        .collect()
}

/// A client for the node at `url`, with `connection`'s deadlines and key.
fn client_for(connection: &QdrantConnection, url: &str) -> Result<Qdrant, StoreError> {
    let mut builder = Qdrant::from_url(url)
        .timeout(connection.timeout)
        .connect_timeout(connection.connect_timeout)
        .skip_compatibility_check();
    if let Some(key) = &connection.api_key {
        let key = std::str::from_utf8(key.expose())
            .map_err(|_| StoreError::Engine("the Qdrant API key is not UTF-8".into()))?;
        builder = builder.api_key(key.to_owned());
    }
    builder
        .build()
        .map_err(|e| StoreError::Engine(format!("Qdrant URL {url}: {e}")))
}

impl QdrantEngine {
    /// Builds the client; no connection is made until the first call, so
    /// Cordon starts (not ready) while Qdrant is still down.
    pub fn connect(settings: QdrantSettings) -> Result<Self, StoreError> {
        let nodes = Nodes::new(&settings.connection)?;
        tracing::info!(url = %settings.connection.url, prefix = %settings.collection_prefix, "storing in a Qdrant server");
        Ok(Self {
            nodes,
            settings,
            known: Mutex::new(LruCache::new(
                NonZeroUsize::new(KNOWN_COLLECTIONS).expect("a non-zero constant"),
            )),
            collection_count: Mutex::new(None),
            creating: Arc::new(AtomicUsize::new(0)),
            sizes: Mutex::new(LruCache::new(
                NonZeroUsize::new(KNOWN_COLLECTIONS).expect("a non-zero constant"),
            )),
            collections: KeyedLocks::default(),
        })
    }

    fn name(&self, owner: &OwnerHash) -> String {
        owner.collection_name(
            &self.settings.collection_prefix,
            self.settings.name_hex_chars,
        )
    }

    fn read_filter(&self, owner: &OwnerHash, extra: Vec<Condition>) -> Option<Filter> {
        self.read_filter_where(owner, extra, &Conditions::default())
    }

    /// The read filter with `filter`'s conditions too.
    fn read_filter_where(
        &self,
        owner: &OwnerHash,
        mut extra: Vec<Condition>,
        filter: &Conditions,
    ) -> Option<Filter> {
        if !self.settings.drill_skip_read_filter {
            extra.insert(0, owner_condition(owner));
        }
        let (must, must_not) = conditions(filter);
        extra.extend(must);
        (!extra.is_empty() || !must_not.is_empty()).then(|| Filter {
            must: extra,
            must_not,
            ..Filter::default()
        })
    }

    /// Makes sure the collection and its owner index exist. Safe to race with
    /// other replicas: "already exists" is success, and the index call is
    /// idempotent (and repairs a collection whose creator died before it).
    async fn ensure_collection(&self, name: &str) -> Result<(), StoreError> {
        if self.known.lock().get(name).is_some() {
            return Ok(());
        }
        let _creating = self.guard_collection_count(name).await?;
        let shared = !self.collections_are_private();
        let created =
            create_collection(self.nodes.client(), name, &self.settings.connection, shared).await;
        if created.is_ok() {
            self.count_created_collection();
        }
        if let Err(e) = created {
            let exists = self
                .nodes
                .client()
                .collection_exists(name)
                .await
                .map_err(store_err)?;
            if !exists {
                return Err(store_err(e));
            }
        }
        self.nodes
            .client()
            .create_field_index(owner_index(name, shared))
            .await
            .map_err(store_err)?;
        self.known.lock().put(name.to_owned(), ());
        Ok(())
    }

    /// Runs one storage operation under the configured deadline. If its
    /// node is unavailable, the operation is tried again on the next node,
    /// each node once, within the same deadline: every operation is safe to
    /// repeat (writes name their ids, deletes and erases find less to do).
    async fn bounded<R, F>(&self, operation: impl Fn() -> F) -> Result<R, StoreError>
    where
        F: std::future::Future<Output = Result<R, StoreError>>,
    {
        let timeout = self.settings.connection.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut left = self.nodes.count();
        loop {
            let node = self.nodes.active();
            let result = tokio::time::timeout_at(deadline, operation())
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "Qdrant did not answer within {timeout:?}"
                    )))
                });
            left -= 1;
            match result {
                Err(StoreError::Unavailable(_))
                    if left > 0 && tokio::time::Instant::now() < deadline =>
                {
                    self.nodes.failed(node);
                }
                Err(StoreError::Unavailable(reason)) => {
                    self.nodes.failed(node);
                    return Err(StoreError::Unavailable(reason));
                }
                other => return other,
            }
        }
    }

    /// Runs one storage operation that is not safe to repeat under the
    /// configured deadline; its node, if unavailable, is left for the next
    /// one at the next operation.
    async fn bounded_once<R>(
        &self,
        operation: impl std::future::Future<Output = Result<R, StoreError>>,
    ) -> Result<R, StoreError> {
        let node = self.nodes.active();
        let timeout = self.settings.connection.timeout;
        let result = tokio::time::timeout(timeout, operation)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "Qdrant did not answer within {timeout:?}"
                )))
            });
        self.nodes.note(node, &result);
        result
    }

    /// The write ordering of this deployment (see [`ordering`]).
    fn ordering(&self) -> WriteOrdering {
        ordering(&self.settings.connection.replication)
    }

    fn forget(&self, name: &str) {
        self.known.lock().pop(name);
    }

    /// Whether every collection name belongs to one user only: names of the
    /// shipped length (128 bits of a keyed hash) do; shortened ones may be
    /// shared, and are never dropped.
    fn collections_are_private(&self) -> bool {
        self.settings.name_hex_chars >= DEFAULT_NAME_HEX_CHARS
    }

    /// Refuses a write of `adding` points into a collection that holds the
    /// configured cap already (507), so that no collection, shared or not,
    /// grows without bound on the Qdrant server's disk. The count is
    /// Qdrant's approximate one, read again at most every [`SIZE_TTL`] and
    /// kept up to date with this process's writes in between.
    async fn guard_collection_size(&self, name: &str, adding: usize) -> Result<(), StoreError> {
        let cap = self.settings.max_collection_points;
        if cap == 0 {
            return Ok(());
        }
        let cached = self
            .sizes
            .lock()
            .get(name)
            .filter(|(_, at)| at.elapsed() < SIZE_TTL)
            .map(|(n, _)| *n);
        let held = match cached {
            Some(n) => n,
            None => {
                let request = CountPointsBuilder::new(name).exact(false);
                let n = match self.nodes.client().count(request).await {
                    Ok(r) => r.result.map_or(0, |r| r.count),
                    Err(e) if is_not_found(&e) => 0,
                    Err(e) => return Err(store_err(e)),
                };
                self.sizes
                    .lock()
                    .put(name.to_owned(), (n, std::time::Instant::now()));
                n
            }
        };
        if held + adding as u64 > cap {
            return Err(StoreError::InsufficientStorage(format!(
                "a collection holds {held} points; CORDON_QDRANT_MAX_COLLECTION_POINTS is {cap}"
            )));
        }
        if let Some((n, _)) = self.sizes.lock().get_mut(name) {
            *n += adding as u64;
        }
        Ok(())
    }

    /// Refuses to create collection `name` when the nodes would then hold
    /// more than `max_collections_per_node` each: Qdrant dies on its memory
    /// map limit past a few thousand, taking every user with it. Counts every
    /// collection on the cluster (other deployments' too), read at most every
    /// few seconds; an existing `name` passes.
    async fn guard_collection_count(&self, name: &str) -> Result<Option<Creating>, StoreError> {
        let cap = self.settings.max_collections_per_node;
        if cap == 0 {
            return Ok(None);
        }
        // Made by another replica, or before a restart: nothing new.
        if self
            .nodes
            .client()
            .collection_exists(name)
            .await
            .map_err(store_err)?
        {
            return Ok(None);
        }
        // Counted before the listing is read, so that of two concurrent
        // first stores the second always sees the first.
        let creating = Creating::start(&self.creating);
        let cached = *self.collection_count.lock();
        let total = match cached {
            Some((n, at)) if at.elapsed() < SIZE_TTL => n,
            _ => {
                let listed = self
                    .nodes
                    .client()
                    .list_collections()
                    .await
                    .map_err(store_err)?;
                let n = listed.collections.len() as u64;
                *self.collection_count.lock() = Some((n, std::time::Instant::now()));
                n
            }
        };
        let replication = &self.settings.connection.replication;
        let per_node = per_node(
            total + creating.others as u64 + 1,
            replication.factor,
            self.nodes.count(),
        );
        if per_node > cap {
            crate::audit::collection_limit(total, cap);
            return Err(StoreError::CollectionLimit(format!(
                "a new collection would put {per_node} on each Qdrant node; \
                 CORDON_QDRANT_MAX_COLLECTIONS_PER_NODE is {cap} (use the shared tier, or add nodes)"
            )));
        }
        Ok(Some(creating))
    }

    /// Counts a collection this process created, until the next listing.
    fn count_created_collection(&self) {
        if let Some((n, _)) = self.collection_count.lock().as_mut() {
            *n += 1;
        }
    }

    /// Takes back what [`Self::guard_collection_size`] counted for a write
    /// that failed, so that a retry of it is not counted twice.
    fn unguard_collection_size(&self, name: &str, adding: usize) {
        if let Some((n, _)) = self.sizes.lock().get_mut(name) {
            *n = n.saturating_sub(adding as u64);
        }
    }

    async fn scroll_filtered(
        &self,
        name: &str,
        filter: Option<Filter>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        self.scroll_with(name, filter, after, limit, false).await
    }

    /// [`Self::scroll_filtered`], with the points' vectors when `vectors`.
    async fn scroll_with(
        &self,
        name: &str,
        filter: Option<Filter>,
        after: Option<Uuid>,
        limit: usize,
        vectors: bool,
    ) -> Result<RawPage, StoreError> {
        // `offset` is inclusive; ask for one more and skip the cursor itself.
        let ask = u32::try_from(limit + usize::from(after.is_some())).unwrap_or(u32::MAX);
        let mut request = ScrollPointsBuilder::new(name)
            .limit(ask)
            .with_payload(true)
            .with_vectors(vectors);
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        if let Some(after) = after {
            request = request.offset(after);
        }
        let response = match self.nodes.client().scroll(request).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(RawPage::empty()),
            Err(e) => return Err(store_err(e)),
        };
        let records = response
            .result
            .into_iter()
            .filter_map(|p| {
                let vector = p.vectors.and_then(dense);
                to_raw(p.id, None, p.payload).map(|raw| RawPoint { vector, ..raw })
            })
            .collect();
        Ok(RawPage::after_cursor(
            records,
            after,
            limit,
            response.next_page_offset.is_some(),
        ))
    }

    async fn count(&self, name: &str, filter: Option<Filter>) -> Result<u64, QdrantError> {
        let mut request = CountPointsBuilder::new(name).exact(true);
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        let response = self.nodes.client().count(request).await?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}

fn points(owner: &OwnerHash, memories: Vec<NewMemory>) -> Vec<PointStruct> {
    let owner_hex = owner.to_hex();
    memories
        .into_iter()
        .map(|m| {
            let (id, vector, payload) = m.into_parts(&owner_hex);
            PointStruct::new(id, vector, Payload::from(payload))
        })
        .collect()
}

/// Parses `major.minor` from a Qdrant version string.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The operations behind [`Engine`], each run under [`QdrantEngine::bounded`].
impl QdrantEngine {
    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag(), n = memories.len()))]
    async fn upsert_op(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        let name = self.name(owner);
        let _shared = self.collections.of(&name).read_owned().await;
        let points = points(owner, memories);
        self.ensure_collection(&name).await?;
        // An update adds no point, so it is never refused for size.
        let adding = match mode {
            WriteMode::Upsert | WriteMode::InsertNew => points.len(),
            WriteMode::UpdateExisting | WriteMode::UpdateIf(_) => 0,
        };
        self.guard_collection_size(&name, adding).await?;
        let request = || {
            let builder = UpsertPointsBuilder::new(&name, points.clone())
                .wait(true)
                .ordering(self.ordering());
            match mode {
                WriteMode::Upsert => builder,
                WriteMode::InsertNew => {
                    // `insert_only` leaves an existing point alone; the
                    // filter, which no point matches, does the same on a
                    // server that ignores the mode.
                    let never = Filter::must([Condition::matches(OWNER_FIELD, "-".to_owned())]);
                    builder
                        .update_mode(UpdateMode::InsertOnly)
                        .update_filter(never)
                }
                WriteMode::UpdateExisting => builder
                    .update_mode(UpdateMode::UpdateOnly)
                    .update_filter(Filter::must([owner_condition(owner)])),
                // Not expired either: an update read just before the memory
                // expired must not bring it back.
                WriteMode::UpdateIf(expected) => builder
                    .update_mode(UpdateMode::UpdateOnly)
                    .update_filter(Filter {
                        must: vec![owner_condition(owner), version_condition(expected)],
                        must_not: vec![expired_condition(now_ms())],
                        ..Filter::default()
                    }),
            }
        };
        let written = match self.nodes.client().upsert_points(request()).await {
            Ok(response) => confirmed(&response),
            Err(e) if is_not_found(&e) => {
                // Erased meanwhile by another replica: create it again.
                self.forget(&name);
                self.ensure_collection(&name).await?;
                self.nodes
                    .client()
                    .upsert_points(request())
                    .await
                    .map_err(store_err)
                    .and_then(|response| confirmed(&response))
            }
            Err(e) => Err(store_err(e)),
        };
        if written.is_err() {
            self.unguard_collection_size(&name, adding);
        }
        written
    }

    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag()))]
    async fn search_op(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<RawPoint>, StoreError> {
        let name = self.name(owner);
        let mut request = QueryPointsBuilder::new(&name)
            .query(Query::new_nearest(query.vector))
            .limit(query.limit as u64)
            .params(qdrant_client::qdrant::SearchParamsBuilder::default().hnsw_ef(HNSW_EF))
            .with_payload(true);
        if let Some(filter) = self.read_filter_where(owner, vec![], &query.filter) {
            request = request.filter(filter);
        }
        if let Some(min) = query.min_score {
            request = request.score_threshold(min);
        }
        match self.nodes.client().query(request).await {
            Ok(response) => Ok(response
                .result
                .into_iter()
                .filter_map(|p| to_raw(p.id, Some(p.score), p.payload))
                .collect()),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(store_err(e)),
        }
    }

    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag()))]
    async fn get_op(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<RawPoint>, StoreError> {
        // A scroll with a filter rather than a lookup by id, so that the
        // owner condition applies to this read too.
        let filter = self.read_filter(owner, vec![Condition::has_id([id])]);
        let page = self
            .scroll_filtered(&self.name(owner), filter, None, 1)
            .await?;
        Ok(page.points.into_iter().next())
    }

    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag()))]
    async fn delete_op(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
        let name = self.name(owner);
        let _shared = self.collections.of(&name).read_owned().await;
        // Deletes always carry the owner condition, drill or not.
        let filter = Filter::must([owner_condition(owner), Condition::has_id([id])]);
        match self
            .nodes
            .client()
            .delete_points(
                DeletePointsBuilder::new(&name)
                    .points(filter)
                    .wait(true)
                    .ordering(self.ordering()),
            )
            .await
        {
            Ok(response) => confirmed(&response),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag()))]
    async fn scroll_op(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
        conditions: &Conditions,
    ) -> Result<RawPage, StoreError> {
        let filter = self.read_filter_where(owner, vec![], conditions);
        self.scroll_filtered(&self.name(owner), filter, after, limit)
            .await
    }

    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag()))]
    async fn delete_expired_op(&self, owner: &OwnerHash, now: i64) -> Result<usize, StoreError> {
        let name = self.name(owner);
        let _shared = self.collections.of(&name).read_owned().await;
        // The owner condition always: a collection can hold other owners'
        // points (shortened names), and this sweep is for one owner only.
        let expired = Filter::must([owner_condition(owner), expired_condition(now)]);
        Ok(self.delete_matching(&name, expired).await?.unwrap_or(0))
    }

    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag()))]
    async fn next_expiry_op(
        &self,
        owner: &OwnerHash,
        after: i64,
    ) -> Result<Option<i64>, StoreError> {
        let name = self.name(owner);
        let later = Bounds {
            gt: Some(after as f64),
            ..Bounds::default()
        };
        let filter = Filter::must([
            owner_condition(owner),
            range_condition(EXPIRES_FIELD, &later),
        ]);
        let mut owners = std::collections::BTreeMap::new();
        let mut cursor = None;
        loop {
            let page = self
                .scroll_filtered(&name, Some(filter.clone()), cursor, 256)
                .await?;
            for point in &page.points {
                note_expiry(&mut owners, &point.payload);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(owners.get(&owner.to_hex()).copied())
    }

    async fn expiring_op(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(OwnerHash, i64)>, StoreError> {
        let mut owners = std::collections::BTreeMap::new();
        let expired = Filter::must([expired_condition(before)]);
        for name in self.own_collections().await? {
            let mut after = None;
            while owners.len() < limit {
                let page = self
                    .scroll_filtered(&name, Some(expired.clone()), after, 256)
                    .await?;
                for point in &page.points {
                    note_expiry(&mut owners, &point.payload);
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(earliest(owners, limit))
    }

    #[tracing::instrument(skip_all, fields(owner = %owner.log_tag()))]
    async fn erase_op(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let name = self.name(owner);
        // Only an erase that will drop the collection must keep this
        // process's writes out of it; one of a shared-name collection
        // (kept) runs beside them.
        let lock = self.collections.of(&name);
        let _held = if self.collections_are_private() {
            Ok(lock.write_owned().await)
        } else {
            Err(lock.read_owned().await)
        };
        let mine = Filter::must([owner_condition(owner)]);
        let Some(removed) = self.delete_matching(&name, mine).await? else {
            return Ok(0);
        };
        // Only a collection that is this user's alone goes: with shortened
        // names another user's write (on another replica, between a count
        // and the drop) could land in it, and dropping it would lose that
        // write. So a shared-name collection is emptied by the owner filter
        // above and kept, however few points it has left.
        if self.collections_are_private() {
            self.forget(&name);
            match self
                .nodes
                .client()
                .delete_collection(
                    DeleteCollectionBuilder::new(&name)
                        .timeout(self.settings.connection.timeout.as_secs().max(1)),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        Ok(removed)
    }

    /// Counts the points of collection `name` that `filter` matches, then
    /// deletes them; `None` when the collection does not exist.
    async fn delete_matching(
        &self,
        name: &str,
        filter: Filter,
    ) -> Result<Option<usize>, StoreError> {
        let n = match self.count(name, Some(filter.clone())).await {
            Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        if n == 0 {
            return Ok(Some(0));
        }
        match self
            .nodes
            .client()
            .delete_points(
                DeletePointsBuilder::new(name)
                    .points(filter)
                    .wait(true)
                    .ordering(self.ordering()),
            )
            .await
        {
            Ok(response) => confirmed(&response).map(|()| Some(n)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn holds_other_owners_op(&self, owner: &OwnerHash) -> Result<bool, StoreError> {
        let others = Filter::must_not([owner_condition(owner)]);
        match self.count(&self.name(owner), Some(others)).await {
            Ok(n) => Ok(n > 0),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn count_op(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        let mine = Filter::must([owner_condition(owner)]);
        match self.count(&self.name(owner), Some(mine)).await {
            Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Err(e) if is_not_found(&e) => Ok(0),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn ready_op(&self) -> Result<(), StoreError> {
        let reply = self
            .nodes
            .client()
            .health_check()
            .await
            .map_err(store_err)?;
        // The health check needs no API key; this call does, so a wrong key
        // shows as "not ready" rather than as 503s on every request.
        self.nodes
            .client()
            .collection_exists(format!("{}ready_probe", self.settings.collection_prefix))
            .await
            .map_err(store_err)?;
        if major_minor(&reply.version).is_some_and(|v| v < MIN_SERVER_MAJOR_MINOR) {
            return Err(StoreError::Unavailable(format!(
                "Qdrant {} is older than {}.{}",
                reply.version, MIN_SERVER_MAJOR_MINOR.0, MIN_SERVER_MAJOR_MINOR.1
            )));
        }
        Ok(())
    }
}

impl QdrantEngine {
    /// Names of the deployment's user collections.
    async fn user_collections(&self) -> Result<Vec<String>, StoreError> {
        let listed = self
            .nodes
            .client()
            .list_collections()
            .await
            .map_err(store_err)?;
        let prefix = &self.settings.collection_prefix;
        let mut names: Vec<String> = listed
            .collections
            .into_iter()
            .map(|c| c.name)
            .filter(|name| super::is_user_collection(name, prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The user collections named as this engine names them.
    async fn own_collections(&self) -> Result<Vec<String>, StoreError> {
        let prefix = &self.settings.collection_prefix;
        let mut names = self.user_collections().await?;
        names
            .retain(|name| super::name_hex_len(name, prefix) == Some(self.settings.name_hex_chars));
        Ok(names)
    }
}

#[async_trait]
impl Engine for Arc<QdrantEngine> {
    async fn upsert(&self, owner: &OwnerHash, memories: Vec<NewMemory>) -> Result<(), StoreError> {
        self.bounded(|| self.upsert_op(owner, memories.clone(), WriteMode::Upsert))
            .await
    }

    async fn insert_new(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        self.bounded(|| self.upsert_op(owner, memories.clone(), WriteMode::InsertNew))
            .await
    }

    async fn update_existing(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        self.bounded(|| self.upsert_op(owner, memories.clone(), WriteMode::UpdateExisting))
            .await
    }

    async fn search(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<RawPoint>, StoreError> {
        self.bounded(|| self.search_op(owner, query.clone())).await
    }

    async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<RawPoint>, StoreError> {
        self.bounded(|| self.get_op(owner, id)).await
    }

    async fn place(&self, owner: &OwnerHash) -> Result<String, StoreError> {
        Ok(self.name(owner))
    }

    async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError> {
        self.bounded(|| self.delete_op(owner, id)).await
    }

    async fn scroll(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
        filter: &Conditions,
    ) -> Result<RawPage, StoreError> {
        self.bounded(|| self.scroll_op(owner, after, limit, filter))
            .await
    }

    async fn count_where(
        &self,
        owner: &OwnerHash,
        filter: &Conditions,
    ) -> Result<usize, StoreError> {
        let name = self.name(owner);
        // The owner condition always, drill or not: a count passes no point
        // through the guard.
        let (mut must, must_not) = conditions(filter);
        must.insert(0, owner_condition(owner));
        let filter = Some(Filter {
            must,
            must_not,
            ..Filter::default()
        });
        self.bounded(|| async {
            match QdrantEngine::count(self, &name, filter.clone()).await {
                Ok(n) => Ok(n as usize),
                Err(e) if is_not_found(&e) => Ok(0),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
    }

    async fn replace(
        &self,
        owner: &OwnerHash,
        memory: NewMemory,
        expected: u64,
    ) -> Result<(), StoreError> {
        self.bounded(|| self.upsert_op(owner, vec![memory.clone()], WriteMode::UpdateIf(expected)))
            .await
    }

    async fn delete_expired(&self, owner: &OwnerHash, now: i64) -> Result<usize, StoreError> {
        self.bounded(|| self.delete_expired_op(owner, now)).await
    }

    async fn next_expiry(&self, owner: &OwnerHash, after: i64) -> Result<Option<i64>, StoreError> {
        self.bounded(|| self.next_expiry_op(owner, after)).await
    }

    async fn expiring(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(OwnerHash, i64)>, StoreError> {
        self.expiring_op(before, limit).await
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        // Not repeated on another node: a retry after the points went and
        // only the collection's drop failed would answer that none were.
        self.bounded_once(self.erase_op(owner)).await
    }

    async fn holds_other_owners(&self, owner: &OwnerHash) -> Result<bool, StoreError> {
        self.bounded(|| self.holds_other_owners_op(owner)).await
    }

    async fn count(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        self.bounded(|| self.count_op(owner)).await
    }

    async fn owners(&self) -> Result<Vec<OwnerHash>, StoreError> {
        let mut owners = std::collections::BTreeSet::new();
        for name in self.own_collections().await? {
            let mut after = None;
            loop {
                let page = self.scroll_filtered(&name, None, after, 256).await?;
                for point in &page.points {
                    if let Some(hex) = point.payload.get(OWNER_FIELD).and_then(|v| v.as_str()) {
                        owners.insert(hex.to_owned());
                    }
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(owners
            .iter()
            .filter_map(|hex| OwnerHash::from_hex(hex))
            .collect())
    }

    async fn reseal_all(
        &self,
        reseal: super::Reseal,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<usize, StoreError> {
        let names = self.own_collections().await?;
        let total = names.len() as u64;
        let mut changed = 0;
        for (done, name) in names.iter().enumerate() {
            let mut after = None;
            loop {
                let page = self.scroll_filtered(name, None, after, 256).await?;
                for mut point in page.points {
                    if !reseal(point.id, &mut point.payload) {
                        continue;
                    }
                    let payload = Payload::try_from(serde_json::Value::Object(point.payload))
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    let ids = PointsIdsList {
                        ids: vec![PointId::from(point.id.to_string())],
                    };
                    let response = self
                        .nodes
                        .client()
                        .overwrite_payload(
                            SetPayloadPointsBuilder::new(name, payload)
                                .points_selector(ids)
                                .wait(true)
                                .ordering(self.ordering()),
                        )
                        .await
                        .map_err(store_err)?;
                    confirmed(&response)?;
                    changed += 1;
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            progress(done as u64 + 1, total);
        }
        Ok(changed)
    }

    async fn export_page(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError> {
        // The owner's points only, even in a collision drill.
        let (name, filter) = (self.name(owner), Filter::must([owner_condition(owner)]));
        self.bounded(|| self.scroll_with(&name, Some(filter.clone()), after, limit, true))
            .await
    }

    async fn other_layouts(&self) -> Result<std::collections::BTreeSet<usize>, StoreError> {
        let prefix = &self.settings.collection_prefix;
        Ok(self
            .bounded(|| self.user_collections())
            .await?
            .iter()
            .filter_map(|name| super::name_hex_len(name, prefix))
            .filter(|len| *len != self.settings.name_hex_chars)
            .collect())
    }

    async fn names(&self) -> Result<Vec<String>, StoreError> {
        self.bounded(|| self.own_collections()).await
    }

    async fn holds_points_named(&self, name: &str) -> Result<bool, StoreError> {
        let points = self
            .bounded(|| async {
                QdrantEngine::count(self, name, None)
                    .await
                    .map_err(store_err)
            })
            .await?;
        Ok(points > 0)
    }

    async fn prepare(&self, owner: &OwnerHash) -> Result<(), StoreError> {
        let name = self.name(owner);
        self.bounded(|| self.ensure_collection(&name)).await
    }

    async fn remove_empty(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for name in self.own_collections().await? {
            let left = QdrantEngine::count(self, &name, None)
                .await
                .map_err(store_err)?;
            if left == 0 {
                self.nodes
                    .client()
                    .delete_collection(
                        DeleteCollectionBuilder::new(&name)
                            .timeout(self.settings.connection.timeout.as_secs().max(1)),
                    )
                    .await
                    .map_err(store_err)?;
                self.forget(&name);
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn holds_memories(&self) -> Result<bool, StoreError> {
        Ok(!self.bounded(|| self.user_collections()).await?.is_empty())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.bounded(|| self.ready_op()).await
    }

    async fn shutdown(&self) {
        // Nothing is buffered here: every write waited for Qdrant.
    }

    fn written_by_others(&self) -> bool {
        true
    }
}

/// Whether Qdrant confirmed a `wait=true` write as applied. Any other status
/// (`WaitTimeout` when the wait ran out, `Acknowledged`) means the write is
/// in its WAL at best: it may still land, and is not acknowledged.
pub(crate) fn confirmed(response: &PointsOperationResponse) -> Result<(), StoreError> {
    let status = response.result.as_ref().map_or(0, |r| r.status);
    if status == UpdateStatus::Completed as i32 {
        return Ok(());
    }
    let name = UpdateStatus::try_from(status).map_or("unknown", |s| s.as_str_name());
    Err(StoreError::Unavailable(format!(
        "Qdrant did not confirm the write (status {name}); it may still land"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_per_node_count_every_copy_over_the_nodes() {
        assert_eq!(per_node(2_000, 1, 1), 2_000);
        assert_eq!(per_node(3_000, 2, 3), 2_000);
        assert_eq!(per_node(3_001, 2, 3), 2_001);
        assert_eq!(per_node(10, 1, 0), 10);
    }

    #[test]
    fn a_write_qdrant_did_not_confirm_as_completed_is_not_acknowledged() {
        let with = |status: UpdateStatus| PointsOperationResponse {
            result: Some(qdrant_client::qdrant::UpdateResult {
                operation_id: Some(1),
                status: status as i32,
            }),
            time: 0.0,
            usage: None,
        };
        assert!(confirmed(&with(UpdateStatus::Completed)).is_ok());
        for status in [
            UpdateStatus::WaitTimeout,
            UpdateStatus::Acknowledged,
            UpdateStatus::ClockRejected,
        ] {
            assert!(
                matches!(confirmed(&with(status)), Err(StoreError::Unavailable(_))),
                "{status:?}"
            );
        }
        let empty = PointsOperationResponse {
            result: None,
            time: 0.0,
            usage: None,
        };
        assert!(confirmed(&empty).is_err());
    }

    #[test]
    fn versions_parse_to_major_and_minor() {
        assert_eq!(major_minor("1.18.3"), Some((1, 18)));
        assert_eq!(major_minor("1.9.0-dev"), Some((1, 9)));
        assert!(major_minor("1.9.0").unwrap() < MIN_SERVER_MAJOR_MINOR);
        assert_eq!(major_minor("garbage"), None);
    }

    #[test]
    fn only_malformed_requests_are_engine_errors() {
        let bad = QdrantError::ResponseError {
            status: tonic::Status::invalid_argument("bad"),
        };
        let down = QdrantError::ResponseError {
            status: tonic::Status::unavailable("down"),
        };
        let failing = QdrantError::ResponseError {
            status: tonic::Status::internal("Failed to connect"),
        };
        assert!(matches!(store_err(bad), StoreError::Engine(_)));
        assert!(matches!(store_err(down), StoreError::Unavailable(_)));
        assert!(matches!(store_err(failing), StoreError::Unavailable(_)));
    }
}
