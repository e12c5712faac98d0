//! The [`Caller`] extractor: the only way a handler learns who is calling.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{AuthError, Verifier};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::owner::OwnerHash;
use crate::secret::Secret;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's keyed identity; every store call takes it.
    pub owner: OwnerHash,
}

/// What the extractor needs from the application state.
#[derive(Clone)]
pub struct AuthState {
    /// Verifies bearer tokens.
    pub verifier: Arc<Verifier>,
    /// The HMAC key behind owner hashes.
    pub server_secret: Arc<Secret>,
    /// Counts refused tokens.
    pub metrics: Arc<Metrics>,
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = AuthState::from_ref(state);
        let result = bearer(parts).and_then(|token| auth.verifier.verify(token));
        match result {
            Ok(principal) => {
                let owner =
                    OwnerHash::derive(&auth.server_secret, &principal.tenant, &principal.subject);
                Ok(Caller { owner })
            }
            Err(reason) => {
                auth.metrics.auth_failed();
                tracing::info!(%reason, "authentication failed");
                Err(ApiError::from(reason))
            }
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token.trim())
}
