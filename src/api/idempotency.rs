//! `Idempotency-Key` on `POST /v1/memories`: a retried write stores nothing twice.
//!
//! The ids of an idempotent write are derived from the caller's owner hash,
//! the key and each item's index, so a retry (even one racing an original
//! that is still in flight) is an upsert of the very same points rather than
//! a second copy. Each point also keeps a digest of the request body; a
//! retry whose body differs is refused instead of overwriting. Nothing but the
//! memories themselves holds this state, so it survives restarts and works
//! the same on every engine, for as long as the memories exist.
//!
//! Concurrent attempts under one key are settled in two places. Within a
//! process, [`KeyedWrites`] lets one attempt per key run at a time: another
//! one with a different body is refused at once (409 `idempotency_conflict`),
//! one with the same body waits for the first's outcome and answers as it
//! did (or runs itself if the first failed). An attempt's write runs to its
//! end in a task of its own, so a request cut off by its timeout never frees
//! the key while its write is applied but not yet durable. A retry that did
//! not see an earlier attempt succeed cannot tell a durable point from one a
//! failed flush left readable, so it writes what it finds once more (over
//! the points that still exist, so a delete meanwhile stays) and answers
//! only once that is durable. Across replicas, a keyed write
//! only ever inserts points that do not exist yet (the engine's
//! insert-if-absent), and is read back: if another replica's attempt with a
//! different body got there first, this one is refused the same way.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::ApiError;
use crate::owner::OwnerHash;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// The caller's `Idempotency-Key`, if the request carries one.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(Self(None));
        };
        let invalid = || ApiError::BadRequest {
            code: "invalid_idempotency_key",
            message: format!(
                "`Idempotency-Key` must be 1 to {MAX_KEY_BYTES} visible ASCII characters"
            ),
        };
        let key = value.to_str().map_err(|_| invalid())?;
        let visible = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > MAX_KEY_BYTES || !visible {
            return Err(invalid());
        }
        Ok(Self(Some(key.to_owned())))
    }
}

/// The keyed writes running in this process, by owner and key.
#[derive(Default)]
pub struct KeyedWrites {
    running: Mutex<HashMap<(OwnerHash, String), Running>>,
}

/// One keyed write in progress: its body's digest and, once it ends,
/// whether it stored its memories.
#[derive(Clone)]
struct Running {
    digest: String,
    outcome: watch::Receiver<Option<bool>>,
}

/// The right to run the keyed write of `(owner, key)`; its drop ends it
/// (as failed, unless [`Claim::succeeded`] said otherwise).
pub struct Claim {
    writes: Arc<KeyedWrites>,
    slot: (OwnerHash, String),
    outcome: watch::Sender<Option<bool>>,
    succeeded: bool,
}

impl Claim {
    /// Marks the write as stored: attempts waiting on it answer as it did.
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.writes.running.lock().remove(&self.slot);
        let _ = self.outcome.send(Some(self.succeeded));
    }
}

impl KeyedWrites {
    /// Claims the keyed write of `(owner, key)` for a body with `digest`.
    /// While another attempt holds it, a different body is refused with
    /// 409 `idempotency_conflict`; the same body waits for that attempt:
    /// `Ok(None)` when it stored its memories (answer with the same ids),
    /// a claim of its own when it failed.
    pub async fn claim(
        self: &Arc<Self>,
        owner: &OwnerHash,
        key: &str,
        digest: &str,
    ) -> Result<Option<Claim>, ApiError> {
        let slot = (owner.clone(), key.to_owned());
        loop {
            let running = {
                let mut table = self.running.lock();
                match table.get(&slot) {
                    Some(running) => running.clone(),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        table.insert(
                            slot.clone(),
                            Running {
                                digest: digest.to_owned(),
                                outcome: receiver,
                            },
                        );
                        return Ok(Some(Claim {
                            writes: self.clone(),
                            slot,
                            outcome: sender,
                            succeeded: false,
                        }));
                    }
                }
            };
            if running.digest != digest {
                return Err(ApiError::IdempotencyConflict);
            }
            let mut outcome = running.outcome;
            // A dropped sender without an outcome is a failed attempt.
            let stored = outcome
                .wait_for(Option::is_some)
                .await
                .map(|o| *o == Some(true))
                .unwrap_or(false);
            if stored {
                return Ok(None);
            }
        }
    }
}

/// The id of item `index` of the write `key` by `owner`.
pub fn derive_id(owner: &OwnerHash, key: &str, index: usize) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"cordon-idempotency-v1\0");
    hash.update(owner.to_hex().as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    hash.update([0]);
    hash.update((index as u64).to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A digest of the items a write stores (texts and metadata, in order).
pub fn body_digest(items: &[(String, Map<String, Value>)]) -> String {
    let mut hash = Sha256::new();
    for (text, metadata) in items {
        // Length-prefixed, so that no two different item lists share a digest;
        // keys sorted, so that a client re-encoding the same body matches.
        let meta = canonical(&Value::Object(metadata.clone())).to_string();
        for part in [text.as_bytes(), meta.as_bytes()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
    }
    hex::encode(hash.finalize())
}

/// `value` with every object's keys in sorted order.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn owner(sub: &str) -> OwnerHash {
        OwnerHash::derive(&Secret::new(vec![7u8; 32]), "t", sub)
    }

    #[tokio::test]
    async fn a_second_attempt_with_another_body_is_refused_and_with_the_same_body_waits() {
        let writes = Arc::new(KeyedWrites::default());
        let alice = owner("alice");
        let first = writes
            .claim(&alice, "k", "digest-a")
            .await
            .expect("first")
            .expect("a claim");
        assert!(matches!(
            writes.claim(&alice, "k", "digest-b").await,
            Err(ApiError::IdempotencyConflict)
        ));
        // Another owner's key of the same name is another write.
        let bobs = writes.claim(&owner("bob"), "k", "digest-b").await;
        assert!(matches!(bobs, Ok(Some(_))));
        let waiter = {
            let (writes, alice) = (writes.clone(), alice.clone());
            tokio::spawn(async move {
                writes
                    .claim(&alice, "k", "digest-a")
                    .await
                    .map(|c| c.is_none())
            })
        };
        tokio::task::yield_now().await;
        first.succeeded();
        assert!(
            matches!(waiter.await.expect("joins"), Ok(true)),
            "answered as the first did"
        );
    }

    #[tokio::test]
    async fn a_waiting_attempt_runs_itself_when_the_first_one_failed() {
        let writes = Arc::new(KeyedWrites::default());
        let alice = owner("alice");
        let first = writes
            .claim(&alice, "k", "d")
            .await
            .expect("ok")
            .expect("claim");
        let waiter = {
            let (writes, alice) = (writes.clone(), alice.clone());
            tokio::spawn(async move { writes.claim(&alice, "k", "d").await.map(|c| c.is_some()) })
        };
        tokio::task::yield_now().await;
        drop(first);
        assert!(
            matches!(waiter.await.expect("joins"), Ok(true)),
            "got a claim of its own"
        );
        assert!(
            writes.running.lock().is_empty(),
            "every claim ended with its attempt"
        );
    }

    #[test]
    fn ids_depend_on_owner_key_and_index_only() {
        let (alice, bob) = (owner("alice"), owner("bob"));
        assert_eq!(derive_id(&alice, "k", 0), derive_id(&alice, "k", 0));
        assert_ne!(derive_id(&alice, "k", 0), derive_id(&alice, "k", 1));
        assert_ne!(derive_id(&alice, "k", 0), derive_id(&alice, "k2", 0));
        assert_ne!(derive_id(&alice, "k", 0), derive_id(&bob, "k", 0));
    }

    #[test]
    fn the_digest_tells_bodies_apart() {
        let item = |t: &str| (t.to_owned(), Map::new());
        let one = body_digest(&[item("ab"), item("c")]);
        assert_eq!(one, body_digest(&[item("ab"), item("c")]));
        assert_ne!(one, body_digest(&[item("a"), item("bc")]));
        assert_ne!(one, body_digest(&[item("ab")]));
    }

    #[test]
    fn the_digest_ignores_the_order_of_metadata_keys() {
        let with = |json: &str| {
            let Value::Object(m) = serde_json::from_str(json).unwrap() else {
                unreachable!("literal objects")
            };
            body_digest(&[("t".to_owned(), m)])
        };
        assert_eq!(
            with(r#"{"a":1,"b":{"x":1,"y":2}}"#),
            with(r#"{"b":{"y":2,"x":1},"a":1}"#)
        );
        assert_ne!(with(r#"{"a":1}"#), with(r#"{"a":2}"#));
    }
}
