//! The keyword side of recall: BM25 over each user's own memories.
//!
//! Embeddings rank by meaning and can miss an exact name, code or number
//! ("order A-88213"). The keyword side finds those. Texts are tokenized by
//! Qdrant's own BM25 pipeline (from qdrant-edge: lowercase, English stop
//! words and stemming, a term id per token), and each memory stores its term
//! ids in its payload (`terms`), keyed per owner when memories are sealed.
//!
//! A keyword search reads the owner's memories holding any query term (at
//! most [`CANDIDATES`] of them), and scores each with BM25: the term weights
//! of its text, times each term's inverse document frequency over the
//! owner's own memories (counted by the engine), so no other user's words
//! weigh in. [`fuse`] joins a semantic and a keyword ranking by reciprocal
//! rank fusion.

use std::collections::HashMap;

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};

/// Most memories one keyword search scores.
pub const CANDIDATES: usize = 2_000;
/// Most distinct terms of a query that count.
pub const MAX_QUERY_TERMS: usize = 32;
/// The rank offset of reciprocal rank fusion (the usual 60).
const RRF_K: f32 = 60.0;
/// The length, in tokens, BM25 takes as typical: memories are a sentence or
/// two, not the documents of its default (256).
const AVG_LEN: f64 = 16.0;

/// Turns texts into BM25 terms.
#[derive(Debug)]
pub struct Keywords {
    bm25: EdgeBm25,
}

impl Default for Keywords {
    fn default() -> Self {
        Self::new()
    }
}

impl Keywords {
    /// BM25 with Qdrant's defaults (k1 1.2, b 0.75) for memory-sized texts.
    pub fn new() -> Self {
        let config = EdgeBm25Config {
            avg_len: qdrant_edge::external::ordered_float::NotNan::new(AVG_LEN)
                .expect("a constant that is a number"),
            ..EdgeBm25Config::default()
        };
        Self {
            bm25: EdgeBm25::new(config).expect("the constant BM25 settings are valid"),
        }
    }

    /// The term ids of a text to store.
    pub fn terms(&self, text: &str) -> Vec<i64> {
        self.bm25
            .embed_document(text)
            .indices
            .into_iter()
            .map(i64::from)
            .collect()
    }

    /// A text's terms with their BM25 weights (term frequency, saturated
    /// and normalised by length).
    pub fn weights(&self, text: &str) -> HashMap<u32, f32> {
        let v = self.bm25.embed_document(text);
        v.indices.into_iter().zip(v.values).collect()
    }

    /// The distinct term ids of a query.
    pub fn query(&self, text: &str) -> Vec<u32> {
        let mut terms = self.bm25.embed_query(text).indices;
        terms.truncate(MAX_QUERY_TERMS);
        terms
    }
}

/// BM25's inverse document frequency of a term found in `df` of `n`
/// memories (Qdrant's formula: never negative).
pub fn idf(n: usize, df: usize) -> f32 {
    let (n, df) = (n as f32, df as f32);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

/// The BM25 score of a memory whose text has `weights`, for a query of
/// `terms` with inverse document frequencies `idfs`.
pub fn score(weights: &HashMap<u32, f32>, terms: &[u32], idfs: &[f32]) -> f32 {
    terms
        .iter()
        .zip(idfs)
        .filter_map(|(t, idf)| weights.get(t).map(|w| w * idf))
        .sum()
}

/// Reciprocal rank fusion of rankings of ids (best first): each id scores
/// the sum of `1 / (60 + rank)` over the rankings it is in.
pub fn fuse<T: Copy + Eq + std::hash::Hash>(rankings: &[Vec<T>]) -> Vec<(T, f32)> {
    let mut scores: HashMap<T, f32> = HashMap::new();
    let mut order = Vec::new();
    for ranking in rankings {
        for (rank, id) in ranking.iter().enumerate() {
            let entry = scores.entry(*id).or_insert_with(|| {
                order.push(*id);
                0.0
            });
            *entry += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<(T, f32)> = order.into_iter().map(|id| (id, scores[&id])).collect();
    // Stable: ties keep the order of first appearance (semantic first).
    fused.sort_by(|a, b| b.1.total_cmp(&a.1));
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_code_is_a_term_of_its_text_and_of_the_query() {
        let k = Keywords::new();
        let stored = k.terms("Order A-88213 ships on Monday");
        let asked = k.query("where is order A-88213?");
        let code = k.query("88213");
        assert_eq!(code.len(), 1);
        assert!(stored.contains(&i64::from(code[0])));
        assert!(asked.contains(&code[0]));
    }

    #[test]
    fn a_rare_term_outweighs_a_common_one() {
        assert!(idf(100, 1) > idf(100, 50));
        assert!(idf(100, 100) >= 0.0);
    }

    #[test]
    fn fusion_rewards_ids_both_rankings_agree_on() {
        let fused = fuse(&[vec![1, 2, 3], vec![3, 4]]);
        assert_eq!(fused[0].0, 3);
        assert_eq!(fused.len(), 4);
        assert!(fused.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}
