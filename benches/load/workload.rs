//! One user's script, and the checks applied to every answer.
//!
//! A worker runs a user from start to end: store the user's canaries, run
//! the mixed operations, read everything back, erase. The worker keeps a
//! model of what the user should have, so every response can be judged:
//! a text that is not the caller's canary is a leak, a foreign id that
//! answers anything but 404 is a leak, an acknowledged memory that cannot be
//! read back is lost.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::canary::{self, Origin};
use crate::report::Tally;

/// Relative weights of the mixed operations.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub store: u32,
    pub search: u32,
    pub get: u32,
    pub list: u32,
    pub delete: u32,
}

impl Mix {
    /// Parses `store=1,search=4,...`; unnamed kinds weigh 0.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut mix = Mix {
            store: 0,
            search: 0,
            get: 0,
            list: 0,
            delete: 0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not kind=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{weight}` is not a whole number"))?;
            match kind.trim() {
                "store" => mix.store = weight,
                "search" => mix.search = weight,
                "get" => mix.get = weight,
                "list" => mix.list = weight,
                "delete" => mix.delete = weight,
                other => return Err(format!("unknown kind `{other}`")),
            }
        }
        if mix.store + mix.search + mix.get + mix.list + mix.delete == 0 {
            return Err("every weight is 0".into());
        }
        Ok(mix)
    }

    fn pick(&self, rng: &mut impl Rng) -> &'static str {
        let total = self.store + self.search + self.get + self.list + self.delete;
        let mut x = rng.random_range(0..total);
        for (kind, w) in [
            ("store", self.store),
            ("search", self.search),
            ("get", self.get),
            ("list", self.list),
        ] {
            if x < w {
                return kind;
            }
            x -= w;
        }
        "delete"
    }
}

/// What every worker shares.
pub struct Shared {
    pub http: reqwest::Client,
    pub base: String,
    pub run: String,
    pub tally: Tally,
    pub mix: Mix,
    pub memories: usize,
    pub ops: usize,
    pub foreign_share: f64,
    pub erase: bool,
    pub seed: u64,
    /// Recently stored ids of all users, for foreign-id probes.
    pub recent: Mutex<RecentIds>,
}

/// A ring of `(user, id)` pairs.
pub struct RecentIds {
    ids: Vec<(usize, Uuid)>,
    next: usize,
}

const RECENT_CAPACITY: usize = 4096;

impl RecentIds {
    pub fn new() -> Self {
        Self {
            ids: Vec::with_capacity(RECENT_CAPACITY),
            next: 0,
        }
    }

    fn push(&mut self, user: usize, id: Uuid) {
        if self.ids.len() < RECENT_CAPACITY {
            self.ids.push((user, id));
        } else {
            self.ids[self.next] = (user, id);
            self.next = (self.next + 1) % RECENT_CAPACITY;
        }
    }

    fn foreign(&self, user: usize, rng: &mut impl Rng) -> Option<(usize, Uuid)> {
        // A few tries suffice: a user's own ids are a small share of the ring.
        (0..8)
            .filter_map(|_| self.ids.choose(rng).copied())
            .find(|(u, _)| *u != user)
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
    /// Numbers whose store failed: maybe written, maybe not.
    uncertain: HashSet<usize>,
    next_n: usize,
}

/// An answer: status and JSON body (`Null` when there is none).
type Answer = (StatusCode, Value);

impl<'a> User<'a> {
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
        let result = match request.send().await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(bytes) => Ok((
                        status,
                        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    )),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        self.shared.tally.request(kind, started.elapsed());
        match result {
            Ok(answer) => Some(answer),
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

    /// Judges every memory in a response; returns the own numbers seen.
    fn check(&self, kind: &str, memories: &[Value]) -> Vec<usize> {
        let mut own = Vec::new();
        for memory in memories {
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

    async fn store(&mut self) {
        let n = self.next_n;
        self.next_n += 1;
        let text = canary::text(&mut self.rng, &self.shared.run, self.index, n);
        let body = json!({ "text": text, "metadata": { "n": n } });
        let Some((status, body)) = self
            .call("store", Method::POST, "/v1/memories", Some(body))
            .await
        else {
            self.uncertain.insert(n);
            return;
        };
        let id = body["ids"][0].as_str().and_then(|s| s.parse::<Uuid>().ok());
        match (status, id) {
            (StatusCode::CREATED, Some(id)) => {
                self.live.insert(id, n);
                self.shared.recent.lock().push(self.index, id);
            }
            _ => {
                self.uncertain.insert(n);
                self.unexpected("store", status);
            }
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
        let results = body["results"].as_array().cloned().unwrap_or_default();
        self.check("search", &results);
    }

    fn own_id(&mut self) -> Option<(Uuid, usize)> {
        let ids: Vec<(&Uuid, &usize)> = self.live.iter().collect();
        ids.choose(&mut self.rng).map(|(id, n)| (**id, **n))
    }

    fn foreign_id(&mut self) -> Option<(usize, Uuid)> {
        if !self.rng.random_bool(self.shared.foreign_share) {
            return None;
        }
        self.shared.recent.lock().foreign(self.index, &mut self.rng)
    }

    async fn get(&mut self) {
        if let Some((owner, id)) = self.foreign_id() {
            let Some((status, body)) = self
                .call("get", Method::GET, &format!("/v1/memories/{id}"), None)
                .await
            else {
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
        let Some((status, body)) = self
            .call("get", Method::GET, &format!("/v1/memories/{id}"), None)
            .await
        else {
            return;
        };
        match status {
            StatusCode::OK => {
                if self.check("get", std::slice::from_ref(&body)) != [n] {
                    self.shared.tally.lost(1);
                }
            }
            StatusCode::NOT_FOUND => self.shared.tally.lost(1),
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
        let memories = body["memories"].as_array().cloned().unwrap_or_default();
        self.check("list", &memories);
    }

    async fn delete(&mut self) {
        if let Some((owner, id)) = self.foreign_id() {
            let Some((status, _)) = self
                .call(
                    "delete",
                    Method::DELETE,
                    &format!("/v1/memories/{id}"),
                    None,
                )
                .await
            else {
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
        let Some((status, _)) = self
            .call(
                "delete",
                Method::DELETE,
                &format!("/v1/memories/{id}"),
                None,
            )
            .await
        else {
            // Maybe deleted, maybe not: stop expecting it either way.
            self.live.remove(&id);
            self.uncertain.insert(n);
            return;
        };
        match status {
            StatusCode::NO_CONTENT => {
                self.live.remove(&id);
                self.deleted.insert(n);
            }
            StatusCode::NOT_FOUND => {
                self.live.remove(&id);
                self.shared.tally.lost(1);
            }
            other => {
                self.live.remove(&id);
                self.uncertain.insert(n);
                self.unexpected("delete", other);
            }
        }
    }

    /// Reads every page and compares with the model.
    async fn verify(&mut self) {
        let mut seen = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/memories?limit=100&cursor={c}"),
                None => "/v1/memories?limit=100".to_owned(),
            };
            let Some((status, body)) = self.call("list", Method::GET, &path, None).await else {
                return;
            };
            if status != StatusCode::OK {
                return self.unexpected("list", status);
            }
            let memories = body["memories"].as_array().cloned().unwrap_or_default();
            seen.extend(self.check("list", &memories));
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let missing = self.live.values().filter(|n| !seen.contains(n)).count();
        self.shared.tally.lost(missing as u64);
    }

    async fn erase(&mut self) {
        let Some((status, body)) = self
            .call("erase", Method::DELETE, "/v1/memories", None)
            .await
        else {
            return;
        };
        if status != StatusCode::OK {
            return self.unexpected("erase", status);
        }
        // The count must cover every acknowledged memory; failed stores may
        // or may not have landed.
        let deleted = body["deleted"].as_u64().unwrap_or(0) as usize;
        let least = self.live.len();
        let most = least + self.uncertain.len();
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
    }
    shared.tally.user_done();
}
