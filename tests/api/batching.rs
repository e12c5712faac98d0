//! The batching worker under concurrent requests of mixed lengths: every
//! request gets the vectors of its own texts, in order, whichever batch and
//! model call each text ran in (long texts run apart from short ones, and a
//! request is answered as soon as its own texts are done).

use cordon::embed::{Embedder, Model};
use cordon::owner::OwnerHash;
use cordon::secret::Secret;

use crate::helpers::embed_settings;
use crate::packed_model::{cosine, varied_texts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_mixed_lengths_each_get_their_own_vectors() {
    let texts = varied_texts();
    // Each text alone, straight through the model: no batch at all.
    let mut model = Model::load(&embed_settings())
        .expect("model assets present: run `python3 models/fetch.py`");
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            model
                .embed(std::slice::from_ref(t))
                .expect("one text")
                .vectors
                .remove(0)
        })
        .collect();
    drop(model);

    let embedder = Embedder::start(&embed_settings()).expect("the embedder starts");
    let secret = Secret::new(vec![9u8; 32]);
    // 60 requests from 12 users, queued together; each holds four texts of
    // different lengths (one word to past the 256-token limit).
    let requests = (0..60usize).map(|r| {
        let embedder = embedder.clone();
        let owner = OwnerHash::derive(&secret, "acme", &format!("user{}", r % 12));
        let picked = [r, r + 61, r + 122, (r + 183) % texts.len()];
        let batch: Vec<String> = picked.iter().map(|&i| texts[i].clone()).collect();
        async move { (r, picked, embedder.embed(&owner, batch).await) }
    });
    for (r, picked, result) in futures::future::join_all(requests).await {
        let vectors = result.expect("embedded").vectors;
        assert_eq!(vectors.len(), picked.len(), "request {r}");
        for (i, vector) in picked.into_iter().zip(&vectors) {
            let c = cosine(vector, &alone[i]);
            assert!(c >= 0.9999, "request {r}, text {i}: cosine {c}");
        }
    }
}
