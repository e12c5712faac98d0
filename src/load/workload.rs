//! One user's script, and the checks applied to every answer.
//!
//! A worker runs a user from start to end: store the user's canaries, run
//! the mixed operations, read everything back, erase. The worker keeps a
//! model of what the user should have, so every response can be judged:
//! a text that is not the caller's canary is a leak, a foreign id that
//! answers anything but 404 is a leak, an acknowledged memory that cannot be
//! read back is lost. A 200 whose body lacks the expected shape is an error,
//! never a clean page: otherwise a changed response would switch the checks
//! off without a sign.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, IteratorRandom};
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::canary::{self, Origin};
use super::report::Tally;

/// Relative weights of the mixed operations.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    weights: [u32; 5],
}

/// The mixed operations, in the order of [`Mix`]'s weights.
const MIXED: [&str; 5] = ["store", "search", "get", "list", "delete"];

impl Mix {
    /// Parses `store=1,search=4,...`; unnamed kinds weigh 0.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 5];
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not kind=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{weight}` is not a whole number"))?;
            let slot = MIXED
                .iter()
                .position(|k| *k == kind.trim())
                .ok_or_else(|| format!("unknown kind `{}`", kind.trim()))?;
            weights[slot] = weight;
        }
        let total = weights
            .iter()
            .try_fold(0u32, |a, w| a.checked_add(*w))
            .ok_or("the weights add up to more than 2^32")?;
        if total == 0 {
            return Err("every weight is 0".into());
        }
        Ok(Self { weights })
    }

    fn pick(&self, rng: &mut impl Rng) -> &'static str {
        let total: u32 = self.weights.iter().sum();
        let mut x = rng.random_range(0..total);
        for (kind, w) in MIXED.iter().zip(self.weights) {
            if x < w {
                return kind;
            }
            x -= w;
        }
        unreachable!("x < total, the sum of the weights")
    }
}

/// What every worker shares.
pub struct Shared {
    /// The HTTP client (one connection pool for all workers).
    pub http: reqwest::Client,
    /// Base URL of the server.
    pub base: String,
    /// This run's id, part of every canary and tenant.
    pub run: String,
    /// Where results are counted.
    pub tally: Tally,
    /// Weights of the mixed operations.
    pub mix: Mix,
    /// Memories stored per user before the mix.
    pub memories: usize,
    /// Mixed operations per user.
    pub ops: usize,
    /// Share of gets and deletes aimed at another user's id.
    pub foreign_share: f64,
    /// Whether each user erases its memories at the end.
    pub erase: bool,
    /// Seed of every user's random choices.
    pub seed: u64,
    /// Live ids of the users running now, for foreign-id probes.
    pub live: Mutex<LiveIds>,
}

/// The acknowledged, undeleted ids of every user whose script is running:
/// probing an id that is already gone would answer 404 whatever isolation
/// does, and prove nothing.
#[derive(Default)]
pub struct LiveIds {
    by_user: HashMap<usize, Vec<Uuid>>,
}

impl LiveIds {
    fn add(&mut self, user: usize, id: Uuid) {
        self.by_user.entry(user).or_default().push(id);
    }

    fn remove(&mut self, user: usize, id: Uuid) {
        if let Some(ids) = self.by_user.get_mut(&user) {
            ids.retain(|i| *i != id);
        }
    }

    fn forget(&mut self, user: usize) {
        self.by_user.remove(&user);
    }

    /// A live id of some other running user.
    fn foreign(&self, user: usize, rng: &mut impl Rng) -> Option<(usize, Uuid)> {
        let (owner, ids) = self
            .by_user
            .iter()
            .filter(|(u, ids)| **u != user && !ids.is_empty())
            .choose(rng)?;
        ids.choose(rng).map(|id| (*owner, *id))
    }
}

/// One user as the worker sees them.
struct User<'a> {
    shared: &'a Shared,
    index: usize,
    token: String,
    rng: StdRng,
    /// Acknowledged memories: id → memory number.
    live: BTreeMap<Uuid, usize>,
    /// Numbers of deleted memories.
    deleted: HashSet<usize>,
    /// Numbers whose store or delete failed: maybe applied, maybe not.
    uncertain: HashSet<usize>,
    /// Numbers of acknowledged memories found missing (counted once).
    missing: HashSet<usize>,
    next_n: usize,
}

/// An answer: status and JSON body (`Null` when there is none).
type Answer = (StatusCode, Value);

impl User<'_> {
    async fn call(
        &self,
        kind: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<Answer> {
        let mut request = self
            .shared
            .http
            .request(method, format!("{}{path}", self.shared.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let started = Instant::now();
        let answer = async {
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        }
        .await;
        match answer {
            Ok(answer) => {
                // Only answered requests have a latency worth reporting.
                self.shared.tally.request(kind, started.elapsed());
                Some(answer)
            }
            Err(e) => {
                let what = if e.is_timeout() {
                    "timeout"
                } else {
                    "transport"
                };
                self.shared.tally.error(kind, what);
                None
            }
        }
    }

    /// The array under `field` of a 200 body, or an error if it has none.
    fn array(&self, kind: &'static str, body: &Value, field: &str) -> Option<Vec<Value>> {
        let array = body.get(field).and_then(Value::as_array).cloned();
        if array.is_none() {
            self.shared.tally.error(kind, "200 without a valid body");
        }
        array
    }

    /// Judges every memory in a response; returns the own numbers seen.
    fn check(&self, kind: &str, memories: &[Value]) -> Vec<usize> {
        let mut own = Vec::new();
        for memory in memories {
            self.shared.tally.checked();
            let text = memory.get("text").and_then(Value::as_str).unwrap_or("");
            match canary::origin(text, &self.shared.run, self.index) {
                Origin::Own(n) => {
                    if self.deleted.contains(&n) {
                        self.shared.tally.stale();
                    }
                    own.push(n);
                }
                Origin::Foreign => self.shared.tally.leak(format!(
                    "user {} got {:?} from {kind}",
                    self.index,
                    text.chars().take(120).collect::<String>()
                )),
            }
        }
        own
    }

    fn unexpected(&self, kind: &'static str, status: StatusCode) {
        self.shared.tally.error(kind, status.as_str());
    }

    /// Books an acknowledged memory as missing, once.
    fn lose(&mut self, id: Uuid, n: usize) {
        self.live.remove(&id);
        self.shared.live.lock().remove(self.index, id);
        if self.missing.insert(n) {
            self.shared.tally.lost(1);
        }
    }

    async fn store(&mut self) {
        let n = self.next_n;
        self.next_n += 1;
        let text = canary::text(&mut self.rng, &self.shared.run, self.index, n);
        let body = json!({ "text": text, "metadata": { "n": n } });
        let answer = self
            .call("store", Method::POST, "/v1/memories", Some(body))
            .await;
        self.uncertain.insert(n);
        let Some((status, body)) = answer else { return };
        if status != StatusCode::CREATED {
            return self.unexpected("store", status);
        }
        let ids = self.array("store", &body, "ids").unwrap_or_default();
        match ids.first().and_then(Value::as_str).map(str::parse::<Uuid>) {
            Some(Ok(id)) if ids.len() == 1 => {
                self.uncertain.remove(&n);
                self.live.insert(id, n);
                self.shared.live.lock().add(self.index, id);
            }
            _ => self.shared.tally.error("store", "201 without one id"),
        }
    }

    async fn search(&mut self) {
        let body = json!({ "query": canary::sentence(&mut self.rng), "limit": 10 });
        let Some((status, body)) = self
            .call("search", Method::POST, "/v1/memories/search", Some(body))
            .await
        else {
            return;
        };
        if status != StatusCode::OK {
            return self.unexpected("search", status);
        }
        if let Some(results) = self.array("search", &body, "results") {
            self.check("search", &results);
        }
    }

    fn own_id(&mut self) -> Option<(Uuid, usize)> {
        let ids: Vec<(&Uuid, &usize)> = self.live.iter().collect();
        ids.choose(&mut self.rng).map(|(id, n)| (**id, **n))
    }

    fn foreign_id(&mut self) -> Option<(usize, Uuid)> {
        if !self.rng.random_bool(self.shared.foreign_share) {
            return None;
        }
        let probe = self.shared.live.lock().foreign(self.index, &mut self.rng);
        if probe.is_some() {
            self.shared.tally.probe();
        }
        probe
    }

    async fn get(&mut self) {
        if let Some((owner, id)) = self.foreign_id() {
            let path = format!("/v1/memories/{id}");
            let Some((status, body)) = self.call("get", Method::GET, &path, None).await else {
                return;
            };
            match status {
                StatusCode::NOT_FOUND => {}
                StatusCode::OK => self.shared.tally.leak(format!(
                    "user {} read user {owner}'s memory {id}: {body}",
                    self.index
                )),
                other => self.unexpected("get", other),
            }
            return;
        }
        let Some((id, n)) = self.own_id() else { return };
        let path = format!("/v1/memories/{id}");
        let Some((status, body)) = self.call("get", Method::GET, &path, None).await else {
            return;
        };
        match status {
            StatusCode::OK => {
                let seen = self.check("get", std::slice::from_ref(&body));
                if seen.len() == 1 && seen != [n] {
                    self.shared
                        .tally
                        .error("get", "200 with another own memory");
                }
            }
            StatusCode::NOT_FOUND => self.lose(id, n),
            other => self.unexpected("get", other),
        }
    }

    async fn list(&mut self) {
        let Some((status, body)) = self
            .call("list", Method::GET, "/v1/memories?limit=20", None)
            .await
        else {
            return;
        };
        if status != StatusCode::OK {
            return self.unexpected("list", status);
        }
        if let Some(memories) = self.array("list", &body, "memories") {
            self.check("list", &memories);
        }
    }

    async fn delete(&mut self) {
        if let Some((owner, id)) = self.foreign_id() {
            let path = format!("/v1/memories/{id}");
            let Some((status, _)) = self.call("delete", Method::DELETE, &path, None).await else {
                return;
            };
            match status {
                StatusCode::NOT_FOUND => {}
                StatusCode::NO_CONTENT | StatusCode::OK => self.shared.tally.leak(format!(
                    "user {} deleted user {owner}'s memory {id}",
                    self.index
                )),
                other => self.unexpected("delete", other),
            }
            return;
        }
        let Some((id, n)) = self.own_id() else { return };
        // Whatever the answer, stop offering this id to other users' probes.
        self.live.remove(&id);
        self.shared.live.lock().remove(self.index, id);
        let path = format!("/v1/memories/{id}");
        let answer = self.call("delete", Method::DELETE, &path, None).await;
        match answer.map(|(status, _)| status) {
            Some(StatusCode::NO_CONTENT) => {
                self.deleted.insert(n);
            }
            Some(StatusCode::NOT_FOUND) => {
                if self.missing.insert(n) {
                    self.shared.tally.lost(1);
                }
            }
            other => {
                // Maybe deleted, maybe not: stop expecting it either way.
                self.uncertain.insert(n);
                if let Some(status) = other {
                    self.unexpected("delete", status);
                }
            }
        }
    }

    /// Reads every page and compares with the model.
    async fn verify(&mut self) {
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        // More pages than the user can fill means the cursor is not moving.
        let max_pages = (self.next_n / 100) + 2;
        for _ in 0..max_pages {
            let path = match &cursor {
                Some(c) => format!("/v1/memories?limit=100&cursor={c}"),
                None => "/v1/memories?limit=100".to_owned(),
            };
            let Some((status, body)) = self.call("verify", Method::GET, &path, None).await else {
                return;
            };
            if status != StatusCode::OK {
                return self.unexpected("verify", status);
            }
            let Some(memories) = self.array("verify", &body, "memories") else {
                return;
            };
            seen.extend(self.check("verify", &memories));
            match body.get("next_cursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => {
                    let gone: Vec<(Uuid, usize)> = self
                        .live
                        .iter()
                        .filter(|(_, n)| !seen.contains(*n))
                        .map(|(id, n)| (*id, *n))
                        .collect();
                    for (id, n) in gone {
                        self.lose(id, n);
                    }
                    return;
                }
            }
        }
        self.shared.tally.error("verify", "cursor never ended");
    }

    async fn erase(&mut self) {
        self.shared.live.lock().forget(self.index);
        let Some((status, body)) = self
            .call("erase", Method::DELETE, "/v1/memories", None)
            .await
        else {
            return;
        };
        if status != StatusCode::OK {
            return self.unexpected("erase", status);
        }
        let Some(deleted) = body.get("deleted").and_then(Value::as_u64) else {
            return self.shared.tally.error("erase", "200 without a valid body");
        };
        // The count must cover every acknowledged memory still live; failed
        // writes and memories found missing may or may not be among them.
        let deleted = deleted as usize;
        let least = self.live.len();
        let most = least + self.uncertain.len() + self.missing.len();
        if deleted < least {
            self.shared.tally.lost((least - deleted) as u64);
        } else if deleted > most {
            self.shared.tally.leak(format!(
                "user {}'s erase removed {deleted} memories; they owned at most {most}",
                self.index
            ));
        }
    }
}

/// Runs user `index`'s whole script.
pub async fn run_user(shared: Arc<Shared>, index: usize, token: String) {
    let mut user = User {
        shared: &shared,
        index,
        token,
        rng: StdRng::seed_from_u64(
            shared.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ),
        live: BTreeMap::new(),
        deleted: HashSet::new(),
        uncertain: HashSet::new(),
        missing: HashSet::new(),
        next_n: 0,
    };
    for _ in 0..shared.memories {
        user.store().await;
    }
    for _ in 0..shared.ops {
        match shared.mix.pick(&mut user.rng) {
            "store" => user.store().await,
            "search" => user.search().await,
            "get" => user.get().await,
            "list" => user.list().await,
            _ => user.delete().await,
        }
    }
    user.verify().await;
    if shared.erase {
        user.erase().await;
    } else {
        shared.live.lock().forget(index);
    }
    shared.tally.user_done();
}
