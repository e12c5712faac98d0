//! The admin API under `/admin/v1`: revocations, minimum token versions,
//! tenant states and a user's counts. It exists only when an admin key is
//! configured, and only that key opens it (`Authorization: Bearer <key>`):
//! no user token can, since user tokens are JWTs checked by the verifier and
//! the key is compared as a whole. Users are named by tenant and subject in
//! the body (never in the path, which request logs show); answers carry
//! hashed tags and counts, never memory text. Every call is audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::Json as JsonBody;
use super::openapi::AdminErrors;
use crate::access::{Rule, now_ms};
use crate::audit;
use crate::auth::{bearer, client_locked, client_rejected, client_tag};
use crate::error::ApiError;
use crate::owner::{OwnerHash, TenantHash};
use crate::secret::Secret;

/// The admin API's routes, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(revoke))
        .routes(routes!(min_version))
        .routes(routes!(status))
        .routes(routes!(disable))
        .routes(routes!(enable))
        .merge(super::admin_checks::router())
}

/// The admin key, when the admin API is on.
#[derive(Clone)]
pub struct AdminKey(pub Option<Arc<Secret>>);

impl FromRef<AppState> for AdminKey {
    fn from_ref(state: &AppState) -> Self {
        state.admin_key.clone()
    }
}

/// Proof that the request carries the admin key, with the client's tag.
pub struct Admin {
    /// The keyed tag of the admin client's address.
    pub client: String,
}

impl Admin {
    /// Notes `action` in `owner`'s access log: a user sees every admin
    /// action about them.
    pub async fn noted(&self, state: &AppState, owner: &OwnerHash, action: &str) {
        let entry = crate::trail::Entry {
            at: 0,
            action: action.to_owned(),
            via: "admin".into(),
            token: "admin".into(),
            client: self.client.clone(),
            memories: 0,
        };
        state.trail.note(owner, entry).await;
    }
}

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    AdminKey: FromRef<S>,
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AdminKey(key) = AdminKey::from_ref(state);
        let Some(key) = key else {
            return Err(ApiError::NoRoute);
        };
        let presented = bearer(parts).ok();
        let app = AppState::from_ref(state);
        if presented.is_some_and(|token| bool::from(token.as_bytes().ct_eq(key.expose()))) {
            return Ok(Admin {
                client: client_tag(parts, &app.auth),
            });
        }
        // As with user tokens, only a failed attempt meets the lockout.
        client_locked(parts, &app.auth)?;
        app.metrics.auth_failed("admin_key");
        audit::auth_failed("admin_key", &client_tag(parts, &app.auth));
        client_rejected(parts, &app.auth);
        Err(ApiError::Unauthorized)
    }
}

/// A user named by tenant and subject.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UserRef {
    /// The tenant claim of the user's tokens.
    #[schema(schema_with = super::openapi::identity_schema)]
    pub(super) tenant: String,
    /// The `sub` claim of the user's tokens.
    #[schema(schema_with = super::openapi::identity_schema)]
    pub(super) sub: String,
}

/// A tenant by name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TenantRef {
    /// The tenant claim value.
    #[schema(schema_with = super::openapi::identity_schema)]
    tenant: String,
}

/// A user and the lowest token version (`ver` claim) still accepted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MinVersion {
    /// The tenant claim of the user's tokens.
    #[schema(schema_with = super::openapi::identity_schema)]
    tenant: String,
    /// The `sub` claim of the user's tokens.
    #[schema(schema_with = super::openapi::identity_schema)]
    sub: String,
    /// Tokens whose `ver` is below this are refused.
    min_version: u64,
}

/// A user's rule as answered.
#[derive(Debug, Serialize, ToSchema)]
struct UserAnswer {
    /// The user's hashed tag (as in logs and the audit trail).
    owner: String,
    /// Tokens issued at or before this time (ms since the epoch) are refused.
    revoked_before_ms: u64,
    /// Tokens with a lower `ver` are refused.
    min_version: u64,
}

/// A user's rule, memory count, tenant state and request limits.
#[derive(Debug, Serialize, ToSchema)]
struct StatusAnswer {
    /// The user's hashed tag.
    owner: String,
    /// Memories the user holds.
    memories: usize,
    /// See [`UserAnswer`].
    revoked_before_ms: u64,
    /// See [`UserAnswer`].
    min_version: u64,
    tenant: TenantStatus,
    limits: LimitsAnswer,
}

/// The user's tenant as the access rules see it.
#[derive(Debug, Serialize, ToSchema)]
struct TenantStatus {
    /// The tenant's hashed tag.
    tag: String,
    /// Whether a tenant registry is configured.
    registry: bool,
    /// The tenant's latest state, if an admin ever changed it.
    enabled: Option<bool>,
}

/// The per-request limits in force.
#[derive(Debug, Serialize, ToSchema)]
struct LimitsAnswer {
    max_items_per_request: usize,
    max_text_bytes: usize,
    max_metadata_bytes: usize,
    max_body_bytes: usize,
}

/// A tenant's new state.
#[derive(Debug, Serialize, ToSchema)]
struct TenantAnswer {
    /// The tenant's hashed tag.
    tenant: String,
    /// Whether its users are let in.
    enabled: bool,
}

fn identity(value: &str, what: &str) -> Result<(), ApiError> {
    if !crate::auth::is_identity(value) {
        return Err(ApiError::validation(format!(
            "`{what}` must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

pub(super) fn owner_of(state: &AppState, user: &UserRef) -> Result<OwnerHash, ApiError> {
    identity(&user.tenant, "tenant")?;
    identity(&user.sub, "sub")?;
    Ok(OwnerHash::derive(
        &state.auth.server_secret,
        &user.tenant,
        &user.sub,
    ))
}

fn tenant_of(state: &AppState, tenant: &str) -> Result<TenantHash, ApiError> {
    identity(tenant, "tenant")?;
    Ok(state.auth.access.tenant_hash(tenant))
}

fn answer(state: &AppState, owner: &OwnerHash) -> UserAnswer {
    let rule = state.auth.access.user(owner);
    UserAnswer {
        owner: owner.log_tag(),
        revoked_before_ms: rule.revoked_before_ms,
        min_version: rule.min_version,
    }
}

/// Audits the call's outcome and passes the result on.
pub(super) fn audited<T>(
    action: &'static str,
    subject: &str,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    audit::admin_call(
        action,
        subject,
        if result.is_ok() { "ok" } else { "failed" },
    );
    result
}

/// Revoke every token of a user issued until now.
#[utoipa::path(
    post,
    path = "/admin/v1/users/revoke",
    tag = "admin",
    request_body = UserRef,
    responses((status = 200, description = "The user's rule now", body = UserAnswer), AdminErrors),
    security(("admin_key" = [])),
)]
async fn revoke(
    admin: Admin,
    State(state): State<AppState>,
    JsonBody(user): JsonBody<UserRef>,
) -> Result<Json<UserAnswer>, ApiError> {
    let owner = owner_of(&state, &user)?;
    let answer = record_user(&state, &owner, now_ms(), 0, "revoke", "revocation").await?;
    admin.noted(&state, &owner, "admin:revoke").await;
    Ok(answer)
}

/// Refuse a user's tokens below a version.
#[utoipa::path(
    post,
    path = "/admin/v1/users/min-version",
    tag = "admin",
    request_body = MinVersion,
    responses((status = 200, description = "The user's rule now", body = UserAnswer), AdminErrors),
    security(("admin_key" = [])),
)]
async fn min_version(
    admin: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<MinVersion>,
) -> Result<Json<UserAnswer>, ApiError> {
    let user = UserRef {
        tenant: body.tenant,
        sub: body.sub,
    };
    let owner = owner_of(&state, &user)?;
    // The minimum only rises; a lower one would be stored and then do
    // nothing, so it is refused instead of answered with 200.
    let held = state.auth.access.user(&owner).min_version;
    if body.min_version < held {
        return audited(
            "min_version",
            &owner.log_tag(),
            Err(ApiError::MinVersionLower { held }),
        );
    }
    let answer = record_user(
        &state,
        &owner,
        0,
        body.min_version,
        "min_version",
        "min_version",
    )
    .await?;
    admin.noted(&state, &owner, "admin:min_version").await;
    Ok(answer)
}

/// Stores a user rule (a cut-off, a minimum version, or both), then counts,
/// audits and answers the rule now held.
async fn record_user(
    state: &AppState,
    owner: &OwnerHash,
    revoked_before_ms: u64,
    min_version: u64,
    action: &'static str,
    kind: &'static str,
) -> Result<Json<UserAnswer>, ApiError> {
    let result = async {
        state
            .auth
            .access
            .record(Rule::User {
                owner: owner.to_hex(),
                revoked_before_ms,
                min_version,
            })
            .await?;
        let answer = answer(state, owner);
        state.metrics.admin_change(kind);
        audit::revoked(owner, answer.revoked_before_ms, answer.min_version);
        Ok(Json(answer))
    }
    .await;
    audited(action, &owner.log_tag(), result)
}

/// A user's rule and counts (no memory text).
#[utoipa::path(
    post,
    path = "/admin/v1/users/status",
    tag = "admin",
    request_body = UserRef,
    responses((status = 200, description = "The user's state", body = StatusAnswer), AdminErrors),
    security(("admin_key" = [])),
)]
async fn status(
    admin: Admin,
    State(state): State<AppState>,
    JsonBody(user): JsonBody<UserRef>,
) -> Result<Json<StatusAnswer>, ApiError> {
    let owner = owner_of(&state, &user)?;
    let tenant = tenant_of(&state, &user.tenant)?;
    let result = async {
        let memories = state.store.count(&owner).await?;
        let rule = answer(&state, &owner);
        let access = &state.auth.access;
        let limits = &state.limits;
        Ok(Json(StatusAnswer {
            owner: rule.owner,
            memories,
            revoked_before_ms: rule.revoked_before_ms,
            min_version: rule.min_version,
            tenant: TenantStatus {
                tag: tenant.log_tag(),
                registry: access.registry(),
                enabled: access.tenant_enabled(&tenant),
            },
            limits: LimitsAnswer {
                max_items_per_request: limits.max_items,
                max_text_bytes: limits.max_text_bytes,
                max_metadata_bytes: limits.max_metadata_bytes,
                max_body_bytes: limits.max_body_bytes,
            },
        }))
    }
    .await;
    if result.is_ok() {
        admin.noted(&state, &owner, "admin:status").await;
    }
    audited("status", &owner.log_tag(), result)
}

async fn set_tenant(
    state: &AppState,
    tenant: &str,
    enabled: bool,
) -> Result<Json<TenantAnswer>, ApiError> {
    let hash = tenant_of(state, tenant)?;
    let action = if enabled {
        "tenant_enable"
    } else {
        "tenant_disable"
    };
    let result = async {
        state
            .auth
            .access
            .record(Rule::Tenant {
                tenant: hash.to_hex(),
                enabled,
            })
            .await?;
        state.metrics.admin_change(if enabled {
            "tenant_enabled"
        } else {
            "tenant_disabled"
        });
        audit::tenant_changed(&hash, enabled);
        // The state held now, not the one asked for: they differ only if a
        // later change (another replica's) won, and then the answer says so.
        let held = state.auth.access.tenant_enabled(&hash).unwrap_or(enabled);
        Ok(Json(TenantAnswer {
            tenant: hash.log_tag(),
            enabled: held,
        }))
    }
    .await;
    audited(action, &hash.log_tag(), result)
}

/// Disable a tenant: its users are refused (403 `tenant_disabled`).
#[utoipa::path(
    post,
    path = "/admin/v1/tenants/disable",
    tag = "admin",
    request_body = TenantRef,
    responses((status = 200, description = "The tenant's state now", body = TenantAnswer), AdminErrors),
    security(("admin_key" = [])),
)]
async fn disable(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TenantRef>,
) -> Result<Json<TenantAnswer>, ApiError> {
    set_tenant(&state, &body.tenant, false).await
}

/// Enable a tenant again.
#[utoipa::path(
    post,
    path = "/admin/v1/tenants/enable",
    tag = "admin",
    request_body = TenantRef,
    responses((status = 200, description = "The tenant's state now", body = TenantAnswer), AdminErrors),
    security(("admin_key" = [])),
)]
async fn enable(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TenantRef>,
) -> Result<Json<TenantAnswer>, ApiError> {
    set_tenant(&state, &body.tenant, true).await
}
