//! Scope statements: what one read looked at, signed for the caller to keep.
//!
//! A request that sends `Cordon-Scope: signed` runs inside a [`Scope`]: the
//! guarded store notes into it the collection it read, the filter it asked
//! the engine for, how many points came back and how many the guard dropped;
//! the handler notes how many memories it returned. The API layer then signs
//! the whole ([`crate::receipt`]) into the `Cordon-Scope-Statement` header.
//! Without the header nothing is noted, and no place is looked up.

use std::cell::RefCell;

use serde::Serialize;
use serde_json::{Value, json};

use crate::store::Conditions;

tokio::task_local! {
    static SCOPE: RefCell<Scope>;
}

/// What the reads of one request looked at.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Scope {
    /// The caller's owner tag (set once the handler noted its access).
    pub owner: Option<String>,
    /// The collections (or shards) read, by name (signed as their tags).
    pub collections: Vec<String>,
    /// The filters asked of the engine, one per read.
    pub filters: Vec<Value>,
    /// Points the engine returned.
    pub points_read: usize,
    /// Points the guard dropped (another owner's).
    pub points_dropped: usize,
    /// Memories the response holds.
    pub returned: usize,
}

/// Runs `work` with a scope, and returns what it noted.
pub async fn observed<F: std::future::Future>(work: F) -> (F::Output, Scope) {
    SCOPE
        .scope(RefCell::new(Scope::default()), async move {
            let out = work.await;
            let scope = SCOPE.with(|s| s.borrow().clone());
            (out, scope)
        })
        .await
}

/// Whether the current request asked for a statement.
pub fn wanted() -> bool {
    SCOPE.try_with(|_| ()).is_ok()
}

fn note(f: impl FnOnce(&mut Scope)) {
    let _ = SCOPE.try_with(|s| f(&mut s.borrow_mut()));
}

/// Notes a read of `collection`: `read` points came back, of which the
/// guard dropped `dropped`.
pub fn note_read(collection: String, read: usize, dropped: usize) {
    note(|s| {
        if !s.collections.contains(&collection) {
            s.collections.push(collection);
        }
        s.points_read += read;
        s.points_dropped += dropped;
    });
}

/// Notes a filter asked of the engine.
pub fn note_filter(filter: Value) {
    note(|s| {
        if !s.filters.contains(&filter) {
            s.filters.push(filter);
        }
    });
}

/// Notes whose access it was and how many memories the response holds.
pub fn note_returned(owner_tag: String, n: usize) {
    note(|s| {
        s.owner = Some(owner_tag);
        s.returned = n;
    });
}

/// The filter as a statement shows it: the conditions' kinds and metadata
/// keys (their values are the caller's own and stay out), and whether the
/// engine was asked for the owner condition at all (not in a collision
/// drill).
pub fn describe(owner_tag: &str, conditions: &Conditions, owner_condition: bool) -> Value {
    let keys = |pairs: Vec<&String>| pairs.into_iter().cloned().collect::<Vec<_>>();
    json!({
        "owner": if owner_condition { Value::String(owner_tag.to_owned()) } else { Value::Null },
        "alive_at": conditions.alive_at,
        "metadata": keys(conditions.metadata.iter().map(|(k, _)| k).collect()),
        "any_of": keys(conditions.any_of.iter().map(|(k, _)| k).collect()),
        "ranges": keys(conditions.ranges.iter().map(|(k, _)| k).collect()),
        "created": conditions.created != Default::default(),
        "terms": conditions.terms.len(),
    })
}
