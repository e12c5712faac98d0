//! Development tokens signed with the configured HS256 secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Map, Value, json};

use super::keys::MIN_HS256_SECRET_BYTES;
use crate::secret::Secret;

/// Why a development token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The HS256 secret is too short to be accepted by the server.
    #[error("the HS256 secret is {0} bytes; at least {MIN_HS256_SECRET_BYTES} are required")]
    ShortSecret(usize),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs a token for `(tenant, sub)` valid for `ttl`, with optional `iss`/`aud`.
pub fn mint_dev_token(
    secret: &Secret,
    tenant_claim: &str,
    tenant: &str,
    sub: &str,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, MintError> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(MintError::ShortSecret(secret.len()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the system clock is after 1970")
        .as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(sub));
    claims.insert(tenant_claim.into(), json!(tenant));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + ttl.as_secs()));
    if let Some(iss) = issuer {
        claims.insert("iss".into(), json!(iss));
    }
    if let Some(aud) = audience {
        claims.insert("aud".into(), json!(aud));
    }
    let token = encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.expose()),
    )?;
    Ok(token)
}
