//! Liveness, readiness and metrics: no user token, no user data.
//!
//! These routes are outside the request budget and open to anyone who can
//! reach the port, so each stays cheap whatever the rate of calls:
//! readiness answers from a probe at most a second old (one probe at a time,
//! the others wait for its answer), and metrics can ask for a bearer token
//! of their own (`CORDON_METRICS_TOKEN`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq as _;
use tokio::time::Instant;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::ErrorBody;
use crate::audit;
use crate::auth::{client_locked, client_rejected, client_tag};
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

/// How long a readiness probe's answer is reused.
const READY_TTL: Duration = Duration::from_secs(1);

/// The last readiness probe and when it ran.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    /// The answer of a probe at most [`READY_TTL`] old, running `probe` when
    /// there is none; callers meanwhile wait for that one probe.
    pub async fn check<F: Future<Output = bool>>(&self, probe: impl FnOnce() -> F) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < READY_TTL
        {
            return ready;
        }
        let ready = probe().await;
        *last = Some((Instant::now(), ready));
        ready
    }
}

/// Readiness: storage reachable and the access rules read (a probe at most
/// a second old).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready (`store_unavailable`, or `canary_breach` when the canary's latest round saw a canary reach the wrong user)", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if state.canary.breached() {
        return Err(ApiError::CanaryBreach);
    }
    let probe = || async {
        match state.store.ready().await {
            Err(e) => {
                tracing::warn!(error = %e, "not ready");
                false
            }
            // Not ready until the access rules are read: until then every
            // token is refused (see `Access::check`).
            Ok(()) => state.auth.access.loaded(),
        }
    };
    if state.readiness.check(probe).await {
        Ok(Json(Status { status: "ready" }))
    } else {
        Err(ApiError::StoreUnavailable)
    }
}

/// Prometheus metrics (text format); no label carries a user. With
/// `CORDON_METRICS_TOKEN` set, only for `Authorization: Bearer <token>`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "The metrics token is configured and missing or wrong (`unauthorized`)", body = ErrorBody),
    ),
    security((), ("metrics_token" = [])),
)]
async fn metrics(State(state): State<AppState>, parts: Parts) -> Response {
    if let Some(token) = &state.metrics_token
        && !presents(&parts.headers, token)
    {
        // A wrong metrics token is a guess, like a wrong admin key.
        if let Err(locked) = client_locked(&parts, &state.auth) {
            return locked.into_response();
        }
        state.metrics.auth_failed("metrics_token");
        audit::auth_failed("metrics_token", &client_tag(&parts, &state.auth));
        client_rejected(&parts, &state.auth);
        return ApiError::Unauthorized.into_response();
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(crate::metrics::Gauges {
            embedding_queue_texts: state.embedder.queued_texts(),
            open_shards: state.store.open_shards(),
            embedding: state.embedder.stats(),
        }),
    )
        .into_response()
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared whole
/// and in constant time.
fn presents(headers: &HeaderMap, token: &Arc<crate::secret::Secret>) -> bool {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, value)| value.trim());
    presented.is_some_and(|value| bool::from(value.as_bytes().ct_eq(token.expose())))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn many_readiness_calls_within_a_second_run_one_probe() {
        let readiness = Arc::new(Readiness::default());
        let probes = Arc::new(AtomicUsize::new(0));
        let calls = (0..50).map(|_| {
            let (readiness, probes) = (readiness.clone(), probes.clone());
            tokio::spawn(async move {
                readiness
                    .check(|| async {
                        probes.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        true
                    })
                    .await
            })
        });
        for call in calls {
            assert!(call.await.expect("joins"));
        }
        assert_eq!(probes.load(Ordering::SeqCst), 1);
    }
}
