//! The change log of the Qdrant server engine: one point per change in the
//! system collection `<prefix>access`, shared by every replica.
//!
//! User collections are named `<prefix>` plus hex digits, so no user's
//! collection can ever be named `...access` (`s` is not a hex digit). The
//! points carry no vector; `at_ms` has an integer index so that replicas can
//! poll for recent changes cheaply.

use std::collections::HashMap;

use async_trait::async_trait;
use qdrant_client::Payload;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, FieldType, Filter,
    PointStruct, Range, UpsertPointsBuilder, Vector,
};

use super::rules::Change;
use super::{AccessError, AccessLog};
use crate::settings::QdrantConnection;
use crate::store::qdrant::{Nodes, scroll_payloads, store_err};

/// Suffix of the system collection's name, after the deployment's prefix.
pub const COLLECTION_SUFFIX: &str = "access";

/// The change log in a Qdrant system collection.
pub struct QdrantLog {
    nodes: Nodes,
    name: String,
    timeout: std::time::Duration,
    replication: crate::settings::Replication,
}

impl QdrantLog {
    /// A log over `connection` in `<prefix>access`; nothing is called yet.
    pub fn new(connection: &QdrantConnection, prefix: &str) -> Result<Self, AccessError> {
        Ok(Self {
            nodes: Nodes::new(connection).map_err(AccessError::Store)?,
            name: format!("{prefix}{COLLECTION_SUFFIX}"),
            timeout: connection.timeout,
            replication: connection.replication,
        })
    }

    /// Creates the collection and its index unless they exist (replicas may
    /// race here: "already exists" is success).
    async fn ensure(&self) -> Result<(), AccessError> {
        let exists = self
            .nodes
            .client()
            .collection_exists(&self.name)
            .await
            .map_err(|e| AccessError::Store(store_err(e)))?;
        if !exists
            && let Err(e) = self
                .nodes
                .client()
                .create_collection(crate::store::qdrant::replicated(
                    CreateCollectionBuilder::new(&self.name),
                    &self.replication,
                ))
                .await
        {
            let exists = self
                .nodes
                .client()
                .collection_exists(&self.name)
                .await
                .map_err(|e| AccessError::Store(store_err(e)))?;
            if !exists {
                return Err(AccessError::Store(store_err(e)));
            }
        }
        self.nodes
            .client()
            .create_field_index(
                CreateFieldIndexCollectionBuilder::new(&self.name, "at_ms", FieldType::Integer)
                    .wait(true),
            )
            .await
            .map_err(|e| AccessError::Store(store_err(e)))?;
        Ok(())
    }

    async fn scroll(&self, filter: Option<Filter>) -> Result<Vec<Change>, AccessError> {
        let node = self.nodes.active();
        let payloads = scroll_payloads(self.nodes.client(), &self.name, filter, self.timeout).await;
        // A poll that fails on a dead node moves on, so the next poll asks
        // another: revocations made elsewhere keep arriving.
        self.nodes.note(node, &payloads);
        payloads
            .map_err(AccessError::Store)?
            .into_iter()
            .map(|json| {
                serde_json::from_value(serde_json::Value::Object(json))
                    .map_err(|e| AccessError::Corrupt(format!("{}: {e}", self.name)))
            })
            .collect()
    }

    /// Runs `call` under the deadline (see [`Nodes::call`]).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, qdrant_client::QdrantError>>,
    ) -> Result<Result<T, qdrant_client::QdrantError>, AccessError> {
        self.nodes
            .call(self.timeout, call)
            .await
            .map_err(AccessError::Store)
    }
}

#[async_trait]
impl AccessLog for QdrantLog {
    async fn load(&self) -> Result<Vec<Change>, AccessError> {
        let node = self.nodes.active();
        let ensured = self.ensure().await;
        if let Err(AccessError::Store(crate::store::StoreError::Unavailable(_))) = &ensured {
            self.nodes.failed(node);
        }
        ensured?;
        self.scroll(None).await
    }

    async fn since(&self, since_ms: u64) -> Result<Vec<Change>, AccessError> {
        let range = Range {
            gte: Some(since_ms as f64),
            ..Range::default()
        };
        self.scroll(Some(Filter::must([Condition::range("at_ms", range)])))
            .await
    }

    async fn append(&self, change: &Change) -> Result<(), AccessError> {
        let json = serde_json::to_value(change).expect("a change always serialises");
        let payload = Payload::try_from(json).expect("a change serialises to a JSON object");
        let point = PointStruct::new(
            change.id.to_string(),
            HashMap::<String, Vector>::new(),
            payload,
        );
        let response = self
            .bounded(
                self.nodes.client().upsert_points(
                    UpsertPointsBuilder::new(&self.name, vec![point])
                        .wait(true)
                        .ordering(crate::store::qdrant::ordering(&self.replication)),
                ),
            )
            .await?
            .map_err(|e| AccessError::Store(store_err(e)))?;
        crate::store::qdrant::confirmed(&response).map_err(AccessError::Store)
    }

    fn shared(&self) -> bool {
        true
    }
}
