//! Promotion out of the shared tier on Qdrant, with two replicas sharing
//! the registry as two Cordon processes do: one moves a user while the
//! other serves them, erases them, or takes over a move whose mover went
//! silent. The timing is shortened (a wait of about 3 s after each phase
//! change) so that a move takes seconds; the protocol is the one a server
//! runs.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cordon::metrics::Metrics;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::settings::QdrantConnection;
use cordon::store::placement::{Phase, Placements, QdrantPlacements, Record};
use cordon::store::tiered::{Fleet, Tiered};
use cordon::store::{Engine, NewMemory};
use parking_lot::Mutex;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{TestCollections, memory, qdrant_engine, qdrant_url, vector};

const FLEET: Fleet = Fleet {
    refresh: Duration::from_millis(100),
    valid: Duration::from_secs(1),
    op_bound: Duration::from_secs(2),
    lease: Duration::from_secs(4),
};

/// One Qdrant, its shared and per-user namings and registry, under a
/// prefix of the test's own.
struct Deployment {
    collections: TestCollections,
    shared: Arc<dyn Engine>,
    own: Arc<dyn Engine>,
    placements: Arc<dyn Placements>,
}

impl Deployment {
    fn new() -> Self {
        let collections = TestCollections::new();
        let prefix = collections.prefix().to_owned();
        let connection = QdrantConnection {
            url: qdrant_url(),
            api_key: std::env::var("QDRANT_API_KEY").ok().map(Secret::new),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            replication: Default::default(),
        };
        Self {
            shared: qdrant_engine(&prefix, 1, false),
            own: qdrant_engine(&prefix, 32, false),
            placements: Arc::new(
                QdrantPlacements::new(&connection, &prefix).expect("client builds"),
            ),
            collections,
        }
    }

    /// A replica: a process's view of the deployment, with a mover id of
    /// its own and its background registry reads started.
    async fn replica(&self, threshold: u64) -> Arc<Tiered> {
        let tiered = Tiered::open(
            self.collections.prefix(),
            self.shared.clone(),
            self.own.clone(),
            self.placements.clone(),
            threshold,
            Some(FLEET),
            Arc::new(Metrics::default()),
        );
        tiered.resume().await;
        tiered
    }

    async fn phase(&self, owner: &OwnerHash) -> Option<Phase> {
        self.placements
            .get(owner)
            .await
            .expect("the registry reads")
            .map(|r| r.phase)
    }

    async fn until(&self, owner: &OwnerHash, phase: Option<Phase>) {
        for _ in 0..600 {
            if self.phase(owner).await == phase {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the user never reached {phase:?}");
    }
}

fn owner(sub: &str) -> OwnerHash {
    OwnerHash::derive(&Secret::new(vec![9u8; 32]), "promotion", sub)
}

fn memories(n: usize) -> Vec<NewMemory> {
    (0..n)
        .map(|i| memory(&format!("memory {i}"), vector(i, 0.1), json!({})))
        .collect()
}

/// The acknowledged ids no delete has begun for.
fn live(acked: &Mutex<Vec<Uuid>>, deleting: &Mutex<HashSet<Uuid>>) -> BTreeSet<Uuid> {
    let deleting = deleting.lock();
    acked
        .lock()
        .iter()
        .filter(|id| !deleting.contains(id))
        .copied()
        .collect()
}

/// Every id the owner lists through `engine`, page by page.
async fn listed(engine: &dyn Engine, owner: &OwnerHash) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let page = engine
            .scroll(owner, after, 7, &Default::default())
            .await
            .expect("lists");
        ids.extend(page.points.iter().map(|p| p.id));
        match page.next {
            Some(next) => after = Some(next),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_user_moves_on_one_replica_while_another_serves_them_with_nothing_missing_or_doubled() {
    let d = Deployment::new();
    let (mover, server) = (d.replica(0).await, d.replica(0).await);
    let (a, b): (Arc<dyn Engine>, Arc<dyn Engine>) =
        (Arc::new(mover.clone()), Arc::new(server.clone()));
    let (alice, neighbour) = (owner("alice"), owner("neighbour"));
    b.upsert(&neighbour, memories(1)).await.expect("stored");
    let first = memories(30);
    let acked = Arc::new(Mutex::new(first.iter().map(|m| m.id).collect::<Vec<_>>()));
    b.upsert(&alice, first).await.expect("stored");
    let deleting = Arc::new(Mutex::new(HashSet::<Uuid>::new()));

    let moving = tokio::spawn(mover.clone().promote(alice.clone()));
    // The other replica stores and deletes until the move is over.
    let writer = {
        let (b, alice, acked, deleting) =
            (b.clone(), alice.clone(), acked.clone(), deleting.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !moving.is_finished() {
                let m = memory(&format!("later {n}"), vector(n, 0.3), json!({}));
                let id = m.id;
                b.upsert(&alice, vec![m])
                    .await
                    .expect("stored during the move");
                acked.lock().push(id);
                if n % 4 == 3 {
                    let gone = acked.lock()[n];
                    deleting.lock().insert(gone);
                    b.delete(&alice, gone)
                        .await
                        .expect("deleted during the move");
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let mut lists = 0;
    while !writer.is_finished() {
        let must = live(&acked, &deleting);
        // Both replicas route by their own view of the registry.
        let through = if lists % 2 == 0 { &a } else { &b };
        let ids = listed(through.as_ref(), &alice).await;
        let seen: BTreeSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(seen.len(), ids.len(), "a list held a memory twice");
        let deleting = deleting.lock().clone();
        let missed: Vec<_> = must
            .iter()
            .filter(|id| !seen.contains(id) && !deleting.contains(id))
            .collect();
        assert!(
            missed.is_empty(),
            "a list missed acknowledged memories: {missed:?}"
        );
        lists += 1;
    }
    let written = writer.await.expect("the writer finished");
    assert_eq!(d.phase(&alice).await, Some(Phase::Own), "the move finished");
    assert!(
        written > 20 && lists > 20,
        "{written} writes, {lists} lists"
    );

    let expected = live(&acked, &deleting);
    for replica in [&a, &b] {
        let ids = listed(replica.as_ref(), &alice).await;
        assert_eq!(ids.len(), expected.len());
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
    }
    assert_eq!(
        d.shared.count(&alice).await.expect("counts"),
        0,
        "a shared copy stayed"
    );
    assert_eq!(d.own.count(&alice).await.expect("counts"), expected.len());
    assert_eq!(listed(b.as_ref(), &neighbour).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn an_erase_on_one_replica_during_a_move_on_another_leaves_nothing_anywhere() {
    let d = Deployment::new();
    let (mover, eraser) = (d.replica(0).await, d.replica(0).await);
    let (a, b): (Arc<dyn Engine>, Arc<dyn Engine>) =
        (Arc::new(mover.clone()), Arc::new(eraser.clone()));
    let alice = owner("alice");
    b.upsert(&alice, memories(40)).await.expect("stored");
    let moving = tokio::spawn(mover.clone().promote(alice.clone()));
    d.until(&alice, Some(Phase::Copying)).await;
    // Once the eraser's view holds the move (an erase routed by an older
    // view is one the move's first wait lets finish before any copy).
    tokio::time::sleep(FLEET.valid + FLEET.refresh).await;

    assert_eq!(b.erase(&alice).await.expect("erased"), 40);
    moving.await.expect("the mover ended");
    assert_eq!(d.phase(&alice).await, None, "the registry forgot the user");
    assert_eq!(d.shared.count(&alice).await.expect("counts"), 0);
    assert_eq!(d.own.count(&alice).await.expect("counts"), 0);
    // A replica whose view still holds the erase answers 503 until it reads
    // the registry again.
    tokio::time::sleep(FLEET.valid + FLEET.refresh).await;
    for replica in [&a, &b] {
        assert!(listed(replica.as_ref(), &alice).await.is_empty());
    }
    // The user starts again in the shared tier, served by both.
    b.upsert(&alice, memories(2))
        .await
        .expect("stored after the erase");
    tokio::time::sleep(FLEET.valid).await;
    assert_eq!(listed(a.as_ref(), &alice).await.len(), 2);
    assert_eq!(d.shared.count(&alice).await.expect("counts"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn a_move_whose_mover_went_silent_is_finished_by_another_replica() {
    let d = Deployment::new();
    let alice = owner("alice");
    let all = memories(25);
    let ids: BTreeSet<Uuid> = all.iter().map(|m| m.id).collect();
    d.shared.upsert(&alice, all.clone()).await.expect("stored");
    // What a mover killed mid-copy leaves: part of a copy, and its record.
    d.own
        .upsert(&alice, all[..7].to_vec())
        .await
        .expect("copied");
    let dead = Record {
        phase: Phase::Copying,
        mover: Uuid::new_v4(),
        changed_at: cordon::store::placement::now_ms() - FLEET.lease.as_millis() as u64,
    };
    d.placements.put(&alice, &dead).await.expect("recorded");

    let replica = d.replica(0).await;
    let engine: Arc<dyn Engine> = Arc::new(replica.clone());
    // Reads go on meanwhile, from the complete side.
    assert_eq!(listed(engine.as_ref(), &alice).await.len(), 25);
    d.until(&alice, Some(Phase::Own)).await;
    let after = listed(engine.as_ref(), &alice).await;
    assert_eq!(after.len(), 25);
    assert_eq!(after.into_iter().collect::<BTreeSet<_>>(), ids);
    assert_eq!(d.shared.count(&alice).await.expect("counts"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
async fn two_replicas_past_the_threshold_at_once_make_one_move() {
    let d = Deployment::new();
    let (a, b) = (d.replica(10).await, d.replica(10).await);
    let alice = owner("alice");
    d.shared.upsert(&alice, memories(12)).await.expect("stored");
    let first = tokio::spawn(a.clone().promote(alice.clone()));
    let second = tokio::spawn(b.clone().promote(alice.clone()));
    first.await.expect("ended");
    second.await.expect("ended");
    assert_eq!(d.phase(&alice).await, Some(Phase::Own));
    assert_eq!(d.own.count(&alice).await.expect("counts"), 12);
    assert_eq!(d.shared.count(&alice).await.expect("counts"), 0);
}
