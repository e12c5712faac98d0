//! `POST /v1/embeddings` in the OpenAI request and response shape.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::extract::Json;
use super::openapi::UserErrors;
use super::validate;
use crate::auth::Caller;
use crate::error::ApiError;

/// The model name reported in responses.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Routes of this module, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(embeddings))
}

/// One text or a list of texts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    /// One text.
    One(String),
    /// Several texts (1 to the server's item limit, 64 by default).
    Many(Vec<String>),
}

/// An OpenAI-compatible embeddings request.
#[derive(Debug, Deserialize, ToSchema)]
struct EmbeddingsRequest {
    #[schema(schema_with = super::openapi::input_schema)]
    input: Input,
    /// `all-MiniLM-L6-v2` (or `sentence-transformers/all-MiniLM-L6-v2`); other names are refused.
    #[serde(default)]
    #[schema(schema_with = super::openapi::model_schema)]
    model: Option<String>,
    /// `float` (the default) or `base64`: the little-endian `f32` bytes, base64-encoded.
    #[serde(default)]
    #[schema(schema_with = super::openapi::encoding_format_schema)]
    encoding_format: Option<String>,
}

/// One vector.
#[derive(Debug, Serialize, ToSchema)]
struct Embedding {
    /// Always `embedding`.
    object: &'static str,
    /// The input's position.
    index: usize,
    embedding: Vector,
}

/// A vector as `encoding_format` asks: a JSON array of floats, or the
/// base64 of its little-endian `f32` bytes (what OpenAI's SDKs ask for by
/// default, and decode with `frombuffer(..., float32)`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum Vector {
    /// `encoding_format: float`: 384 numbers.
    Float(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

fn encode(format: Format, vector: Vec<f32>) -> Vector {
    match format {
        Format::Float => Vector::Float(vector),
        Format::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            Vector::Base64(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                bytes,
            ))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Float,
    Base64,
}

/// Tokens the model read.
#[derive(Debug, Serialize, ToSchema)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The vectors, in input order.
#[derive(Debug, Serialize, ToSchema)]
struct EmbeddingsResponse {
    /// Always `list`.
    object: &'static str,
    data: Vec<Embedding>,
    model: &'static str,
    usage: Usage,
}

/// Embed texts (OpenAI-compatible).
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "embeddings",
    request_body = EmbeddingsRequest,
    responses((status = 200, description = "One vector per input", body = EmbeddingsResponse), UserErrors),
    security(("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(owner = %caller.owner.log_tag()))]
async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<EmbeddingsRequest>,
) -> Result<axum::Json<EmbeddingsResponse>, ApiError> {
    if let Some(model) = &request.model
        && model != MODEL_NAME
        && model != "sentence-transformers/all-MiniLM-L6-v2"
    {
        return Err(ApiError::validation(format!(
            "model `{model}` is not served here; this server embeds with `{MODEL_NAME}`"
        )));
    }
    let format = match request.encoding_format.as_deref() {
        None | Some("float") => Format::Float,
        Some("base64") => Format::Base64,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "`encoding_format` must be \"float\" or \"base64\", not `{other}`"
            )));
        }
    };
    let texts = match request.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
    };
    let limits = &state.limits;
    validate::count("input", texts.len(), limits)?;
    for t in &texts {
        validate::text("input", t, limits)?;
    }
    let encoded = state.embedder.embed(&caller.owner, texts).await?;
    let tokens: usize = encoded.tokens.iter().sum();
    let data = encoded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| Embedding {
            object: "embedding",
            index,
            embedding: encode(format, vector),
        })
        .collect();
    Ok(axum::Json(EmbeddingsResponse {
        object: "list",
        data,
        model: MODEL_NAME,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}
