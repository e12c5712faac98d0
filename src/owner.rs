//! Owner hashes and the collection names derived from them.
//!
//! `OwnerHash = HMAC-SHA256(server_secret, tenant || 0x00 || subject)`. The key
//! makes a user's collection name impossible to compute without the server
//! secret; the separator keeps `("ab", "c")` and `("a", "bc")` apart. The full
//! hash is stored in every point's payload, while the collection name carries
//! only a prefix of it, so two users may in principle share a collection: the
//! engine filter and the guard are what keep them apart, never the name.
//!
//! Every keyed hash under the server secret has a domain of its own, so no
//! two uses can produce the same tag. The owner hash's input is
//! `tenant 0x00 subject` and the tenant hash's is the bare tenant (neither
//! name holds a control character, so an owner input holds exactly one
//! 0x00 and a tenant input none); both keep the form they were stored under.
//! Every other use ([`Domain`]) hashes `0x01`, its label and `0x00` first,
//! which no owner or tenant input can begin with. Log tags are a labelled
//! hash of the full keyed hash, never a piece of it: a collection name (a
//! prefix of the owner hash) cannot be read off a log line, nor the other
//! way round.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Default prefix of every collection (and shard directory) name.
pub const COLLECTION_PREFIX: &str = "cordon_";

/// Hex characters of the owner hash used in collection names by default
/// (128 bits: a collision among a billion users has odds near 1e-21).
pub const DEFAULT_NAME_HEX_CHARS: usize = 32;

/// Hex length of a full owner hash.
pub const OWNER_HEX_LEN: usize = 64;

/// The keyed identity of one user: every store call takes one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OwnerHash([u8; 32]);

impl OwnerHash {
    /// Derives the owner hash of `(tenant, subject)` under the server secret.
    pub fn derive(secret: &Secret, tenant: &str, subject: &str) -> Self {
        Self(keyed(
            secret,
            &[tenant.as_bytes(), &[0], subject.as_bytes()],
        ))
    }

    /// Lowercase hex of the full hash, as stored in point payloads.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses a full hash written by [`OwnerHash::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hex(text).map(Self)
    }

    /// Constant-time comparison against a hex string read back from storage.
    pub fn matches_hex(&self, stored: &str) -> bool {
        let mut decoded = [0u8; 32];
        if stored.len() != OWNER_HEX_LEN || hex::decode_to_slice(stored, &mut decoded).is_err() {
            return false;
        }
        self.0.ct_eq(&decoded).into()
    }

    /// Which of `buckets` this owner falls in (the hash is uniform, so its
    /// first 64 bits spread owners evenly); for striped locks.
    pub fn bucket(&self, buckets: usize) -> usize {
        let first: [u8; 8] = self.0[..8].try_into().expect("a 32-byte hash has 8 bytes");
        (u64::from_le_bytes(first) % buckets.max(1) as u64) as usize
    }

    /// A short, non-reversible tag for logs: enough to correlate lines, and
    /// no part of the hash, so no collection name can be read from it.
    pub fn log_tag(&self) -> String {
        log_tag(b"owner", &self.0)
    }

    /// Collection (or shard directory) name holding this owner's memories:
    /// the deployment's prefix (several may share one Qdrant) and the first
    /// `hex_chars` of the hash.
    pub fn collection_name(&self, prefix: &str, hex_chars: usize) -> String {
        let hex = self.to_hex();
        let n = hex_chars.clamp(1, OWNER_HEX_LEN);
        format!("{prefix}{}", &hex[..n])
    }
}

impl fmt::Debug for OwnerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerHash({}…)", self.log_tag())
    }
}

/// The keyed identity of one tenant, for the tenant registry and the audit
/// trail: `HMAC-SHA256(server_secret, tenant)`. No owner hash input lacks the
/// 0x00 separator and no tenant name holds one (control characters are
/// refused in claims), so a tenant hash never equals an owner hash.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantHash([u8; 32]);

impl TenantHash {
    /// Derives the hash of `tenant` under the server secret.
    pub fn derive(secret: &Secret, tenant: &str) -> Self {
        Self(keyed(secret, &[tenant.as_bytes()]))
    }

    /// Lowercase hex of the full hash.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses a full hash written by [`TenantHash::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        parse_hex(text).map(Self)
    }

    /// A short tag for logs, like [`OwnerHash::log_tag`].
    pub fn log_tag(&self) -> String {
        log_tag(b"tenant", &self.0)
    }
}

/// The uses of the server secret besides owner and tenant hashes, each
/// with a label of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Tags of client addresses in the audit trail.
    ClientAddress,
    /// Tags of collections (or shards) in quarantines, alerts and scope
    /// statements: a name says which owners' hashes it shares a prefix with.
    Place,
    /// Tags of bearer tokens without a `jti`, in users' access logs.
    Token,
    /// The seed of the receipt-signing key when no key file is configured.
    Signing,
    /// Names of users' access-log files.
    AccessLog,
}

impl Domain {
    fn label(self) -> &'static [u8] {
        match self {
            Domain::ClientAddress => b"client address",
            Domain::Place => b"place",
            Domain::Token => b"token",
            Domain::Signing => b"receipt signing key",
            Domain::AccessLog => b"access log file",
        }
    }
}

/// HMAC-SHA256 under the server secret of `parts`, in `domain`.
pub fn keyed_in(secret: &Secret, domain: Domain, parts: &[&[u8]]) -> [u8; 32] {
    let mut labelled: Vec<&[u8]> = vec![&[1], b"cordon/", domain.label(), &[0]];
    labelled.extend_from_slice(parts);
    keyed(secret, &labelled)
}

/// 12 hex digits of a labelled SHA-256 of a keyed hash.
fn log_tag(kind: &[u8], hash: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"cordon log tag v1\0")
        .chain_update(kind)
        .chain_update([0])
        .chain_update(hash)
        .finalize();
    hex::encode(&digest[..6])
}

/// HMAC-SHA256 of the concatenated `parts` under the server secret.
fn keyed(secret: &Secret, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose())
        .expect("HMAC-SHA256 accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// 32 bytes from 64 hex digits.
fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

impl fmt::Debug for TenantHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantHash({}…)", self.log_tag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(vec![7u8; 32])
    }

    #[test]
    fn the_separator_keeps_shifted_splits_apart() {
        let a = OwnerHash::derive(&secret(), "ab", "c");
        let b = OwnerHash::derive(&secret(), "a", "bc");
        assert_ne!(a, b);
    }

    #[test]
    fn the_hash_depends_on_the_server_secret() {
        let a = OwnerHash::derive(&secret(), "t", "u");
        let b = OwnerHash::derive(&Secret::new(vec![8u8; 32]), "t", "u");
        assert_ne!(a, b);
    }

    #[test]
    fn the_same_identity_always_maps_to_the_same_hash() {
        assert_eq!(
            OwnerHash::derive(&secret(), "t", "u"),
            OwnerHash::derive(&secret(), "t", "u")
        );
    }

    #[test]
    fn matches_hex_accepts_only_the_exact_hash() {
        let a = OwnerHash::derive(&secret(), "t", "u");
        let b = OwnerHash::derive(&secret(), "t", "v");
        assert!(a.matches_hex(&a.to_hex()));
        assert!(!a.matches_hex(&b.to_hex()));
        assert!(!a.matches_hex(&a.to_hex()[..63]));
        assert!(!a.matches_hex("zz"));
        assert!(!a.matches_hex(""));
    }

    #[test]
    fn no_two_uses_of_the_secret_produce_the_same_tag() {
        // Before labels, a client address tag was the owner hash of the
        // user whose tenant was "client address" and subject the address.
        let ip = "10.0.0.1";
        let client = keyed_in(&secret(), Domain::ClientAddress, &[ip.as_bytes()]);
        let owner = OwnerHash::derive(&secret(), "client address", ip);
        assert_ne!(client, owner.0);
        let owner = OwnerHash::derive(&secret(), "cordon/client address", ip);
        assert_ne!(client, owner.0);
        let tenant = TenantHash::derive(&secret(), "client address");
        assert_ne!(tenant.0, owner.0);
    }

    #[test]
    fn a_log_tag_is_no_part_of_the_hash_or_of_a_collection_name() {
        let a = OwnerHash::derive(&secret(), "t", "u");
        let tag = a.log_tag();
        assert_eq!(tag.len(), 12);
        assert!(!a.to_hex().contains(&tag));
        let tenant = TenantHash::derive(&secret(), "t");
        assert!(!tenant.to_hex().contains(&tenant.log_tag()));
        assert_eq!(tag, OwnerHash::derive(&secret(), "t", "u").log_tag());
    }

    #[test]
    fn collection_names_use_a_prefix_of_the_hash() {
        let a = OwnerHash::derive(&secret(), "t", "u");
        let name = a.collection_name(COLLECTION_PREFIX, DEFAULT_NAME_HEX_CHARS);
        assert_eq!(name, format!("cordon_{}", &a.to_hex()[..32]));
        assert_eq!(
            a.collection_name(COLLECTION_PREFIX, 1).len(),
            COLLECTION_PREFIX.len() + 1
        );
    }
}
