//! `PATCH /v1/memories/{id}`: change a memory's text, metadata or expiry in
//! place.
//!
//! The id, owner and creation time stay; the version rises by one and is
//! the `ETag`. A new text is embedded again. Metadata merges by default
//! (RFC 7396: a key set to `null` is removed) or, with `"metadata_mode":
//! "replace"`, is replaced whole. With `If-Match`, the update applies only
//! to the version named (412 otherwise); without it, the latest version.
//!
//! Each update is a compare-and-set in the engine (the write applies only
//! to the version read), so two updates racing through two replicas cannot
//! both land on one version; the loser reads the memory again, and without
//! `If-Match` applies its change to what the winner wrote.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::extract::{Json, Path};
use super::openapi::UserErrors;
use super::validate;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::guard::Memory;
use crate::store::NewMemory;

/// Times an update without `If-Match` reads again after losing a race.
const ATTEMPTS: usize = 3;

/// How `metadata` in an update applies.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetadataMode {
    /// Keys given are set, keys given as `null` are removed, others stay.
    #[default]
    Merge,
    /// The metadata becomes exactly the object given.
    Replace,
}

/// Changes to one memory; at least one of `text`, `metadata`, `expires_at`
/// and `ttl_seconds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The new text (embedded again; not blank).
    #[serde(default)]
    #[schema(min_length = 1, pattern = "\\S")]
    pub text: Option<String>,
    /// Metadata changes, applied as `metadata_mode` says.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// `merge` (the default) or `replace`.
    #[serde(default)]
    pub metadata_mode: MetadataMode,
    /// A new expiry time (Unix milliseconds, in the future), or `null` to
    /// never expire.
    #[serde(default, deserialize_with = "validate::present")]
    #[schema(value_type = Option<i64>)]
    pub expires_at: Option<Option<i64>>,
    /// Seconds from now until it expires; not with `expires_at`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<i64>,
}

/// The version an `If-Match` header names, if the request has one.
#[derive(Debug, Clone, Copy)]
pub enum IfMatch {
    /// No header: update the latest version.
    Absent,
    /// `*`: any version of an existing memory.
    Any,
    /// This version only.
    Version(u64),
}

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(Self::Absent);
        };
        let invalid = || ApiError::BadRequest {
            code: "invalid_if_match",
            message: "`If-Match` must be `*` or one ETag as this server sends it, e.g. \"3\""
                .into(),
        };
        let text = value.to_str().map_err(|_| invalid())?.trim();
        if text == "*" {
            return Ok(Self::Any);
        }
        let tag = text.strip_prefix("W/").unwrap_or(text);
        tag.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse().ok())
            .map(Self::Version)
            .ok_or_else(invalid)
    }
}

impl IfMatch {
    fn admits(self, version: u64) -> bool {
        match self {
            Self::Absent | Self::Any => true,
            Self::Version(v) => v == version,
        }
    }
}

/// The `ETag` of a memory at `version`.
pub fn etag(version: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, value);
    }
    headers
}

/// Update one of the caller's memories.
#[utoipa::path(
    patch,
    path = "/v1/memories/{id}",
    tag = "memories",
    params(
        ("id" = Uuid, Path, description = "The memory's id"),
        ("If-Match" = Option<String>, Header,
         description = "Apply only if the memory is at this version (its ETag, e.g. \"2\"), else 412; `*` for any"),
    ),
    request_body = UpdateRequest,
    responses(
        (status = 200, description = "The memory as updated; its ETag in the header", body = Memory),
        (status = 412, description = "The memory is not at the version `If-Match` names (`precondition_failed`); its ETag in the header", body = super::openapi::ErrorBody),
        UserErrors,
    ),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
pub async fn update_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    if_match: IfMatch,
    Json(request): Json<UpdateRequest>,
) -> Result<(HeaderMap, axum::Json<Memory>), ApiError> {
    let memory = update_memory(&state, &caller, id, if_match, request).await?;
    super::noted(&state, &caller, "update", "http", 1).await;
    Ok((etag(memory.version()), axum::Json(memory)))
}

/// Applies `request` to the caller's memory `id`; the memory as it is after.
pub async fn update_memory(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    if_match: IfMatch,
    request: UpdateRequest,
) -> Result<Memory, ApiError> {
    let limits = &state.limits;
    if request.text.is_none()
        && request.metadata.is_none()
        && request.expires_at.is_none()
        && request.ttl_seconds.is_none()
    {
        return Err(ApiError::validation(
            "give at least one of `text`, `metadata`, `expires_at` and `ttl_seconds`",
        ));
    }
    if let Some(text) = &request.text {
        validate::text("text", text, limits)?;
    }
    if request.metadata.is_none() && request.metadata_mode == MetadataMode::Replace {
        return Err(ApiError::validation(
            "`metadata_mode` is `replace` but no `metadata` is given",
        ));
    }
    let now = super::memories::now_millis();
    let expires = match (request.expires_at, request.ttl_seconds) {
        (None, None) => None,
        (at, ttl) => Some(validate::expiry(at, ttl, None, now)?),
    };
    // One update of a user's memories at a time in this process; replicas
    // meet at the engine's compare-and-set.
    let lock = state.updates.of(&caller.owner);
    let _one = lock.write().await;
    for _ in 0..ATTEMPTS {
        let Some(current) = state.store.get(&caller.owner, id).await? else {
            return Err(super::memories::not_found(state, caller));
        };
        if !if_match.admits(current.version()) {
            return Err(ApiError::PreconditionFailed {
                current: current.version(),
            });
        }
        let text = request
            .text
            .clone()
            .unwrap_or_else(|| current.text().to_owned());
        let metadata = match (&request.metadata, request.metadata_mode) {
            (None, _) => current.metadata().clone(),
            (Some(changes), MetadataMode::Replace) => changes.clone(),
            (Some(changes), MetadataMode::Merge) => merged(current.metadata(), changes),
        };
        let metadata = validate::metadata(Some(Value::Object(metadata)), limits)?;
        let old_bytes = current.stored_bytes();
        let new_bytes = crate::guard::stored_bytes(&text, &metadata);
        if new_bytes > old_bytes {
            state
                .quotas
                .admit(&state.store, &caller.owner, 0, new_bytes - old_bytes)
                .await?;
        }
        // The vector is the text's embedding whether or not the text
        // changed: embedding again costs one model call and needs no read
        // of the stored vector.
        let mut encoded = state
            .embedder
            .embed(&caller.owner, vec![text.clone()])
            .await?;
        let vector = encoded.vectors.pop().ok_or(ApiError::Internal)?;
        let terms = state.keywords.terms(&text);
        let next = NewMemory {
            id,
            text,
            metadata,
            created_at: current.created_at(),
            vector,
            request: current.request_digest().map(str::to_owned),
            sealed: None,
            expires_at: expires.unwrap_or(current.expires_at()),
            version: current.version() + 1,
            updated_at: Some(now),
            terms,
        };
        let wanted = (
            next.text.clone(),
            next.metadata.clone(),
            next.expires_at,
            next.version,
        );
        state
            .store
            .replace(&caller.owner, next, current.version())
            .await?;
        // Engines do not say whether a conditional write met its point: the
        // memory read back says. Another update of the same version with the
        // same content is indistinguishable, and leaves what was asked for.
        match state.store.get(&caller.owner, id).await? {
            None => return Err(super::memories::not_found(state, caller)),
            Some(after)
                if (
                    after.text().to_owned(),
                    after.metadata().clone(),
                    after.expires_at(),
                    after.version(),
                ) == wanted =>
            {
                state.quotas.deleted(&caller.owner, old_bytes);
                state.quotas.stored(&caller.owner, new_bytes);
                state.metrics.updated();
                if let Some(at) = after.expires_at() {
                    state.expiry.note(&caller.owner, at);
                }
                return Ok(after);
            }
            Some(after) => {
                if let IfMatch::Version(_) = if_match {
                    return Err(ApiError::PreconditionFailed {
                        current: after.version(),
                    });
                }
            }
        }
    }
    Err(ApiError::UpdateConflict)
}

/// `current` with `changes` merged in (RFC 7396 at the top level: `null`
/// removes a key).
fn merged(current: &Map<String, Value>, changes: &Map<String, Value>) -> Map<String, Value> {
    let mut out = current.clone();
    for (key, value) in changes {
        if value.is_null() {
            out.remove(key);
        } else {
            out.insert(key.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_merge_sets_given_keys_removes_null_ones_and_keeps_the_rest() {
        let current = json!({"a": 1, "b": "x", "c": true});
        let changes = json!({"a": 2, "b": null, "d": "new"});
        let out = merged(
            current.as_object().expect("object"),
            changes.as_object().expect("object"),
        );
        assert_eq!(Value::Object(out), json!({"a": 2, "c": true, "d": "new"}));
    }

    #[test]
    fn if_match_admits_only_the_version_it_names() {
        assert!(IfMatch::Version(3).admits(3));
        assert!(!IfMatch::Version(3).admits(4));
        assert!(IfMatch::Any.admits(7) && IfMatch::Absent.admits(7));
    }
}
