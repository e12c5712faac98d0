//! Micro-benchmarks of the isolation work every request does: verifying its
//! token (HS256 and two asymmetric algorithms), deriving the owner hash,
//! re-checking a page of results against the owner in the guard, (with
//! encryption at rest) sealing and opening one memory, and counting a
//! refused token in a lockout table that an attacker has filled.
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
                vector: None,
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

/// The per-request access check (revocations and the tenant registry), with
/// 10,000 users revoked and 100 tenants registered: what every request pays
/// on top of token verification (with the registry on, that includes
/// hashing the tenant).
fn access_check(c: &mut Criterion) {
    use cordon::access::file_log::FileLog;
    use cordon::access::{Access, Change, Rule, TokenFacts};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let tenants = dir.path().join("tenants.json");
    let names: serde_json::Map<String, serde_json::Value> = (0..100)
        .map(|i| (format!("tenant-{i}"), "enabled".into()))
        .collect();
    std::fs::write(&tenants, serde_json::to_string(&names).expect("json")).expect("writes");
    let secret = Secret::new(b"bench-server-secret-0123456789abcdef".to_vec());
    // Written as the log's lines directly: 10,000 fsynced appends would
    // take longer than the benchmark.
    let lines: String = (0..10_000)
        .map(|i| {
            let change = Change {
                id: Uuid::now_v7(),
                at_ms: 1_000,
                rule: Rule::User {
                    owner: OwnerHash::derive(&secret, "tenant-1", &format!("user-{i}")).to_hex(),
                    revoked_before_ms: 1_000,
                    min_version: 0,
                },
            };
            serde_json::to_string(&change).expect("serialises") + "\n"
        })
        .collect();
    let log_dir = dir.path().join(cordon::access::file_log::DIR);
    std::fs::create_dir_all(&log_dir).expect("log dir");
    std::fs::write(log_dir.join("changes.ndjson"), lines).expect("writes");
    let access = runtime.block_on(async {
        let log = Arc::new(FileLog::open(dir.path()).expect("log"));
        Access::open(log, Some(&tenants), secret.clone())
            .await
            .expect("opens")
    });
    let revoked = OwnerHash::derive(&secret, "tenant-1", "user-77");
    let untouched = OwnerHash::derive(&secret, "tenant-1", "someone-else");
    let facts = TokenFacts {
        issued_at_ms: Some(900),
        version: 0,
    };
    let mut group = c.benchmark_group("access_check");
    group.bench_function("user_not_revoked", |b| {
        b.iter(|| access.check(black_box("tenant-1"), black_box(&untouched), facts))
    });
    group.bench_function("user_revoked", |b| {
        b.iter(|| access.check(black_box("tenant-1"), black_box(&revoked), facts))
    });
    group.finish();
}

/// Sealing and opening one memory of about 200 bytes (a text of ~25 words
/// and a small metadata object, as JSON), with its keys already unwrapped
/// (the cached case), and the tag of one metadata value.
fn sealing(c: &mut Criterion) {
    let keys = cordon::seal::dek::Dek::random().keys();
    let owner = OwnerHash::derive(&Secret::new(vec![7u8; 32]), "acme", "alice");
    let id = Uuid::now_v7();
    let plain = serde_json::to_vec(&json!({
        "text": "my sister prefers oat milk in coffee and asked me to book a table for Friday at the Italian place near the station",
        "metadata": { "topic": "family", "n": 3 }
    }))
    .expect("a literal serialises");
    let sealed = keys.seal(&owner, id, &plain);
    let mut group = c.benchmark_group("seal");
    group.bench_function("seal_one_memory", |b| {
        b.iter(|| keys.seal(black_box(&owner), id, black_box(&plain)))
    });
    group.bench_function("open_one_memory", |b| {
        b.iter(|| keys.open(black_box(&owner), id, black_box(&sealed)))
    });
    group.bench_function("tag_one_value", |b| {
        b.iter(|| {
            keys.tag(
                "topic",
                &cordon::seal::dek::TagValue::Str(black_box("family")),
            )
        })
    });
    group.finish();
}

/// A refused token from an address the lockout table has not seen, with
/// the table full of 100,000 other addresses whose windows are all open:
/// what each of an attacker's requests costs, under the table's lock,
/// and so what every valid user's refusal check waits behind.
fn lockout(c: &mut Criterion) {
    use cordon::access::lockout::{Lockout, LockoutSettings, Principal};
    use std::net::IpAddr;
    use std::time::Duration;

    let table = Lockout::new(LockoutSettings {
        threshold: 1_000_000,
        not_found_threshold: 0,
        window: Duration::from_secs(3600),
        cooldown: Duration::from_secs(300),
    });
    let address = |n: u32| Principal::Client(IpAddr::from(n.to_be_bytes()));
    for n in 0..100_000 {
        table.rejected(address(n));
    }
    let mut next = 1_000_000u32;
    c.bench_function("lockout/new_address_in_a_full_table", |b| {
        b.iter(|| {
            next += 1;
            table.rejected(black_box(address(next)))
        })
    });
}

criterion_group!(
    benches,
    token_verification,
    owner_hash,
    guard,
    access_check,
    sealing,
    lockout
);
criterion_main!(benches);
