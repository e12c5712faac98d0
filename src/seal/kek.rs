//! Key-encryption keys (KEKs): what wraps every user's data key.
//!
//! [`Kek`] is the seam for a KMS or Vault transit backend: wrapping and
//! unwrapping are async calls that name the owner, so a remote service can
//! scope them. [`LocalKek`] is the built-in backend, a 256-bit key loaded at
//! start from a file or the environment. A [`Keyring`] holds the current KEK,
//! which wraps every new data key, and any previous ones still needed to
//! unwrap keys that `cordon keys rotate` has not re-wrapped yet.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SealError;
use super::dek::{Dek, nonce_of};
use super::vault::WrappedDek;
use crate::owner::OwnerHash;
use crate::secret::Secret;

/// Wraps and unwraps data keys.
#[async_trait]
pub trait Kek: Send + Sync {
    /// A short public name of this key, stored next to what it wrapped.
    fn id(&self) -> &str;
    /// `dek`, encrypted for `owner`.
    async fn wrap(&self, owner: &OwnerHash, dek: &Dek) -> Result<Vec<u8>, SealError>;
    /// The data key `wrapped` holds, if it was wrapped by this key for `owner`.
    async fn unwrap(&self, owner: &OwnerHash, wrapped: &[u8]) -> Result<Dek, SealError>;
}

/// A KEK held in this process.
pub struct LocalKek {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalKek({})", self.id)
    }
}

const NONCE_BYTES: usize = 24;

impl LocalKek {
    /// A KEK from configuration: 64 hex digits or the base64 of 32 bytes
    /// (surrounding whitespace ignored).
    pub fn parse(secret: &Secret) -> Result<Self, SealError> {
        let text = std::str::from_utf8(secret.expose())
            .map_err(|_| SealError::BadKek("the KEK is not text".into()))?
            .trim();
        let bytes = Zeroizing::new(if text.len() == 64 {
            hex::decode(text).map_err(|_| SealError::BadKek("64 characters but not hex".into()))?
        } else {
            BASE64.decode(text).map_err(|_| {
                SealError::BadKek("expected 64 hex digits or the base64 of 32 bytes".into())
            })?
        });
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            SealError::BadKek(format!("the KEK holds {} bytes, not 32", bytes.len()))
        })?;
        let mut hash = Sha256::new();
        hash.update(b"cordon kek id v1\0");
        hash.update(key);
        let id = hex::encode(&hash.finalize()[..8]);
        Ok(Self {
            key: Zeroizing::new(key),
            id,
        })
    }

    /// A fresh random KEK in the text form [`LocalKek::parse`] reads.
    pub fn generate() -> Zeroizing<String> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        Zeroizing::new(hex::encode(key.as_ref()))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.key.as_ref().into())
    }
}

fn associated(owner: &OwnerHash) -> Vec<u8> {
    let mut aad = b"cordon dek v1\0".to_vec();
    aad.extend_from_slice(owner.to_hex().as_bytes());
    aad
}

#[async_trait]
impl Kek for LocalKek {
    fn id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, owner: &OwnerHash, dek: &Dek) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated(owner);
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: dek.expose(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::BadKek("wrapping failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    async fn unwrap(&self, owner: &OwnerHash, wrapped: &[u8]) -> Result<Dek, SealError> {
        if wrapped.len() < NONCE_BYTES {
            return Err(SealError::Corrupt("a wrapped key is too short".into()));
        }
        let (nonce, body) = wrapped.split_at(NONCE_BYTES);
        let nonce = nonce_of(nonce)
            .ok_or_else(|| SealError::Corrupt("a wrapped key's nonce is short".into()))?;
        let aad = associated(owner);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    &nonce,
                    Payload {
                        msg: body,
                        aad: &aad,
                    },
                )
                .map_err(|_| {
                    SealError::Corrupt(format!(
                        "a wrapped key of owner {} does not open with KEK {}",
                        owner.log_tag(),
                        self.id
                    ))
                })?,
        );
        Dek::from_bytes(&plain)
            .ok_or_else(|| SealError::Corrupt("a wrapped key has the wrong length".into()))
    }
}

/// The current KEK and the previous ones still accepted for unwrapping.
#[derive(Clone)]
pub struct Keyring {
    current: Arc<dyn Kek>,
    previous: Vec<Arc<dyn Kek>>,
}

impl Keyring {
    /// A keyring that wraps with `current` and also unwraps with `previous`.
    pub fn new(current: Arc<dyn Kek>, previous: Vec<Arc<dyn Kek>>) -> Self {
        Self { current, previous }
    }

    /// The KEK new data keys are wrapped with.
    pub fn current(&self) -> &Arc<dyn Kek> {
        &self.current
    }

    /// The configured KEK called `id`.
    pub fn find(&self, id: &str) -> Option<&Arc<dyn Kek>> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id() == id)
    }

    /// The owner and data key a wrapped key holds, unwrapped by whichever
    /// configured KEK wrapped it.
    pub async fn open(&self, wrapped: &WrappedDek) -> Result<(OwnerHash, Dek), SealError> {
        let owner = OwnerHash::from_hex(&wrapped.owner)
            .ok_or_else(|| SealError::Corrupt("a key names no valid owner hash".into()))?;
        let kek = self.find(&wrapped.kek).ok_or_else(|| {
            SealError::Corrupt(format!(
                "the key of owner {} is wrapped by KEK {}, which is neither CORDON_KEK nor CORDON_KEK_PREVIOUS",
                owner.log_tag(),
                wrapped.kek
            ))
        })?;
        let bytes = BASE64
            .decode(&wrapped.wrapped)
            .map_err(|_| SealError::Corrupt("a wrapped key is not base64".into()))?;
        let dek = kek.unwrap(&owner, &bytes).await?;
        Ok((owner, dek))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(text: &str) -> LocalKek {
        LocalKek::parse(&Secret::new(text.as_bytes().to_vec())).expect("a valid KEK")
    }

    #[tokio::test]
    async fn a_wrapped_key_opens_only_with_its_kek_and_owner() {
        let secret = Secret::new(vec![1u8; 32]);
        let alice = OwnerHash::derive(&secret, "t", "alice");
        let bob = OwnerHash::derive(&secret, "t", "bob");
        let one = kek(&LocalKek::generate());
        let two = kek(&LocalKek::generate());
        let dek = Dek::random();
        let wrapped = one.wrap(&alice, &dek).await.expect("wraps");
        let back = one.unwrap(&alice, &wrapped).await.expect("unwraps");
        assert_eq!(back.expose(), dek.expose());
        assert!(one.unwrap(&bob, &wrapped).await.is_err());
        assert!(two.unwrap(&alice, &wrapped).await.is_err());
        assert_ne!(one.id(), two.id());
    }

    #[test]
    fn a_kek_is_hex_or_base64_of_32_bytes() {
        let hex = "00".repeat(32);
        let b64 = BASE64.encode([0u8; 32]);
        assert_eq!(kek(&hex).id(), kek(&format!(" {b64}\n")).id());
        assert!(LocalKek::parse(&Secret::new(b"short".to_vec())).is_err());
        assert!(LocalKek::parse(&Secret::new("zz".repeat(32).into_bytes())).is_err());
    }
}
