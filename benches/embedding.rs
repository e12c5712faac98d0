//! Embedding throughput through Cordon's embedder (tokenise, run the model,
//! pool, normalise): one text, and a batch of 32.
//!
//! ```text
//! cargo bench --bench embedding
//! ```

mod support;

use std::time::Duration;

use cordon::owner::OwnerHash;
use cordon::secret::Secret;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Texts of about 20 tokens, like a typical stored memory.
fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!("note {i}: my sister prefers oat milk in coffee and asked me to book a table for Friday")
        })
        .collect()
}

fn embedding(c: &mut Criterion) {
    let embedder = support::embedder();
    let owner = OwnerHash::derive(&Secret::new(vec![7u8; 32]), "acme", "alice");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");

    let mut group = c.benchmark_group("embed");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for n in [1, 32] {
        let batch = texts(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("texts", n), &batch, |b, batch| {
            b.to_async(&runtime).iter(|| async {
                let encoded = embedder
                    .embed(&owner, batch.clone())
                    .await
                    .expect("embedding succeeds");
                assert_eq!(encoded.vectors.len(), batch.len());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, embedding);
criterion_main!(benches);
