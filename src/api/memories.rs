//! `/v1/memories`: store, search, get, delete, list, erase and export.
//!
//! Every handler takes a [`Caller`]; the owner comes from the token and from
//! nowhere else. Request bodies are closed structs, so a field such as
//! `user_id` or `owner` is simply not read. The operations themselves
//! ([`store_memories`], [`search_memories`], [`delete_memory`],
//! [`list_memories`]) are shared with the MCP tools, so both ways in meet the
//! same validation, quotas and guard.

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
use crate::guarded::Page;
use crate::store::{NewMemory, SearchQuery};

/// Default page size for list.
const DEFAULT_LIST_LIMIT: usize = 20;
/// Default number of search results.
const DEFAULT_SEARCH_LIMIT: usize = 10;
/// Memories read per step of an export (its memory use).
const EXPORT_PAGE: usize = 100;

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
    let (ids, request): (Vec<Uuid>, Option<String>) = match &key {
        Some(key) => {
            let ids: Vec<Uuid> = (0..items.len())
                .map(|i| idempotency::derive_id(&caller.owner, key, i))
                .collect();
            let digest = idempotency::body_digest(&items);
            // Any item of an earlier write under this key decides: the same
            // body is a retry (answered with the ids, even if some were
            // deleted since, which stay deleted); another body is refused.
            let mut earlier = false;
            for id in &ids {
                if let Some(memory) = state.store.get(&caller.owner, *id).await? {
                    if memory.request_digest() != Some(digest.as_str()) {
                        return Err(ApiError::IdempotencyKeyReused);
                    }
                    earlier = true;
                }
            }
            if earlier {
                return Ok(ids);
            }
            (ids, Some(digest))
        }
        None => (items.iter().map(|_| Uuid::now_v7()).collect(), None),
    };
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
    let texts = items.iter().map(|(text, _)| text.clone()).collect();
    let encoded = state.embedder.embed(&caller.owner, texts).await?;
    let created_at = now_millis();
    let memories: Vec<NewMemory> = items
        .into_iter()
        .zip(ids.iter())
        .zip(encoded.vectors)
        .map(|(((text, metadata), id), vector)| NewMemory {
            id: *id,
            text,
            metadata,
            created_at,
            vector,
            request: request.clone(),
            sealed: None,
        })
        .collect();
    let n = memories.len();
    state.store.put(&caller.owner, memories).await?;
    state.quotas.stored(&caller.owner, bytes);
    state.metrics.stored(n);
    Ok(ids)
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
    if state.store.delete(&caller.owner, id).await? {
        state.quotas.forget(&caller.owner);
        Ok(())
    } else {
        Err(not_found(state, caller))
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
    state.quotas.forget(&caller.owner);
    tracing::info!(deleted, "erased all memories of the caller");
    Ok(axum::Json(EraseResponse { deleted }))
}

/// What the export stream has still to do.
enum ExportState {
    /// Write the opening and this first page (read before the response
    /// started, so that an early failure still gets its status code).
    Start(Page),
    /// Read and write the page after this cursor.
    After(Uuid),
    /// Write the closing.
    End,
    Done,
}

/// Every memory of the caller.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Describes the streamed body for the OpenAPI document only.
struct ExportResponse {
    memories: Vec<Memory>,
}

/// Streams `{"memories": [...]}` page by page: memory use is one page,
/// whatever the user's size. A store failure after the first page can only
/// cut the stream short; the body then is not valid JSON, so a client cannot
/// mistake it for a complete export.
#[utoipa::path(
    get,
    path = "/v1/memories/export",
    tag = "memories",
    responses((status = 200, description = "All of the caller's memories, streamed", body = ExportResponse), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn export(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let first = state.store.list(&caller.owner, None, EXPORT_PAGE).await?;
    let (store, owner) = (state.store.clone(), caller.owner.clone());
    let chunks = stream::unfold(
        (ExportState::Start(first), true),
        move |(next, first_item)| {
            let (store, owner) = (store.clone(), owner.clone());
            async move {
                let (page, head) = match next {
                    ExportState::Start(page) => (page, &b"{\"memories\":["[..]),
                    ExportState::After(cursor) => {
                        match store.list(&owner, Some(cursor), EXPORT_PAGE).await {
                            Ok(page) => (page, &b""[..]),
                            Err(e) => {
                                tracing::error!(error = %e, "export cut short by a store error");
                                let err = std::io::Error::other("export cut short");
                                return Some((Err(err), (ExportState::Done, false)));
                            }
                        }
                    }
                    ExportState::End => {
                        return Some((Ok(Bytes::from_static(b"]}")), (ExportState::Done, false)));
                    }
                    ExportState::Done => return None,
                };
                let mut out = head.to_vec();
                let mut first_item = first_item;
                for memory in &page.memories {
                    if !first_item {
                        out.push(b',');
                    }
                    first_item = false;
                    if let Err(e) = serde_json::to_writer(&mut out, memory) {
                        tracing::error!(error = %e, "cannot encode a memory for export");
                        let err = std::io::Error::other("export cut short");
                        return Some((Err(err), (ExportState::Done, false)));
                    }
                }
                let next = match page.next {
                    Some(cursor) => ExportState::After(cursor),
                    None => ExportState::End,
                };
                Some((Ok(Bytes::from(out)), (next, first_item)))
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response())
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
