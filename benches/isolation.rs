//! Micro-benchmarks of the isolation work every request does: verifying its
//! token (HS256 and two asymmetric algorithms), deriving the owner hash, and
//! re-checking a page of results against the owner in the guard.
//!
//! ```text
//! cargo bench --bench isolation
//! ```

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cordon::auth::{Verifier, VerifierConfig, load_keys, mint_dev_token};
use cordon::guard::Guard;
use cordon::metrics::Metrics;
use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use cordon::store::RawPoint;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use uuid::Uuid;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config() -> VerifierConfig {
    VerifierConfig {
        issuer: None,
        audience: None,
        tenant_claim: "tenant".into(),
        leeway_secs: 30,
        max_token_bytes: 8 * 1024,
    }
}

/// A token signed with a private key from the test fixtures.
fn signed(alg: Algorithm, key: EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let claims = json!({
        "sub": "user-4711", "tenant": "acme", "iat": now, "nbf": now, "exp": now + 3600
    });
    encode(&Header::new(alg), &claims, &key).expect("signing with a fixture key")
}

fn token_verification(c: &mut Criterion) {
    let secret = Secret::new(b"bench-hs256-secret-0123456789abcdef-0123".to_vec());
    let hs256 = Verifier::new(
        load_keys(Some(&secret), None, None).expect("an HS256 key"),
        config(),
    );
    let hs_token = mint_dev_token(
        &secret,
        "tenant",
        "acme",
        "user-4711",
        Duration::from_secs(3600),
        None,
        None,
    )
    .expect("minting");

    let ed_pem = std::fs::read(fixture("ed25519-private.pem")).expect("fixture");
    let eddsa = Verifier::new(
        load_keys(None, Some(&fixture("ed25519-public.pem")), None).expect("an Ed25519 key"),
        config(),
    );
    let ed_token = signed(
        Algorithm::EdDSA,
        EncodingKey::from_ed_pem(&ed_pem).expect("Ed25519 fixture"),
    );

    let rsa_pem = std::fs::read(fixture("rsa-private.pem")).expect("fixture");
    let rs256 = Verifier::new(
        load_keys(None, Some(&fixture("rsa-public.pem")), None).expect("an RSA key"),
        config(),
    );
    let rs_token = signed(
        Algorithm::RS256,
        EncodingKey::from_rsa_pem(&rsa_pem).expect("RSA fixture"),
    );

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
