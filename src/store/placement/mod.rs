//! Where a shared-tier user's memories live while and after they move to a
//! collection of their own: one record per promoted user.
//!
//! Users without a record live in their shared collection, which is nearly
//! everyone, so the registry stays small and each process holds all of it.
//! A record names its phase, the process moving the user (`mover`) and when
//! that mover last showed it was alive, and every change is a compare and
//! set on the whole record, so two processes can never both move one user
//! and a mover that lost its record (to an erase, or to a takeover after it
//! went silent) notices at its next step. The embedded engine keeps the
//! registry in `placements.json` in the data directory ([`file`]); on
//! Qdrant it is a system collection every replica shares ([`qdrant`]).

pub mod file;
pub mod qdrant;

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreError;
use crate::owner::OwnerHash;

pub use file::FilePlacements;
pub use qdrant::QdrantPlacements;

/// Where a promoted user's reads and writes go, in the order a move passes
/// through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writes go to both collections, reads to the shared one; the mover
    /// copies and checks.
    Copying,
    /// Writes go to both, reads to the user's own.
    Reading,
    /// Writes and reads go to the user's own; the mover deletes the shared copy.
    Clearing,
    /// Moved: only the user's own collection holds their memories.
    Own,
    /// An erase is removing the user from both collections; their requests
    /// wait (503) until it is done.
    Erasing,
}

impl Phase {
    /// The name stored in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Copying => "copying",
            Phase::Reading => "reading",
            Phase::Clearing => "clearing",
            Phase::Own => "own",
            Phase::Erasing => "erasing",
        }
    }

    /// The phase a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Phase::Copying,
            Phase::Reading,
            Phase::Clearing,
            Phase::Own,
            Phase::Erasing,
        ]
        .into_iter()
        .find(|phase| phase.as_str() == name)
    }

    /// Whether work is left for a mover (or an eraser) to finish.
    pub fn unfinished(self) -> bool {
        self != Phase::Own
    }
}

/// One user's record: their phase and who moves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Where the user's reads and writes go.
    pub phase: Phase,
    /// The process that set this record (each Cordon process names itself
    /// with a random UUID at start).
    #[serde(default)]
    pub mover: Uuid,
    /// When it was set, in milliseconds since the Unix epoch: a mover that
    /// stays silent much longer than a step takes is presumed gone.
    #[serde(default)]
    pub changed_at: u64,
}

impl Record {
    /// A record of `phase` set now by `mover`.
    pub fn now(phase: Phase, mover: Uuid) -> Self {
        Self {
            phase,
            mover,
            changed_at: now_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The registry's storage. Every change is conditional on what is there,
/// and a read after a change sees it.
#[async_trait]
pub trait Placements: Send + Sync {
    /// Every record, by owner hash (hex).
    async fn load(&self) -> Result<HashMap<String, Record>, StoreError>;
    /// The owner's record as stored now.
    async fn get(&self, owner: &OwnerHash) -> Result<Option<Record>, StoreError>;
    /// Writes `record` if the owner has none; returns the record held now
    /// (another one if another process was first).
    async fn create(&self, owner: &OwnerHash, record: Record)
    -> Result<Option<Record>, StoreError>;
    /// Replaces `expected` by `record`; whether `record` is held now (false
    /// if the record was no longer `expected`).
    async fn replace(
        &self,
        owner: &OwnerHash,
        expected: &Record,
        record: &Record,
    ) -> Result<bool, StoreError>;
    /// Writes `record` over whatever is there (an erase's mark, which
    /// overrides any move).
    async fn put(&self, owner: &OwnerHash, record: &Record) -> Result<(), StoreError>;
    /// Removes the owner's record if it is still `expected`.
    async fn remove(&self, owner: &OwnerHash, expected: &Record) -> Result<(), StoreError>;
    /// Removes every record (after `cordon tier migrate`).
    async fn clear(&self) -> Result<(), StoreError>;
}
