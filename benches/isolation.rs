//! Micro-benchmarks of the isolation work every request does: verifying its
//! token (HS256 and two asymmetric algorithms), deriving the owner hash, and
//! re-checking a page of results against the owner in the guard.
//!
//! ```text
//! cargo bench --bench isolation
//! ```

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cordon::auth::{Verifier, load_keys};
use cordon::guard::Guard;
use cordon::metrics::Metrics;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::store::RawPoint;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use uuid::Uuid;

/// A verifier for a public key from the test fixtures, and a token signed
/// with its private key.
fn asymmetric(alg: Algorithm, public: &str, private: &str) -> (Verifier, String) {
    let fixtures = support::repo("tests/fixtures");
    let verifier = Verifier::new(
        load_keys(None, Some(&fixtures.join(public)), None).expect("a fixture public key"),
        support::verifier_config(),
    );
    let pem = std::fs::read(fixtures.join(private)).expect("a fixture private key");
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .expect("the fixture key parses");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let claims = json!({
        "sub": "user-4711", "tenant": "acme", "iat": now, "nbf": now, "exp": now + 3600
    });
    let token = encode(&Header::new(alg), &claims, &key).expect("signing with a fixture key");
    (verifier, token)
}

fn token_verification(c: &mut Criterion) {
    let hs256 = support::hs256_verifier();
    let hs_token = support::hs256_token("user-4711");
    let (eddsa, ed_token) = asymmetric(
        Algorithm::EdDSA,
        "ed25519-public.pem",
        "ed25519-private.pem",
    );
    let (rs256, rs_token) = asymmetric(Algorithm::RS256, "rsa-public.pem", "rsa-private.pem");

    let mut group = c.benchmark_group("verify_token");
    for (name, verifier, token) in [
        ("HS256", &hs256, &hs_token),
        ("EdDSA", &eddsa, &ed_token),
        ("RS256", &rs256, &rs_token),
    ] {
        // A bench that silently measured a refusal would be worthless.
        verifier.verify(token).expect("the bench token verifies");
        group.bench_function(name, |b| b.iter(|| verifier.verify(black_box(token))));
    }
    group.finish();
}

fn owner_hash(c: &mut Criterion) {
    let secret = Secret::new(vec![7u8; 32]);
    c.bench_function("owner_hash", |b| {
        b.iter(|| OwnerHash::derive(&secret, black_box("acme"), black_box("user-4711")))
    });
}

/// A result page as an engine returns it: `foreign` of `n` points belong to
/// someone else (what a collision would bring).
fn page(owner: &OwnerHash, other: &OwnerHash, n: usize, foreign: usize) -> Vec<RawPoint> {
    (0..n)
        .map(|i| {
            let who = if i < foreign { other } else { owner };
            let payload = json!({
                "owner": who.to_hex(),
                "text": format!("my sister prefers oat milk in coffee every Friday [note {i}]"),
                "metadata": { "n": i },
                "created_at": 1_763_900_000_000i64,
            });
            RawPoint {
                id: Uuid::now_v7(),
                score: Some(0.5),
                payload: payload.as_object().cloned().expect("literal is an object"),
            }
        })
        .collect()
}

fn guard(c: &mut Criterion) {
    let secret = Secret::new(vec![7u8; 32]);
    let owner = OwnerHash::derive(&secret, "acme", "alice");
    let other = OwnerHash::derive(&secret, "acme", "bob");
    let guard = Guard::new(Arc::new(Metrics::default()));
    let mut group = c.benchmark_group("guard_page");
    for n in [10, 100] {
        group.throughput(Throughput::Elements(n as u64));
        for (name, foreign) in [("own", 0), ("half_foreign", n / 2)] {
            let points = page(&owner, &other, n, foreign);
            assert_eq!(
                guard.admit(&owner, points.clone(), "search").len(),
                n - foreign
            );
            group.bench_with_input(BenchmarkId::new(name, n), &points, |b, points| {
                b.iter_batched(
                    || points.clone(),
                    |points| guard.admit(&owner, points, "search"),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, token_verification, owner_hash, guard);
criterion_main!(benches);
