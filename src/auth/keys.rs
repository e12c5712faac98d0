//! Loading the keys tokens are verified against.
//!
//! Three sources, any combination: an HS256 secret (for development and for
//! platforms that share a secret), a PEM public key, and a JWKS file. Each key
//! gets exactly one algorithm here, at start-up; tokens cannot change it.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::verifier::ConfiguredKey;
use crate::secret::Secret;

/// Shortest HS256 secret accepted: shorter ones can be brute-forced offline.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Why the configured keys could not be loaded; the server refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key source is configured, so no token could ever verify.
    #[error(
        "no JWT key configured: set CORDON_JWT_HS256_SECRET, CORDON_JWT_PUBLIC_KEY_PEM or CORDON_JWT_JWKS_FILE"
    )]
    NoKeys,
    /// The HS256 secret is too short.
    #[error("the HS256 secret is {0} bytes; at least {MIN_HS256_SECRET_BYTES} are required")]
    ShortSecret(usize),
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file's content is not a usable key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Loads every configured key; fails if none is configured.
pub fn load_keys(
    hs256_secret: Option<&Secret>,
    public_key_pem: Option<&Path>,
    jwks_file: Option<&Path>,
) -> Result<Vec<ConfiguredKey>, KeyError> {
    let mut keys = Vec::new();
    if let Some(secret) = hs256_secret {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        keys.push(ConfiguredKey {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.expose()),
        });
    }
    if let Some(path) = public_key_pem {
        keys.push(pem_key(path)?);
    }
    if let Some(path) = jwks_file {
        keys.extend(jwks_keys(path)?);
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys);
    }
    Ok(keys)
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A PEM public key: RSA means RS256, a P-256 EC key ES256, Ed25519 EdDSA.
fn pem_key(path: &Path) -> Result<ConfiguredKey, KeyError> {
    let pem = read(path)?;
    let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        (Algorithm::RS256, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        (Algorithm::ES256, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        (Algorithm::EdDSA, k)
    } else {
        return Err(invalid(
            path,
            "not an RSA, EC (P-256) or Ed25519 public key in PEM form",
        ));
    };
    Ok(ConfiguredKey {
        kid: None,
        alg,
        key,
    })
}

fn jwks_keys(path: &Path) -> Result<Vec<ConfiguredKey>, KeyError> {
    let set: JwkSet = serde_json::from_slice(&read(path)?)
        .map_err(|e| invalid(path, format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.as_deref().unwrap_or("<no kid>");
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            tracing::warn!(kid, "skipped a JWK meant for encryption (`use: enc`)");
            continue;
        }
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), _) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
            (Some(KeyAlgorithm::EdDSA), _) => Algorithm::EdDSA,
            (Some(other), _) => {
                tracing::warn!(kid, alg = ?other, "skipped a JWK with an unsupported alg");
                continue;
            }
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
            (None, _) => {
                tracing::warn!(
                    kid,
                    "skipped a JWK without `alg` that is neither RSA, P-256 nor Ed25519"
                );
                continue;
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(path, format!("bad JWK: {e}")))?;
        keys.push(ConfiguredKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err(invalid(
            path,
            "the JWKS holds no usable RS256, ES256 or EdDSA key",
        ));
    }
    Ok(keys)
}
