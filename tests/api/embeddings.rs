//! `POST /v1/embeddings`: the real model, in the OpenAI response shape.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{spawn_app, token};

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn vector(v: &Value) -> Vec<f64> {
    v["embedding"]
        .as_array()
        .expect("embedding array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[tokio::test]
async fn embeddings_match_the_reference_similarity_of_the_model() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let r = app
        .post(
            "/v1/embeddings",
            &t,
            &json!({
                "model": "all-MiniLM-L6-v2",
                "input": ["The cat sits on the mat", "A feline is resting on a rug", "Quarterly tax filing deadlines"]
            }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "all-MiniLM-L6-v2");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
    }
    let (cat, feline, tax) = (vector(&data[0]), vector(&data[1]), vector(&data[2]));
    assert_eq!(cat.len(), 384);
    let norm: f64 = cat.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "not unit length: {norm}");
    let related = cosine(&cat, &feline);
    assert!(
        (related - 0.582).abs() < 0.02,
        "cos(cat, feline) = {related}"
    );
    assert!(cosine(&cat, &tax) < 0.2);
    assert!(body["usage"]["prompt_tokens"].as_u64().expect("tokens") > 10);
}

#[tokio::test]
async fn a_single_string_input_gives_one_embedding_and_batching_does_not_change_it() {
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let one: Value = app
        .post(
            "/v1/embeddings",
            &t,
            &json!({ "input": "The cat sits on the mat" }),
        )
        .await
        .json()
        .await
        .expect("json");
    let many: Value = app
        .post(
            "/v1/embeddings",
            &t,
            &json!({ "input": ["a much longer sentence that forces padding in the batch", "The cat sits on the mat"] }),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(one["data"].as_array().expect("data").len(), 1);
    let alone = vector(&one["data"][0]);
    let padded = vector(&many["data"][1]);
    assert!(
        cosine(&alone, &padded) > 0.9999,
        "padding changed the embedding"
    );
}

#[tokio::test]
async fn a_list_longer_than_one_queue_piece_comes_back_in_order() {
    // The queue takes a request in pieces of an eighth of a batch (4 texts
    // by default); ten texts span three pieces that may run in different
    // batches.
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let texts: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "note {i}: the {} is on the table",
                ["cat", "dog", "key", "cup", "map"][i % 5]
            )
        })
        .collect();
    let many: Value = app
        .post("/v1/embeddings", &t, &json!({ "input": texts }))
        .await
        .json()
        .await
        .expect("json");
    let data = many["data"].as_array().expect("data");
    assert_eq!(data.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(data[i]["index"], i);
        let one: Value = app
            .post("/v1/embeddings", &t, &json!({ "input": text }))
            .await
            .json()
            .await
            .expect("json");
        let similarity = cosine(&vector(&data[i]), &vector(&one["data"][0]));
        assert!(
            similarity > 0.9999,
            "text {i} came back as another: {similarity}"
        );
    }
}

#[tokio::test]
async fn base64_encoding_carries_the_same_little_endian_floats() {
    use base64::Engine as _;
    let app = spawn_app().await;
    let t = token("acme", "alice");
    let input = json!(["The cat sits on the mat", "a second text"]);
    let float: Value = app
        .post(
            "/v1/embeddings",
            &t,
            &json!({ "input": input, "encoding_format": "float" }),
        )
        .await
        .json()
        .await
        .expect("json");
    let r = app
        .post(
            "/v1/embeddings",
            &t,
            &json!({ "input": input, "encoding_format": "base64" }),
        )
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let packed: Value = r.json().await.expect("json");
    for i in 0..2 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(
                packed["data"][i]["embedding"]
                    .as_str()
                    .expect("a base64 string"),
            )
            .expect("valid base64");
        assert_eq!(bytes.len(), 384 * 4);
        let decoded: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect();
        assert!(cosine(&decoded, &vector(&float["data"][i])) > 0.9999);
    }
    let r = app
        .post(
            "/v1/embeddings",
            &t,
            &json!({ "input": "x", "encoding_format": "int8" }),
        )
        .await;
    assert_eq!(r.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn an_unknown_model_name_is_rejected() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/v1/embeddings",
            &token("acme", "alice"),
            &json!({ "model": "text-embedding-3-large", "input": "x" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
