//! Where wrapped data keys live: apart from every user's memories, so a copy
//! of one user's shard or collection does not carry its key.
//!
//! The embedded engine keeps them in `<data>/keys/` ([`super::file_vault`]),
//! the Qdrant engine in the system collection `<prefix>keys`
//! ([`super::qdrant_vault`]). Either also holds the marker that says the
//! deployment's memories are sealed, so that a server started without a KEK
//! on sealed data (or with one on plain data) refuses to start.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::SealError;
use crate::owner::OwnerHash;

/// One user's data key, wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDek {
    /// The owner hash (hex) the key belongs to.
    pub owner: String,
    /// Id of the KEK that wrapped it.
    pub kek: String,
    /// The wrapped key, base64.
    pub wrapped: String,
}

/// A store of wrapped data keys, one per owner.
#[async_trait]
pub trait Vault: Send + Sync {
    /// The owner's wrapped key, if it has one.
    async fn get(&self, owner: &OwnerHash) -> Result<Option<WrappedDek>, SealError>;
    /// Stores `dek` unless the owner already has a key; returns the key the
    /// vault holds afterwards, which is the other one when a racing writer
    /// (another request, another replica) got there first.
    async fn create(&self, owner: &OwnerHash, dek: WrappedDek) -> Result<WrappedDek, SealError>;
    /// Replaces the owner's key with `dek` if it is still wrapped by the KEK
    /// `under`; `false` (nothing written) when it is gone or was changed.
    async fn rewrap(
        &self,
        owner: &OwnerHash,
        under: &str,
        dek: WrappedDek,
    ) -> Result<bool, SealError>;
    /// Destroys the owner's key; durable when this returns.
    async fn destroy(&self, owner: &OwnerHash) -> Result<(), SealError>;
    /// Every wrapped key (for rotation).
    async fn all(&self) -> Result<Vec<WrappedDek>, SealError>;
    /// What the deployment's marker says.
    async fn marker(&self) -> Result<Marker, SealError>;
    /// Sets the marker; durable when this returns.
    async fn mark(&self, marker: Marker) -> Result<(), SealError>;
    /// One wrapped key, if there is any (the start-up check that the
    /// configured KEKs open the vault).
    async fn any(&self) -> Result<Option<WrappedDek>, SealError>;
    /// Whether other processes write this vault too (replicas on one
    /// Qdrant): then a cached key may have been destroyed elsewhere.
    fn shared(&self) -> bool;
}

/// The deployment's state of encryption at rest, kept next to the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// No marker: memories are stored in the clear (or there are none).
    Plain,
    /// `cordon keys migrate` has begun sealing plain memories.
    Sealing,
    /// Every memory is sealed.
    Sealed,
}

impl Marker {
    /// The marker's stored text (none for [`Marker::Plain`]).
    pub fn text(self) -> &'static str {
        match self {
            Marker::Plain => "",
            Marker::Sealing => "cordon sealing v1",
            Marker::Sealed => "cordon sealed v1",
        }
    }

    /// The marker a stored text stands for; an unknown text is refused
    /// rather than guessed.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        match text.trim() {
            "" => Ok(Marker::Plain),
            t if t == Marker::Sealing.text() => Ok(Marker::Sealing),
            t if t == Marker::Sealed.text() => Ok(Marker::Sealed),
            other => Err(SealError::Corrupt(format!(
                "unknown encryption marker `{other}`"
            ))),
        }
    }
}
