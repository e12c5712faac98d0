//! The last check before a memory leaves the process.
//!
//! Engines already filter on the owner hash, but a filter is a query detail
//! that a bug, a truncated-name collision or a misconfigured engine can lose.
//! [`Guard::admit`] re-reads the owner hash stored in each point's payload and
//! compares it, in constant time, with the caller's. A mismatch is dropped,
//! logged as `cross_tenant_leak_detected` (hashed identifiers only) and
//! counted. [`Memory`] has no public constructor, so a handler cannot return
//! a memory that did not pass here.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::owner::OwnerHash;
use crate::store::{
    CREATED_FIELD, EXPIRES_FIELD, METADATA_FIELD, OWNER_FIELD, REQUEST_FIELD, RawPoint, TEXT_FIELD,
    UPDATED_FIELD, VERSION_FIELD,
};

/// A memory verified to belong to the caller.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Memory {
    id: Uuid,
    text: String,
    /// The metadata stored with it (an empty object when none was).
    #[schema(value_type = Object)]
    metadata: Map<String, Value>,
    /// Milliseconds since the Unix epoch at the store.
    created_at: i64,
    /// Rises by one with each update (1 when stored); the `ETag`.
    version: u64,
    /// Milliseconds since the Unix epoch at the last update (absent if none).
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<i64>,
    /// Milliseconds since the Unix epoch when it expires (absent if never).
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    /// Similarity to the query (searches only).
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip)]
    request: Option<String>,
}

impl Memory {
    /// The memory's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The memory's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What the memory counts towards its owner's byte quota: its text and
    /// its metadata as JSON.
    pub fn stored_bytes(&self) -> u64 {
        stored_bytes(&self.text, &self.metadata)
    }

    /// When it was stored, Unix milliseconds.
    pub fn created_at(&self) -> i64 {
        self.created_at
    }

    /// Its metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// Its version: 1 when stored, one more with each update.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When it expires, Unix milliseconds.
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }

    /// The similarity score, for search results.
    pub fn score(&self) -> Option<f32> {
        self.score
    }

    /// The same memory with another score (a keyword or fused ranking's).
    pub fn with_score(mut self, score: f32) -> Self {
        self.score = Some(score);
        self
    }

    /// Digest of the idempotent request that stored it, if one did.
    pub fn request_digest(&self) -> Option<&str> {
        self.request.as_deref()
    }
}

/// Bytes a memory of `text` and `metadata` counts towards its owner's quota.
pub fn stored_bytes(text: &str, metadata: &Map<String, Value>) -> u64 {
    let metadata = serde_json::to_string(metadata).map_or(0, |m| m.len());
    (text.len() + metadata) as u64
}

/// Re-checks every point against its owner.
#[derive(Clone)]
pub struct Guard {
    metrics: Arc<Metrics>,
}

impl Guard {
    /// A guard that counts its drops in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    /// Keeps the points whose stored owner is `owner`; drops and reports the rest.
    pub fn admit(
        &self,
        owner: &OwnerHash,
        points: Vec<RawPoint>,
        path: &'static str,
    ) -> Vec<Memory> {
        points
            .into_iter()
            .filter_map(|point| self.check(owner, point, path))
            .collect()
    }

    /// Keeps the points whose stored owner is `owner`, still as stored;
    /// drops and reports the rest.
    pub fn owned(
        &self,
        owner: &OwnerHash,
        points: Vec<RawPoint>,
        path: &'static str,
    ) -> Vec<RawPoint> {
        points
            .into_iter()
            .filter(|point| self.is_owner(owner, point, path))
            .collect()
    }

    fn is_owner(&self, owner: &OwnerHash, point: &RawPoint, path: &'static str) -> bool {
        let stored = point.payload.get(OWNER_FIELD).and_then(Value::as_str);
        if !stored.is_some_and(|s| owner.matches_hex(s)) {
            self.metrics.guard_dropped(path);
            // The stored owner's log tag, never a piece of its hash (which
            // would be a piece of a collection name).
            let stored_tag = match stored {
                None => "<missing>".to_owned(),
                Some(s) => OwnerHash::from_hex(s).map_or("<malformed>".to_owned(), |o| o.log_tag()),
            };
            crate::audit::guard_dropped(owner, &stored_tag, path);
            tracing::error!(
                event = "cross_tenant_leak_detected",
                caller = %owner.log_tag(),
                stored_owner = %stored_tag,
                point = %point.id,
                path,
                "cross_tenant_leak_detected: dropped a point whose owner is not the caller"
            );
            return false;
        }
        true
    }

    fn check(&self, owner: &OwnerHash, mut point: RawPoint, path: &'static str) -> Option<Memory> {
        if !self.is_owner(owner, &point, path) {
            return None;
        }
        let text = match point.payload.remove(TEXT_FIELD) {
            Some(Value::String(s)) => s,
            _ => {
                tracing::error!(point = %point.id, "stored point has no text; skipped");
                return None;
            }
        };
        let metadata = match point.payload.remove(METADATA_FIELD) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let created_at = point
            .payload
            .get(CREATED_FIELD)
            .and_then(Value::as_i64)
            .unwrap_or_default();
        let request = match point.payload.remove(REQUEST_FIELD) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let number = |field| point.payload.get(field).and_then(Value::as_i64);
        Some(Memory {
            id: point.id,
            text,
            metadata,
            created_at,
            version: point
                .payload
                .get(VERSION_FIELD)
                .and_then(Value::as_u64)
                .unwrap_or(1),
            updated_at: number(UPDATED_FIELD),
            expires_at: number(EXPIRES_FIELD),
            score: point.score,
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::secret::Secret;

    fn point(owner: &OwnerHash, text: &str) -> RawPoint {
        let payload =
            json!({ "owner": owner.to_hex(), "text": text, "metadata": {}, "created_at": 1 });
        RawPoint {
            id: Uuid::now_v7(),
            score: Some(0.5),
            payload: payload.as_object().cloned().expect("literal is an object"),
            vector: None,
        }
    }

    #[test]
    fn foreign_points_are_dropped_and_counted() {
        let secret = Secret::new(vec![1u8; 32]);
        let alice = OwnerHash::derive(&secret, "t", "alice");
        let bob = OwnerHash::derive(&secret, "t", "bob");
        let metrics = Arc::new(Metrics::default());
        let guard = Guard::new(metrics.clone());
        let out = guard.admit(
            &alice,
            vec![point(&alice, "mine"), point(&bob, "theirs")],
            "search",
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text(), "mine");
        assert_eq!(metrics.guard_dropped_total(), 1);
    }

    #[test]
    fn a_point_without_an_owner_is_dropped() {
        let secret = Secret::new(vec![1u8; 32]);
        let alice = OwnerHash::derive(&secret, "t", "alice");
        let metrics = Arc::new(Metrics::default());
        let mut p = point(&alice, "x");
        p.payload.remove("owner");
        assert!(
            Guard::new(metrics.clone())
                .admit(&alice, vec![p], "get")
                .is_empty()
        );
        assert_eq!(metrics.guard_dropped_total(), 1);
    }
}
