//! Storage: one collection per user, behind an owner-typed API.
//!
//! An [`Engine`] is a storage backend: the embedded qdrant-edge engine
//! ([`edge`]) or a Qdrant server over gRPC ([`qdrant`]). Every engine method
//! takes the caller's [`OwnerHash`]; there is no call that reads
//! "everything". Engines return [`RawPoint`]s, which are unverified: handlers
//! never see them, only what [`crate::guarded::GuardedStore`] lets through
//! the guard. Imports run one way: `store` knows neither the guard nor the API.

pub mod edge;
pub mod placement;
pub mod qdrant;
pub mod tier;
pub mod tiered;

use async_trait::async_trait;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::owner::OwnerHash;

/// Payload field holding the full owner hash (hex).
pub const OWNER_FIELD: &str = "owner";
/// Payload field holding the memory text.
pub const TEXT_FIELD: &str = "text";
/// Payload field holding the client's metadata object.
pub const METADATA_FIELD: &str = "metadata";
/// Payload field holding the creation time (Unix milliseconds).
pub const CREATED_FIELD: &str = "created_at";
/// Payload field holding the digest of the request that stored the memory
/// under an `Idempotency-Key` (absent otherwise).
pub const REQUEST_FIELD: &str = "request";
/// Payload field holding a sealed memory's ciphertext (base64), in place of
/// the text, metadata and request fields.
pub const SEALED_FIELD: &str = "sealed";
/// Payload field holding a sealed memory's metadata tags, which filters match.
pub const TAGS_FIELD: &str = "tags";
/// Payload field holding when a memory expires (Unix milliseconds; absent
/// for a memory that never does).
pub const EXPIRES_FIELD: &str = "expires_at";
/// Payload field holding a memory's version: 1 when stored, one more with
/// each update (absent on memories stored before updates existed: 1).
pub const VERSION_FIELD: &str = "version";
/// Payload field holding the time of a memory's last update (Unix ms).
pub const UPDATED_FIELD: &str = "updated_at";
/// Payload field holding a memory's keyword term ids (keyed per owner when
/// sealed), which keyword search matches.
pub const TERMS_FIELD: &str = "terms";

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine cannot be reached or is shutting down; retrying may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The data directory's free space is below the reserve; writes that
    /// would grow storage are refused until space is back.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// A new collection would pass the collections-per-node bound; users
    /// who have one are served as before.
    #[error("collection limit: {0}")]
    CollectionLimit(String),
    /// The stored collections are laid out for another tier than the
    /// configured one (a start-up refusal, never a request's error).
    #[error("{0}")]
    Layout(String),
    /// The engine reported an error for this operation.
    #[error("engine error: {0}")]
    Engine(String),
    /// A bug: a blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
    /// The guard met another owner's point in this read (the collection,
    /// by place tag, is quarantined now); nothing of the read is returned.
    #[error("isolation breach in collection {0}")]
    IsolationBreach(String),
    /// The owner's collection (by place tag) is quarantined: reads are
    /// refused until an admin clears it.
    #[error("collection {0} is quarantined")]
    Quarantined(String),
}

/// A memory to be written, already embedded.
#[derive(Debug, Clone)]
pub struct NewMemory {
    /// Server-assigned id (UUID v7, so id order is creation order).
    pub id: Uuid,
    /// The text as sent by the client.
    pub text: String,
    /// The client's metadata object.
    pub metadata: Map<String, Value>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// The text's embedding.
    pub vector: Vec<f32>,
    /// Digest of the idempotent request that stored it, if any.
    pub request: Option<String>,
    /// Text, metadata and request sealed together (encryption at rest); the
    /// three plain fields are then empty and not stored.
    pub sealed: Option<Sealed>,
    /// When it expires, Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Its version (1 for a new memory).
    pub version: u64,
    /// When it was last updated, Unix milliseconds.
    pub updated_at: Option<i64>,
    /// Its keyword term ids ([`crate::keyword`]).
    pub terms: Vec<i64>,
}

/// A memory's sealed content.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The ciphertext, base64.
    pub blob: String,
    /// Keyed tags of its filterable metadata values.
    pub tags: Vec<String>,
}

impl NewMemory {
    /// Splits into id, vector and the stored payload, which carries the
    /// owner's full hash (what the guard checks on every read).
    pub fn into_parts(self, owner_hex: &str) -> (Uuid, Vec<f32>, Map<String, Value>) {
        let mut payload = Map::new();
        payload.insert(OWNER_FIELD.into(), Value::String(owner_hex.to_owned()));
        payload.insert(CREATED_FIELD.into(), Value::from(self.created_at));
        payload.insert(VERSION_FIELD.into(), Value::from(self.version));
        if let Some(at) = self.expires_at {
            payload.insert(EXPIRES_FIELD.into(), Value::from(at));
        }
        if let Some(at) = self.updated_at {
            payload.insert(UPDATED_FIELD.into(), Value::from(at));
        }
        if !self.terms.is_empty() {
            let terms = self.terms.into_iter().map(Value::from).collect();
            payload.insert(TERMS_FIELD.into(), Value::Array(terms));
        }
        match self.sealed {
            Some(sealed) => {
                payload.insert(SEALED_FIELD.into(), Value::String(sealed.blob));
                if !sealed.tags.is_empty() {
                    let tags = sealed.tags.into_iter().map(Value::String).collect();
                    payload.insert(TAGS_FIELD.into(), Value::Array(tags));
                }
            }
            None => {
                payload.insert(TEXT_FIELD.into(), Value::String(self.text));
                payload.insert(METADATA_FIELD.into(), Value::Object(self.metadata));
                if let Some(request) = self.request {
                    payload.insert(REQUEST_FIELD.into(), Value::String(request));
                }
            }
        }
        (self.id, self.vector, payload)
    }
}

impl NewMemory {
    /// The memory a stored point holds, to write it again elsewhere exactly
    /// as it is (sealed content stays sealed); `None` without its vector.
    pub fn from_stored(point: RawPoint) -> Option<Self> {
        let RawPoint {
            id,
            mut payload,
            vector,
            ..
        } = point;
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let created_at = payload.get(CREATED_FIELD).and_then(Value::as_i64)?;
        let sealed = text(payload.remove(SEALED_FIELD)).map(|blob| Sealed {
            blob,
            tags: match payload.remove(TAGS_FIELD) {
                Some(Value::Array(tags)) => {
                    tags.into_iter().filter_map(|t| text(Some(t))).collect()
                }
                _ => Vec::new(),
            },
        });
        let metadata = match payload.remove(METADATA_FIELD) {
            Some(Value::Object(metadata)) => metadata,
            _ => Map::new(),
        };
        Some(Self {
            id,
            text: text(payload.remove(TEXT_FIELD)).unwrap_or_default(),
            metadata,
            created_at,
            vector: vector?,
            request: text(payload.remove(REQUEST_FIELD)),
            sealed,
            expires_at: payload.get(EXPIRES_FIELD).and_then(Value::as_i64),
            version: payload
                .get(VERSION_FIELD)
                .and_then(Value::as_u64)
                .unwrap_or(1),
            updated_at: payload.get(UPDATED_FIELD).and_then(Value::as_i64),
            terms: match payload.get(TERMS_FIELD) {
                Some(Value::Array(terms)) => terms.iter().filter_map(Value::as_i64).collect(),
                _ => Vec::new(),
            },
        })
    }
}

/// A point as read back from an engine, not yet checked against its owner.
#[derive(Debug, Clone)]
pub struct RawPoint {
    /// Point id.
    pub id: Uuid,
    /// Similarity score, for search results.
    pub score: Option<f32>,
    /// The whole stored payload, owner field included.
    pub payload: Map<String, Value>,
    /// The stored embedding, read only to move a memory to another
    /// collection ([`Engine::export_page`]).
    pub vector: Option<Vec<f32>>,
}

/// A metadata equality condition value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Exact string match.
    Str(String),
    /// Exact integer match.
    Int(i64),
    /// Exact boolean match.
    Bool(bool),
}

/// Numeric bounds, each optional; a value must meet all that are set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bounds {
    /// Greater than.
    pub gt: Option<f64>,
    /// Greater than or equal.
    pub gte: Option<f64>,
    /// Less than.
    pub lt: Option<f64>,
    /// Less than or equal.
    pub lte: Option<f64>,
}

impl Bounds {
    /// The expiry times at or before `now`: what has expired by then.
    pub fn expired_at(now: i64) -> Self {
        Self {
            lte: Some(now as f64),
            ..Self::default()
        }
    }

    /// Whether no bound is set.
    pub fn is_open(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `v` meets every bound.
    pub fn holds(&self, v: f64) -> bool {
        self.gt.is_none_or(|b| v > b)
            && self.gte.is_none_or(|b| v >= b)
            && self.lt.is_none_or(|b| v < b)
            && self.lte.is_none_or(|b| v <= b)
    }
}

/// What a read's memories must all meet, beside belonging to the owner
/// (which every engine call adds itself).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Metadata key/value pairs that must all match.
    pub metadata: Vec<(String, MetaValue)>,
    /// Metadata keys whose value must be one of the values given.
    pub any_of: Vec<(String, Vec<MetaValue>)>,
    /// Metadata keys whose numeric value must lie within the bounds.
    pub ranges: Vec<(String, Bounds)>,
    /// Bounds on the creation time (Unix milliseconds).
    pub created: Bounds,
    /// Tags that must all be present (the sealed form of `metadata`).
    pub tags: Vec<String>,
    /// Groups of tags of which each must have one present (the sealed form
    /// of `any_of`).
    pub any_tags: Vec<Vec<String>>,
    /// Leave out memories expired at this time (Unix milliseconds).
    pub alive_at: Option<i64>,
    /// Keyword term ids of which a memory must hold one (none: no such
    /// condition).
    pub terms: Vec<i64>,
}

impl Conditions {
    /// Only memories not expired at `now`.
    pub fn alive_at(now: i64) -> Self {
        Self {
            alive_at: Some(now),
            ..Self::default()
        }
    }

    /// Whether any condition needs a metadata value (which a sealed
    /// deployment keeps only as tags or inside the ciphertext).
    pub fn on_metadata(&self) -> bool {
        !self.metadata.is_empty() || !self.any_of.is_empty() || !self.ranges.is_empty()
    }
}

/// A semantic search within one owner's memories.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Query embedding.
    pub vector: Vec<f32>,
    /// Most results to return.
    pub limit: usize,
    /// Results scoring below this are left out.
    pub min_score: Option<f32>,
    /// What the results must meet.
    pub filter: Conditions,
}

/// One page of an owner's memories in id order.
#[derive(Debug, Clone)]
pub struct RawPage {
    /// Points on this page.
    pub points: Vec<RawPoint>,
    /// Id to continue from, when more remain.
    pub next: Option<Uuid>,
}

impl RawPage {
    /// Builds a page from records read with an inclusive `offset = after` and
    /// `limit + 1` when `after` is set (both engines' scroll semantics):
    /// drops the cursor point itself and keeps at most `limit`.
    /// `engine_has_more` is whether the engine reported a next offset.
    pub fn after_cursor(
        records: Vec<RawPoint>,
        after: Option<Uuid>,
        limit: usize,
        engine_has_more: bool,
    ) -> Self {
        let mut points: Vec<RawPoint> = records
            .into_iter()
            .filter(|r| after.is_none_or(|a| r.id != a))
            .collect();
        // More remain if the engine says so, or if the cursor point is gone
        // (deleted meanwhile) so that the extra record asked for is a real one.
        let more = engine_has_more || points.len() > limit;
        points.truncate(limit);
        let next = if more {
            points.last().map(|p| p.id)
        } else {
            None
        };
        Self { points, next }
    }

    /// A page with nothing on it.
    pub fn empty() -> Self {
        Self {
            points: Vec::new(),
            next: None,
        }
    }
}

/// An opened engine, with the embedded one's handle kept for its
/// background rewrites.
pub struct OpenedEngine {
    /// The engine.
    pub engine: std::sync::Arc<dyn Engine>,
    edge: Option<std::sync::Arc<edge::EdgeEngine>>,
    /// The promoted users' embedded engine, beside `edge`.
    own_edge: Option<std::sync::Arc<edge::EdgeEngine>>,
    /// The shared tier with promotion, when on.
    tiered: Option<std::sync::Arc<tiered::Tiered>>,
}

impl OpenedEngine {
    /// Starts the embedded engine's background shard rewrites (a server
    /// wants them once it is sure to run; an offline command does its own)
    /// and resumes unfinished promotions.
    pub async fn start_maintenance(&self) {
        for edge in self.edge.iter().chain(&self.own_edge) {
            edge.start_maintenance();
        }
        if let Some(tiered) = &self.tiered {
            tiered.resume().await;
        }
    }

    /// Turns on promotion out of the shared tier, if `settings` ask for it:
    /// the engine becomes a [`tiered::Tiered`] over the shared naming and
    /// the per-user one.
    pub fn with_promotion(
        mut self,
        settings: &crate::settings::Settings,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StoreError> {
        use std::sync::Arc;
        let threshold = settings.store.promote_after;
        // With the threshold at 0 no move starts, but the registry still
        // routes the users moved before (and another replica may move some).
        if settings.store.tier != crate::settings::Tier::Shared {
            return Ok(self);
        }
        let (own, fleet): (Arc<dyn Engine>, _) = match &self.edge {
            Some(edge) => {
                let own_edge = Arc::new(edge.open_beside(crate::owner::DEFAULT_NAME_HEX_CHARS)?);
                self.own_edge = Some(own_edge.clone());
                // One process owns the data directory and its registry.
                (Arc::new(own_edge), None)
            }
            None => (
                qdrant_engine(settings, crate::owner::DEFAULT_NAME_HEX_CHARS)?,
                Some(tiered::Fleet::STANDARD),
            ),
        };
        let placements = open_placements(settings)?;
        let tiered = tiered::Tiered::open(
            &settings.store.collection_prefix,
            self.engine.clone(),
            own,
            placements,
            threshold,
            fleet,
            metrics,
        );
        self.engine = Arc::new(tiered.clone());
        self.tiered = Some(tiered);
        Ok(self)
    }
}

/// The registry of promoted users of the deployment `settings` describe.
pub fn open_placements(
    settings: &crate::settings::Settings,
) -> Result<std::sync::Arc<dyn placement::Placements>, StoreError> {
    Ok(match settings.store.kind {
        crate::settings::StoreKind::Edge => {
            std::sync::Arc::new(placement::FilePlacements::open(&settings.data_dir)?)
        }
        crate::settings::StoreKind::Qdrant => {
            std::sync::Arc::new(placement::QdrantPlacements::new(
                &settings.store.qdrant,
                &settings.store.collection_prefix,
            )?)
        }
    })
}

/// The Qdrant engine of `settings`, naming collections by `hex_chars`.
fn qdrant_engine(
    settings: &crate::settings::Settings,
    hex_chars: usize,
) -> Result<std::sync::Arc<dyn Engine>, StoreError> {
    Ok(std::sync::Arc::new(std::sync::Arc::new(
        qdrant::QdrantEngine::connect(qdrant::QdrantSettings {
            connection: settings.store.qdrant.clone(),
            collection_prefix: settings.store.collection_prefix.clone(),
            name_hex_chars: hex_chars,
            drill_skip_read_filter: settings.store.collision_drill,
            max_collection_points: settings.store.max_collection_points,
            max_collections_per_node: settings.store.max_collections_per_node,
        })?,
    )))
}

impl OpenedEngine {
    /// The same storage seen through another tier's naming (`hex_chars` of
    /// the owner hash), for `cordon tier migrate`.
    pub fn beside(
        &self,
        settings: &crate::settings::Settings,
        hex_chars: usize,
    ) -> Result<std::sync::Arc<dyn Engine>, StoreError> {
        match &self.edge {
            Some(edge) => Ok(std::sync::Arc::new(std::sync::Arc::new(
                edge.open_beside(hex_chars)?,
            ))),
            None => qdrant_engine(settings, hex_chars),
        }
    }
}

/// Opens the engine `settings` choose; nothing runs in the background yet.
pub fn open_engine(settings: &crate::settings::Settings) -> Result<OpenedEngine, StoreError> {
    use std::sync::Arc;
    Ok(match settings.store.kind {
        crate::settings::StoreKind::Edge => {
            let edge = Arc::new(edge::EdgeEngine::open(edge::EdgeSettings {
                data_dir: settings.data_dir.clone(),
                collection_prefix: settings.store.collection_prefix.clone(),
                name_hex_chars: settings.store.name_hex_chars,
                max_open_shards: settings.store.max_open_shards,
                drill_skip_read_filter: settings.store.collision_drill,
                purge_after: settings.store.purge_after,
                wal_growth_bytes: settings.store.wal_growth_bytes,
                min_free_bytes: settings.store.min_free_bytes,
            })?);
            OpenedEngine {
                engine: Arc::new(edge.clone()),
                edge: Some(edge),
                own_edge: None,
                tiered: None,
            }
        }
        crate::settings::StoreKind::Qdrant => OpenedEngine {
            engine: qdrant_engine(settings, settings.store.name_hex_chars)?,
            edge: None,
            own_edge: None,
            tiered: None,
        },
    })
}

/// How many hex characters of an owner hash name user collection `name`
/// under `prefix` (which tier's layout it belongs to); `None` for any other
/// name.
pub fn name_hex_len(name: &str, prefix: &str) -> Option<usize> {
    is_user_collection(name, prefix).then(|| name.len() - prefix.len())
}

/// Whether `name` is a user's collection (or shard directory) under `prefix`:
/// the prefix followed by hex digits only, which no system collection is.
pub fn is_user_collection(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Adds a stored payload's owner and expiry time to `owners` (owner hex to
/// earliest expiry), for [`Engine::expiring`].
pub(crate) fn note_expiry(
    owners: &mut std::collections::BTreeMap<String, i64>,
    payload: &Map<String, Value>,
) {
    let owner = payload.get(OWNER_FIELD).and_then(Value::as_str);
    let at = payload.get(EXPIRES_FIELD).and_then(Value::as_i64);
    if let (Some(owner), Some(at)) = (owner, at) {
        let earliest = owners.entry(owner.to_owned()).or_insert(at);
        *earliest = (*earliest).min(at);
    }
}

/// The first `limit` owners of `owners` that parse, with their times.
pub(crate) fn earliest(
    owners: std::collections::BTreeMap<String, i64>,
    limit: usize,
) -> Vec<(OwnerHash, i64)> {
    owners
        .into_iter()
        .filter_map(|(hex, at)| Some((OwnerHash::from_hex(&hex)?, at)))
        .take(limit)
        .collect()
}

/// How a write treats the ids it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Insert new points, replace existing ones.
    Upsert,
    /// Insert new points, leave existing ones as they are.
    InsertNew,
    /// Replace existing points of the owner, insert none.
    UpdateExisting,
    /// Replace the owner's existing point only at this version.
    UpdateIf(u64),
}

/// A rewrite of one stored payload (point id, payload); `true` when it
/// changed it. See [`Engine::reseal_all`].
pub type Reseal = std::sync::Arc<dyn Fn(Uuid, &mut Map<String, Value>) -> bool + Send + Sync>;

/// A storage backend. Every method is scoped to one owner, except the two
/// offline maintenance calls at the end, which the server never makes.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Writes memories into the owner's collection, creating it if needed.
    /// Returns only once the write is durable.
    async fn upsert(&self, owner: &OwnerHash, memories: Vec<NewMemory>) -> Result<(), StoreError>;
    /// Like [`Engine::upsert`], except that an id which already holds a
    /// point keeps that point: for keyed writes that other replicas may race
    /// (a batch is one operation, so it lands whole or not at all). On an
    /// engine that one process alone writes (the embedded one; its data
    /// directory is locked), the API's per-key claim already rules the race
    /// out, and this is `upsert`.
    async fn insert_new(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError> {
        self.upsert(owner, memories).await
    }
    /// Writes memories over the points of their ids that still exist and
    /// are the owner's; an id that holds no point stays absent. A keyed
    /// retry rewrites what it found this way, so a memory deleted or erased
    /// after the retry read it is not brought back.
    async fn update_existing(
        &self,
        owner: &OwnerHash,
        memories: Vec<NewMemory>,
    ) -> Result<(), StoreError>;
    /// Nearest memories to the query vector.
    async fn search(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<RawPoint>, StoreError>;
    /// One memory by id.
    async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<RawPoint>, StoreError>;
    /// Deletes one memory of this owner; never touches another owner's point.
    async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<(), StoreError>;
    /// How many of the owner's memories meet `filter` (exact).
    async fn count_where(
        &self,
        owner: &OwnerHash,
        filter: &Conditions,
    ) -> Result<usize, StoreError>;
    /// A page of memories meeting `filter` in id order, starting after
    /// `after`.
    async fn scroll(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
        filter: &Conditions,
    ) -> Result<RawPage, StoreError>;
    /// Writes `memory` over the owner's point of its id only if that point
    /// is at version `expected` (a point stored without a version is at 1);
    /// otherwise changes nothing. Whether it did is for the caller to read
    /// back: engines do not report how many points a conditional write met.
    async fn replace(
        &self,
        owner: &OwnerHash,
        memory: NewMemory,
        expected: u64,
    ) -> Result<(), StoreError>;
    /// Deletes the owner's memories that expired at or before `now` and no
    /// other's, whatever the collection holds; returns how many.
    async fn delete_expired(&self, owner: &OwnerHash, now: i64) -> Result<usize, StoreError>;
    /// The earliest expiry time after `after` among the owner's memories
    /// (what the expiry sweep visits them for next).
    async fn next_expiry(&self, owner: &OwnerHash, after: i64) -> Result<Option<i64>, StoreError>;
    /// The owners of memories that expire at or before `before`, each with
    /// the earliest such time, at most `limit` owners: the expiry sweep's
    /// scan of the whole deployment, which it then sweeps owner by owner.
    async fn expiring(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(OwnerHash, i64)>, StoreError>;
    /// Deletes every memory of this owner and, once empty, the collection.
    /// Returns how many memories were removed.
    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError>;
    /// Whether the owner's collection also holds another owner's points
    /// (possible only with shortened names). A yes or no, never the points:
    /// collision drills use it to count requests that touch a shared collection.
    async fn holds_other_owners(&self, owner: &OwnerHash) -> Result<bool, StoreError>;
    /// How many memories the owner holds (exact).
    async fn count(&self, owner: &OwnerHash) -> Result<usize, StoreError>;
    /// The name of the collection (or shard) that the owner's reads go to
    /// now: what a quarantine names and a scope statement reports.
    async fn place(&self, owner: &OwnerHash) -> Result<String, StoreError>;
    /// Whether any user's collection exists (a yes or no about the whole
    /// deployment, for the start-up check of encryption at rest).
    async fn holds_memories(&self) -> Result<bool, StoreError>;
    /// Whether the engine can serve requests.
    async fn ready(&self) -> Result<(), StoreError>;
    /// Flushes and closes everything; called once at shutdown.
    async fn shutdown(&self);
    /// Whether other processes write the same collections (replicas over
    /// one Qdrant), so that what this process checked can change under it.
    fn written_by_others(&self) -> bool {
        false
    }
    /// Shards held open in this process (0 for an engine without any).
    fn open_shards(&self) -> usize {
        0
    }
    /// Every owner hash stored in a collection named as this engine names
    /// them (offline maintenance only: `cordon keys migrate`, `cordon tier
    /// migrate`, with no server running).
    async fn owners(&self) -> Result<Vec<OwnerHash>, StoreError>;
    /// A page of the owner's memories with their vectors, in id order, to
    /// write them elsewhere (offline maintenance only).
    async fn export_page(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError>;
    /// The name lengths (hex characters) of user collections under this
    /// deployment's prefix that differ from the configured one: another
    /// tier's layout, whose memories this engine would never read.
    async fn other_layouts(&self) -> Result<std::collections::BTreeSet<usize>, StoreError>;
    /// Removes collections of this engine's naming that hold no point any
    /// more; returns how many (offline maintenance only, after a move).
    async fn remove_empty(&self) -> Result<usize, StoreError>;
    /// The names of the user collections of this engine's naming.
    async fn names(&self) -> Result<Vec<String>, StoreError>;
    /// Whether the collection `name` (one of [`Engine::names`]) holds any
    /// point; an engine that cannot tell says yes.
    async fn holds_points_named(&self, _name: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Makes the owner's collection exist, so that a bound on collections
    /// refuses it now rather than at a later write (a no-op where a
    /// collection costs nothing until written).
    async fn prepare(&self, _owner: &OwnerHash) -> Result<(), StoreError> {
        Ok(())
    }
    /// Passes every stored payload through `reseal` and keeps what it
    /// changed, durably; returns how many changed (offline maintenance only).
    /// `progress(done, total)` follows the collections.
    async fn reseal_all(
        &self,
        reseal: Reseal,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<usize, StoreError>;
}
