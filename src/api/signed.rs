//! What the server signs: the public keys at the well-known path, and the
//! scope statement a request asks for with `Cordon-Scope: signed`
//! ([`crate::scope`], signed by [`crate::receipt`]).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// The request header that asks for a statement, and its one value.
pub const SCOPE_REQUEST: &str = "cordon-scope";
/// The response header that carries it.
pub const SCOPE_STATEMENT: &str = "cordon-scope-statement";

/// Routes of this module, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(signing_keys))
}

/// The public keys that verify erase receipts and scope statements (JWKS).
#[utoipa::path(
    get,
    path = "/.well-known/cordon-signing-keys.json",
    tag = "health",
    responses((status = 200, description = "A JWKS of Ed25519 keys, the current one first", body = Object)),
)]
async fn signing_keys(State(state): State<AppState>) -> Json<Value> {
    Json(state.signer.jwks())
}

/// Runs the request inside a scope when it asks for a statement, and signs
/// what its reads noted into the response's statement header. A request
/// that failed, or noted no access (an export, whose reads follow the
/// headers), gets none.
pub async fn scope_statement(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let asked = request
        .headers()
        .get(SCOPE_REQUEST)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"signed"));
    if !asked {
        return next.run(request).await;
    }
    let route = format!("{} {}", request.method(), request.uri().path());
    let (mut response, scope) = crate::scope::observed(next.run(request)).await;
    let Some(owner) = scope.owner.clone() else {
        return response;
    };
    if !response.status().is_success() {
        return response;
    }
    let statement = state.signer.sign(json!({
        "typ": "cordon.scope",
        "owner": owner,
        "route": route,
        // By tag, as quarantines and alerts name them: a name is a
        // prefix of its users' owner hashes.
        "collections": scope.collections.iter().map(|c| state.breaches.tag(c)).collect::<Vec<_>>(),
        "filters": scope.filters,
        "points_read": scope.points_read,
        "points_dropped": scope.points_dropped,
        "returned": scope.returned,
        "breach_policy": state.breaches.policy().name(),
    }));
    if let Ok(value) = HeaderValue::from_str(&statement) {
        response.headers_mut().insert(SCOPE_STATEMENT, value);
    }
    response
}
