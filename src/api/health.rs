//! Liveness, readiness and metrics; no authentication, no user data.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::ErrorBody;
use crate::error::ApiError;

/// Routes of this module, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
struct Status {
    /// `ok` (alive) or `ready`.
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Status)),
)]
async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: storage reachable and the access rules read.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 500, description = "A bug; details are in the server's log only", body = ErrorBody),
        (status = 503, description = "Not ready (`store_unavailable`)", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    state.store.ready().await?;
    // Not ready until the access rules are read: until then every token is
    // refused (see `Access::check`).
    if !state.auth.access.loaded() {
        return Err(ApiError::StoreUnavailable);
    }
    Ok(Json(Status { status: "ready" }))
}

/// Prometheus metrics (text format); no label carries a user.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "The Prometheus text exposition", body = String, content_type = "text/plain")),
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(crate::metrics::Gauges {
            embedding_queue_texts: state.embedder.queued_texts(),
            open_shards: state.store.open_shards(),
            embedding: state.embedder.stats(),
        }),
    )
}
