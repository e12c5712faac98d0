//! The HTTP API: routes, request limits and the application state.
//!
//! Each submodule owns a `router()`, declared with its OpenAPI operations
//! ([`openapi`]); [`router`] merges them, adds `/mcp` ([`mcp`]), and wraps
//! them in the cross-cutting layers: a body size cap and the request budget
//! ([`budget`]): a cap on requests in flight (shed with 503 and
//! `Retry-After`, never queued without bound), a per-request timeout, and a
//! time limit on a streamed body, which holds its places until it ends.

mod access_log;
mod admin;
mod admin_checks;
mod budget;
mod embeddings;
mod extract;
mod filter;
mod health;
mod idempotency;
pub mod mcp;
mod memories;
pub mod openapi;
mod quota;
pub mod recall;
pub mod signed;
pub mod update;
mod validate;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::sync::Semaphore;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

pub use access_log::noted;
pub use admin::AdminKey;
pub use health::Readiness;
pub use quota::Quotas;
pub use validate::is_metadata_key;

use crate::auth::AuthState;
use crate::embed::Embedder;
use crate::error::ApiError;
use crate::guarded::GuardedStore;
use crate::metrics::Metrics;
use crate::settings::Limits;

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState {
    /// Token verification and owner hashing.
    pub auth: AuthState,
    /// Owner-scoped, guarded storage.
    pub store: GuardedStore,
    /// The embedding worker.
    pub embedder: Embedder,
    /// Request limits.
    pub limits: Arc<Limits>,
    /// Process counters.
    pub metrics: Arc<Metrics>,
    /// Permits for requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// The admin API's key (`None`: no admin API).
    pub admin_key: AdminKey,
    /// The token `/metrics` asks for (`None`: open).
    pub metrics_token: Option<Arc<crate::secret::Secret>>,
    /// The last readiness probe, reused for a second.
    pub readiness: Arc<Readiness>,
    /// Per-user storage quotas.
    pub quotas: Arc<Quotas>,
    /// Keyed writes in progress in this process.
    pub keyed: Arc<idempotency::KeyedWrites>,
    /// Expiry and duplicate rules.
    pub memory: Arc<crate::settings::MemoryPolicy>,
    /// The sweep that deletes expired memories.
    pub expiry: Arc<crate::expiry::Sweeper>,
    /// One update per user at a time in this process.
    pub updates: Arc<crate::locks::KeyedLocks<crate::owner::OwnerHash>>,
    /// The keyword side of search.
    pub keywords: Arc<crate::keyword::Keywords>,
    /// Every user's access log.
    pub trail: Arc<crate::trail::Trail>,
    /// Signs erase receipts and scope statements.
    pub signer: Arc<crate::receipt::Signer>,
    /// The breach policy and quarantines.
    pub breaches: Arc<crate::breach::Breaches>,
    /// The live canary's verdict (readiness fails on a breach).
    pub canary: Arc<crate::canary::Verdict>,
}

impl FromRef<AppState> for AuthState {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// The routes that need a request budget (in flight, timeout), documented.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(memories::router())
        .merge(access_log::router())
        .merge(embeddings::router())
        .merge(admin::router())
}

/// The routes outside the request budget: health, metrics, the document.
fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::router())
        .merge(openapi::router())
        .merge(signed::router())
}

/// Every documented route (all but `/mcp`, a service documented by hand).
fn routes() -> OpenApiRouter<AppState> {
    open_routes().merge(api_routes())
}

/// The complete router with its layers.
pub fn router(state: AppState) -> Router {
    let limits = state.limits.clone();
    let (api, _) = api_routes().split_for_parts();
    let api = api
        .merge(mcp::router(state.clone()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            signed::scope_statement,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            budget::bounded,
        ));
    let (open, _) = open_routes().split_for_parts();
    Router::new()
        .merge(open)
        .merge(api)
        // A route layer: it runs once a route matched, so the route's
        // template is known (requests matching no route are not observed).
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // A 5xx is logged where its cause is (a store error, a bug); one
        // line per request here would let a flood of 503s flood the log.
        .layer(
            TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .with_state(state)
}

/// Counts each answered request and its latency by route template.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
