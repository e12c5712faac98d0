//! JWT verification with algorithms pinned by configuration.
//!
//! Each configured key carries exactly one algorithm. A token's header only
//! selects among configured keys (by `alg` and `kid`); it never widens the set
//! of accepted algorithms, and nothing named in a token (`jku`, `x5u`, `jwk`)
//! is ever fetched or trusted.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::AuthError;
use crate::access::TokenFacts;

/// Longest `sub` or tenant value accepted, in bytes.
const MAX_IDENTITY_BYTES: usize = 256;

/// A verified identity: the token's subject and tenant claims, and what
/// revocation looks at (`iat`, `ver`).
#[derive(Debug, Clone)]
pub struct Principal {
    /// The tenant claim.
    pub tenant: String,
    /// The `sub` claim.
    pub subject: String,
    /// Issue time and version.
    pub facts: TokenFacts,
    /// `exp`, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The `jti` claim, when it is a short printable string.
    pub jti: Option<String>,
}

/// One key the server accepts tokens from.
#[derive(Clone)]
pub struct ConfiguredKey {
    /// Key id to match against a token's `kid`, when the key has one.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    /// The verification key itself.
    pub key: DecodingKey,
}

/// Settings for claim validation.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Name of the claim that carries the tenant.
    pub tenant_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most 30).
    pub leeway_secs: u64,
    /// Tokens longer than this are refused before parsing.
    pub max_token_bytes: usize,
}

/// Verifies bearer tokens against the configured keys.
pub struct Verifier {
    keys: Vec<ConfiguredKey>,
    // One validation per key, built once: the rules never change per request.
    validations: Vec<Validation>,
    config: VerifierConfig,
}

impl Verifier {
    /// Builds a verifier; `keys` must not be empty (checked at start-up).
    pub fn new(keys: Vec<ConfiguredKey>, mut config: VerifierConfig) -> Self {
        config.leeway_secs = config.leeway_secs.min(30);
        let validations = keys.iter().map(|k| validation(&config, k.alg)).collect();
        Self {
            keys,
            validations,
            config,
        }
    }

    /// Verifies `token` and returns the identity it carries.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > self.config.max_token_bytes {
            return Err(AuthError::TooLarge(self.config.max_token_bytes));
        }
        let header = decode_header(token).map_err(AuthError::MalformedHeader)?;
        let candidates = self.candidates(header.alg, header.kid.as_deref());
        if candidates.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        let mut last_error: Option<AuthError> = None;
        for i in candidates {
            let error = match decode::<Map<String, Value>>(
                token,
                &self.keys[i].key,
                &self.validations[i],
            ) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => AuthError::Rejected(e),
            };
            // A key whose signature held says more than one whose did not.
            if !last_error
                .as_ref()
                .is_some_and(AuthError::signature_checked)
            {
                last_error = Some(error);
            }
        }
        Err(last_error.expect("at least one candidate key was tried"))
    }

    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<usize> {
        let same_alg = (0..self.keys.len()).filter(|&i| self.keys[i].alg == alg);
        match kid {
            // A kid that names a configured key selects exactly that key.
            Some(kid) if self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => same_alg
                .filter(|&i| self.keys[i].kid.as_deref() == Some(kid))
                .collect(),
            // Unknown kid: only keys configured without a kid may answer.
            Some(_) => same_alg.filter(|&i| self.keys[i].kid.is_none()).collect(),
            None => same_alg.collect(),
        }
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let subject = identity_claim(claims, "sub")?;
        let tenant = identity_claim(claims, &self.config.tenant_claim)?;
        let facts = TokenFacts {
            issued_at_ms: issued_at_ms(claims)?,
            version: version(claims)?,
        };
        let expires_at_ms = match claims.get("exp").and_then(Value::as_f64) {
            Some(secs) if secs.is_finite() && secs >= 0.0 => (secs * 1000.0) as u64,
            _ => return Err(AuthError::BadClaim("exp".into())),
        };
        // Shown to the user in their access log, so only a plain one.
        let jti = match claims.get("jti") {
            Some(Value::String(s)) if is_identity(s) && s.len() <= 128 => Some(s.clone()),
            _ => None,
        };
        Ok(Principal {
            tenant,
            subject,
            facts,
            expires_at_ms: expires_at_ms.saturating_add(self.config.leeway_secs * 1000),
            jti,
        })
    }
}

/// The claim rules for one key's algorithm.
fn validation(config: &VerifierConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = HashSet::from(["exp".to_owned(), "sub".to_owned()]);
    // A configured iss/aud must be present, not merely correct when present.
    match &config.issuer {
        Some(iss) => {
            v.set_issuer(&[iss]);
            required.insert("iss".to_owned());
        }
        None => v.iss = None,
    }
    match &config.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.insert("aud".to_owned());
        }
        None => v.validate_aud = false,
    }
    v.required_spec_claims = required;
    v
}

fn identity_claim(claims: &Map<String, Value>, name: &str) -> Result<String, AuthError> {
    match claims.get(name) {
        Some(Value::String(s)) if is_identity(s) => Ok(s.clone()),
        _ => Err(AuthError::BadClaim(name.to_owned())),
    }
}

/// Whether `value` can be a subject or tenant: 1 to 256 bytes, no control
/// characters (so no 0x00, which separates them in the owner hash).
pub fn is_identity(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_IDENTITY_BYTES && !value.chars().any(char::is_control)
}

/// `iat` in Unix milliseconds; fractional seconds are kept, so a token
/// issued within the second after a revocation can show it.
fn issued_at_ms(claims: &Map<String, Value>) -> Result<Option<u64>, AuthError> {
    match claims.get("iat") {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(Some((secs * 1000.0) as u64)),
            _ => Err(AuthError::BadClaim("iat".into())),
        },
        Some(_) => Err(AuthError::BadClaim("iat".into())),
    }
}

/// `ver`: a non-negative integer, 0 when absent.
fn version(claims: &Map<String, Value>) -> Result<u64, AuthError> {
    match claims.get("ver") {
        None => Ok(0),
        Some(value) => value
            .as_u64()
            .ok_or_else(|| AuthError::BadClaim("ver".into())),
    }
}
