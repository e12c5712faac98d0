//! `/v1/memories`: store, search, get, delete, list, erase and export.
//!
//! Every handler takes a [`Caller`]; the owner comes from the token and from
//! nowhere else. Request bodies are closed structs, so a field such as
//! `user_id` or `owner` is simply not read.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::AppState;
use super::extract::{Json, Path, Query};
use super::idempotency::{self, IdempotencyKey};
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

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/memories", post(store).get(list).delete(erase))
        .route("/v1/memories/search", post(search))
        .route("/v1/memories/export", get(export))
        .route("/v1/memories/{id}", get(get_one).delete(delete_one))
}

/// One memory to store.
#[derive(Debug, Deserialize)]
struct MemoryInput {
    text: String,
    #[serde(default)]
    metadata: Option<Value>,
}

/// Either one memory or a batch under `memories`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StoreRequest {
    Many { memories: Vec<MemoryInput> },
    One(MemoryInput),
}

#[derive(Debug, Serialize)]
struct StoreResponse {
    ids: Vec<Uuid>,
}

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
                return Ok((StatusCode::CREATED, axum::Json(StoreResponse { ids })));
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
    Ok((StatusCode::CREATED, axum::Json(StoreResponse { ids })))
}

#[derive(Debug, Deserialize)]
struct SearchRequest {
    query: String,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    min_score: Option<f32>,
    #[serde(default)]
    filter: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
struct SearchResponse {
    results: Vec<Memory>,
}

#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<SearchRequest>,
) -> Result<axum::Json<SearchResponse>, ApiError> {
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
    Ok(axum::Json(SearchResponse { results }))
}

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

#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn delete_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete(&caller.owner, id).await? {
        state.quotas.forget(&caller.owner);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&state, &caller))
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    cursor: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct ListResponse {
    memories: Vec<Memory>,
    next_cursor: Option<Uuid>,
}

#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<ListResponse>, ApiError> {
    let limit = validate::page_limit(params.limit, DEFAULT_LIST_LIMIT, &state.limits)?;
    let page = state
        .store
        .list(&caller.owner, params.cursor, limit)
        .await?;
    Ok(axum::Json(ListResponse {
        memories: page.memories,
        next_cursor: page.next,
    }))
}

#[derive(Debug, Serialize)]
struct EraseResponse {
    deleted: usize,
}

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

/// Streams `{"memories": [...]}` page by page: memory use is one page,
/// whatever the user's size. A store failure after the first page can only
/// cut the stream short; the body then is not valid JSON, so a client cannot
/// mistake it for a complete export.
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
