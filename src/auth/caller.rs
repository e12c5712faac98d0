//! The [`Caller`] extractor: the only way a handler learns who is calling.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{AuthError, Verifier};
use crate::access::lockout::{Lockout, Principal};
use crate::access::{Access, Denied, Refusal};
use crate::audit;
use crate::error::ApiError;
use crate::limits::{InFlight, UserLimits};
use crate::metrics::Metrics;
use crate::owner::{OwnerHash, TenantHash};
use crate::secret::Secret;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's keyed identity; every store call takes it.
    pub owner: OwnerHash,
    /// The caller's slot among their requests in flight, held until the
    /// handler is done with the caller.
    _in_flight: Arc<InFlight>,
}

/// What the extractor needs from the application state.
#[derive(Clone)]
pub struct AuthState {
    /// Verifies bearer tokens.
    pub verifier: Arc<Verifier>,
    /// The HMAC key behind owner hashes.
    pub server_secret: Arc<Secret>,
    /// Revocations and the tenant registry.
    pub access: Arc<Access>,
    /// Rejection counts and lockouts.
    pub lockout: Arc<Lockout>,
    /// Per-user in-flight caps and request rates.
    pub limits: Arc<UserLimits>,
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
        let principal = match bearer(parts).and_then(|token| auth.verifier.verify(token)) {
            Ok(principal) => principal,
            Err(reason) => {
                client_locked(parts, &auth)?;
                auth.metrics.auth_failed(reason.code());
                tracing::info!(%reason, "authentication failed");
                audit::auth_failed(reason.code(), &client_tag(parts, &auth.server_secret));
                client_rejected(parts, &auth);
                return Err(ApiError::from(reason));
            }
        };
        let owner = OwnerHash::derive(&auth.server_secret, &principal.tenant, &principal.subject);
        if let Some(remaining) = auth.lockout.locked(&Principal::Owner(owner.clone())) {
            audit::locked_out("owner", &owner.log_tag());
            auth.metrics.limit_hit("locked_out");
            return Err(ApiError::locked_out(remaining));
        }
        if let Err(refusal) = auth
            .access
            .check(&principal.tenant, &owner, principal.facts)
        {
            // Counted against the address, not the owner: replaying a
            // revoked token must not lock the real user out.
            client_locked(parts, &auth)?;
            client_rejected(parts, &auth);
            let reason = match refusal {
                Refusal::Denied(Denied::TokenRevoked) => "token_revoked",
                Refusal::Denied(Denied::TenantUnknown) => "tenant_unknown",
                Refusal::Denied(Denied::TenantDisabled) => "tenant_disabled",
                Refusal::NotReady => "rules_not_loaded",
            };
            auth.metrics.auth_failed(reason);
            let tenant = TenantHash::derive(&auth.server_secret, &principal.tenant);
            audit::access_refused(reason, &owner, &tenant);
            return Err(ApiError::from(refusal));
        }
        let in_flight = match auth.limits.admit(&owner).await {
            Ok(slot) => slot,
            Err(limited) => {
                let error = ApiError::from(limited);
                if let ApiError::RateLimited { limit, .. } = &error {
                    auth.metrics.limit_hit(limit);
                    audit::limit_hit(limit, &owner);
                }
                return Err(error);
            }
        };
        Ok(Caller {
            owner,
            _in_flight: Arc::new(in_flight),
        })
    }
}

/// Refuses a request from a locked-out client address.
pub fn client_locked(parts: &Parts, auth: &AuthState) -> Result<(), ApiError> {
    let Some(ip) = client_ip(parts) else {
        return Ok(());
    };
    match auth.lockout.locked(&Principal::Client(ip)) {
        Some(remaining) => {
            audit::locked_out("client", &audit::client_tag(&auth.server_secret, ip));
            auth.metrics.limit_hit("locked_out");
            Err(ApiError::locked_out(remaining))
        }
        None => Ok(()),
    }
}

/// Counts a rejected request against the client's address.
pub fn client_rejected(parts: &Parts, auth: &AuthState) {
    if let Some(ip) = client_ip(parts)
        && let Some(cooldown) = auth.lockout.rejected(Principal::Client(ip))
    {
        auth.metrics.lockout("client");
        audit::lockout_alert(
            "client",
            &audit::client_tag(&auth.server_secret, ip),
            cooldown.as_secs(),
        );
    }
}

/// Counts a rejected request (another user's memory id) against `owner`.
pub fn owner_rejected(owner: &OwnerHash, auth: &AuthState) {
    if let Some(cooldown) = auth.lockout.rejected(Principal::Owner(owner.clone())) {
        auth.metrics.lockout("owner");
        audit::lockout_alert("owner", &owner.log_tag(), cooldown.as_secs());
    }
}

fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

/// The keyed tag of the client's address ("unknown" without one).
pub fn client_tag(parts: &Parts, secret: &Secret) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "unknown".into(),
            |info| audit::client_tag(secret, info.0.ip()),
        )
}

/// The bearer token of a request.
pub fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts.headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token.trim())
}
