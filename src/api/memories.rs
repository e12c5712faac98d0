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
        .routes(routes!(get_one, delete_one, super::update::update_one))
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
    /// When it expires, Unix milliseconds (in the future, at most 100 years
    /// ahead); `null` for never, whatever the server's default time to live.
    #[serde(default, deserialize_with = "super::validate::present")]
    #[schema(value_type = Option<i64>)]
    pub expires_at: Option<Option<i64>>,
    /// Seconds until it expires (1 to 100 years' worth); not with `expires_at`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<i64>,
    /// Cosine similarity (above -1, at most 1) from which this text is a
    /// near-duplicate of one of the caller's memories: it is then not stored
    /// again, and its answer is the existing memory's id. Overrides the
    /// server's `CORDON_DUPLICATE_THRESHOLD`.
    #[serde(default)]
    pub duplicate_threshold: Option<f32>,
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
    /// Each item's memory: the new one, or for a near-duplicate the
    /// existing one it matched.
    ids: Vec<Uuid>,
    /// Present when a duplicate threshold applied: for each item, whether
    /// it matched an existing memory and added nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<Vec<bool>>,
}

/// What a store did with its items.
#[derive(Debug)]
pub struct Stored {
    /// Each item's memory id, new or existing.
    pub ids: Vec<Uuid>,
    /// Each item's duplicate flag, when a threshold applied.
    pub duplicate: Option<Vec<bool>>,
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
    responses(
        (status = 201, description = "Stored (at least one new memory)", body = StoreResponse),
        (status = 200, description = "Every item was a near-duplicate; nothing was added", body = StoreResponse),
        UserErrors,
    ),
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
    let Stored { ids, duplicate } = store_memories(&state, &caller, key, inputs).await?;
    super::noted(&state, &caller, "store", "http", ids.len()).await;
    let status = match &duplicate {
        Some(flags) if flags.iter().all(|d| *d) => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    Ok((status, axum::Json(StoreResponse { ids, duplicate })))
}

/// One item to store, validated.
struct Item {
    text: String,
    metadata: Map<String, Value>,
    expires_at: Option<i64>,
    threshold: Option<f32>,
    /// The item's expiry and duplicate fields as sent (`None` when it sent
    /// none), which a retry under the same key must repeat.
    options: Option<String>,
}

/// Validates, embeds and stores `inputs` for the caller; returns their ids.
pub async fn store_memories(
    state: &AppState,
    caller: &Caller,
    key: Option<String>,
    inputs: Vec<MemoryInput>,
) -> Result<Stored, ApiError> {
    let limits = &state.limits;
    validate::count("memories", inputs.len(), limits)?;
    let now = now_millis();
    let mut items = Vec::with_capacity(inputs.len());
    for input in inputs {
        validate::text("text", &input.text, limits)?;
        let metadata = validate::metadata(input.metadata, limits)?;
        let expires_at = validate::expiry(
            input.expires_at,
            input.ttl_seconds,
            state.memory.default_ttl,
            now,
        )?;
        let options = (input.expires_at.is_some()
            || input.ttl_seconds.is_some()
            || input.duplicate_threshold.is_some())
        .then(|| {
            format!(
                "{:?}|{:?}|{:?}",
                input.expires_at, input.ttl_seconds, input.duplicate_threshold
            )
        });
        let threshold = match input.duplicate_threshold {
            Some(t) => Some(validate::threshold(t)?),
            None => state.memory.duplicate_threshold,
        };
        items.push(Item {
            text: input.text,
            metadata,
            expires_at,
            threshold,
            options,
        });
    }
    let checked = items.iter().any(|i| i.threshold.is_some());
    let Some(key) = key else {
        let ids: Vec<Uuid> = items.iter().map(|_| Uuid::now_v7()).collect();
        let mut memories = embedded(state, caller, &items, &ids, None).await?;
        let found = duplicates(state, caller, &items, &memories).await?;
        let (answer, duplicate) = answered(&ids, &found);
        memories.retain(|m| !found.iter().flatten().any(|(i, _)| ids[*i] == m.id));
        if !memories.is_empty() {
            let bytes = admit(state, caller, &memories).await?;
            let n = memories.len();
            let expiring = expiring(&memories);
            state.store.put(&caller.owner, memories).await?;
            note_expiring(state, caller, &expiring);
            stored(state, &caller.owner, n, bytes);
        }
        return Ok(Stored {
            ids: answer,
            duplicate: checked.then_some(duplicate),
        });
    };
    let ids: Vec<Uuid> = (0..items.len())
        .map(|i| idempotency::derive_id(&caller.owner, &key, i))
        .collect();
    let digest = idempotency::body_digest(
        &items
            .iter()
            .map(|i| {
                let mut metadata = i.metadata.clone();
                // Under a name no metadata key can have (`$` is not allowed),
                // and only when sent: the digest of a body without them is
                // what it always was.
                if let Some(options) = &i.options {
                    metadata.insert("$options".into(), Value::String(options.clone()));
                }
                (i.text.clone(), metadata)
            })
            .collect::<Vec<_>>(),
    );
    // One attempt per key at a time in this process; a retry with the same
    // body that waited for a successful one answers as it.
    let Some(claim) = state.keyed.claim(&caller.owner, &key, &digest).await? else {
        if !checked {
            return Ok(Stored {
                ids,
                duplicate: None,
            });
        }
        // The same items as the attempt it waited for: an item whose id
        // holds nothing was a near-duplicate there, and is answered with
        // the memory it matches.
        let memories = embedded(state, caller, &items, &ids, None).await?;
        let found = duplicates_unless_stored(state, caller, &items, &memories).await?;
        let (answer, duplicate) = answered(&ids, &found);
        return Ok(Stored {
            ids: answer,
            duplicate: Some(duplicate),
        });
    };
    // Any item of an earlier write under this key decides: the same body is
    // a retry, another body is refused. A retry that did not see the earlier
    // attempt succeed cannot tell a durable point from one that a failed
    // flush left readable, so it writes the items it finds once more (as
    // they were, with their first time) and answers only once that write is
    // durable. Items deleted since stay deleted, even if the delete comes
    // between this read and that write: it only overwrites what still exists.
    // An item updated since is left as it is: its update made it durable.
    let mut memories = embedded(state, caller, &items, &ids, Some(&digest)).await?;
    let mut again = Vec::new();
    let mut fresh = Vec::new();
    let mut seen = false;
    let now = now_millis();
    for (index, memory) in memories.drain(..).enumerate() {
        match state
            .store
            .get_expired_too(&caller.owner, ids[index])
            .await?
        {
            Some(held) => {
                seen = true;
                if held.request_digest() != Some(digest.as_str()) {
                    return Err(ApiError::IdempotencyKeyReused);
                }
                // Expired since: gone, as if deleted. Updated since: durable.
                let expired = held.expires_at().is_some_and(|at| at <= now);
                if held.version() == 1 && !expired {
                    again.push(NewMemory {
                        created_at: held.created_at(),
                        expires_at: held.expires_at(),
                        ..memory
                    });
                }
            }
            None => fresh.push((index, memory)),
        }
    }
    // Items not stored yet are checked for duplicates. On a retry (some
    // item found) they are not written: a batch lands whole, so each was
    // either a near-duplicate at the first attempt, answered again with the
    // memory it matches, or deleted (or expired) since, and stays gone.
    let retry = seen;
    let fresh_items: Vec<&Item> = fresh.iter().map(|(i, _)| &items[*i]).collect();
    let mut fresh_memories: Vec<NewMemory> = fresh.into_iter().map(|(_, m)| m).collect();
    let found_fresh = duplicates_of(state, caller, &fresh_items, &fresh_memories).await?;
    let mut found = vec![None; items.len()];
    let fresh_indexes = fresh_memories.iter().map(|m| {
        ids.iter()
            .position(|id| *id == m.id)
            .expect("a fresh item is one of the batch")
    });
    for (index, hit) in fresh_indexes.zip(&found_fresh) {
        found[index] = *hit;
    }
    if retry {
        fresh_memories.clear();
    }
    fresh_memories.retain(|m| {
        !found
            .iter()
            .enumerate()
            .any(|(i, hit)| hit.is_some() && ids[i] == m.id)
    });
    let bytes = if fresh_memories.is_empty() {
        None
    } else {
        Some(admit(state, caller, &fresh_memories).await?)
    };
    let (answer, duplicate) = answered(&ids, &found);
    let expiring_ids = expiring(&fresh_memories);
    // The write runs to its end in a task of its own, holding the claim: a
    // request cut off by its timeout or its client must not free the key
    // while its write is applied but not yet durable.
    let (task_state, owner, n) = (state.clone(), caller.owner.clone(), fresh_memories.len());
    let write_ids: Vec<Uuid> = fresh_memories.iter().map(|m| m.id).collect();
    let write = tokio::spawn(async move {
        let state = &task_state;
        // Each only while still at its first version: an update that lands
        // between the read above and this write is not undone.
        for memory in again {
            state.store.replace(&owner, memory, 1).await?;
        }
        if !fresh_memories.is_empty() {
            state.store.put_new(&owner, fresh_memories).await?;
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
    note_expiring(state, caller, &expiring_ids);
    Ok(Stored {
        ids: answer,
        duplicate: checked.then_some(duplicate),
    })
}

/// Each item's answer id (its own, or the memory it duplicates) and flag.
fn answered(ids: &[Uuid], found: &[Option<(usize, Uuid)>]) -> (Vec<Uuid>, Vec<bool>) {
    ids.iter()
        .zip(found)
        .map(|(id, hit)| match hit {
            Some((_, existing)) => (*existing, true),
            None => (*id, false),
        })
        .unzip()
}

/// For each item with a threshold, the memory it duplicates: one of the
/// caller's memories, or an earlier item of the same batch (as `(index,
/// id)`; `None` for an item to store).
async fn duplicates(
    state: &AppState,
    caller: &Caller,
    items: &[Item],
    memories: &[NewMemory],
) -> Result<Vec<Option<(usize, Uuid)>>, ApiError> {
    let items: Vec<&Item> = items.iter().collect();
    duplicates_of(state, caller, &items, memories).await
}

/// [`duplicates`] for the items a waiting retry shares with the attempt it
/// waited for: an item whose own id holds a memory is not a duplicate.
async fn duplicates_unless_stored(
    state: &AppState,
    caller: &Caller,
    items: &[Item],
    memories: &[NewMemory],
) -> Result<Vec<Option<(usize, Uuid)>>, ApiError> {
    let mut found = duplicates(state, caller, items, memories).await?;
    for (index, memory) in memories.iter().enumerate() {
        if state.store.get(&caller.owner, memory.id).await?.is_some() {
            found[index] = None;
        }
    }
    Ok(found)
}

async fn duplicates_of(
    state: &AppState,
    caller: &Caller,
    items: &[&Item],
    memories: &[NewMemory],
) -> Result<Vec<Option<(usize, Uuid)>>, ApiError> {
    let mut found: Vec<Option<(usize, Uuid)>> = vec![None; items.len()];
    for (index, (item, memory)) in items.iter().zip(memories).enumerate() {
        let Some(threshold) = item.threshold else {
            continue;
        };
        // Within the batch first: an earlier item this one repeats.
        let earlier = (0..index).find(|&j| {
            found[j].is_none() && cosine(&memories[j].vector, &memory.vector) >= threshold
        });
        if let Some(j) = earlier {
            found[index] = Some((index, memories[j].id));
            continue;
        }
        let nearest = state
            .store
            .search(
                &caller.owner,
                SearchQuery {
                    vector: memory.vector.clone(),
                    limit: 1,
                    min_score: Some(threshold),
                    filter: Default::default(),
                },
            )
            .await?;
        if let Some(hit) = nearest.first()
            && hit.score().is_some_and(|s| s >= threshold)
        {
            found[index] = Some((index, hit.id()));
        }
    }
    let n = found.iter().flatten().count();
    if n > 0 {
        state.metrics.duplicates(n);
    }
    Ok(found)
}

/// Cosine similarity of two unit vectors (the model's are normalised).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The ids and expiry times of the memories that expire.
fn expiring(memories: &[NewMemory]) -> Vec<i64> {
    memories.iter().filter_map(|m| m.expires_at).collect()
}

/// Tells the expiry sweep about the caller's expiring memories.
fn note_expiring(state: &AppState, caller: &Caller, times: &[i64]) {
    if let Some(first) = times.iter().min() {
        state.expiry.note(&caller.owner, *first);
    }
}

/// Admits a store of `items` under the caller's quotas; returns its bytes.
async fn admit(state: &AppState, caller: &Caller, memories: &[NewMemory]) -> Result<u64, ApiError> {
    let bytes: u64 = memories
        .iter()
        .map(|m| crate::guard::stored_bytes(&m.text, &m.metadata))
        .sum();
    if let Err(e) = state
        .quotas
        .admit(&state.store, &caller.owner, memories.len(), bytes)
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

/// Embeds `items` into the memories to write under `ids`, created now.
async fn embedded(
    state: &AppState,
    caller: &Caller,
    items: &[Item],
    ids: &[Uuid],
    request: Option<&str>,
) -> Result<Vec<NewMemory>, ApiError> {
    let texts = items.iter().map(|i| i.text.clone()).collect();
    let encoded = state.embedder.embed(&caller.owner, texts).await?;
    let now = now_millis();
    Ok(items
        .iter()
        .zip(ids)
        .zip(encoded.vectors)
        .map(|((item, id), vector)| NewMemory {
            id: *id,
            text: item.text.clone(),
            metadata: item.metadata.clone(),
            created_at: now,
            vector,
            request: request.map(str::to_owned),
            sealed: None,
            expires_at: item.expires_at,
            version: 1,
            updated_at: None,
            terms: state.keywords.terms(&item.text),
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

/// A search among the caller's memories.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SearchRequest {
    /// What to look for, in words.
    #[schema(min_length = 1, pattern = "\\S")]
    pub query: String,
    /// Most results (1 to 100, default 10).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Leave out results whose cosine similarity is below this (-1 to 1;
    /// in `hybrid`, the semantic side only; not with `keyword`).
    #[serde(default)]
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub min_score: Option<f32>,
    /// Only memories whose metadata meets every condition: a value for
    /// equality, `{"in": [...]}` for any of several, or a numeric range
    /// `{"gt", "gte", "lt", "lte"}`.
    #[serde(default)]
    #[schema(schema_with = super::openapi::filter_schema)]
    pub filter: Option<Map<String, Value>>,
    /// Only memories created after this time (Unix milliseconds).
    #[serde(default)]
    pub created_after: Option<i64>,
    /// Only memories created before this time (Unix milliseconds).
    #[serde(default)]
    pub created_before: Option<i64>,
    /// `semantic` (by meaning), `keyword` (BM25, for exact names, codes and
    /// numbers) or `hybrid` (both, fused); the server's default when absent.
    #[serde(default)]
    pub mode: Option<super::recall::Mode>,
}

/// Search results, best first.
#[derive(Debug, Serialize, ToSchema)]
struct SearchResponse {
    results: Vec<Memory>,
}

/// Search the caller's memories by meaning, keywords or both.
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
    super::noted(&state, &caller, "search", "http", results.len()).await;
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
    let filter = super::filter::conditions(
        request.filter,
        request.created_after,
        request.created_before,
    )?;
    let mode = request.mode.unwrap_or(state.memory.search_mode);
    let results = super::recall::ranked(
        state,
        caller,
        mode,
        &request.query,
        limit,
        request.min_score,
        filter,
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
    responses((status = 200, description = "The memory; its version as the ETag", body = Memory), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<(axum::http::HeaderMap, axum::Json<Memory>), ApiError> {
    match state.store.get(&caller.owner, id).await? {
        Some(memory) => {
            super::noted(&state, &caller, "get", "http", 1).await;
            Ok((super::update::etag(memory.version()), axum::Json(memory)))
        }
        None => Err(not_found(&state, &caller)),
    }
}

/// A memory id that is not the caller's: 404, an audit event (a caller
/// probing other users' ids shows up in the trail), and a rejection counted
/// towards the caller's lockout.
pub(super) fn not_found(state: &AppState, caller: &Caller) -> ApiError {
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
    super::noted(&state, &caller, "delete", "http", 1).await;
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
    /// A filter as search takes it, as JSON (URL-encoded), e.g.
    /// `{"topic":"travel","price":{"lt":20}}`.
    #[serde(default)]
    filter: Option<String>,
    /// Only memories created after this time (Unix milliseconds).
    #[serde(default)]
    created_after: Option<i64>,
    /// Only memories created before this time (Unix milliseconds).
    #[serde(default)]
    created_before: Option<i64>,
}

/// What a list is narrowed to.
#[derive(Debug, Default)]
pub struct ListFilter {
    /// The metadata conditions, as search takes them.
    pub filter: Option<Map<String, Value>>,
    /// Only memories created after this (Unix ms).
    pub created_after: Option<i64>,
    /// Only memories created before this (Unix ms).
    pub created_before: Option<i64>,
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
    let filter = match params.filter.as_deref() {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Some(map),
            _ => {
                return Err(ApiError::validation(
                    "`filter` must be a JSON object, URL-encoded",
                ));
            }
        },
    };
    let narrowed = ListFilter {
        filter,
        created_after: params.created_after,
        created_before: params.created_before,
    };
    let page = list_memories(&state, &caller, params.limit, params.cursor, narrowed).await?;
    super::noted(&state, &caller, "list", "http", page.memories.len()).await;
    Ok(axum::Json(page))
}

/// One page of the caller's memories after `cursor`.
pub async fn list_memories(
    state: &AppState,
    caller: &Caller,
    limit: Option<i64>,
    cursor: Option<Uuid>,
    narrowed: ListFilter,
) -> Result<ListResponse, ApiError> {
    let limit = validate::page_limit(limit, DEFAULT_LIST_LIMIT, &state.limits)?;
    let filter = super::filter::conditions(
        narrowed.filter,
        narrowed.created_after,
        narrowed.created_before,
    )?;
    let page = state
        .store
        .list(&caller.owner, cursor, limit, &filter)
        .await?;
    Ok(ListResponse {
        memories: page.memories,
        next_cursor: page.next,
    })
}

/// How many memories an erase removed, with the server's signed receipt.
#[derive(Debug, Serialize, ToSchema)]
struct EraseResponse {
    /// Memories deleted.
    deleted: usize,
    /// A compact JWS (EdDSA) of the erase: owner tag, time, memories
    /// deleted, the destroyed data key's id when sealed. Verify it with the
    /// keys at `/.well-known/cordon-signing-keys.json` or `cordon verify`.
    receipt: String,
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
    // In a task of its own: a client that hangs up (or the request's time
    // limit) cannot stop it between the memories and the access log.
    let receipt = tokio::spawn(async move { erase_memories(&state, &caller, "http").await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "the erase task failed");
            ApiError::Internal
        })??;
    Ok(axum::Json(EraseResponse {
        deleted: receipt.deleted,
        receipt: receipt.token,
    }))
}

/// What an erase answers: how many memories it deleted, and its receipt.
pub struct EraseReceipt {
    /// Memories deleted.
    pub deleted: usize,
    /// The signed receipt.
    pub token: String,
}

/// Erases every memory of the caller and their access log (all but the
/// record of this erase), and signs a receipt of it.
pub async fn erase_memories(
    state: &AppState,
    caller: &Caller,
    via: &str,
) -> Result<EraseReceipt, ApiError> {
    let erased = state.store.erase(&caller.owner).await?;
    state.quotas.erased(&caller.owner);
    let sealed = state.store.sealed()?;
    state
        .trail
        .erase(&caller.owner, caller.entry("erase", via, erased.deleted))
        .await?;
    crate::scope::note_returned(caller.owner.log_tag(), 0);
    tracing::info!(
        deleted = erased.deleted,
        "erased all memories of the caller"
    );
    let token = state.signer.sign(serde_json::json!({
        "typ": "cordon.erase",
        "owner": caller.owner.log_tag(),
        "erased_at": crate::access::now_ms(),
        "deleted": erased.deleted,
        "sealed": sealed,
        "key_destroyed": erased.key,
        "access_log_erased": true,
    }));
    Ok(EraseReceipt {
        deleted: erased.deleted,
        token,
    })
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
        noted: false,
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
    /// Whether it is in the caller's access log already.
    noted: bool,
}

impl Drop for Export {
    /// Notes an export that did not end whole in the caller's log: cut
    /// short, or dropped by a client that stopped reading.
    fn drop(&mut self) {
        if self.noted {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (state, caller, written) = (self.state.clone(), self.caller.clone(), self.written);
        runtime.spawn(async move {
            super::noted(&state, &caller, "export", "http", written).await;
        });
    }
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
                // Before the last chunk goes out, so that a client that
                // reads its log next finds the export there.
                super::noted(&self.state, &self.caller, "export", "http", self.written).await;
                self.noted = true;
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

/// The time now, Unix milliseconds.
pub(super) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
