//! Signed statements the server hands out: erase receipts and read scope
//! statements, as compact JWS tokens signed with Ed25519 (`alg: EdDSA`).
//!
//! Any JWT library verifies them with the public keys served at
//! [`WELL_KNOWN`] (a JWKS); `cordon verify` does so offline. The signing key
//! comes from `CORDON_SIGNING_KEY_FILE` (32 bytes, as 64 hex digits or
//! base64), or is derived from the server secret when none is set, so that
//! every replica signs with the same key. Rotation: set a new key file and
//! list the old public key in `CORDON_SIGNING_PREVIOUS_KEYS`; both are
//! served, and each token names its key by `kid`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64URL};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::owner::{Domain, keyed_in};
use crate::secret::Secret;

/// Where the public keys are served, as a JWKS.
pub const WELL_KNOWN: &str = "/.well-known/cordon-signing-keys.json";

/// The `iss` of every statement.
pub const ISSUER: &str = "cordon";

/// Why a key could not be loaded or a statement does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The key file cannot be read.
    #[error("signing key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is not 32 bytes in a known encoding.
    #[error("signing key: {0}")]
    BadKey(String),
    /// The token is not a compact JWS of three parts.
    #[error("not a signed statement: {0}")]
    Malformed(String),
    /// No key of the set has the token's `kid`.
    #[error("no public key with kid {0}")]
    UnknownKey(String),
    /// The signature does not match the header and payload.
    #[error("the signature does not verify")]
    BadSignature,
}

/// The key that signs, and the previous public keys still served.
pub struct Signer {
    key: SigningKey,
    kid: String,
    previous: Vec<VerifyingKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The key id of a public key: 16 hex digits of its SHA-256.
pub fn kid_of(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// 32 key bytes from 64 hex digits or base64 (standard or URL-safe).
fn key_bytes(text: &str) -> Result<Zeroizing<[u8; 32]>, ReceiptError> {
    let text = text.trim();
    let bytes = Zeroizing::new(if text.len() == 64 {
        hex::decode(text).map_err(|_| ReceiptError::BadKey("64 characters but not hex".into()))?
    } else {
        STANDARD
            .decode(text)
            .or_else(|_| B64URL.decode(text.trim_end_matches('=')))
            .map_err(|_| ReceiptError::BadKey("expected 64 hex digits or base64".into()))?
    });
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ReceiptError::BadKey(format!("{} bytes, not 32", bytes.len())))?;
    Ok(Zeroizing::new(key))
}

/// A public key from its text (64 hex digits or base64 of 32 bytes).
pub fn parse_public(text: &str) -> Result<VerifyingKey, ReceiptError> {
    VerifyingKey::from_bytes(&*key_bytes(text)?)
        .map_err(|_| ReceiptError::BadKey("not an Ed25519 public key".into()))
}

/// A fresh private key, as 64 hex digits (what a key file holds).
pub fn generate() -> Zeroizing<String> {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(seed.as_mut());
    Zeroizing::new(hex::encode(seed.as_ref()))
}

impl Signer {
    /// The key in `key_file`, or the one derived from `secret` without one;
    /// `previous` are public keys still served for verification.
    pub fn load(
        key_file: Option<&Path>,
        previous: &[String],
        secret: &Secret,
    ) -> Result<Self, ReceiptError> {
        let seed = match key_file {
            Some(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                    ReceiptError::KeyFile {
                        path: path.display().to_string(),
                        source,
                    }
                })?);
                key_bytes(&text)?
            }
            None => Zeroizing::new(keyed_in(secret, Domain::Signing, &[])),
        };
        let previous = previous
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| parse_public(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_seed(&seed, previous))
    }

    /// The key of `seed`.
    pub fn from_seed(seed: &[u8; 32], previous: Vec<VerifyingKey>) -> Self {
        let key = SigningKey::from_bytes(seed);
        let kid = kid_of(&key.verifying_key());
        Self { key, kid, previous }
    }

    /// The signing key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing key's public half, base64url.
    pub fn public_key(&self) -> String {
        B64URL.encode(self.key.verifying_key().as_bytes())
    }

    /// `claims` (an object; `iss` and `iat` are added) as a compact JWS.
    pub fn sign(&self, mut claims: Value) -> String {
        if let Some(map) = claims.as_object_mut() {
            map.insert("iss".into(), ISSUER.into());
            map.insert(
                "iat".into(),
                crate::access::now_ms().div_euclid(1000).into(),
            );
        }
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64URL.encode(signature.to_bytes()))
    }

    /// The public keys, current first, as a JWKS.
    pub fn jwks(&self) -> Value {
        let current = std::iter::once(self.key.verifying_key());
        let keys: Vec<Value> = current
            .chain(self.previous.iter().copied())
            .map(|key| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": kid_of(&key),
                    "x": B64URL.encode(key.as_bytes()),
                })
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// The public keys of a JWKS document (keys of other types are skipped).
pub fn keys_of_jwks(jwks: &Value) -> Vec<VerifyingKey> {
    jwks["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
        .filter_map(|k| parse_public(k["x"].as_str()?).ok())
        .collect()
}

/// The claims of `token` if one of `keys` signed it (the one its `kid`
/// names, when it names one).
pub fn verify(token: &str, keys: &[VerifyingKey]) -> Result<Value, ReceiptError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReceiptError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let decode = |part: &str, what: &str| {
        B64URL
            .decode(part)
            .map_err(|_| ReceiptError::Malformed(format!("the {what} is not base64url")))
    };
    let header: Value = serde_json::from_slice(&decode(header, "header")?)
        .map_err(|_| ReceiptError::Malformed("the header is not JSON".into()))?;
    if header["alg"] != "EdDSA" {
        return Err(ReceiptError::Malformed(
            "the header's alg is not EdDSA".into(),
        ));
    }
    let signature = Signature::from_slice(&decode(signature, "signature")?)
        .map_err(|_| ReceiptError::Malformed("the signature is not 64 bytes".into()))?;
    let candidates: Vec<&VerifyingKey> = match &header["kid"] {
        Value::Null => keys.iter().collect(),
        Value::String(kid) => {
            let named: Vec<_> = keys.iter().filter(|k| &kid_of(k) == kid).collect();
            if named.is_empty() {
                return Err(ReceiptError::UnknownKey(kid.to_owned()));
            }
            named
        }
        _ => {
            return Err(ReceiptError::Malformed(
                "the header's kid is not a string".into(),
            ));
        }
    };
    let input = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
    if !candidates
        .iter()
        .any(|k| k.verify_strict(input.as_bytes(), &signature).is_ok())
    {
        return Err(ReceiptError::BadSignature);
    }
    serde_json::from_slice(&decode(payload, "payload")?)
        .map_err(|_| ReceiptError::Malformed("the payload is not JSON".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_seed(&[7u8; 32], Vec::new())
    }

    #[test]
    fn a_signed_statement_verifies_with_the_served_key() {
        let s = signer();
        let token = s.sign(json!({ "typ": "erase", "deleted": 3 }));
        let claims = verify(&token, &keys_of_jwks(&s.jwks())).expect("verifies");
        assert_eq!(claims["deleted"], 3);
        assert_eq!(claims["iss"], ISSUER);
    }

    #[test]
    fn any_changed_byte_fails_verification() {
        let s = signer();
        let token = s.sign(json!({ "typ": "erase", "deleted": 3 }));
        let keys = keys_of_jwks(&s.jwks());
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let Ok(changed) = String::from_utf8(bytes) else {
                continue;
            };
            if changed != token {
                assert!(
                    verify(&changed, &keys).is_err(),
                    "byte {i} changed and it verified"
                );
            }
        }
    }

    #[test]
    fn another_key_does_not_verify_and_a_previous_key_still_does() {
        let old = signer();
        let token = old.sign(json!({ "typ": "scope" }));
        let other = Signer::from_seed(&[8u8; 32], Vec::new());
        assert!(verify(&token, &keys_of_jwks(&other.jwks())).is_err());
        let rotated = Signer::from_seed(&[8u8; 32], vec![old.key.verifying_key()]);
        assert!(verify(&token, &keys_of_jwks(&rotated.jwks())).is_ok());
    }
}
