//! The live canary: synthetic users that check, while the server runs, that
//! no user sees another's memories.
//!
//! Each canary user holds one canary memory. Every `CORDON_CANARY_INTERVAL_SECS`
//! each of them searches for the others' texts, lists its memories and asks
//! for the others' ids, through the whole router as a request from outside
//! would go (handlers, guard, engine); only the token check is skipped, as
//! the process is its own caller. Every replica runs its own rounds against
//! the same canary users, so each replica's view of the store is checked.
//!
//! A canary seen by the wrong user, or a canary read that failed closed, is
//! a breach: an `alert` event, `cordon_canary_breaches_total`, and `/readyz`
//! answers 503 `canary_breach` until a round comes back clean (a round that
//! meets the quarantine the breach set cannot: it fails, and the verdict
//! stands until an admin has cleared it).
//! Canary owners cannot be any token's (their tenant holds a NUL byte, which
//! no token's may), they are placed like any user (so in the shared tier they
//! share collections with real users), and their requests are counted in
//! metrics of their own and noted in no access log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::api::AppState;
use crate::auth::InternalCaller;
use crate::metrics::Metrics;
use crate::owner::OwnerHash;

/// Canary users per deployment.
pub const USERS: usize = 2;

/// The tenant of canary owners: a NUL byte, which no token's tenant holds.
const TENANT: &str = "\0cordon-canary";

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every canary was seen by its own user only.
    Clean,
    /// A canary was seen by the wrong user, or a read failed closed.
    Breach,
    /// A probe could not run (the store or the model failed).
    Failed,
}

/// The latest round's verdict, which readiness reads.
#[derive(Debug, Default)]
pub struct Verdict {
    breached: AtomicBool,
}

impl Verdict {
    /// Whether the latest round found a breach.
    pub fn breached(&self) -> bool {
        self.breached.load(Ordering::Acquire)
    }
}

/// One canary user.
struct User {
    owner: OwnerHash,
    text: String,
    id: Option<String>,
}

/// The prober: its users and the router it calls.
pub struct Canary {
    router: Router,
    users: Vec<User>,
    verdict: Arc<Verdict>,
    metrics: Arc<Metrics>,
}

/// The owner hash of canary user `i`.
pub fn owner(secret: &crate::secret::Secret, i: usize) -> OwnerHash {
    OwnerHash::derive(secret, TENANT, &i.to_string())
}

impl Canary {
    /// A prober over `state`'s store. Its requests are counted in metrics
    /// of their own and noted in no access log; `metrics` gets the rounds.
    pub fn new(state: &AppState) -> Self {
        let mut own = state.clone();
        own.metrics = Arc::new(Metrics::default());
        own.trail = state.trail.without_notes();
        let users = (0..USERS)
            .map(|i| User {
                owner: owner(&state.auth.server_secret, i),
                text: format!("cordon canary {i}: a memory that only canary {i} may ever see"),
                id: None,
            })
            .collect();
        Self {
            router: crate::api::router(own),
            users,
            verdict: state.canary.clone(),
            metrics: state.metrics.clone(),
        }
    }

    /// Runs a round every `interval` until the process ends.
    pub fn start(mut self, interval: Duration) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let outcome = self.round().await;
                self.metrics.canary(outcome);
                match outcome {
                    Outcome::Clean => self.verdict.breached.store(false, Ordering::Release),
                    Outcome::Breach => self.verdict.breached.store(true, Ordering::Release),
                    // A round that could not look proves nothing either way.
                    Outcome::Failed => {}
                }
            }
        });
    }

    /// One round: each canary user stores its memory (once), then looks
    /// for the others' by search, list and id.
    pub async fn round(&mut self) -> Outcome {
        for i in 0..self.users.len() {
            if self.users[i].id.is_none() {
                match self.plant(i).await {
                    Ok(id) => self.users[i].id = Some(id),
                    Err(outcome) => return outcome,
                }
            }
        }
        let mut worst = Outcome::Clean;
        for i in 0..self.users.len() {
            match self.look(i).await {
                Outcome::Clean => {}
                Outcome::Breach => return Outcome::Breach,
                Outcome::Failed => {
                    // Planted again next round, should it be gone.
                    self.users[i].id = None;
                    worst = Outcome::Failed;
                }
            }
        }
        worst
    }

    async fn call(
        &self,
        i: usize,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), Outcome> {
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request
                .header("content-type", "application/json")
                .header("idempotency-key", format!("cordon-canary-{i}-v1"));
        }
        let mut request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("a request of a fixed method, path and headers builds");
        request.extensions_mut().insert(InternalCaller {
            owner: self.users[i].owner.clone(),
            name: "canary",
        });
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|_| Outcome::Failed)?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .map_err(|_| Outcome::Failed)?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = json["error"]["code"].as_str().unwrap_or_default();
        if code == "isolation_breach" {
            // A canary read met another user's point: the engine's owner
            // filter failed where a canary lives.
            crate::audit::canary_breach(code, uri);
            return Err(Outcome::Breach);
        }
        // Anything else but an answer or a 404 (a quarantine found earlier,
        // a rate limit, a store down) proves nothing either way.
        if !status.is_success() && status != StatusCode::NOT_FOUND {
            tracing::warn!(%status, code, "canary probe failed");
            return Err(Outcome::Failed);
        }
        Ok((status, json))
    }

    /// Stores user `i`'s canary memory (idempotent: every round and
    /// replica gets the same id) and returns its id.
    async fn plant(&self, i: usize) -> Result<String, Outcome> {
        let body = json!({ "text": self.users[i].text, "expires_at": null });
        let (status, json) = self
            .call(i, Method::POST, "/v1/memories", Some(body))
            .await?;
        match json["ids"][0].as_str() {
            Some(id) if status.is_success() => Ok(id.to_owned()),
            _ => {
                tracing::warn!(%status, "canary memory not stored");
                Err(Outcome::Failed)
            }
        }
    }

    /// Whether user `i` sees any other canary's memory, and still its own.
    async fn look(&self, i: usize) -> Outcome {
        match self.look_or_fail(i).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn look_or_fail(&self, i: usize) -> Result<Outcome, Outcome> {
        let others: Vec<&User> = (0..self.users.len())
            .filter(|&j| j != i)
            .map(|j| &self.users[j])
            .collect();
        let foreign = |found: &Value| -> bool {
            let text = found.to_string();
            others.iter().any(|o| {
                text.contains(&o.text) || o.id.as_deref().is_some_and(|id| text.contains(id))
            })
        };
        let mut seen = Vec::new();
        for other in &others {
            let query = json!({ "query": other.text, "limit": 10 });
            let (_, found) = self
                .call(i, Method::POST, "/v1/memories/search", Some(query))
                .await?;
            seen.push(("search", foreign(&found)));
            if let Some(id) = &other.id {
                let (status, found) = self
                    .call(i, Method::GET, &format!("/v1/memories/{id}"), None)
                    .await?;
                seen.push(("get", status != StatusCode::NOT_FOUND || foreign(&found)));
            }
        }
        let (_, listed) = self
            .call(i, Method::GET, "/v1/memories?limit=100", None)
            .await?;
        seen.push(("list", foreign(&listed)));
        if let Some((what, _)) = seen.iter().find(|(_, leaked)| *leaked) {
            crate::audit::canary_breach(what, "a canary memory reached another canary user");
            return Ok(Outcome::Breach);
        }
        let own = self.users[i].id.as_deref().unwrap_or_default();
        if !listed.to_string().contains(own) {
            // Its own memory is gone (an operator erased it, say): plant
            // it again next round.
            tracing::warn!(canary = i, "a canary user no longer lists its memory");
            return Err(Outcome::Failed);
        }
        Ok(Outcome::Clean)
    }
}
