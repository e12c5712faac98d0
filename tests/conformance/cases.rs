//! The behaviours every engine must have.

use std::sync::Arc;

use cordon::metrics::Metrics;
use cordon::store::{MetaValue, RawPoint, SearchQuery};
use serde_json::json;
use uuid::Uuid;

use crate::harness::{Harness, memory, vector};

fn texts(memories: &[cordon::guard::Memory]) -> Vec<&str> {
    memories.iter().map(|m| m.text()).collect()
}

pub async fn put_then_get(h: &Harness) {
    let (alice, bob) = (h.owner("alice"), h.owner("bob"));
    let m = memory("alice fact", vector(0, 0.0), json!({ "k": "v" }));
    let id = m.id;
    h.store.put(&alice, vec![m]).await.expect("put");
    let got = h.store.get(&alice, id).await.expect("get").expect("found");
    assert_eq!(got.text(), "alice fact");
    assert!(h.store.get(&bob, id).await.expect("get").is_none());
    assert!(
        h.store
            .get(&alice, uuid::Uuid::now_v7())
            .await
            .expect("get")
            .is_none()
    );
}

/// `put_existing` overwrites the owner's points that still exist and
/// creates none: a deleted memory, an id never stored and another owner's
/// point are left as they are.
pub async fn update_existing(h: &Harness) {
    let (alice, bob) = (h.owner("alice"), h.owner("bob"));
    let kept = memory("kept, first version", vector(0, 0.0), json!({}));
    let gone = memory("deleted", vector(1, 0.0), json!({}));
    let never = memory("never stored", vector(2, 0.0), json!({}));
    let bobs = memory("bob's own", vector(3, 0.0), json!({}));
    h.store
        .put(&alice, vec![kept.clone(), gone.clone()])
        .await
        .expect("put");
    h.store.put(&bob, vec![bobs.clone()]).await.expect("put");
    h.store.delete(&alice, gone.id).await.expect("delete");

    let mut second = kept.clone();
    second.text = "kept, second version".into();
    h.store
        .put_existing(&alice, vec![second, gone.clone(), never.clone()])
        .await
        .expect("update");
    let got = h
        .store
        .get(&alice, kept.id)
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(got.text(), "kept, second version");
    assert!(
        h.store.get(&alice, gone.id).await.expect("get").is_none(),
        "brought back"
    );
    assert!(
        h.store.get(&alice, never.id).await.expect("get").is_none(),
        "created"
    );

    // Alice naming Bob's id changes nothing of his, shared collection or not.
    let mut over_bobs = bobs.clone();
    over_bobs.text = "alice over bob's".into();
    h.store
        .put_existing(&alice, vec![over_bobs])
        .await
        .expect("update");
    let his = h.store.get(&bob, bobs.id).await.expect("get").expect("his");
    assert_eq!(his.text(), "bob's own");
    assert!(h.store.get(&alice, bobs.id).await.expect("get").is_none());
}

pub async fn reads_of_an_unknown_user(h: &Harness) {
    let nobody = h.owner("nobody");
    let query = SearchQuery {
        vector: vector(0, 0.0),
        limit: 5,
        min_score: None,
        filter: Default::default(),
    };
    assert!(
        h.store
            .search(&nobody, query)
            .await
            .expect("search")
            .is_empty()
    );
    let page = h
        .store
        .list(&nobody, None, 10, &Default::default())
        .await
        .expect("list");
    assert!(page.memories.is_empty() && page.next.is_none());
    assert_eq!(h.store.erase(&nobody).await.expect("erase").deleted, 0);
    assert!(
        h.store
            .delete(&nobody, uuid::Uuid::now_v7())
            .await
            .expect("delete")
            .is_none()
    );
    assert_eq!(h.collections().await, 0, "a read created a collection");
}

pub async fn search(h: &Harness) {
    let alice = h.owner("alice");
    h.store
        .put(
            &alice,
            vec![
                memory(
                    "near",
                    vector(10, 0.1),
                    json!({ "topic": "a", "n": 1, "flag": true }),
                ),
                memory(
                    "nearer",
                    vector(10, 0.0),
                    json!({ "topic": "b", "n": 2, "flag": false }),
                ),
                memory("far", vector(200, 0.0), json!({ "topic": "a", "n": 3 })),
            ],
        )
        .await
        .expect("put");
    let query = |min_score, metadata| SearchQuery {
        vector: vector(10, 0.0),
        limit: 10,
        min_score,
        filter: cordon::store::Conditions {
            metadata,
            ..Default::default()
        },
    };
    let all = h
        .store
        .search(&alice, query(None, vec![]))
        .await
        .expect("search");
    assert_eq!(texts(&all), ["nearer", "near", "far"]);
    assert!(all[0].score() >= all[1].score() && all[1].score() >= all[2].score());

    let close = h
        .store
        .search(&alice, query(Some(0.5), vec![]))
        .await
        .expect("search");
    assert_eq!(texts(&close), ["nearer", "near"]);

    let a = vec![("topic".to_owned(), MetaValue::Str("a".into()))];
    assert_eq!(
        texts(
            &h.store
                .search(&alice, query(None, a))
                .await
                .expect("search")
        ),
        ["near", "far"]
    );
    let n = vec![("n".to_owned(), MetaValue::Int(2))];
    assert_eq!(
        texts(
            &h.store
                .search(&alice, query(None, n))
                .await
                .expect("search")
        ),
        ["nearer"]
    );
    let f = vec![("flag".to_owned(), MetaValue::Bool(true))];
    assert_eq!(
        texts(
            &h.store
                .search(&alice, query(None, f))
                .await
                .expect("search")
        ),
        ["near"]
    );

    let limited = SearchQuery {
        limit: 1,
        ..query(None, vec![])
    };
    assert_eq!(
        texts(&h.store.search(&alice, limited).await.expect("search")),
        ["nearer"]
    );
}

pub async fn paging(h: &Harness) {
    let alice = h.owner("alice");
    let all: Vec<String> = (0..7).map(|i| format!("m{i}")).collect();
    for (i, t) in all.iter().enumerate() {
        h.store
            .put(&alice, vec![memory(t, vector(i, 0.0), json!({}))])
            .await
            .expect("put");
    }
    let first = h
        .store
        .list(&alice, None, 3, &Default::default())
        .await
        .expect("list");
    assert_eq!(texts(&first.memories), ["m0", "m1", "m2"]);
    let cursor = first.next.expect("more pages");
    assert!(
        h.store
            .delete(&alice, cursor)
            .await
            .expect("delete")
            .is_some()
    );
    let mut seen = Vec::new();
    let mut next = Some(cursor);
    while let Some(c) = next {
        let page = h
            .store
            .list(&alice, Some(c), 3, &Default::default())
            .await
            .expect("list");
        seen.extend(page.memories.iter().map(|m| m.text().to_owned()));
        next = page.next;
    }
    assert_eq!(seen, all[3..]);
}

pub async fn delete_and_erase(h: &Harness) {
    let (alice, bob) = (h.owner("alice"), h.owner("bob"));
    let a = memory("alice one", vector(1, 0.0), json!({}));
    let a_id = a.id;
    h.store
        .put(
            &alice,
            vec![a, memory("alice two", vector(2, 0.0), json!({}))],
        )
        .await
        .expect("put");
    let b = memory("bob one", vector(1, 0.0), json!({}));
    let b_id = b.id;
    h.store.put(&bob, vec![b]).await.expect("put");

    assert!(
        h.store.delete(&bob, a_id).await.expect("delete").is_none(),
        "bob deleted alice's memory"
    );
    assert!(h.store.get(&alice, a_id).await.expect("get").is_some());
    assert!(
        h.store
            .delete(&alice, a_id)
            .await
            .expect("delete")
            .is_some()
    );
    assert!(h.store.get(&alice, a_id).await.expect("get").is_none());

    assert_eq!(h.collections().await, 2);
    assert_eq!(h.store.erase(&alice).await.expect("erase").deleted, 1);
    assert_eq!(h.collections().await, 1, "erase left alice's collection");
    assert!(
        h.store
            .list(&alice, None, 10, &Default::default())
            .await
            .expect("list")
            .memories
            .is_empty()
    );
    assert!(h.store.get(&bob, b_id).await.expect("get").is_some());
}

pub async fn shared_collection(h: &Harness, drill: bool) {
    // With one hex character in names, 24 users fill at most 16 collections.
    let users: Vec<String> = (0..24).map(|i| format!("user{i}")).collect();
    for (i, u) in users.iter().enumerate() {
        let owner = h.owner(u);
        h.store
            .put(
                &owner,
                vec![memory(
                    &format!("secret of {u}"),
                    vector(i % 3, 0.0),
                    json!({ "k": "same" }),
                )],
            )
            .await
            .expect("put");
    }
    let mut ids = Vec::new();
    let mut foreign_seen = 0;
    for u in &users {
        let owner = h.owner(u);
        let mine = format!("secret of {u}");
        let query = SearchQuery {
            vector: vector(0, 0.0),
            limit: 50,
            min_score: None,
            filter: cordon::store::Conditions {
                metadata: vec![("k".into(), MetaValue::Str("same".into()))],
                ..Default::default()
            },
        };
        // What the engine itself returns, and so how many foreign points
        // the guard must drop from each read: all of them, no more.
        let foreign = |points: &[RawPoint]| {
            points
                .iter()
                .filter(|p| p.payload["owner"].as_str() != Some(owner.to_hex().as_str()))
                .count() as u64
        };
        let engine = h.store.engine();
        let raw_found = engine
            .search(&owner, query.clone())
            .await
            .expect("raw search");
        let raw_listed = engine
            .scroll(&owner, None, 50, &Default::default())
            .await
            .expect("raw list");
        let before = h.metrics.guard_dropped_total();
        assert_eq!(
            texts(&h.store.search(&owner, query).await.expect("search")),
            [mine.as_str()]
        );
        assert_eq!(
            h.metrics.guard_dropped_total() - before,
            foreign(&raw_found),
            "the guard's drops on a search differ from the foreign points the engine returned"
        );
        let before = h.metrics.guard_dropped_total();
        let page = h
            .store
            .list(&owner, None, 50, &Default::default())
            .await
            .expect("list");
        assert_eq!(texts(&page.memories), [mine.as_str()]);
        assert_eq!(
            h.metrics.guard_dropped_total() - before,
            foreign(&raw_listed.points),
            "the guard's drops on a list differ from the foreign points the engine returned"
        );
        if drill {
            foreign_seen += foreign(&raw_found) + foreign(&raw_listed.points);
        } else {
            assert_eq!(foreign(&raw_found) + foreign(&raw_listed.points), 0);
        }
        ids.push(page.memories[0].id());
    }
    // Every other user's id is invisible and undeletable.
    let first = h.owner(&users[0]);
    for id in &ids[1..] {
        assert!(h.store.get(&first, *id).await.expect("get").is_none());
        assert!(h.store.delete(&first, *id).await.expect("delete").is_none());
    }
    // Erasing one user spares every neighbour.
    assert_eq!(h.store.erase(&first).await.expect("erase").deleted, 1);
    for u in &users[1..] {
        let page = h
            .store
            .list(&h.owner(u), None, 50, &Default::default())
            .await
            .expect("list");
        assert_eq!(
            page.memories.len(),
            1,
            "{u} lost a memory to a neighbour's erase"
        );
    }
    let dropped = h.metrics.guard_dropped_total();
    if drill {
        assert!(
            foreign_seen > 0 && dropped >= foreign_seen,
            "the guard saw no foreign point, so the drill tested nothing"
        );
    } else {
        assert_eq!(dropped, 0, "the engine filter let a foreign point through");
    }
}

pub async fn shared_census(h: &Harness) {
    // Names of one hex character: find two users who share a collection and
    // a third who does not.
    let first = |sub: &str| h.owner(sub).to_hex().as_bytes()[0];
    let subs: Vec<String> = (0..64).map(|i| format!("user{i}")).collect();
    let a = &subs[0];
    let b = subs[1..]
        .iter()
        .find(|s| first(s) == first(a))
        .expect("64 users over 16 names put a second user next to the first");
    let c = subs[1..]
        .iter()
        .find(|s| first(s) != first(a))
        .expect("64 users do not all share one name");
    let (a, b, c) = (h.owner(a), h.owner(b), h.owner(c));
    let census = Arc::new(Metrics::default());
    let store = h.store.clone().with_shared_census(census.clone());
    let seen = || census.shared_collection_requests();

    store
        .put(&a, vec![memory("a", vector(0, 0.0), json!({}))])
        .await
        .expect("put");
    assert_eq!(
        seen(),
        0,
        "a first write into an empty collection is not shared"
    );
    store
        .list(&a, None, 10, &Default::default())
        .await
        .expect("list");
    store.get(&c, Uuid::now_v7()).await.expect("get");
    assert_eq!(
        seen(),
        0,
        "a collection holding only its owner is not shared"
    );

    store
        .list(&b, None, 10, &Default::default())
        .await
        .expect("list");
    assert_eq!(seen(), 1, "b's collection holds a's memory");
    store
        .put(&b, vec![memory("b", vector(1, 0.0), json!({}))])
        .await
        .expect("put");
    let query = SearchQuery {
        vector: vector(0, 0.0),
        limit: 5,
        min_score: None,
        filter: Default::default(),
    };
    store.search(&a, query).await.expect("search");
    assert_eq!(
        seen(),
        3,
        "both b's write and a's search met the other owner"
    );
    store.erase(&c).await.expect("erase");
    assert_eq!(seen(), 3, "c's own collection holds nobody");
}

pub async fn concurrent_users(h: &Harness) {
    // Thirty users write and read at once; each must see exactly its own.
    let tasks = (0..30).map(|i| async move {
        let owner = h.owner(&format!("racer{i}"));
        let canaries: Vec<String> = (0..3).map(|j| format!("canary {i}-{j}")).collect();
        for (j, c) in canaries.iter().enumerate() {
            h.store
                .put(&owner, vec![memory(c, vector(i * 3 + j, 0.2), json!({}))])
                .await
                .expect("put");
        }
        let query = SearchQuery {
            vector: vector(i * 3, 0.0),
            limit: 50,
            min_score: None,
            filter: Default::default(),
        };
        let found = h.store.search(&owner, query).await.expect("search");
        let mut got: Vec<String> = found.iter().map(|m| m.text().to_owned()).collect();
        got.sort();
        assert_eq!(got, canaries, "racer{i} saw the wrong memories");
    });
    futures::future::join_all(tasks).await;
    assert_eq!(h.metrics.guard_dropped_total(), 0);
}

pub async fn survives_a_restart(h: Harness) {
    let alice = h.owner("alice");
    let m = memory("kept across restarts", vector(5, 0.0), json!({ "k": 1 }));
    let id = m.id;
    h.store.put(&alice, vec![m]).await.expect("put");
    let h = h.reopen().await;
    let got = h
        .store
        .get(&alice, id)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(got.text(), "kept across restarts");
    // The reopened engine writes into the same collection.
    h.store
        .put(&alice, vec![memory("after", vector(6, 0.0), json!({}))])
        .await
        .expect("put");
    assert_eq!(
        h.store
            .list(&alice, None, 10, &Default::default())
            .await
            .expect("list")
            .memories
            .len(),
        2
    );
    assert_eq!(h.collections().await, 1);
}

pub async fn replicas(h: &Harness) {
    let (a, b) = (&h.store, h.replica());
    let alice = h.owner("alice");
    // Both replicas create alice's collection at the same moment.
    let (first, second) = tokio::join!(
        a.put(&alice, vec![memory("from a", vector(1, 0.0), json!({}))]),
        b.put(&alice, vec![memory("from b", vector(2, 0.0), json!({}))]),
    );
    first.expect("replica a writes");
    second.expect("replica b writes");
    let mut seen = texts(
        &a.list(&alice, None, 10, &Default::default())
            .await
            .expect("list")
            .memories,
    )
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    seen.sort();
    assert_eq!(seen, ["from a", "from b"]);
    assert_eq!(h.collections().await, 1);
    // One replica erases; the other, which saw the collection exist, writes
    // again and must not lose the write.
    assert_eq!(a.erase(&alice).await.expect("erase").deleted, 2);
    b.put(
        &alice,
        vec![memory("after erase", vector(3, 0.0), json!({}))],
    )
    .await
    .expect("replica b writes after the erase");
    assert_eq!(
        texts(
            &a.list(&alice, None, 10, &Default::default())
                .await
                .expect("list")
                .memories
        ),
        ["after erase"]
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The expiry sweep's deletion for one owner takes that owner's expired
/// memories only: not their live ones, and none of a neighbour's, expired
/// or not, in the collection they share.
pub async fn expiry_is_swept_per_owner(h: &Harness) {
    let (alice, bob) = (h.owner("alice"), h.owner("bob"));
    let past = now_ms() - 1;
    let mut alices_old = memory("alice expired", vector(0, 0.0), json!({}));
    alices_old.expires_at = Some(past);
    let alices_live = memory("alice live", vector(1, 0.0), json!({}));
    let mut bobs_old = memory("bob expired", vector(0, 0.0), json!({}));
    bobs_old.expires_at = Some(past - 5);
    let mut bobs_later = memory("bob later", vector(2, 0.0), json!({}));
    bobs_later.expires_at = Some(now_ms() + 3_600_000);
    h.store
        .put(&alice, vec![alices_old, alices_live])
        .await
        .expect("put");
    h.store
        .put(&bob, vec![bobs_old, bobs_later])
        .await
        .expect("put");

    // Reads leave expired memories out before any sweep.
    let listed = h
        .store
        .list(&bob, None, 10, &Default::default())
        .await
        .expect("list");
    assert_eq!(texts(&listed.memories), ["bob later"]);

    let expiring = h.store.expiring(i64::MAX, 100).await.expect("scan");
    let bobs = expiring
        .iter()
        .find(|(o, _)| *o == bob)
        .expect("bob has expiring memories");
    assert_eq!(bobs.1, past - 5, "the earliest time");

    assert_eq!(
        h.store
            .delete_expired(&alice, now_ms())
            .await
            .expect("sweep"),
        1
    );
    let engine = h.store.engine();
    let raw = |o| async move {
        let page = engine.export_page(o, None, 10).await.expect("raw");
        let mut t: Vec<String> = page
            .points
            .iter()
            .map(|p| p.payload["text"].as_str().unwrap_or("").to_owned())
            .collect();
        t.sort();
        t
    };
    assert_eq!(raw(&alice).await, ["alice live"]);
    assert_eq!(
        raw(&bob).await,
        ["bob expired", "bob later"],
        "alice's sweep touched bob"
    );
    assert_eq!(
        h.store.delete_expired(&bob, now_ms()).await.expect("sweep"),
        1
    );
    assert_eq!(raw(&bob).await, ["bob later"]);
}

/// A replacement applies only at the version it names, and only to the
/// caller's own memory.
pub async fn replace_is_compare_and_set(h: &Harness) {
    let (alice, bob) = (h.owner("alice"), h.owner("bob"));
    let first = memory("version one", vector(0, 0.0), json!({}));
    let id = first.id;
    h.store.put(&alice, vec![first.clone()]).await.expect("put");
    let next = |text: &str, version| {
        let mut m = first.clone();
        m.text = text.to_owned();
        m.version = version;
        m
    };
    h.store
        .replace(&alice, next("version two", 2), 1)
        .await
        .expect("replace");
    let got = h.store.get(&alice, id).await.expect("get").expect("held");
    assert_eq!((got.text(), got.version()), ("version two", 2));
    // A second writer that read version 1 changes nothing.
    h.store
        .replace(&alice, next("lost race", 2), 1)
        .await
        .expect("replace");
    let got = h.store.get(&alice, id).await.expect("get").expect("held");
    assert_eq!(got.text(), "version two");
    // Bob naming Alice's id at her version changes nothing of hers.
    h.store
        .replace(&bob, next("bob over alice", 3), 2)
        .await
        .expect("replace");
    let got = h.store.get(&alice, id).await.expect("get").expect("held");
    assert_eq!(got.text(), "version two");
    assert!(h.store.get(&bob, id).await.expect("get").is_none());

    // An expired memory is not brought back by a replacement at its version.
    let mut old = memory("expired", vector(1, 0.0), json!({}));
    old.expires_at = Some(now_ms() - 1);
    let old_id = old.id;
    h.store.put(&alice, vec![old.clone()]).await.expect("put");
    let mut revived = old.clone();
    revived.text = "revived".into();
    revived.version = 2;
    revived.expires_at = Some(now_ms() + 3_600_000);
    h.store.replace(&alice, revived, 1).await.expect("replace");
    assert!(h.store.get(&alice, old_id).await.expect("get").is_none());
    let raw = h
        .store
        .engine()
        .export_page(&alice, None, 10)
        .await
        .expect("raw");
    let stored = raw
        .points
        .iter()
        .find(|p| p.id == old_id)
        .expect("still stored");
    assert_eq!(stored.payload["text"], "expired");
}

/// Ranges, any-of and creation-time bounds narrow search and list alike.
pub async fn filters_narrow_search_and_list(h: &Harness) {
    let alice = h.owner("alice");
    let mut items = Vec::new();
    for (i, (price, shop)) in [(12, "north"), (30, "south"), (55, "east")]
        .iter()
        .enumerate()
    {
        let mut m = memory(
            &format!("order {price}"),
            vector(0, i as f32 * 0.1),
            json!({ "price": price, "shop": shop }),
        );
        m.created_at = 1_000 * (i as i64 + 1);
        items.push(m);
    }
    h.store.put(&alice, items).await.expect("put");
    let with = |filter: cordon::store::Conditions| SearchQuery {
        vector: vector(0, 0.0),
        limit: 10,
        min_score: None,
        filter,
    };
    let sorted = |mut t: Vec<&str>| {
        t.sort();
        t.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let range = cordon::store::Conditions {
        ranges: vec![(
            "price".into(),
            cordon::store::Bounds {
                gte: Some(12.0),
                lt: Some(55.0),
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    let found = h
        .store
        .search(&alice, with(range.clone()))
        .await
        .expect("search");
    assert_eq!(sorted(texts(&found)), ["order 12", "order 30"]);
    let listed = h.store.list(&alice, None, 10, &range).await.expect("list");
    assert_eq!(sorted(texts(&listed.memories)), ["order 12", "order 30"]);
    let any = cordon::store::Conditions {
        any_of: vec![(
            "shop".into(),
            vec![
                MetaValue::Str("east".into()),
                MetaValue::Str("north".into()),
            ],
        )],
        ..Default::default()
    };
    let found = h
        .store
        .search(&alice, with(any.clone()))
        .await
        .expect("search");
    assert_eq!(sorted(texts(&found)), ["order 12", "order 55"]);
    let created = cordon::store::Conditions {
        created: cordon::store::Bounds {
            gt: Some(1_000.0),
            ..Default::default()
        },
        ..Default::default()
    };
    let listed = h
        .store
        .list(&alice, None, 10, &created)
        .await
        .expect("list");
    assert_eq!(sorted(texts(&listed.memories)), ["order 30", "order 55"]);
}

/// Keyword term conditions: counts and reads of the memories holding any
/// of some terms, the owner's only.
pub async fn term_conditions(h: &Harness) {
    let (alice, bob) = (h.owner("alice"), h.owner("bob"));
    let with_terms = |text: &str, terms: &[i64]| {
        let mut m = memory(text, vector(0, 0.0), json!({}));
        m.terms = terms.to_vec();
        m
    };
    h.store
        .put(
            &alice,
            vec![
                with_terms("one two", &[1, 2]),
                with_terms("two three", &[2, 3]),
                with_terms("four", &[4]),
            ],
        )
        .await
        .expect("put");
    h.store
        .put(&bob, vec![with_terms("bob two", &[2])])
        .await
        .expect("put");
    let (n, counts) = h
        .store
        .term_counts(&alice, &[2, 4, 9])
        .await
        .expect("counts");
    assert_eq!((n, counts), (3, vec![2, 1, 0]));
    let mut found: Vec<String> = h
        .store
        .holding_terms(&alice, &[1, 4], &Default::default(), 10)
        .await
        .expect("read")
        .iter()
        .map(|m| m.text().to_owned())
        .collect();
    found.sort();
    assert_eq!(found, ["four", "one two"]);
}
