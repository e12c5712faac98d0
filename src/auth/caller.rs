//! The [`Caller`] extractor: the only way a handler learns who is calling.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::client::TrustedProxies;
use super::{AuthError, Verifier};
use crate::access::lockout::{Lockout, Principal};
use crate::access::{Access, Denied, Refusal, TokenFacts, now_ms};
use crate::audit;
use crate::error::ApiError;
use crate::limits::{HeldSlots, InFlight, UserLimits};
use crate::listener::Peer;
use crate::metrics::Metrics;
use crate::owner::{OwnerHash, TenantHash};
use crate::secret::Secret;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's keyed identity; every store call takes it.
    pub owner: OwnerHash,
    /// What the token's standing is checked against again, for a response
    /// that outlives the check at its start (an export).
    standing: Arc<Standing>,
    /// The caller's slot among their requests in flight, held until the
    /// handler and the response body are done with the caller.
    _in_flight: Arc<InFlight>,
    /// The token as the access log names it: its `jti`, or a keyed tag.
    token: Arc<str>,
    /// The client address tag.
    client: Arc<str>,
}

impl Caller {
    /// An access-log entry of this caller: `action` through `via`,
    /// touching `memories` (its time is set when it is noted).
    pub fn entry(&self, action: &str, via: &str, memories: usize) -> crate::trail::Entry {
        crate::trail::Entry {
            at: 0,
            action: action.to_owned(),
            via: via.to_owned(),
            token: self.token.to_string(),
            client: self.client.to_string(),
            memories,
        }
    }
}

/// A caller that the process itself makes (the canary), put into a
/// request's extensions in process: no client can set one.
#[derive(Debug, Clone)]
pub struct InternalCaller {
    /// The caller's owner hash.
    pub owner: OwnerHash,
    /// What the access log names it by.
    pub name: &'static str,
}

/// The claims behind a caller that the access rules and expiry look at.
#[derive(Debug)]
struct Standing {
    tenant: String,
    facts: TokenFacts,
    expires_at_ms: u64,
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
    /// Which peers may name the client address in a header.
    pub proxies: Arc<TrustedProxies>,
    /// Counts refused tokens.
    pub metrics: Arc<Metrics>,
}

impl AuthState {
    /// Refuses a caller whose token no longer stands: revoked, its tenant
    /// disabled, or expired since the request began. For responses that
    /// run long, between their steps.
    pub fn still_stands(&self, caller: &Caller) -> Result<(), ApiError> {
        let standing = &caller.standing;
        if now_ms() > standing.expires_at_ms {
            return Err(ApiError::Unauthorized);
        }
        self.access
            .check(&standing.tenant, &caller.owner, standing.facts)
            .map_err(ApiError::from)
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = AuthState::from_ref(state);
        if let Some(internal) = parts.extensions.get::<InternalCaller>().cloned() {
            return internal_caller(parts, &auth, internal).await;
        }
        let principal = match bearer(parts).and_then(|token| auth.verifier.verify(token)) {
            Ok(principal) => principal,
            Err(reason) => {
                // A token whose signature checked out (expired, say) is no
                // guess: it always gets its 401, so that its client
                // refreshes it, and counts towards no lockout.
                if !reason.signature_checked() {
                    client_locked(parts, &auth)?;
                    client_rejected(parts, &auth);
                }
                auth.metrics.auth_failed(reason.code());
                tracing::info!(%reason, "authentication failed");
                audit::auth_failed(reason.code(), &client_tag(parts, &auth));
                return Err(ApiError::from(reason));
            }
        };
        let owner = OwnerHash::derive(&auth.server_secret, &principal.tenant, &principal.subject);
        // Before the owner's lockout: a revoked token gets its 401 (and a
        // disabled tenant its 403) even while its owner is locked out.
        if let Err(refusal) = auth
            .access
            .check(&principal.tenant, &owner, principal.facts)
        {
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
        if let Some(locked) = auth.lockout.locked(&Principal::Owner(owner.clone())) {
            if locked.report {
                audit::locked_out("owner", &owner.log_tag());
            }
            auth.metrics.limit_hit("locked_out");
            return Err(ApiError::locked_out(locked.remaining));
        }
        let held = parts.extensions.get::<HeldSlots>().cloned();
        let in_flight = match auth.limits.admit(&owner, held.as_ref()).await {
            Ok(slot) => Arc::new(slot),
            Err(limited) => {
                let error = ApiError::from(limited);
                if let ApiError::RateLimited { limit, .. } = &error {
                    auth.metrics.limit_hit(limit);
                    audit::limit_hit(limit, &owner);
                }
                return Err(error);
            }
        };
        // The response may outlive the handler (a streamed body): the
        // request's middleware hands the slot on to the body.
        if let Some(held) = &held {
            held.keep(in_flight.clone());
        }
        let token: Arc<str> = match &principal.jti {
            Some(jti) => jti.as_str().into(),
            None => token_tag(&auth.server_secret, bearer(parts).unwrap_or_default()).into(),
        };
        Ok(Caller {
            owner,
            standing: Arc::new(Standing {
                tenant: principal.tenant,
                facts: principal.facts,
                expires_at_ms: principal.expires_at_ms,
            }),
            _in_flight: in_flight,
            token,
            client: client_tag(parts, &auth).into(),
        })
    }
}

/// The caller of an in-process request: no token, no rules (an internal
/// caller is no user an admin could revoke), but the per-user limits apply.
async fn internal_caller(
    parts: &Parts,
    auth: &AuthState,
    internal: InternalCaller,
) -> Result<Caller, ApiError> {
    let held = parts.extensions.get::<HeldSlots>().cloned();
    let in_flight = Arc::new(
        auth.limits
            .admit(&internal.owner, held.as_ref())
            .await
            .map_err(ApiError::from)?,
    );
    if let Some(held) = &held {
        held.keep(in_flight.clone());
    }
    Ok(Caller {
        owner: internal.owner,
        standing: Arc::new(Standing {
            tenant: internal.name.to_owned(),
            facts: TokenFacts::default(),
            expires_at_ms: u64::MAX,
        }),
        _in_flight: in_flight,
        token: internal.name.into(),
        client: "internal".into(),
    })
}

/// A keyed tag of a bearer token without a `jti`, as the access log shows
/// it: the user can match it against their tokens' tags only through the
/// server, and the log holds nothing a token could be rebuilt from.
fn token_tag(secret: &Secret, token: &str) -> String {
    let hash = crate::owner::keyed_in(secret, crate::owner::Domain::Token, &[token.as_bytes()]);
    format!("tag:{}", hex::encode(&hash[..6]))
}

/// Refuses a request from a locked-out client address.
pub fn client_locked(parts: &Parts, auth: &AuthState) -> Result<(), ApiError> {
    let Some(ip) = client_ip(parts, auth) else {
        return Ok(());
    };
    match auth.lockout.locked(&Principal::client(ip)) {
        Some(locked) => {
            if locked.report {
                audit::locked_out("client", &audit::client_tag(&auth.server_secret, ip));
            }
            auth.metrics.limit_hit("locked_out");
            Err(ApiError::locked_out(locked.remaining))
        }
        None => Ok(()),
    }
}

/// Counts a rejected request against the client's address.
pub fn client_rejected(parts: &Parts, auth: &AuthState) {
    if let Some(ip) = client_ip(parts, auth)
        && let Some(cooldown) = auth.lockout.rejected(Principal::client(ip))
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

/// The client's address: the peer's, or the one a trusted proxy names.
fn client_ip(parts: &Parts, auth: &AuthState) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<Peer>>()?.0.0.ip();
    Some(auth.proxies.client_ip(peer, &parts.headers))
}

/// The keyed tag of the client's address ("unknown" without one).
pub fn client_tag(parts: &Parts, auth: &AuthState) -> String {
    client_ip(parts, auth).map_or_else(
        || "unknown".into(),
        |ip| audit::client_tag(&auth.server_secret, ip),
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
