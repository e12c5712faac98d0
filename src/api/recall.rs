//! How a search ranks: by meaning, by keywords, or both fused.
//!
//! `semantic` is the nearest embeddings (cosine similarity as the score),
//! `keyword` BM25 over the caller's memories ([`crate::keyword`]; the BM25
//! score), `hybrid` both, fused by reciprocal rank (the fused score).
//! Without `min_score`, a hybrid search ranks every keyword match, whatever
//! its cosine similarity: that is what finds an exact code the embedding
//! ranks low. With `min_score`, which is a floor on cosine similarity, a
//! hybrid search ranks only the semantic side's memories at or above it,
//! reordered by their keyword matches: no memory below the floor comes back.

use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::guard::Memory;
use crate::keyword::{self, CANDIDATES};
use crate::store::{Conditions, SearchQuery};

/// How a search ranks.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// By meaning: the nearest embeddings.
    Semantic,
    /// By words: BM25 over the caller's memories.
    Keyword,
    /// Both, fused by reciprocal rank (the default: the best recall@1 and
    /// MRR on the recall bench's fixture; see `benches/RESULTS.md`).
    #[default]
    Hybrid,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "semantic" => Ok(Self::Semantic),
            "keyword" => Ok(Self::Keyword),
            "hybrid" => Ok(Self::Hybrid),
            other => Err(format!(
                "`{other}` is not a search mode: use semantic, keyword or hybrid"
            )),
        }
    }
}

/// Candidates each side of a hybrid search brings to the fusion.
fn depth(limit: usize) -> usize {
    (limit * 3).clamp(30, 100)
}

/// The caller's memories for `query` ranked as `mode` says, at most `limit`.
pub async fn ranked(
    state: &AppState,
    caller: &Caller,
    mode: Mode,
    query: &str,
    limit: usize,
    min_score: Option<f32>,
    filter: Conditions,
) -> Result<Vec<Memory>, ApiError> {
    match mode {
        Mode::Semantic => semantic(state, caller, query, limit, min_score, filter).await,
        Mode::Keyword => {
            if min_score.is_some() {
                return Err(ApiError::validation(
                    "`min_score` is a cosine similarity: it applies to `semantic` and `hybrid` searches, not `keyword`",
                ));
            }
            keywords(state, caller, query, limit, filter).await
        }
        Mode::Hybrid => {
            let deep = depth(limit);
            let by_meaning =
                semantic(state, caller, query, deep, min_score, filter.clone()).await?;
            let mut by_words = keywords(state, caller, query, deep, filter).await?;
            if min_score.is_some() {
                let above: std::collections::HashSet<_> =
                    by_meaning.iter().map(Memory::id).collect();
                by_words.retain(|m| above.contains(&m.id()));
            }
            let ids = [
                by_meaning.iter().map(Memory::id).collect::<Vec<_>>(),
                by_words.iter().map(Memory::id).collect(),
            ];
            let mut pool: std::collections::HashMap<_, _> = by_words
                .into_iter()
                .chain(by_meaning)
                .map(|m| (m.id(), m))
                .collect();
            Ok(keyword::fuse(&ids)
                .into_iter()
                .filter_map(|(id, score)| pool.remove(&id).map(|m| m.with_score(score)))
                .take(limit)
                .collect())
        }
    }
}

async fn semantic(
    state: &AppState,
    caller: &Caller,
    query: &str,
    limit: usize,
    min_score: Option<f32>,
    filter: Conditions,
) -> Result<Vec<Memory>, ApiError> {
    let mut encoded = state
        .embedder
        .embed(&caller.owner, vec![query.to_owned()])
        .await?;
    let vector = encoded.vectors.pop().ok_or(ApiError::Internal)?;
    Ok(state
        .store
        .search(
            &caller.owner,
            SearchQuery {
                vector,
                limit,
                min_score,
                filter,
            },
        )
        .await?)
}

/// BM25 over the caller's memories that hold any of the query's terms.
///
/// The memories holding any term are read (at most [`CANDIDATES`]); when
/// they are all of them, each term's document frequency is counted among
/// them, and only the number of the caller's memories is asked of the
/// engine. Past the bound, the engine counts each term, and the memories
/// read are those holding the rarest terms (as many terms as fit the
/// bound), so that an exact code is never crowded out by a common word.
async fn keywords(
    state: &AppState,
    caller: &Caller,
    query: &str,
    limit: usize,
    filter: Conditions,
) -> Result<Vec<Memory>, ApiError> {
    let terms = state.keywords.query(query);
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = terms.iter().map(|t| i64::from(*t)).collect();
    let owner = &caller.owner;
    let mut candidates = state
        .store
        .holding_terms(owner, &ids, &filter, CANDIDATES + 1)
        .await?;
    let weighed = |memories: &[Memory]| -> Vec<std::collections::HashMap<u32, f32>> {
        memories
            .iter()
            .map(|m| state.keywords.weights(m.text()))
            .collect()
    };
    let (n, counts, weights) = if candidates.len() <= CANDIDATES && filter_is_open(&filter) {
        let weights = weighed(&candidates);
        let counts = terms
            .iter()
            .map(|t| weights.iter().filter(|w| w.contains_key(t)).count())
            .collect();
        let (n, _) = state.store.term_counts(owner, &[]).await?;
        (n, counts, weights)
    } else {
        let (n, counts) = state.store.term_counts(owner, &ids).await?;
        if candidates.len() > CANDIDATES {
            let mut by_rarity: Vec<(usize, i64)> =
                counts.iter().copied().zip(ids.clone()).collect();
            by_rarity.sort_unstable();
            let mut rare = Vec::new();
            let mut total = 0;
            for (df, id) in by_rarity {
                if !rare.is_empty() && total + df > CANDIDATES {
                    break;
                }
                total += df;
                rare.push(id);
            }
            candidates = state
                .store
                .holding_terms(owner, &rare, &filter, CANDIDATES)
                .await?;
        }
        let weights = weighed(&candidates);
        (n, counts, weights)
    };
    let idfs: Vec<f32> = counts.iter().map(|df| keyword::idf(n, *df)).collect();
    let mut scored: Vec<(f32, Memory)> = candidates
        .into_iter()
        .zip(&weights)
        .map(|(m, w)| (keyword::score(w, &terms, &idfs), m))
        .filter(|(score, _)| *score > 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(scored
        .into_iter()
        .take(limit)
        .map(|(score, m)| m.with_score(score))
        .collect())
}

/// Whether `filter` leaves every memory in (then the memories holding a
/// term are all the memories the term's frequency counts).
fn filter_is_open(filter: &Conditions) -> bool {
    !filter.on_metadata() && filter.created.is_open()
}
