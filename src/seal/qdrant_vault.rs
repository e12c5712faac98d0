//! Wrapped data keys of the Qdrant engine: one vectorless point per owner in
//! the system collection `<prefix>keys`, shared by every replica.
//!
//! User collections are named `<prefix>` plus hex digits, so none can be
//! named `...keys`. A key is created with `insert_only` (a racing replica's
//! write cannot replace it) and re-wrapped with `update_only` filtered on the
//! KEK it was under (a key destroyed meanwhile is not brought back).

use std::collections::HashMap;

use async_trait::async_trait;
use qdrant_client::Payload;
use qdrant_client::qdrant::{
    Condition, DeletePointsBuilder, Filter, GetPointsBuilder, PointId, PointStruct, PointsIdsList,
    ScrollPointsBuilder, UpdateMode, UpsertPointsBuilder, Vector,
};
use uuid::Uuid;

use super::SealError;
use super::vault::{Marker, Vault, WrappedDek};
use crate::owner::OwnerHash;
use crate::settings::QdrantConnection;
use crate::store::qdrant::{Nodes, json_payload, scroll_payloads, store_err};

/// Suffix of the system collection's name, after the deployment's prefix.
pub const COLLECTION_SUFFIX: &str = "keys";

/// Wrapped keys in a Qdrant system collection.
pub struct QdrantVault {
    nodes: Nodes,
    name: String,
    timeout: std::time::Duration,
    replication: crate::settings::Replication,
}

fn point_id(owner: &OwnerHash) -> Uuid {
    // The owner hash is already a keyed hash; its first 128 bits name the
    // point.
    let hex = owner.to_hex();
    Uuid::parse_str(&hex[..32]).expect("32 hex digits are a UUID")
}

/// The marker's point: the nil UUID, which no owner's point id can be.
fn marker_id() -> Uuid {
    Uuid::nil()
}

fn vault_err(e: qdrant_client::QdrantError) -> SealError {
    SealError::Vault(store_err(e).to_string())
}

impl QdrantVault {
    /// A vault over `connection` in `<prefix>keys`; nothing is called yet.
    pub fn new(connection: &QdrantConnection, prefix: &str) -> Result<Self, SealError> {
        Ok(Self {
            nodes: Nodes::new(connection).map_err(|e| SealError::Vault(e.to_string()))?,
            name: format!("{prefix}{COLLECTION_SUFFIX}"),
            timeout: connection.timeout,
            replication: connection.replication,
        })
    }

    /// Runs `call` under the deadline (see [`Nodes::call`]).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, qdrant_client::QdrantError>>,
    ) -> Result<Result<T, qdrant_client::QdrantError>, SealError> {
        self.nodes
            .call(self.timeout, call)
            .await
            .map_err(|e| SealError::Vault(e.to_string()))
    }

    async fn exists(&self) -> Result<bool, SealError> {
        self.bounded(self.nodes.client().collection_exists(&self.name))
            .await?
            .map_err(vault_err)
    }

    /// Creates the collection unless it exists (replicas may race here).
    async fn ensure(&self) -> Result<(), SealError> {
        self.nodes
            .make_collection(self.timeout, &self.name, &self.replication)
            .await
            .map_err(|e| SealError::Vault(e.to_string()))
    }

    async fn read(&self, id: Uuid) -> Result<Option<Json>, SealError> {
        if !self.exists().await? {
            return Ok(None);
        }
        let found = self
            .bounded(
                self.nodes.client().get_points(
                    GetPointsBuilder::new(&self.name, vec![PointId::from(id.to_string())])
                        .with_payload(true)
                        .with_vectors(false),
                ),
            )
            .await?
            .map_err(vault_err)?;
        Ok(found
            .result
            .into_iter()
            .next()
            .map(|p| json_payload(p.payload)))
    }

    async fn write(
        &self,
        id: Uuid,
        payload: serde_json::Value,
        builder: impl FnOnce(UpsertPointsBuilder) -> UpsertPointsBuilder,
    ) -> Result<(), SealError> {
        self.ensure().await?;
        let payload = Payload::try_from(payload).expect("a wrapped key serialises to an object");
        let point = PointStruct::new(id.to_string(), HashMap::<String, Vector>::new(), payload);
        let request = builder(
            UpsertPointsBuilder::new(&self.name, vec![point])
                .wait(true)
                .ordering(crate::store::qdrant::ordering(&self.replication)),
        );
        let response = self
            .bounded(self.nodes.client().upsert_points(request))
            .await?
            .map_err(vault_err)?;
        crate::store::qdrant::confirmed(&response).map_err(|e| SealError::Vault(e.to_string()))
    }
}

fn parse(payload: Json) -> Result<WrappedDek, SealError> {
    serde_json::from_value(serde_json::Value::Object(payload))
        .map_err(|e| SealError::Corrupt(format!("a wrapped key in Qdrant: {e}")))
}

/// The wrapped key a payload holds; `None` for the marker.
fn key_of(payload: Json) -> Option<Result<WrappedDek, SealError>> {
    payload.contains_key("owner").then(|| parse(payload))
}

/// A point's payload as JSON.
type Json = serde_json::Map<String, serde_json::Value>;

fn to_json(dek: &WrappedDek) -> serde_json::Value {
    serde_json::to_value(dek).expect("a wrapped key always serialises")
}

#[async_trait]
impl Vault for QdrantVault {
    async fn get(&self, owner: &OwnerHash) -> Result<Option<WrappedDek>, SealError> {
        self.read(point_id(owner)).await?.map(parse).transpose()
    }

    async fn create(&self, owner: &OwnerHash, dek: WrappedDek) -> Result<WrappedDek, SealError> {
        let id = point_id(owner);
        // `insert_only` leaves an existing point alone; the filter, which no
        // point matches, does the same on a server that ignores the mode.
        let never = Filter::must([Condition::matches("kek", "-".to_owned())]);
        self.write(id, to_json(&dek), |b| {
            b.update_mode(UpdateMode::InsertOnly).update_filter(never)
        })
        .await?;
        self.get(owner)
            .await?
            .ok_or_else(|| SealError::Vault("a key just written is not there".into()))
    }

    async fn rewrap(
        &self,
        owner: &OwnerHash,
        under: &str,
        dek: WrappedDek,
    ) -> Result<bool, SealError> {
        if self
            .get(owner)
            .await?
            .is_none_or(|current| current.kek != under)
        {
            return Ok(false);
        }
        let id = point_id(owner);
        let still_under = Filter::must([Condition::matches("kek", under.to_owned())]);
        let expected = dek.clone();
        self.write(id, to_json(&dek), |b| {
            b.update_mode(UpdateMode::UpdateOnly)
                .update_filter(still_under)
        })
        .await?;
        Ok(self.get(owner).await? == Some(expected))
    }

    async fn destroy(&self, owner: &OwnerHash) -> Result<(), SealError> {
        if !self.exists().await? {
            return Ok(());
        }
        let ids = PointsIdsList {
            ids: vec![PointId::from(point_id(owner).to_string())],
        };
        let response = self
            .bounded(
                self.nodes.client().delete_points(
                    DeletePointsBuilder::new(&self.name)
                        .points(ids)
                        .wait(true)
                        .ordering(crate::store::qdrant::ordering(&self.replication)),
                ),
            )
            .await?
            .map_err(vault_err)?;
        crate::store::qdrant::confirmed(&response).map_err(|e| SealError::Vault(e.to_string()))
    }

    async fn all(&self) -> Result<Vec<WrappedDek>, SealError> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        let node = self.nodes.active();
        let payloads = scroll_payloads(self.nodes.client(), &self.name, None, self.timeout).await;
        self.nodes.note(node, &payloads);
        payloads
            .map_err(|e| SealError::Vault(e.to_string()))?
            .into_iter()
            .filter_map(key_of)
            .collect()
    }

    async fn any(&self) -> Result<Option<WrappedDek>, SealError> {
        if !self.exists().await? {
            return Ok(None);
        }
        // Two points: one of them may be the marker.
        let page = self
            .bounded(
                self.nodes.client().scroll(
                    ScrollPointsBuilder::new(&self.name)
                        .limit(2)
                        .with_payload(true)
                        .with_vectors(false),
                ),
            )
            .await?
            .map_err(vault_err)?;
        page.result
            .into_iter()
            .find_map(|point| key_of(json_payload(point.payload)))
            .transpose()
    }

    fn shared(&self) -> bool {
        true
    }

    async fn marker(&self) -> Result<Marker, SealError> {
        let text = self
            .read(marker_id())
            .await?
            .and_then(|p| p.get("format").and_then(|v| v.as_str()).map(str::to_owned))
            .unwrap_or_default();
        Marker::parse(&text)
    }

    async fn mark(&self, marker: Marker) -> Result<(), SealError> {
        self.write(
            marker_id(),
            serde_json::json!({ "format": marker.text() }),
            |b| b,
        )
        .await
    }
}
