//! The OpenAPI 3.1 document, generated from the code, at `GET /openapi.json`.
//!
//! Each API module declares its routes through `utoipa_axum::routes!`, which
//! registers a handler and its `#[utoipa::path]` operation together, so a
//! route and its documentation cannot be added one without the other. This
//! module adds what is not a handler: the document's header, the two
//! security schemes, the error shape every endpoint shares and the MCP
//! endpoint (a service, not a handler).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AdditionalProperties, Object, OneOfBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HttpMethod, InfoBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Schema,
};
use utoipa::{IntoResponses, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// The body of every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's machine-readable code and its explanation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `unauthorized`, `not_found`, `invalid_request`.
    pub code: &'static str,
    /// For a human; may change between versions.
    pub message: String,
}

/// The errors a request with a user token can end with.
pub struct UserErrors;

impl IntoResponses for UserErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            (400, "Malformed JSON, path, query or `Idempotency-Key`"),
            (
                401,
                "No valid bearer token (`unauthorized`), or a revoked one (`token_revoked`)",
            ),
            (403, "The token's tenant is unknown or disabled"),
            (
                404,
                "No such memory for this caller (whether or not it exists for another)",
            ),
            (
                413,
                "Body too large, or a per-user storage quota would be passed",
            ),
            (
                409,
                "Another request with the same `Idempotency-Key` and a different body is being stored (`idempotency_conflict`), or other updates of the memory kept landing first (`update_conflict`)",
            ),
            (415, "The body is not `application/json`"),
            (
                422,
                "Valid JSON that breaks a documented rule; the message names it",
            ),
            (429, "A per-user limit or a lockout; see `Retry-After`"),
            (500, "A bug; details are in the server's log only"),
            (
                503,
                "Overloaded, timed out, or storage or model unavailable; see `Retry-After`",
            ),
            (
                507,
                "Nothing was written: the data directory is out of space, a collection is at its size cap, or a new user's collection would pass the collections-per-node bound (`collection_limit`)",
            ),
        ])
    }
}

/// The errors of the admin API.
pub struct AdminErrors;

impl IntoResponses for AdminErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors(&[
            (400, "Malformed JSON"),
            (401, "Not the admin key"),
            (404, "The admin API is off (no `CORDON_ADMIN_KEY`)"),
            (
                409,
                "A minimum token version below the one held (`min_version_only_rises`)",
            ),
            (413, "Body too large"),
            (415, "The body is not `application/json`"),
            (
                422,
                "Valid JSON that breaks a documented rule; the message names it",
            ),
            (429, "Locked out after rejected attempts; see `Retry-After`"),
            (500, "A bug; details are in the server's log only"),
            (
                503,
                "The access log or storage is unavailable; see `Retry-After`",
            ),
        ])
    }
}

/// A metadata key: what `validate::key` accepts.
const KEY_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// A metadata key, as a property name.
fn key_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(KEY_PATTERN))
        .build()
}

/// `metadata` of a memory to store: an object with plain keys.
pub fn metadata_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(key_schema()))
        .description(Some(
            "Facts about the memory: keys of A-Z, a-z, 0-9, `_` or `-` (1 to 64), values of any JSON type (string, integer and boolean values can be filtered on), at most 4 KiB of JSON by default",
        ))
        .build()
}

/// A search or list `filter`: up to 16 plain keys, each a value to equal,
/// an `in` list or a numeric range.
pub fn filter_schema() -> Object {
    let scalar = || {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Integer))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
    };
    let any_of = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "in",
            utoipa::openapi::schema::ArrayBuilder::new()
                .items(scalar())
                .min_items(Some(1))
                .max_items(Some(64)),
        )
        .required("in")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .description(Some("Equal to one of these values"));
    let bound = || ObjectBuilder::new().schema_type(Type::Number);
    let range = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("gt", bound())
        .property("gte", bound())
        .property("lt", bound())
        .property("lte", bound())
        .min_properties(Some(1))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .description(Some("A number within these bounds"));
    let condition = scalar().item(any_of).item(range);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(key_schema()))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::OneOf(
            condition.build(),
        )))))
        .max_properties(Some(16))
        .description(Some(
            "Only memories whose metadata meets every condition: a string, integer or boolean to equal, `{\"in\": [...]}` for one of several, or `{\"gte\": 1, \"lt\": 9}` for a numeric range",
        ))
        .build()
}

/// A tenant or subject as the admin API takes it (`is_identity`).
pub fn identity_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(256))
        .pattern(Some("^[^\\u0000-\\u001f\\u007f-\\u009f]+$"))
        .description(Some("1 to 256 bytes, no control characters"))
        .build()
}

/// `input` of an embeddings request: one text, or a list of texts.
pub fn input_schema() -> Schema {
    let text = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
    };
    Schema::OneOf(
        OneOfBuilder::new()
            .item(text().description(Some("One text")))
            .item(
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(text())
                    .min_items(Some(1))
                    .description(Some(
                        "Several texts (1 to the server's item limit, 64 by default)",
                    )),
            )
            .build(),
    )
}

/// `encoding_format` of an embeddings request.
pub fn encoding_format_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["float", "base64"]))
        .description(Some(
            "`float` (the default) or `base64`: the little-endian `f32` bytes, base64-encoded",
        ))
        .build()
}

/// `model` of an embeddings request: the one model served.
pub fn model_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([
            super::embeddings::MODEL_NAME,
            "sentence-transformers/all-MiniLM-L6-v2",
        ]))
        .build()
}

fn errors(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// The document, built once: the routes' operations and the parts above.
pub fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let (_, mut doc) = super::routes().split_for_parts();
        complete(&mut doc);
        doc.to_pretty_json()
            .expect("an OpenAPI document always serialises")
    });
    &DOCUMENT
}

fn complete(doc: &mut OpenApi) {
    doc.info = InfoBuilder::new()
        .title("Cordon")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Long-term memory for AI agents, one user at a time. The caller is the verified \
             bearer token's user; no request field can name another.",
        ))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".into(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT naming the user (`sub`) and tenant, signed with a key the server trusts",
                ))
                .build(),
        )),
    );
    components.security_schemes.insert(
        "admin_key".into(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The server's `CORDON_ADMIN_KEY`"))
                .build(),
        )),
    );
    components.security_schemes.insert(
        "metrics_token".into(),
        RefOr::T(SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The server's `CORDON_METRICS_TOKEN`, when it sets one",
                ))
                .build(),
        )),
    );
    for (name, schema) in [
        ("ErrorBody", ErrorBody::schema()),
        ("ErrorDetail", ErrorDetail::schema()),
    ] {
        components.schemas.insert(name.into(), schema);
    }
    doc.paths.paths.insert("/mcp".into(), mcp_path_item());
    link_stored_ids(doc);
}

/// Links from a store's answer to the operations taking its ids, so that a
/// client generator (or a fuzzer) knows where `{id}` values come from.
fn link_stored_ids(doc: &mut OpenApi) {
    let Some(RefOr::T(created)) = doc
        .paths
        .paths
        .get_mut("/v1/memories")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.responses.responses.get_mut("201"))
    else {
        return;
    };
    for (name, operation) in [("GetMemory", "get_one"), ("DeleteMemory", "delete_one")] {
        created.links.insert(
            name.into(),
            RefOr::T(
                LinkBuilder::new()
                    .operation_id(operation)
                    .parameter("id", "$response.body#/ids/0")
                    .build(),
            ),
        );
    }
}

/// `POST /mcp`: JSON-RPC messages of the Model Context Protocol (streamable
/// HTTP, stateless), answered as JSON or as an event stream.
fn mcp_path_item() -> PathItem {
    let any_object = || -> RefOr<Schema> { ObjectBuilder::new().into() };
    let mut responses = UserErrors::responses();
    // The MCP transport answers its own protocol errors with JSON-RPC bodies.
    for status in ["400", "404", "406", "413", "415"] {
        responses.insert(
            status.into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("Refused by the MCP transport (a JSON-RPC error, or empty)")
                    .build(),
            ),
        );
    }
    responses.insert(
        "200".into(),
        RefOr::T(
            ResponseBuilder::new()
                .description("The JSON-RPC answer, as JSON or as a `text/event-stream`")
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(any_object())).build(),
                )
                .content("text/event-stream", ContentBuilder::new().build())
                .build(),
        ),
    );
    responses.insert(
        "202".into(),
        RefOr::T(
            ResponseBuilder::new()
                .description("A notification or response, accepted")
                .build(),
        ),
    );
    let mut operation = OperationBuilder::new()
        .tag("mcp")
        .summary(Some("Model Context Protocol (streamable HTTP)"))
        .description(Some(
            "Tools `remember`, `recall`, `forget` and `list_memories` and the prompt \
             `use-memory`, for the bearer token's user.",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(utoipa::openapi::Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(any_object())).build(),
                )
                .build(),
        ))
        .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
        .build();
    operation.responses.responses = responses;
    PathItem::new(HttpMethod::Post, operation)
}

/// Routes of this module, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")),
)]
async fn openapi_json() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document())
}
