//! `/v1/access-log`: the caller's own access log ([`crate::trail`]), and the
//! one helper every handler notes its access through.

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::Query;
use super::openapi::UserErrors;
use super::validate;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::owner::OwnerHash;
use crate::trail::{LogPage, Window};

/// Entries per page when the request does not say.
const DEFAULT_LIMIT: usize = 50;

/// Routes of this module, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read_log))
}

/// Notes an access by `caller` in their log, and the number of memories
/// for a scope statement.
pub async fn noted(state: &AppState, caller: &Caller, action: &str, via: &str, memories: usize) {
    crate::scope::note_returned(caller.owner.log_tag(), memories);
    state
        .trail
        .note(&caller.owner, caller.entry(action, via, memories))
        .await;
}

/// Which entries to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    /// Entries per page (1 to 100, default 50).
    pub(super) limit: Option<i64>,
    /// The `next` of the previous page: entries older than it.
    pub(super) before: Option<u64>,
    /// Only entries at or after this time, Unix milliseconds.
    pub(super) since: Option<u64>,
    /// Only entries before this time, Unix milliseconds.
    pub(super) until: Option<u64>,
}

/// Reads `owner`'s log as `params` asks.
pub async fn log_page(
    state: &AppState,
    owner: &OwnerHash,
    params: LogParams,
) -> Result<LogPage, ApiError> {
    let limit = validate::page_limit(params.limit, DEFAULT_LIMIT, &state.limits)?;
    let window = Window {
        before: params.before,
        since_ms: params.since,
        until_ms: params.until,
        limit,
    };
    Ok(state.trail.page(owner, window).await?)
}

/// The caller's access log, newest first: every read and change of their
/// memories and every admin action about them (never a text or a query).
#[utoipa::path(
    get,
    path = "/v1/access-log",
    tag = "memories",
    params(LogParams),
    responses((status = 200, description = "One page, newest first", body = LogPage), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn read_log(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<LogParams>,
) -> Result<axum::Json<LogPage>, ApiError> {
    Ok(axum::Json(log_page(&state, &caller.owner, params).await?))
}
