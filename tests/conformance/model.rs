//! Random operation sequences for several users, checked against a model.
//!
//! A seeded generator picks puts, gets and deletes (often of other users'
//! ids), searches, full listings and erases for a handful of users; after
//! every step the engine's answer must equal the model's, so no response can
//! carry another owner's memory or lose one of the caller's.

use std::collections::{BTreeMap, HashMap};

use cordon::store::SearchQuery;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

use crate::harness::{Harness, memory, vector};

pub async fn random_operations_match_the_model(h: &Harness, users: usize, seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = (0..users).map(|i| format!("model-user-{i}")).collect();
    let mut model: HashMap<usize, BTreeMap<Uuid, String>> = HashMap::new();
    let mut all_ids: Vec<Uuid> = Vec::new();
    let mut counter = 0usize;

    for step in 0..steps {
        let u = rng.random_range(0..users);
        let owner = h.owner(&names[u]);
        let mine = model.entry(u).or_default();
        match rng.random_range(0..100) {
            0..=34 => {
                let n = rng.random_range(1..=3);
                let batch: Vec<_> = (0..n)
                    .map(|_| {
                        counter += 1;
                        memory(
                            &format!("{} #{counter}", names[u]),
                            vector(counter, 0.3),
                            json!({}),
                        )
                    })
                    .collect();
                for m in &batch {
                    mine.insert(m.id, m.text.clone());
                    all_ids.push(m.id);
                }
                h.store.put(&owner, batch).await.expect("put");
            }
            35..=49 if !all_ids.is_empty() => {
                let id = all_ids[rng.random_range(0..all_ids.len())];
                let got = h.store.get(&owner, id).await.expect("get");
                assert_eq!(
                    got.map(|m| m.text().to_owned()),
                    mine.get(&id).cloned(),
                    "step {step}: get"
                );
            }
            50..=64 if !all_ids.is_empty() => {
                let id = all_ids[rng.random_range(0..all_ids.len())];
                let deleted = h.store.delete(&owner, id).await.expect("delete").is_some();
                assert_eq!(deleted, mine.remove(&id).is_some(), "step {step}: delete");
            }
            65..=79 => {
                let query = SearchQuery {
                    vector: vector(rng.random_range(0..counter.max(1)), 0.0),
                    limit: 100,
                    min_score: None,
                    filter: Default::default(),
                };
                let found = h.store.search(&owner, query).await.expect("search");
                assert_eq!(found.len(), mine.len(), "step {step}: search count");
                for m in &found {
                    assert_eq!(
                        mine.get(&m.id()).map(String::as_str),
                        Some(m.text()),
                        "step {step}: search"
                    );
                }
            }
            80..=94 => {
                let mut listed = Vec::new();
                let mut cursor = None;
                loop {
                    let page = h
                        .store
                        .list(&owner, cursor, 4, &Default::default())
                        .await
                        .expect("list");
                    listed.extend(page.memories.iter().map(|m| (m.id(), m.text().to_owned())));
                    match page.next {
                        Some(n) => cursor = Some(n),
                        None => break,
                    }
                }
                let expected: Vec<_> = mine.iter().map(|(k, v)| (*k, v.clone())).collect();
                assert_eq!(listed, expected, "step {step}: list");
            }
            _ => {
                let erased = h.store.erase(&owner).await.expect("erase").deleted;
                assert_eq!(erased, mine.len(), "step {step}: erase");
                mine.clear();
            }
        }
    }
}
