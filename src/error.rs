//! The one place where an error becomes an HTTP status.
//!
//! Every handler returns `Result<_, ApiError>`; each module's typed error
//! converts into [`ApiError`] here, and [`IntoResponse`] renders the single
//! JSON shape `{"error": {"code": "...", "message": "..."}}`. Internals (paths,
//! engine messages) go to the log, never into a response body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::access::{AccessError, Denied, Refusal};
use crate::api::openapi::{ErrorBody, ErrorDetail};
use crate::auth::AuthError;
use crate::embed::EmbedError;
use crate::store::StoreError;

/// An error that a request can end with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Any authentication failure; the reason is logged, never returned.
    #[error("unauthorized")]
    Unauthorized,
    /// A valid token that an admin revoked (by issue time or version).
    #[error("token revoked")]
    TokenRevoked,
    /// The tenant registry is on and does not know the caller's tenant.
    #[error("tenant unknown")]
    TenantUnknown,
    /// The caller's tenant is disabled.
    #[error("tenant disabled")]
    TenantDisabled,
    /// A per-user limit on request rate or concurrency; `limit` names it.
    #[error("rate limited: {limit}")]
    RateLimited {
        /// The limit's name, as in the settings.
        limit: &'static str,
        /// Seconds after which a retry may pass.
        retry_after_secs: u64,
    },
    /// A store would take the user past a storage quota; `quota` names it.
    #[error("quota exceeded: {quota}")]
    QuotaExceeded {
        /// The quota's name, as in the settings.
        quota: &'static str,
    },
    /// Too many rejected attempts: refused until the cool-down ends.
    #[error("locked out for {retry_after_secs} s")]
    LockedOut {
        /// Seconds until the cool-down ends (rounded up).
        retry_after_secs: u64,
    },
    /// The body is not valid JSON, or a path or query parameter is malformed.
    #[error("{code}: {message}")]
    BadRequest {
        /// Machine-readable error code.
        code: &'static str,
        /// Human-readable explanation for the client.
        message: String,
    },
    /// Well-formed JSON that breaks a documented limit or rule.
    #[error("validation failed: {0}")]
    Validation(String),
    /// The body exceeds the configured size cap.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body is not declared as JSON.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// An `Idempotency-Key` the caller already used for a different body.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// Another attempt under the same `Idempotency-Key`, with a different
    /// body, is in progress (or won the race to store).
    #[error("idempotency conflict")]
    IdempotencyConflict,
    /// An admin asked to lower a user's minimum token version, which only
    /// rises.
    #[error("the minimum version only rises")]
    MinVersionLower {
        /// The minimum held now.
        held: u64,
    },
    /// An `If-Match` that names another version than the memory's.
    #[error("precondition failed")]
    PreconditionFailed {
        /// The memory's version now.
        current: u64,
    },
    /// Concurrent updates of one memory kept overtaking this one.
    #[error("update conflict")]
    UpdateConflict,
    /// No such memory for this caller (whether or not it exists for another).
    #[error("not found")]
    NotFound,
    /// No such endpoint.
    #[error("no such endpoint")]
    NoRoute,
    /// The endpoint exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Too many requests in flight; the client should retry shortly.
    #[error("overloaded")]
    Overloaded,
    /// The request took longer than the configured timeout.
    #[error("timed out")]
    Timeout,
    /// The storage engine cannot serve the request right now.
    #[error("store unavailable")]
    StoreUnavailable,
    /// The data directory is (nearly) full; the write was refused.
    #[error("insufficient storage")]
    InsufficientStorage,
    /// A new user's collection would pass the collections-per-node bound.
    #[error("collection limit")]
    CollectionLimit,
    /// The embedding model cannot serve the request right now.
    #[error("embedder unavailable")]
    EmbedderUnavailable,
    /// The guard met another user's memory in this read: the request failed
    /// whole and the collection is quarantined.
    #[error("isolation breach")]
    IsolationBreach,
    /// The caller's collection is quarantined until an admin clears it.
    #[error("quarantined")]
    Quarantined,
    /// The live canary's latest round found a breach (readiness only).
    #[error("canary breach")]
    CanaryBreach,
    /// A bug or an unexpected failure; details are in the log only.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Shorthand for a 422 with a message for the client.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::Validation(message.into())
    }

    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
            ),
            Self::TokenRevoked => (
                StatusCode::UNAUTHORIZED,
                "token_revoked",
                "this token was revoked; get a new one".into(),
            ),
            Self::TenantUnknown => (
                StatusCode::FORBIDDEN,
                "tenant_unknown",
                "this token's tenant is not registered here".into(),
            ),
            Self::TenantDisabled => (
                StatusCode::FORBIDDEN,
                "tenant_disabled",
                "this token's tenant is disabled".into(),
            ),
            Self::QuotaExceeded { quota } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "quota_exceeded",
                format!("this store would pass the per-user quota `{quota}`; nothing was written. Delete memories to make room"),
            ),
            Self::RateLimited { limit, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("this user is over the per-user limit `{limit}`; retry shortly"),
            ),
            Self::LockedOut { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                "locked_out",
                format!("too many rejected attempts; retry in {retry_after_secs} s"),
            ),
            Self::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message.clone()),
            Self::Validation(message) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                message.clone(),
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body exceeds the size limit".into(),
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json".into(),
            ),
            Self::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different body; use a new key for a new write".into(),
            ),
            Self::IdempotencyConflict => (
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "another request with this Idempotency-Key and a different body is being stored; nothing was written. Use a new key for a new write".into(),
            ),
            Self::MinVersionLower { held } => (
                StatusCode::CONFLICT,
                "min_version_only_rises",
                format!("the user's minimum token version is {held} and only rises; nothing was changed. Revoke their tokens to cut them off by time instead"),
            ),
            Self::PreconditionFailed { current } => (
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                format!("the memory is at version {current}, not the one If-Match names; nothing was changed. Read it again and retry"),
            ),
            Self::UpdateConflict => (
                StatusCode::CONFLICT,
                "update_conflict",
                "other updates of this memory kept landing first; nothing was changed. Retry".into(),
            ),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", "no such memory".into()),
            Self::NoRoute => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint".into(),
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take this method".into(),
            ),
            Self::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many requests in flight; retry shortly".into(),
            ),
            Self::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long; retry shortly".into(),
            ),
            Self::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the memory store is unavailable; retry shortly".into(),
            ),
            Self::InsufficientStorage => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the memory store is out of disk space; nothing was written. Reads, deletes and erase still work".into(),
            ),
            Self::CollectionLimit => (
                StatusCode::INSUFFICIENT_STORAGE,
                "collection_limit",
                "the deployment holds as many collections per Qdrant node as it allows (CORDON_QDRANT_MAX_COLLECTIONS_PER_NODE): a new user cannot be stored until an operator raises it or adds nodes; existing users are served".into(),
            ),
            Self::EmbedderUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "embedder_unavailable",
                "the embedding model is unavailable; retry shortly".into(),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".into(),
            ),
            Self::IsolationBreach => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "isolation_breach",
                "the store returned a memory that is not yours; nothing of this read is returned, the operator is alerted and the collection is quarantined".into(),
            ),
            Self::CanaryBreach => (
                StatusCode::SERVICE_UNAVAILABLE,
                "canary_breach",
                "the live canary saw a canary memory reach the wrong user; see the alert in the audit trail".into(),
            ),
            Self::Quarantined => (
                StatusCode::SERVICE_UNAVAILABLE,
                "quarantined",
                "reads of your memories are paused while an operator checks the store; new memories and erase still work".into(),
            ),
        }
    }
}

impl ApiError {
    /// One error of each kind, with every code a [`ApiError::BadRequest`]
    /// here carries: what `docs/troubleshooting.md` is checked against (by
    /// `tests/binary/docs.rs`). A new kind fails to compile in the test
    /// below until it is listed here too.
    pub fn catalogue() -> Vec<ApiError> {
        let bad = |code| Self::BadRequest {
            code,
            message: String::new(),
        };
        vec![
            Self::Unauthorized,
            Self::TokenRevoked,
            Self::TenantUnknown,
            Self::TenantDisabled,
            Self::RateLimited {
                limit: "user_requests_per_second",
                retry_after_secs: 1,
            },
            Self::QuotaExceeded {
                quota: "max_memories_per_user",
            },
            Self::LockedOut {
                retry_after_secs: 1,
            },
            bad("invalid_json"),
            Self::validation(""),
            Self::PayloadTooLarge,
            Self::UnsupportedMediaType,
            Self::IdempotencyKeyReused,
            Self::IdempotencyConflict,
            Self::MinVersionLower { held: 1 },
            Self::PreconditionFailed { current: 1 },
            Self::UpdateConflict,
            Self::NotFound,
            Self::NoRoute,
            Self::MethodNotAllowed,
            Self::Overloaded,
            Self::Timeout,
            Self::StoreUnavailable,
            Self::InsufficientStorage,
            Self::CollectionLimit,
            Self::EmbedderUnavailable,
            Self::IsolationBreach,
            Self::Quarantined,
            Self::CanaryBreach,
            Self::Internal,
            bad("invalid_body"),
            bad("invalid_path"),
            bad("invalid_query"),
        ]
    }

    /// The HTTP status and the code a client gets.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        let (status, code, _) = self.parts();
        (status.as_u16(), code)
    }

    /// `code: message`, as a client reads it (for MCP tool results, which
    /// carry text rather than a status).
    pub fn client_text(&self) -> String {
        let (_, code, message) = self.parts();
        format!("{code}: {message}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let body = Json(ErrorBody {
            error: ErrorDetail { code, message },
        });
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::LockedOut { retry_after_secs }
            | Self::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::PreconditionFailed { current } => {
                if let Ok(tag) = HeaderValue::from_str(&format!("\"{current}\"")) {
                    headers.insert(header::ETAG, tag);
                }
            }
            Self::TokenRevoked => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::Overloaded
            | Self::Timeout
            | Self::StoreUnavailable
            | Self::InsufficientStorage
            | Self::EmbedderUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        // The reason is logged where the token is verified; the client learns
        // nothing beyond "unauthorized", so the response is no oracle.
        let _ = err;
        Self::Unauthorized
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "store unavailable");
                Self::StoreUnavailable
            }
            StoreError::InsufficientStorage(reason) => {
                tracing::warn!(%reason, "write refused: insufficient storage");
                Self::InsufficientStorage
            }
            StoreError::CollectionLimit(reason) => {
                tracing::error!(%reason, "new collection refused");
                Self::CollectionLimit
            }
            StoreError::Engine(reason) => {
                tracing::error!(%reason, "store engine error");
                Self::StoreUnavailable
            }
            StoreError::Internal(reason) | StoreError::Layout(reason) => {
                tracing::error!(%reason, "store internal error");
                Self::Internal
            }
            // Alerted where it was found.
            StoreError::IsolationBreach(_) => Self::IsolationBreach,
            StoreError::Quarantined(_) => Self::Quarantined,
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(err: EmbedError) -> Self {
        match err {
            EmbedError::Overloaded => Self::Overloaded,
            EmbedError::OwnerBusy => Self::RateLimited {
                limit: "embedding_queue_per_user",
                retry_after_secs: 1,
            },
            other => {
                tracing::error!(error = %other, "embedding failed");
                Self::EmbedderUnavailable
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => Self::BadRequest {
                code: "invalid_json",
                message: format!("body is not valid JSON: {}", e.body_text()),
            },
            JsonRejection::JsonDataError(e) => Self::validation(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge
            }
            other => Self::BadRequest {
                code: "invalid_body",
                message: other.body_text(),
            },
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest {
            code: "invalid_path",
            message: rejection.body_text(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest {
            code: "invalid_query",
            message: rejection.body_text(),
        }
    }
}

impl ApiError {
    /// A lockout with `remaining` left of its cool-down.
    pub fn locked_out(remaining: std::time::Duration) -> Self {
        Self::LockedOut {
            retry_after_secs: whole_secs(remaining),
        }
    }
}

/// Seconds, rounded up (at least 1): what `Retry-After` carries.
fn whole_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl From<crate::limits::Limited> for ApiError {
    fn from(limited: crate::limits::Limited) -> Self {
        use crate::limits::Limited;
        match limited {
            Limited::InFlight => Self::RateLimited {
                limit: "max_in_flight_per_user",
                retry_after_secs: 1,
            },
            Limited::Rate(wait) => Self::RateLimited {
                limit: "user_requests_per_second",
                retry_after_secs: whole_secs(wait),
            },
            Limited::Overloaded => Self::Overloaded,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Denied(Denied::TokenRevoked) => Self::TokenRevoked,
            Refusal::Denied(Denied::TenantUnknown) => Self::TenantUnknown,
            Refusal::Denied(Denied::TenantDisabled) => Self::TenantDisabled,
            Refusal::NotReady => Self::StoreUnavailable,
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(err: AccessError) -> Self {
        tracing::error!(error = %err, "access log unavailable");
        Self::StoreUnavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each kind stands in [`ApiError::catalogue`]: no wildcard, so a
    /// new kind does not compile until it has a place.
    fn place(e: &ApiError) -> usize {
        match e {
            ApiError::Unauthorized => 0,
            ApiError::TokenRevoked => 1,
            ApiError::TenantUnknown => 2,
            ApiError::TenantDisabled => 3,
            ApiError::RateLimited { .. } => 4,
            ApiError::QuotaExceeded { .. } => 5,
            ApiError::LockedOut { .. } => 6,
            ApiError::BadRequest { .. } => 7,
            ApiError::Validation(_) => 8,
            ApiError::PayloadTooLarge => 9,
            ApiError::UnsupportedMediaType => 10,
            ApiError::IdempotencyKeyReused => 11,
            ApiError::IdempotencyConflict => 12,
            ApiError::MinVersionLower { .. } => 13,
            ApiError::PreconditionFailed { .. } => 14,
            ApiError::UpdateConflict => 15,
            ApiError::NotFound => 16,
            ApiError::NoRoute => 17,
            ApiError::MethodNotAllowed => 18,
            ApiError::Overloaded => 19,
            ApiError::Timeout => 20,
            ApiError::StoreUnavailable => 21,
            ApiError::InsufficientStorage => 22,
            ApiError::CollectionLimit => 23,
            ApiError::EmbedderUnavailable => 24,
            ApiError::IsolationBreach => 25,
            ApiError::Quarantined => 26,
            ApiError::CanaryBreach => 27,
            ApiError::Internal => 28,
        }
    }

    #[test]
    fn the_catalogue_holds_every_kind_of_error() {
        let catalogue = ApiError::catalogue();
        for (i, e) in catalogue.iter().take(29).enumerate() {
            assert_eq!(place(e), i, "{e:?} is out of place in the catalogue");
        }
        assert!(catalogue[29..].iter().all(|e| place(e) == 7));
    }
}
