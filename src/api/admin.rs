//! The admin API under `/admin/v1`: revocations, minimum token versions,
//! tenant states and a user's counts. It exists only when an admin key is
//! configured, and only that key opens it (`Authorization: Bearer <key>`):
//! no user token can, since user tokens are JWTs checked by the verifier and
//! the key is compared as a whole. Users are named by tenant and subject in
//! the body (never in the path, which request logs show); answers carry
//! hashed tags and counts, never memory text. Every call is audited.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::AppState;
use super::extract::Json as JsonBody;
use crate::access::{Rule, now_ms};
use crate::audit;
use crate::auth::{bearer, client_locked, client_rejected, client_tag};
use crate::error::ApiError;
use crate::owner::{OwnerHash, TenantHash};
use crate::secret::Secret;

/// The admin API's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/users/revoke", post(revoke))
        .route("/admin/v1/users/min-version", post(min_version))
        .route("/admin/v1/users/status", post(status))
        .route("/admin/v1/tenants/disable", post(disable))
        .route("/admin/v1/tenants/enable", post(enable))
}

/// The admin key, when the admin API is on.
#[derive(Clone)]
pub struct AdminKey(pub Option<Arc<Secret>>);

impl FromRef<AppState> for AdminKey {
    fn from_ref(state: &AppState) -> Self {
        state.admin_key.clone()
    }
}

/// Proof that the request carries the admin key.
pub struct Admin;

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
        if presented.is_some_and(|token| bool::from(token.as_bytes().ct_eq(key.expose()))) {
            return Ok(Admin);
        }
        // As with user tokens, only a failed attempt meets the lockout.
        let app = AppState::from_ref(state);
        client_locked(parts, &app.auth)?;
        app.metrics.auth_failed("admin_key");
        audit::auth_failed("admin_key", &client_tag(parts, &app.auth.server_secret));
        client_rejected(parts, &app.auth);
        Err(ApiError::Unauthorized)
    }
}

/// A user named by tenant and subject.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRef {
    tenant: String,
    sub: String,
}

/// A tenant by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantRef {
    tenant: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MinVersion {
    tenant: String,
    sub: String,
    min_version: u64,
}

/// A user's rule as answered.
#[derive(Debug, Serialize)]
struct UserAnswer {
    owner: String,
    revoked_before_ms: u64,
    min_version: u64,
}

fn identity(value: &str, what: &str) -> Result<(), ApiError> {
    if !crate::auth::is_identity(value) {
        return Err(ApiError::validation(format!(
            "`{what}` must be 1 to 256 bytes without control characters"
        )));
    }
    Ok(())
}

fn owner_of(state: &AppState, user: &UserRef) -> Result<OwnerHash, ApiError> {
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
fn audited<T>(
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

async fn revoke(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(user): JsonBody<UserRef>,
) -> Result<Json<UserAnswer>, ApiError> {
    let owner = owner_of(&state, &user)?;
    record_user(&state, &owner, now_ms(), 0, "revoke", "revocation").await
}

async fn min_version(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<MinVersion>,
) -> Result<Json<UserAnswer>, ApiError> {
    let user = UserRef {
        tenant: body.tenant,
        sub: body.sub,
    };
    let owner = owner_of(&state, &user)?;
    record_user(
        &state,
        &owner,
        0,
        body.min_version,
        "min_version",
        "min_version",
    )
    .await
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

async fn status(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(user): JsonBody<UserRef>,
) -> Result<Json<Value>, ApiError> {
    let owner = owner_of(&state, &user)?;
    let tenant = tenant_of(&state, &user.tenant)?;
    let result = async {
        let memories = state.store.count(&owner).await?;
        let rule = answer(&state, &owner);
        let access = &state.auth.access;
        let limits = &state.limits;
        Ok(Json(json!({
            "owner": rule.owner,
            "memories": memories,
            "revoked_before_ms": rule.revoked_before_ms,
            "min_version": rule.min_version,
            "tenant": {
                "tag": tenant.log_tag(),
                "registry": access.registry(),
                "enabled": access.tenant_enabled(&tenant),
            },
            "limits": {
                "max_items_per_request": limits.max_items,
                "max_text_bytes": limits.max_text_bytes,
                "max_metadata_bytes": limits.max_metadata_bytes,
                "max_body_bytes": limits.max_body_bytes,
            },
        })))
    }
    .await;
    audited("status", &owner.log_tag(), result)
}

async fn set_tenant(
    state: &AppState,
    tenant: &str,
    enabled: bool,
) -> Result<Json<Value>, ApiError> {
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
        Ok(Json(
            json!({ "tenant": hash.log_tag(), "enabled": enabled }),
        ))
    }
    .await;
    audited(action, &hash.log_tag(), result)
}

async fn disable(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TenantRef>,
) -> Result<Json<Value>, ApiError> {
    set_tenant(&state, &body.tenant, false).await
}

async fn enable(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TenantRef>,
) -> Result<Json<Value>, ApiError> {
    set_tenant(&state, &body.tenant, true).await
}
