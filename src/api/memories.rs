//! `/v1/memories`: store, search, get, delete, list, erase and export.
//!
//! Every handler takes a [`Caller`]; the owner comes from the token and from
//! nowhere else. Request bodies are closed structs, so a field such as
//! `user_id` or `owner` is simply not read. The operations themselves
//! ([`store_memories`], [`search_memories`], [`delete_memory`],
//! [`list_memories`]) are shared with the MCP tools, so both ways in meet the
//! same validation, quotas and guard.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::extract::{Json, Path, Query};
use super::idempotency::{self, IdempotencyKey};
use super::openapi::UserErrors;
use super::validate;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::guard::Memory;
use crate::store::{NewMemory, SearchQuery};

/// Default page size for list.
const DEFAULT_LIST_LIMIT: usize = 20;
/// Default number of search results.
const DEFAULT_SEARCH_LIMIT: usize = 10;
/// Memories read per step of an export: with the chunk below, what one
/// export holds in memory (see the README's "Long responses").
const EXPORT_PAGE: usize = 32;
/// Encoded bytes after which an export hands a chunk to the connection.
const EXPORT_CHUNK: usize = 64 * 1024;

/// Routes of this module, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(store, list, erase))
        .routes(routes!(search))
        .routes(routes!(export))
        .routes(routes!(get_one, delete_one))
}

/// One memory to store.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MemoryInput {
    /// The text to remember (not blank; at most the server's text limit, 8 KiB by default).
    #[schema(min_length = 1, pattern = "\\S")]
    pub text: String,
    /// Flat key-value facts about the memory (string, integer or boolean
    /// values), usable in search filters.
    #[serde(default)]
    #[schema(schema_with = super::openapi::metadata_schema)]
    pub metadata: Option<Value>,
}

/// Either one memory or a batch under `memories`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum StoreRequest {
    /// A batch of memories (1 to the server's item limit, 64 by default).
    Many {
        /// The memories, stored in this order.
        #[schema(min_items = 1)]
        memories: Vec<MemoryInput>,
    },
    /// One memory.
    One(MemoryInput),
}

/// The ids of the stored memories, in the order they were sent.
#[derive(Debug, Serialize, ToSchema)]
struct StoreResponse {
    ids: Vec<Uuid>,
}

/// Store one memory or a batch.
#[utoipa::path(
    post,
    path = "/v1/memories",
    tag = "memories",
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Makes a retry safe: the same key and body answer the same ids and store nothing twice (1 to 255 visible ASCII characters)"),
    ),
    request_body = StoreRequest,
    responses((status = 201, description = "Stored", body = StoreResponse), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn store(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyKey(key): IdempotencyKey,
    Json(request): Json<StoreRequest>,
) -> Result<(StatusCode, axum::Json<StoreResponse>), ApiError> {
    let inputs = match request {
        StoreRequest::Many { memories } => memories,
        StoreRequest::One(one) => vec![one],
    };
    let ids = store_memories(&state, &caller, key, inputs).await?;
    Ok((StatusCode::CREATED, axum::Json(StoreResponse { ids })))
}

/// Validates, embeds and stores `inputs` for the caller; returns their ids.
pub async fn store_memories(
    state: &AppState,
    caller: &Caller,
    key: Option<String>,
    inputs: Vec<MemoryInput>,
) -> Result<Vec<Uuid>, ApiError> {
    let limits = &state.limits;
    validate::count("memories", inputs.len(), limits)?;
    let mut items = Vec::with_capacity(inputs.len());
    for input in inputs {
        validate::text("text", &input.text, limits)?;
        let metadata = validate::metadata(input.metadata, limits)?;
        items.push((input.text, metadata));
    }
    let Some(key) = key else {
        let ids: Vec<Uuid> = items.iter().map(|_| Uuid::now_v7()).collect();
        let created_at = vec![now_millis(); items.len()];
        let bytes = admit(state, caller, &items).await?;
        let memories = embedded(state, caller, items, &ids, &created_at, None).await?;
        state.store.put(&caller.owner, memories).await?;
        stored(state, &caller.owner, ids.len(), bytes);
        return Ok(ids);
    };
    let ids: Vec<Uuid> = (0..items.len())
        .map(|i| idempotency::derive_id(&caller.owner, &key, i))
        .collect();
    let digest = idempotency::body_digest(&items);
    // One attempt per key at a time in this process; a retry with the same
    // body that waited for a successful one answers as it.
    let Some(claim) = state.keyed.claim(&caller.owner, &key, &digest).await? else {
        return Ok(ids);
    };
    // Any item of an earlier write under this key decides: the same body is
    // a retry, another body is refused. A retry that did not see the earlier
    // attempt succeed cannot tell a durable point from one that a failed
    // flush left readable, so it writes the items it finds once more (as
    // they were, with their first time) and answers only once that write is
    // durable. Items deleted since stay deleted, even if the delete comes
    // between this read and that write: it only overwrites what still exists.
    let mut found = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        if let Some(memory) = state.store.get(&caller.owner, *id).await? {
            if memory.request_digest() != Some(digest.as_str()) {
                return Err(ApiError::IdempotencyKeyReused);
            }
            found.push((index, memory.created_at()));
        }
    }
    let retry = !found.is_empty();
    let (items, write_ids, created_at, bytes) = if retry {
        let mut kept = Vec::with_capacity(found.len());
        let mut kept_ids = Vec::with_capacity(found.len());
        let mut times = Vec::with_capacity(found.len());
        let mut items: Vec<Option<_>> = items.into_iter().map(Some).collect();
        for (index, at) in found {
            kept.push(items[index].take().expect("each index is found once"));
            kept_ids.push(ids[index]);
            times.push(at);
        }
        (kept, kept_ids, times, None)
    } else {
        let bytes = admit(state, caller, &items).await?;
        let times = vec![now_millis(); items.len()];
        (items, ids.clone(), times, Some(bytes))
    };
    let memories = embedded(state, caller, items, &write_ids, &created_at, Some(&digest)).await?;
    // The write runs to its end in a task of its own, holding the claim: a
    // request cut off by its timeout or its client must not free the key
    // while its write is applied but not yet durable.
    let (task_state, owner, n) = (state.clone(), caller.owner.clone(), memories.len());
    let write = tokio::spawn(async move {
        let state = &task_state;
        if retry {
            state.store.put_existing(&owner, memories).await?;
        } else {
            state.store.put_new(&owner, memories).await?;
            if state.store.written_by_others() {
                settle_race(state, &owner, &write_ids, &digest).await?;
            }
        }
        claim.succeeded();
        if let Some(bytes) = bytes {
            stored(state, &owner, n, bytes);
        }
        Ok::<(), ApiError>(())
    });
    write
        .await
        .map_err(|e| ApiError::from(crate::store::StoreError::Internal(e.to_string())))??;
    Ok(ids)
}

/// Admits a store of `items` under the caller's quotas; returns its bytes.
async fn admit(
    state: &AppState,
    caller: &Caller,
    items: &[(String, Map<String, Value>)],
) -> Result<u64, ApiError> {
    let bytes: u64 = items
        .iter()
        .map(|(text, metadata)| crate::guard::stored_bytes(text, metadata))
        .sum();
    if let Err(e) = state
        .quotas
        .admit(&state.store, &caller.owner, items.len(), bytes)
        .await
    {
        if let ApiError::QuotaExceeded { quota } = &e {
            state.metrics.limit_hit(quota);
            crate::audit::limit_hit(quota, &caller.owner);
        }
        return Err(e);
    }
    Ok(bytes)
}

/// Embeds `items` into the memories to write under `ids`.
async fn embedded(
    state: &AppState,
    caller: &Caller,
    items: Vec<(String, Map<String, Value>)>,
    ids: &[Uuid],
    created_at: &[i64],
    request: Option<&str>,
) -> Result<Vec<NewMemory>, ApiError> {
    let texts = items.iter().map(|(text, _)| text.clone()).collect();
    let encoded = state.embedder.embed(&caller.owner, texts).await?;
    Ok(items
        .into_iter()
        .zip(ids.iter().zip(created_at))
        .zip(encoded.vectors)
        .map(|(((text, metadata), (id, at)), vector)| NewMemory {
            id: *id,
            text,
            metadata,
            created_at: *at,
            vector,
            request: request.map(str::to_owned),
            sealed: None,
        })
        .collect())
}

/// Counts a store of `n` new memories holding `bytes`.
fn stored(state: &AppState, owner: &crate::owner::OwnerHash, n: usize, bytes: u64) {
    state.quotas.stored(owner, bytes);
    state.metrics.stored(n);
}

/// After an insert-if-absent under an `Idempotency-Key`, reads the ids back:
/// if another replica's attempt with a different body got any of them
/// first, this attempt takes back the points it did insert (a batch longer
/// than the winner's) and is refused with 409.
async fn settle_race(
    state: &AppState,
    owner: &crate::owner::OwnerHash,
    ids: &[Uuid],
    digest: &str,
) -> Result<(), ApiError> {
    let mut ours = Vec::new();
    let mut theirs = false;
    for id in ids {
        match state.store.get(owner, *id).await? {
            Some(memory) if memory.request_digest() == Some(digest) => ours.push(*id),
            Some(_) => theirs = true,
            None => {}
        }
    }
    if !theirs {
        return Ok(());
    }
    for id in ours {
        state.store.delete(owner, id).await?;
    }
    Err(ApiError::IdempotencyConflict)
}

/// A search by meaning among the caller's memories.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SearchRequest {
    /// What to look for, in words.
    #[schema(min_length = 1, pattern = "\\S")]
    pub query: String,
    /// Most results (1 to 100, default 10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Leave out results scoring below this (cosine similarity, -1 to 1).
    #[serde(default)]
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub min_score: Option<f32>,
    /// Only memories whose metadata has each of these key-value pairs
    /// (string, integer or boolean values).
    #[serde(default)]
    #[schema(schema_with = super::openapi::filter_schema)]
    pub filter: Option<Map<String, Value>>,
}

/// Search results, best first.
#[derive(Debug, Serialize, ToSchema)]
struct SearchResponse {
    results: Vec<Memory>,
}

/// Search the caller's memories by meaning.
#[utoipa::path(
    post,
    path = "/v1/memories/search",
    tag = "memories",
    request_body = SearchRequest,
    responses((status = 200, description = "Results, best first", body = SearchResponse), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<SearchRequest>,
) -> Result<axum::Json<SearchResponse>, ApiError> {
    let results = search_memories(&state, &caller, request).await?;
    Ok(axum::Json(SearchResponse { results }))
}

/// Embeds the query and returns the caller's nearest memories, guarded.
pub async fn search_memories(
    state: &AppState,
    caller: &Caller,
    request: SearchRequest,
) -> Result<Vec<Memory>, ApiError> {
    let limits = &state.limits;
    validate::text("query", &request.query, limits)?;
    let limit = validate::page_limit(request.limit, DEFAULT_SEARCH_LIMIT, limits)?;
    if let Some(s) = request.min_score
        && !(-1.0..=1.0).contains(&s)
    {
        return Err(ApiError::validation("`min_score` must be between -1 and 1"));
    }
    let metadata = validate::metadata_filter(request.filter)?;
    let mut encoded = state
        .embedder
        .embed(&caller.owner, vec![request.query])
        .await?;
    let vector = encoded.vectors.pop().ok_or(ApiError::Internal)?;
    let results = state
        .store
        .search(
            &caller.owner,
            SearchQuery {
                vector,
                limit,
                min_score: request.min_score,
                metadata,
                tags: Vec::new(),
            },
        )
        .await?;
    state.metrics.searched();
    Ok(results)
}

/// Get one of the caller's memories.
#[utoipa::path(
    get,
    path = "/v1/memories/{id}",
    tag = "memories",
    params(("id" = Uuid, Path, description = "The memory's id")),
    responses((status = 200, description = "The memory", body = Memory), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Memory>, ApiError> {
    match state.store.get(&caller.owner, id).await? {
        Some(memory) => Ok(axum::Json(memory)),
        None => Err(not_found(&state, &caller)),
    }
}

/// A memory id that is not the caller's: 404, an audit event (a caller
/// probing other users' ids shows up in the trail), and a rejection counted
/// towards the caller's lockout.
fn not_found(state: &AppState, caller: &Caller) -> ApiError {
    crate::audit::memory_not_found(&caller.owner);
    crate::auth::owner_rejected(&caller.owner, &state.auth);
    ApiError::NotFound
}

/// Delete one of the caller's memories.
#[utoipa::path(
    delete,
    path = "/v1/memories/{id}",
    tag = "memories",
    params(("id" = Uuid, Path, description = "The memory's id")),
    responses((status = 204, description = "Deleted"), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    delete_memory(&state, &caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes one of the caller's memories; not found if it is not theirs.
pub async fn delete_memory(state: &AppState, caller: &Caller, id: Uuid) -> Result<(), ApiError> {
    match state.store.delete(&caller.owner, id).await? {
        Some(memory) => {
            state.quotas.deleted(&caller.owner, memory.stored_bytes());
            Ok(())
        }
        None => Err(not_found(state, caller)),
    }
}

/// A page of the caller's memories.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Memories per page (1 to 100, default 20).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before.
    #[serde(default)]
    cursor: Option<Uuid>,
}

/// One page, in id order (the order of storing, for memories stored without
/// an `Idempotency-Key`); `next_cursor` is null on the last.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    /// The memories of this page.
    pub memories: Vec<Memory>,
    /// Pass as `cursor` for the next page; null when this was the last.
    pub next_cursor: Option<Uuid>,
}

/// Page through the caller's memories in id order.
#[utoipa::path(
    get,
    path = "/v1/memories",
    tag = "memories",
    params(ListParams),
    responses((status = 200, description = "One page", body = ListResponse), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<ListResponse>, ApiError> {
    let page = list_memories(&state, &caller, params.limit, params.cursor).await?;
    Ok(axum::Json(page))
}

/// One page of the caller's memories after `cursor`.
pub async fn list_memories(
    state: &AppState,
    caller: &Caller,
    limit: Option<i64>,
    cursor: Option<Uuid>,
) -> Result<ListResponse, ApiError> {
    let limit = validate::page_limit(limit, DEFAULT_LIST_LIMIT, &state.limits)?;
    let page = state.store.list(&caller.owner, cursor, limit).await?;
    Ok(ListResponse {
        memories: page.memories,
        next_cursor: page.next,
    })
}

/// How many memories an erase removed.
#[derive(Debug, Serialize, ToSchema)]
struct EraseResponse {
    deleted: usize,
}

/// Erase all of the caller's memories (and, with encryption at rest, their data key first).
#[utoipa::path(
    delete,
    path = "/v1/memories",
    tag = "memories",
    responses((status = 200, description = "Erased", body = EraseResponse), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn erase(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<EraseResponse>, ApiError> {
    let deleted = state.store.erase(&caller.owner).await?;
    state.quotas.erased(&caller.owner);
    tracing::info!(deleted, "erased all memories of the caller");
    Ok(axum::Json(EraseResponse { deleted }))
}

/// Every memory of the caller.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Describes the streamed body for the OpenAPI document only.
struct ExportResponse {
    memories: Vec<Memory>,
}

/// Streams `{"memories": [...]}` page by page: memory use is one page and
/// one chunk, whatever the user's size.
///
/// The view is fixed when the export begins: a memory stored after that
/// (by its creation time) is left out. Before each chunk and each page the
/// caller's token is checked again, so a revocation, a disabled tenant or
/// the token's expiry ends the export there. The body holds the caller's
/// slot in flight and the server's until it ends, within the stream time
/// limit. Any failure after the first page (a store error, a memory that
/// does not open, the token's standing) can only cut the stream short; the
/// body then is not valid JSON, so a client cannot mistake it for a
/// complete export.
#[utoipa::path(
    get,
    path = "/v1/memories/export",
    tag = "memories",
    responses((status = 200, description = "All of the caller's memories, streamed", body = ExportResponse), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn export(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let began_ms = now_millis();
    let first = state
        .store
        .export_page(&caller.owner, None, EXPORT_PAGE)
        .await?;
    let export = Export {
        state,
        caller,
        began_ms,
        pending: first.memories.into(),
        next: first.next,
        opened: false,
        written: 0,
        done: false,
    };
    let chunks = stream::unfold(export, |mut export| async move {
        let chunk = export.chunk().await?;
        Some((chunk, export))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// An export under way.
struct Export {
    state: AppState,
    caller: Caller,
    /// Memories created after this (Unix ms) are left out.
    began_ms: i64,
    /// The rest of the page read last.
    pending: VecDeque<Memory>,
    /// The page after this cursor is still to be read.
    next: Option<Uuid>,
    opened: bool,
    written: usize,
    done: bool,
}

impl Export {
    /// The next chunk of the body; `None` once the closing bracket is out.
    async fn chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let result = self.fill().await;
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }

    async fn fill(&mut self) -> Result<Bytes, std::io::Error> {
        let cut = |why: &str| {
            tracing::warn!(reason = why, "export cut short");
            std::io::Error::other("export cut short")
        };
        if let Err(e) = self.state.auth.still_stands(&self.caller) {
            return Err(cut(&e.to_string()));
        }
        let mut out = Vec::new();
        if !self.opened {
            out.extend_from_slice(b"{\"memories\":[");
            self.opened = true;
        }
        loop {
            while let Some(memory) = self.pending.pop_front() {
                if memory.created_at() > self.began_ms {
                    continue;
                }
                if self.written > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut out, &memory).map_err(|e| cut(&e.to_string()))?;
                self.written += 1;
                if out.len() >= EXPORT_CHUNK {
                    return Ok(out.into());
                }
            }
            let Some(cursor) = self.next.take() else {
                out.extend_from_slice(b"]}");
                self.done = true;
                return Ok(out.into());
            };
            if let Err(e) = self.state.auth.still_stands(&self.caller) {
                return Err(cut(&e.to_string()));
            }
            let page = self
                .state
                .store
                .export_page(&self.caller.owner, Some(cursor), EXPORT_PAGE)
                .await
                .map_err(|e| cut(&e.to_string()))?;
            self.pending = page.memories.into();
            self.next = page.next;
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
