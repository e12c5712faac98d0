//! Storage: one collection per user, behind an owner-typed API.
//!
//! An [`Engine`] is a storage backend: the embedded qdrant-edge engine
//! ([`edge`]) or a Qdrant server over gRPC ([`qdrant`]). Every engine method
//! takes the caller's
//! [`OwnerHash`]; there is no call that reads "everything". Engines return
//! [`RawPoint`]s, which are unverified: the only way out of this module is
//! [`Store`], which passes every point through the [`Guard`] before a handler
//! sees it.

pub mod edge;
pub mod qdrant;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::guard::{Guard, Memory};
use crate::metrics::Metrics;
use crate::owner::OwnerHash;

/// Payload field holding the full owner hash (hex).
pub const OWNER_FIELD: &str = "owner";
/// Payload field holding the memory text.
pub const TEXT_FIELD: &str = "text";
/// Payload field holding the client's metadata object.
pub const METADATA_FIELD: &str = "metadata";
/// Payload field holding the creation time (Unix milliseconds).
pub const CREATED_FIELD: &str = "created_at";

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine cannot be reached or is shutting down; retrying may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The engine reported an error for this operation.
    #[error("engine error: {0}")]
    Engine(String),
    /// A bug: a blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
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
}

impl NewMemory {
    /// Splits into id, vector and the stored payload, which carries the
    /// owner's full hash (what the guard checks on every read).
    pub fn into_parts(self, owner_hex: &str) -> (Uuid, Vec<f32>, Map<String, Value>) {
        let mut payload = Map::new();
        payload.insert(OWNER_FIELD.into(), Value::String(owner_hex.to_owned()));
        payload.insert(TEXT_FIELD.into(), Value::String(self.text));
        payload.insert(METADATA_FIELD.into(), Value::Object(self.metadata));
        payload.insert(CREATED_FIELD.into(), Value::from(self.created_at));
        (self.id, self.vector, payload)
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

/// A semantic search within one owner's memories.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Query embedding.
    pub vector: Vec<f32>,
    /// Most results to return.
    pub limit: usize,
    /// Results scoring below this are left out.
    pub min_score: Option<f32>,
    /// Metadata key/value pairs that must all match.
    pub metadata: Vec<(String, MetaValue)>,
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

/// A storage backend. Every method is scoped to one owner.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Writes memories into the owner's collection, creating it if needed.
    /// Returns only once the write is durable.
    async fn upsert(&self, owner: &OwnerHash, memories: Vec<NewMemory>) -> Result<(), StoreError>;
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
    /// A page of memories in id order, starting after `after`.
    async fn scroll(
        &self,
        owner: &OwnerHash,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<RawPage, StoreError>;
    /// Deletes every memory of this owner and, once empty, the collection.
    /// Returns how many memories were removed.
    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError>;
    /// Whether the owner's collection also holds another owner's points
    /// (possible only with shortened names). A yes or no, never the points:
    /// collision drills use it to count requests that touch a shared collection.
    async fn holds_other_owners(&self, owner: &OwnerHash) -> Result<bool, StoreError>;
    /// Whether the engine can serve requests.
    async fn ready(&self) -> Result<(), StoreError>;
    /// Flushes and closes everything; called once at shutdown.
    async fn shutdown(&self);
}

/// The store handlers use: an engine whose every read passes the guard.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    guard: Guard,
    /// Set in collision drills: where requests that touch a shared
    /// collection are counted.
    census: Option<Arc<Metrics>>,
}

/// One page of verified memories.
#[derive(Debug)]
pub struct Page {
    /// Memories on this page, all the caller's own.
    pub memories: Vec<Memory>,
    /// Cursor for the next page.
    pub next: Option<Uuid>,
}

impl Store {
    /// Wraps an engine with the guard.
    pub fn new(engine: Arc<dyn Engine>, guard: Guard) -> Self {
        Self {
            engine,
            guard,
            census: None,
        }
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
        self.census(owner).await;
        self.engine.upsert(owner, memories).await
    }

    /// Searches `owner`'s memories.
    pub async fn search(
        &self,
        owner: &OwnerHash,
        query: SearchQuery,
    ) -> Result<Vec<Memory>, StoreError> {
        self.census(owner).await;
        let points = self.engine.search(owner, query).await?;
        Ok(self.guard.admit(owner, points, "search"))
    }

    /// One of `owner`'s memories, or `None` (also when it is someone else's).
    pub async fn get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<Memory>, StoreError> {
        self.census(owner).await;
        self.guarded_get(owner, id).await
    }

    async fn guarded_get(&self, owner: &OwnerHash, id: Uuid) -> Result<Option<Memory>, StoreError> {
        let point = self.engine.get(owner, id).await?;
        Ok(self
            .guard
            .admit(owner, point.into_iter().collect(), "get")
            .pop())
    }

    /// Deletes one of `owner`'s memories; `false` if it had none with this id.
    pub async fn delete(&self, owner: &OwnerHash, id: Uuid) -> Result<bool, StoreError> {
        self.census(owner).await;
        if self.guarded_get(owner, id).await?.is_none() {
            return Ok(false);
        }
        self.engine.delete(owner, id).await?;
        Ok(true)
    }

    /// A page of `owner`'s memories.
    pub async fn list(
        &self,
        owner: &OwnerHash,
        mut after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.census(owner).await;
        loop {
            let page = self.engine.scroll(owner, after, limit).await?;
            let memories = self.guard.admit(owner, page.points, "list");
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
        self.engine.erase(owner).await
    }

    /// Whether the engine can serve requests.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.engine.ready().await
    }

    /// Flushes and closes the engine.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await
    }
}
