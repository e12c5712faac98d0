//! How the server engine sets up a user's collection on Qdrant: the settings
//! the README promises, read back from Qdrant itself.

use qdrant_client::qdrant::vectors_config::Config;
use qdrant_client::qdrant::{Distance, PayloadSchemaType};
use serde_json::json;

use crate::harness::{self, memory, qdrant_client, vector};

#[tokio::test]
// `on_disk` is what Qdrant 1.18 speaks; the client's newer `memory` field,
// which deprecates it, is unknown to 1.18 servers.
#[allow(deprecated)]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_user_collection_has_the_documented_settings() {
    let h = harness::qdrant(32, false).await;
    let alice = h.owner("alice");
    h.store
        .put(&alice, vec![memory("x", vector(0, 0.0), json!({}))])
        .await
        .expect("put");
    let prefix = h.qdrant_prefix().expect("a Qdrant harness");
    let name = alice.collection_name(prefix, 32);
    let info = qdrant_client()
        .collection_info(&name)
        .await
        .expect("collection info")
        .result
        .expect("info present");
    let config = info.config.expect("config");
    let params = config.params.expect("params");
    let Some(Config::Params(vectors)) = params.vectors_config.and_then(|v| v.config) else {
        panic!("one unnamed vector expected");
    };
    assert_eq!(vectors.size, 384);
    assert_eq!(vectors.distance, Distance::Cosine as i32);
    assert_eq!(vectors.on_disk, Some(true));
    assert!(params.on_disk_payload);
    assert_eq!(params.shard_number, 1);
    let wal = config.wal_config.expect("wal config");
    assert_eq!(wal.wal_capacity_mb, Some(1));
    assert_eq!(wal.wal_segments_ahead, Some(0));
    let optimizers = config.optimizer_config.expect("optimizer config");
    assert_eq!(optimizers.default_segment_number, Some(1));
    assert_eq!(config.hnsw_config.expect("hnsw").on_disk, Some(true));
    let owner_index = info.payload_schema.get("owner").expect("an index on owner");
    assert_eq!(owner_index.data_type, PayloadSchemaType::Keyword as i32);
}

#[tokio::test]
#[allow(deprecated)]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_shared_collection_indexes_owners_as_tenants_and_builds_no_global_graph() {
    use qdrant_client::qdrant::payload_index_params::IndexParams;

    let h = harness::qdrant(2, false).await;
    let alice = h.owner("alice");
    h.store
        .put(&alice, vec![memory("x", vector(0, 0.0), json!({}))])
        .await
        .expect("put");
    let prefix = h.qdrant_prefix().expect("a Qdrant harness");
    let info = qdrant_client()
        .collection_info(alice.collection_name(prefix, 2))
        .await
        .expect("collection info")
        .result
        .expect("info present");
    let hnsw = info
        .config
        .and_then(|c| c.hnsw_config)
        .expect("hnsw config");
    assert_eq!((hnsw.m, hnsw.payload_m), (Some(0), Some(16)));
    assert_eq!(hnsw.on_disk, Some(true));
    let owner_index = info.payload_schema.get("owner").expect("an index on owner");
    let Some(IndexParams::KeywordIndexParams(keyword)) = owner_index
        .params
        .as_ref()
        .and_then(|p| p.index_params.clone())
    else {
        panic!("a keyword index with parameters expected: {owner_index:?}");
    };
    assert_eq!(keyword.is_tenant, Some(true));
}
