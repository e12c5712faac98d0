//! The admin API's isolation checks: a user's access log, and the
//! collections quarantined by the breach policy ([`crate::breach`]).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access_log::{LogParams, log_page};
use super::admin::{Admin, UserRef, audited, owner_of};
use super::extract::Json as JsonBody;
use super::openapi::AdminErrors;
use crate::access::Rule;
use crate::error::ApiError;
use crate::trail::LogPage;

/// Routes of this module, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(user_log))
        .routes(routes!(quarantines))
        .routes(routes!(clear))
}

/// A user, and which entries of their log to read.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LogRequest {
    /// The tenant claim of the user's tokens.
    #[schema(schema_with = super::openapi::identity_schema)]
    tenant: String,
    /// The `sub` claim of the user's tokens.
    #[schema(schema_with = super::openapi::identity_schema)]
    sub: String,
    /// Entries per page (1 to 100, default 50).
    limit: Option<i64>,
    /// The `next` of the previous page.
    before: Option<u64>,
    /// Only entries at or after this time, Unix milliseconds.
    since: Option<u64>,
    /// Only entries before this time, Unix milliseconds.
    until: Option<u64>,
}

/// A user's access log, newest first (the read is noted in it).
#[utoipa::path(
    post,
    path = "/admin/v1/users/access-log",
    tag = "admin",
    request_body = LogRequest,
    responses((status = 200, description = "One page, newest first", body = LogPage), AdminErrors),
    security(("admin_key" = [])),
)]
async fn user_log(
    admin: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<LogRequest>,
) -> Result<Json<LogPage>, ApiError> {
    let user = UserRef {
        tenant: body.tenant,
        sub: body.sub,
    };
    let owner = owner_of(&state, &user)?;
    let params = LogParams {
        limit: body.limit,
        before: body.before,
        since: body.since,
        until: body.until,
    };
    let page = log_page(&state, &owner, params).await;
    if page.is_ok() {
        admin.noted(&state, &owner, "admin:read_access_log").await;
    }
    audited("read_access_log", &owner.log_tag(), page.map(Json))
}

/// A quarantined collection.
#[derive(Debug, Serialize, ToSchema)]
struct Quarantine {
    /// The collection's tag, as in the `isolation_breach` alert.
    place: String,
    /// When the breach that set it happened, Unix milliseconds.
    since_ms: u64,
}

/// The quarantined collections.
#[derive(Debug, Serialize, ToSchema)]
struct Quarantines {
    /// Every collection whose reads are refused now.
    quarantined: Vec<Quarantine>,
}

/// The collections quarantined after an isolation breach.
#[utoipa::path(
    get,
    path = "/admin/v1/quarantine",
    tag = "admin",
    responses((status = 200, description = "The quarantined collections", body = Quarantines), AdminErrors),
    security(("admin_key" = [])),
)]
async fn quarantines(_: Admin, State(state): State<AppState>) -> Json<Quarantines> {
    let quarantined = state
        .auth
        .access
        .quarantines()
        .into_iter()
        .map(|(place, since_ms)| Quarantine { place, since_ms })
        .collect();
    Json(Quarantines { quarantined })
}

/// A collection by its tag.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PlaceRef {
    /// The tag from the alert or the quarantine list.
    place: String,
}

/// Clears a quarantine: reads of the collection are served again.
#[utoipa::path(
    post,
    path = "/admin/v1/quarantine/clear",
    tag = "admin",
    request_body = PlaceRef,
    responses((status = 200, description = "Cleared; the quarantines left", body = Quarantines), AdminErrors),
    security(("admin_key" = [])),
)]
async fn clear(
    admin: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<PlaceRef>,
) -> Result<Json<Quarantines>, ApiError> {
    let access = &state.auth.access;
    let result = async {
        if !access.quarantined(&body.place) {
            return Err(ApiError::validation(
                "no collection with this tag is quarantined",
            ));
        }
        access
            .record(Rule::Quarantine {
                place: body.place.clone(),
                quarantined: false,
                since_ms: 0,
            })
            .await?;
        crate::audit::quarantine_cleared(&body.place);
        state.metrics.admin_change("quarantine_cleared");
        Ok(())
    }
    .await;
    audited("clear_quarantine", &body.place, result)?;
    Ok(quarantines(admin, State(state)).await)
}
