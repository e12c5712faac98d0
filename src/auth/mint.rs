//! Minting tokens: development tokens and the load tool's users.
//!
//! A [`Signer`] holds either the HS256 secret a server verifies with, or a
//! private key whose public half the server was given (RS256, ES256 or
//! EdDSA, chosen by the key's type as on the verifying side). The claims are
//! the ones Cordon reads: `sub`, the tenant claim, `iat`/`nbf`/`exp` and
//! optionally `iss`/`aud`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Map, Value, json};

use super::keys::MIN_HS256_SECRET_BYTES;
use crate::secret::Secret;

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The HS256 secret is too short to be accepted by the server.
    #[error("the HS256 secret is {0} bytes; at least {MIN_HS256_SECRET_BYTES} are required")]
    ShortSecret(usize),
    /// The private key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The private key file holds no usable key.
    #[error(
        "{0}: not an RSA, EC (P-256) or Ed25519 private key in PEM form (PKCS#8 `BEGIN PRIVATE KEY`, or `BEGIN RSA PRIVATE KEY`; `openssl pkcs8 -topk8 -nocrypt` converts others)"
    )]
    NotAKey(String),
    /// Neither a secret nor a private key was given.
    #[error("no signing key: give the HS256 secret or a private key (PEM)")]
    NoKey,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A key that signs tokens the way the server verifies them.
#[derive(Clone)]
pub struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key itself never prints.
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Signs with the HS256 secret.
    pub fn hs256(secret: &Secret) -> Result<Self, MintError> {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(MintError::ShortSecret(secret.len()));
        }
        Ok(Self {
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret.expose()),
            kid: None,
        })
    }

    /// The same signer with `kid` in every token's header.
    pub fn with_kid(mut self, kid: Option<String>) -> Self {
        self.kid = kid;
        self
    }

    /// Signs with a PEM private key; `kid` goes into the header when the
    /// server picks keys from a JWKS by id.
    pub fn private_key(path: &Path, kid: Option<String>) -> Result<Self, MintError> {
        let pem =
            zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| MintError::Read {
                path: path.display().to_string(),
                source,
            })?);
        // The RSA parser also takes public keys and certificates, which
        // would only fail later, at the first signature.
        if !pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(MintError::NotAKey(path.display().to_string()));
        }
        let (alg, key) = if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
            (Algorithm::ES256, k)
        } else if let Ok(k) = EncodingKey::from_ed_pem(&pem) {
            (Algorithm::EdDSA, k)
        } else {
            return Err(MintError::NotAKey(path.display().to_string()));
        };
        Ok(Self { alg, key, kid })
    }

    /// The private key when one is given, else the HS256 secret.
    pub fn from_options(
        secret: Option<&Secret>,
        private_key: Option<&Path>,
        kid: Option<String>,
    ) -> Result<Self, MintError> {
        match (private_key, secret) {
            (Some(path), _) => Self::private_key(path, kid),
            (None, Some(secret)) => Ok(Self::hs256(secret)?.with_kid(kid)),
            (None, None) => Err(MintError::NoKey),
        }
    }

    /// The algorithm the tokens carry.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// A token for `(tenant, sub)` valid for `ttl`, with optional `iss`/`aud`.
    pub fn mint(&self, claims: &Claims<'_>, tenant: &str, sub: &str) -> Result<String, MintError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the system clock is after 1970")
            .as_secs();
        let mut body = Map::new();
        body.insert("sub".into(), json!(sub));
        body.insert(claims.tenant_claim.into(), json!(tenant));
        body.insert("iat".into(), json!(now));
        body.insert("nbf".into(), json!(now));
        body.insert("exp".into(), json!(now + claims.ttl.as_secs()));
        // What the user's access log names the token by.
        body.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        if let Some(iss) = claims.issuer {
            body.insert("iss".into(), json!(iss));
        }
        if let Some(aud) = claims.audience {
            body.insert("aud".into(), json!(aud));
        }
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        Ok(encode(&header, &Value::Object(body), &self.key)?)
    }
}

/// The claims every minted token shares, apart from tenant and subject.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    /// Name of the tenant claim the server reads.
    pub tenant_claim: &'a str,
    /// Lifetime.
    pub ttl: Duration,
    /// `iss`, when the server requires one.
    pub issuer: Option<&'a str>,
    /// `aud`, when the server requires one.
    pub audience: Option<&'a str>,
}

/// Signs a token for `(tenant, sub)` with the HS256 secret.
pub fn mint_dev_token(
    secret: &Secret,
    tenant_claim: &str,
    tenant: &str,
    sub: &str,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, MintError> {
    let claims = Claims {
        tenant_claim,
        ttl,
        issuer,
        audience,
    };
    Signer::hs256(secret)?.mint(&claims, tenant, sub)
}
