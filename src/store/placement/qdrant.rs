//! The Qdrant engine's registry: one vectorless point per promoted user in
//! the system collection `<prefix>placements`, shared by every replica.
//!
//! User collections are named `<prefix>` plus hex digits, so none can be
//! named `...placements`. A record is created with `insert_only` (a racing
//! replica's record is left alone) and changed with `update_only` filtered
//! on the whole expected record, which Qdrant checks and applies as one
//! step on the collection's single shard. Writes are `strong`ly ordered
//! (through the shard's leader). The collection keeps a copy on every node
//! named (at least the deployment's replication factor), and both writes
//! and reads need a majority of the copies, so every read meets the last
//! acknowledged change; with three nodes, one may be down.
//!
//! The collection is made at the first call; from then on a missing one is
//! an error, never an empty registry (a node behind on the cluster's state
//! must not send every moved user back to the shared tier).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use qdrant_client::Payload;
use qdrant_client::qdrant::{
    Condition, DeletePointsBuilder, Filter, GetPointsBuilder, PointId, PointStruct,
    ReadConsistencyType, ScrollPointsBuilder, UpdateMode, UpsertPointsBuilder, Vector,
    WriteOrdering, WriteOrderingType, read_consistency,
};
use uuid::Uuid;

use super::{Phase, Placements, Record};
use crate::owner::OwnerHash;
use crate::settings::QdrantConnection;
use crate::store::StoreError;
use crate::store::qdrant::{Nodes, json_payload, store_err};

/// Suffix of the system collection's name, after the deployment's prefix.
pub const COLLECTION_SUFFIX: &str = "placements";

/// The registry in a Qdrant system collection.
pub struct QdrantPlacements {
    nodes: Nodes,
    name: String,
    timeout: std::time::Duration,
    replication: crate::settings::Replication,
    /// Whether the collection is known to exist.
    made: AtomicBool,
}

/// A point's payload as JSON.
type Json = serde_json::Map<String, serde_json::Value>;

fn point_id(owner: &OwnerHash) -> Uuid {
    // The owner hash is already a keyed hash; its first 128 bits name the
    // point.
    let hex = owner.to_hex();
    Uuid::parse_str(&hex[..32]).expect("32 hex digits are a UUID")
}

fn payload(owner: &OwnerHash, record: &Record) -> Payload {
    Payload::try_from(serde_json::json!({
        "owner": owner.to_hex(),
        "phase": record.phase.as_str(),
        "mover": record.mover.to_string(),
        "changed_at": record.changed_at as i64,
    }))
    .expect("a record serialises to an object")
}

/// The record a payload holds, with its owner (hex).
fn parse(payload: &Json) -> Option<(String, Record)> {
    let owner = payload.get("owner")?.as_str()?.to_owned();
    let record = Record {
        phase: Phase::parse(payload.get("phase")?.as_str()?)?,
        mover: Uuid::parse_str(payload.get("mover")?.as_str()?).ok()?,
        changed_at: payload.get("changed_at")?.as_i64()? as u64,
    };
    Some((owner, record))
}

/// Matches exactly the point of `owner` holding `record`.
fn holding(owner: &OwnerHash, record: &Record) -> Filter {
    Filter::must([
        Condition::has_id([PointId::from(point_id(owner).to_string())]),
        Condition::matches("phase", record.phase.as_str().to_owned()),
        Condition::matches("mover", record.mover.to_string()),
        Condition::matches("changed_at", record.changed_at as i64),
    ])
}

fn majority() -> read_consistency::Value {
    read_consistency::Value::Type(ReadConsistencyType::Majority as i32)
}

fn strong() -> WriteOrdering {
    WriteOrdering {
        r#type: WriteOrderingType::Strong as i32,
    }
}

impl QdrantPlacements {
    /// A registry over `connection` in `<prefix>placements`; nothing is
    /// called yet.
    pub fn new(connection: &QdrantConnection, prefix: &str) -> Result<Self, StoreError> {
        Ok(Self {
            nodes: Nodes::new(connection)?,
            name: format!("{prefix}{COLLECTION_SUFFIX}"),
            timeout: connection.timeout,
            replication: connection.replication,
            made: AtomicBool::new(false),
        })
    }

    /// Runs `call` under the deadline (see [`Nodes::call`]).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, qdrant_client::QdrantError>>,
    ) -> Result<T, StoreError> {
        self.nodes
            .call(self.timeout, call)
            .await?
            .map_err(store_err)
    }

    async fn exists(&self) -> Result<bool, StoreError> {
        self.bounded(self.nodes.client().collection_exists(&self.name))
            .await
    }

    /// Creates the collection unless it exists (replicas may race here);
    /// once per process.
    async fn ensure(&self) -> Result<(), StoreError> {
        if self.made.load(Ordering::Acquire) || self.exists().await? {
            self.made.store(true, Ordering::Release);
            return Ok(());
        }
        // A copy on every node named, and majorities for writes (below) and
        // reads (Qdrant's `majority`), which always overlap.
        let factor = self.replication.factor.max(self.nodes.count() as u32);
        let replication = crate::settings::Replication {
            factor,
            write_consistency: factor / 2 + 1,
        };
        self.nodes
            .make_collection(self.timeout, &self.name, &replication)
            .await?;
        self.made.store(true, Ordering::Release);
        Ok(())
    }

    async fn write(
        &self,
        owner: &OwnerHash,
        record: &Record,
        builder: impl FnOnce(UpsertPointsBuilder) -> UpsertPointsBuilder,
    ) -> Result<(), StoreError> {
        self.ensure().await?;
        let point = PointStruct::new(
            point_id(owner).to_string(),
            HashMap::<String, Vector>::new(),
            payload(owner, record),
        );
        let request = builder(
            UpsertPointsBuilder::new(&self.name, vec![point])
                .wait(true)
                .ordering(strong()),
        );
        let response = self
            .bounded(self.nodes.client().upsert_points(request))
            .await?;
        crate::store::qdrant::confirmed(&response)
    }
}

#[async_trait]
impl Placements for QdrantPlacements {
    async fn load(&self) -> Result<HashMap<String, Record>, StoreError> {
        self.ensure().await?;
        let mut records = HashMap::new();
        let mut offset = None;
        loop {
            let mut request = ScrollPointsBuilder::new(&self.name)
                .limit(1_000)
                .with_payload(true)
                .with_vectors(false)
                .read_consistency(majority());
            if let Some(offset) = offset.take() {
                request = request.offset(offset);
            }
            let page = self.bounded(self.nodes.client().scroll(request)).await?;
            records.extend(
                page.result
                    .into_iter()
                    .filter_map(|p| parse(&json_payload(p.payload))),
            );
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(records),
            }
        }
    }

    async fn get(&self, owner: &OwnerHash) -> Result<Option<Record>, StoreError> {
        self.ensure().await?;
        let found = self
            .bounded(
                self.nodes.client().get_points(
                    GetPointsBuilder::new(
                        &self.name,
                        vec![PointId::from(point_id(owner).to_string())],
                    )
                    .with_payload(true)
                    .with_vectors(false)
                    .read_consistency(majority()),
                ),
            )
            .await?;
        Ok(found
            .result
            .into_iter()
            .next()
            .and_then(|p| parse(&json_payload(p.payload)))
            .filter(|(hex, _)| *hex == owner.to_hex())
            .map(|(_, record)| record))
    }

    async fn create(
        &self,
        owner: &OwnerHash,
        record: Record,
    ) -> Result<Option<Record>, StoreError> {
        self.write(owner, &record, |b| b.update_mode(UpdateMode::InsertOnly))
            .await?;
        self.get(owner).await
    }

    async fn replace(
        &self,
        owner: &OwnerHash,
        expected: &Record,
        record: &Record,
    ) -> Result<bool, StoreError> {
        self.write(owner, record, |b| {
            b.update_mode(UpdateMode::UpdateOnly)
                .update_filter(holding(owner, expected))
        })
        .await?;
        Ok(self.get(owner).await? == Some(*record))
    }

    async fn put(&self, owner: &OwnerHash, record: &Record) -> Result<(), StoreError> {
        self.write(owner, record, |b| b).await
    }

    async fn remove(&self, owner: &OwnerHash, expected: &Record) -> Result<(), StoreError> {
        self.ensure().await?;
        let response = self
            .bounded(
                self.nodes.client().delete_points(
                    DeletePointsBuilder::new(&self.name)
                        .points(holding(owner, expected))
                        .wait(true)
                        .ordering(strong()),
                ),
            )
            .await?;
        crate::store::qdrant::confirmed(&response)
    }

    async fn clear(&self) -> Result<(), StoreError> {
        if !self.exists().await? {
            return Ok(());
        }
        self.bounded(self.nodes.client().delete_collection(&self.name))
            .await?;
        self.made.store(false, Ordering::Release);
        Ok(())
    }
}
