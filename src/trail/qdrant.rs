//! The access logs of the Qdrant server engine: one vectorless point per
//! entry in the system collection `<prefix>access_log`, shared by every
//! replica. Each point carries its owner hash, indexed, and every read and
//! delete is made under the owner condition; the entries read back are
//! checked against the owner again ([`super::Trail`]). `seq` has an integer
//! index for paging newest first and for the retention sweep.

use std::collections::HashMap;

use async_trait::async_trait;
use qdrant_client::Payload;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    Direction, FieldType, Filter, OrderByBuilder, PointStruct, Range, ScrollPointsBuilder,
    UpsertPointsBuilder, Vector,
};

use super::{Record, TrailStore};
use crate::owner::OwnerHash;
use crate::settings::QdrantConnection;
use crate::store::StoreError;
use crate::store::qdrant::{Nodes, confirmed, json_payload, ordering, store_err};

/// Suffix of the system collection's name, after the deployment's prefix
/// (not hex, so never a user's collection).
pub const COLLECTION_SUFFIX: &str = "access_log";

/// The access logs in a Qdrant system collection.
pub struct QdrantTrail {
    nodes: Nodes,
    name: String,
    timeout: std::time::Duration,
    replication: crate::settings::Replication,
    ready: tokio::sync::OnceCell<()>,
}

fn owner_is(owner: &str) -> Condition {
    Condition::matches("owner", owner.to_owned())
}

fn seq_in(from: u64, to: u64) -> Condition {
    Condition::range(
        "seq",
        Range {
            gte: Some(from as f64),
            lt: (to != u64::MAX).then_some(to as f64),
            ..Range::default()
        },
    )
}

impl QdrantTrail {
    /// Logs over `connection` in `<prefix>access_log`; nothing is called yet.
    pub fn new(connection: &QdrantConnection, prefix: &str) -> Result<Self, StoreError> {
        Ok(Self {
            nodes: Nodes::new(connection)?,
            name: format!("{prefix}{COLLECTION_SUFFIX}"),
            timeout: connection.timeout,
            replication: connection.replication,
            ready: tokio::sync::OnceCell::new(),
        })
    }

    /// Creates the collection and its indexes, once per process.
    async fn ensure(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                self.nodes
                    .make_collection(self.timeout, &self.name, &self.replication)
                    .await?;
                for (field, kind) in [("owner", FieldType::Keyword), ("seq", FieldType::Integer)] {
                    self.call(self.nodes.client().create_field_index(
                        CreateFieldIndexCollectionBuilder::new(&self.name, field, kind).wait(true),
                    ))
                    .await?;
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, qdrant_client::QdrantError>>,
    ) -> Result<T, StoreError> {
        self.nodes
            .call(self.timeout, call)
            .await?
            .map_err(store_err)
    }

    async fn delete(&self, filter: Filter) -> Result<usize, StoreError> {
        self.ensure().await?;
        let n = self
            .call(
                self.nodes.client().count(
                    CountPointsBuilder::new(&self.name)
                        .filter(filter.clone())
                        .exact(true),
                ),
            )
            .await?
            .result
            .map_or(0, |r| r.count as usize);
        if n == 0 {
            return Ok(0);
        }
        let response = self
            .call(
                self.nodes.client().delete_points(
                    DeletePointsBuilder::new(&self.name)
                        .points(filter)
                        .wait(true)
                        .ordering(ordering(&self.replication)),
                ),
            )
            .await?;
        confirmed(&response)?;
        Ok(n)
    }
}

#[async_trait]
impl TrailStore for QdrantTrail {
    async fn append(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.ensure().await?;
        let points = records
            .into_iter()
            .map(|record| {
                let id = record.id.to_string();
                let json = serde_json::to_value(record).expect("a record always serialises");
                let payload = Payload::try_from(json).expect("a record is a JSON object");
                PointStruct::new(id, HashMap::<String, Vector>::new(), payload)
            })
            .collect::<Vec<_>>();
        let response = self
            .call(
                self.nodes.client().upsert_points(
                    UpsertPointsBuilder::new(&self.name, points)
                        .wait(true)
                        .ordering(ordering(&self.replication)),
                ),
            )
            .await?;
        confirmed(&response)
    }

    async fn page(
        &self,
        owner: &OwnerHash,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.ensure().await?;
        let filter = Filter::must([owner_is(&owner.to_hex()), seq_in(from, to)]);
        let page = self
            .call(
                self.nodes.client().scroll(
                    ScrollPointsBuilder::new(&self.name)
                        .filter(filter)
                        .limit(limit.min(u32::MAX as usize) as u32)
                        .with_payload(true)
                        .with_vectors(false)
                        .order_by(OrderByBuilder::new("seq").direction(Direction::Desc as i32)),
                ),
            )
            .await?;
        page.result
            .into_iter()
            .map(|point| {
                serde_json::from_value(serde_json::Value::Object(json_payload(point.payload)))
                    .map_err(|e| StoreError::Engine(format!("{}: {e}", self.name)))
            })
            .collect()
    }

    async fn erase(&self, owner: &OwnerHash) -> Result<usize, StoreError> {
        self.delete(Filter::must([owner_is(&owner.to_hex())])).await
    }

    async fn prune(&self, before: u64) -> Result<usize, StoreError> {
        self.delete(Filter::must([seq_in(0, before)])).await
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        self.ensure().await
    }
}
