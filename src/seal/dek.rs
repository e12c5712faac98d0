//! A user's data key (DEK) and the two keys derived from it: one seals the
//! user's records, the other keys the tags that metadata filters match on.
//!
//! Records are sealed with XChaCha20-Poly1305 under a random 192-bit nonce,
//! so nonces never need to be tracked. The associated data binds each
//! ciphertext to its owner hash and memory id: a record copied into another
//! user's collection, or under another id, does not open.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::owner::OwnerHash;

/// Bytes in a data key.
pub const DEK_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// First byte of every sealed record: the format, so that a later one can
/// be told apart.
const FORMAT: u8 = 1;

/// A user's data key. Never printed; zeroised when dropped.
pub struct Dek(Zeroizing<[u8; DEK_BYTES]>);

impl Dek {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut key = Zeroizing::new([0u8; DEK_BYTES]);
        rand::rng().fill_bytes(key.as_mut());
        Self(key)
    }

    /// A key from its bytes, if there are exactly [`DEK_BYTES`] of them.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key: [u8; DEK_BYTES] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(key)))
    }

    /// The key bytes, for wrapping.
    pub fn expose(&self) -> &[u8; DEK_BYTES] {
        &self.0
    }

    /// The keys this data key stands for.
    pub fn keys(&self) -> RecordKeys {
        RecordKeys {
            record: derive(self, b"cordon record key v1"),
            tags: derive(self, b"cordon tag key v1"),
        }
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek([redacted])")
    }
}

fn derive(dek: &Dek, label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(dek.expose()).expect("HMAC takes any key length");
    mac.update(label);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The keys of one user's records, derived from the data key.
pub struct RecordKeys {
    record: Zeroizing<[u8; 32]>,
    tags: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordKeys([redacted])")
    }
}

/// The associated data of a record: its owner and its id.
fn associated(owner: &OwnerHash, id: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96);
    aad.extend_from_slice(b"cordon record v1\0");
    aad.extend_from_slice(owner.to_hex().as_bytes());
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad
}

impl RecordKeys {
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.record.as_ref().into())
    }

    /// Seals `plain` as record `id` of `owner`: format byte, nonce, ciphertext.
    pub fn seal(&self, owner: &OwnerHash, id: Uuid, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated(owner, id);
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens record `id` of `owner`; `None` when it was sealed for another
    /// owner or id, under another key, or altered.
    pub fn open(&self, owner: &OwnerHash, id: Uuid, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (&format, rest) = sealed.split_first()?;
        if format != FORMAT || rest.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_BYTES);
        let aad = associated(owner, id);
        self.cipher()
            .decrypt(
                &nonce_of(nonce)?,
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    /// A keyword term id as stored for this owner: keyed by the user's
    /// data key, so that a dump does not tell which word an id stands for
    /// (an unkeyed id is a hash anyone can compute for a guessed word).
    pub fn term(&self, term: i64) -> i64 {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.tags.as_ref())
            .expect("HMAC takes any key length");
        // A domain of its own: a tag's input starts with a key's length.
        mac.update(b"cordon term v1\0");
        mac.update(&term.to_be_bytes());
        let out = mac.finalize().into_bytes();
        i64::from_be_bytes(out[..8].try_into().expect("a SHA-256 MAC has 32 bytes"))
    }

    /// The tag a metadata filter `key = value` matches on. Keyed by the
    /// user's data key, so equal values give equal tags within one user
    /// only, and nobody without the key can test a guess.
    pub fn tag(&self, key: &str, value: &TagValue<'_>) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.tags.as_ref())
            .expect("HMAC takes any key length");
        mac.update(&(key.len() as u64).to_be_bytes());
        mac.update(key.as_bytes());
        match value {
            TagValue::Str(s) => {
                mac.update(b"s");
                mac.update(s.as_bytes());
            }
            TagValue::Int(i) => {
                mac.update(b"i");
                mac.update(&i.to_be_bytes());
            }
            TagValue::Bool(b) => {
                mac.update(if *b { b"t" } else { b"f" });
            }
        }
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// A nonce from its bytes, if there are exactly 24.
pub(super) fn nonce_of(bytes: &[u8]) -> Option<XNonce> {
    let bytes: [u8; NONCE_BYTES] = bytes.try_into().ok()?;
    Some(XNonce::from(bytes))
}

/// A metadata value that filters can match.
#[derive(Debug, Clone, Copy)]
pub enum TagValue<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn owner(name: &str) -> OwnerHash {
        OwnerHash::derive(&Secret::new(vec![9u8; 32]), "t", name)
    }

    #[test]
    fn a_record_opens_only_for_its_owner_id_and_key() {
        let keys = Dek::random().keys();
        let (alice, bob) = (owner("alice"), owner("bob"));
        let id = Uuid::now_v7();
        let sealed = keys.seal(&alice, id, b"the canary sings");
        assert_eq!(
            keys.open(&alice, id, &sealed).as_deref().map(Vec::as_slice),
            Some(&b"the canary sings"[..])
        );
        assert!(keys.open(&bob, id, &sealed).is_none(), "another owner");
        assert!(
            keys.open(&alice, Uuid::now_v7(), &sealed).is_none(),
            "another id"
        );
        assert!(
            Dek::random().keys().open(&alice, id, &sealed).is_none(),
            "another key"
        );
        let mut altered = sealed.clone();
        *altered.last_mut().expect("not empty") ^= 1;
        assert!(keys.open(&alice, id, &altered).is_none(), "altered");
        assert!(
            !sealed.windows(6).any(|w| w == b"canary"),
            "the ciphertext holds the text"
        );
    }

    #[test]
    fn tags_are_equal_for_equal_values_of_one_user_only() {
        let keys = Dek::random().keys();
        let a = keys.tag("topic", &TagValue::Str("cats"));
        assert_eq!(a, keys.tag("topic", &TagValue::Str("cats")));
        assert_ne!(a, keys.tag("topic", &TagValue::Str("dogs")));
        assert_ne!(a, keys.tag("topics", &TagValue::Str("cats")));
        assert_ne!(
            keys.tag("n", &TagValue::Int(1)),
            keys.tag("n", &TagValue::Bool(true))
        );
        assert_ne!(a, Dek::random().keys().tag("topic", &TagValue::Str("cats")));
    }
}
