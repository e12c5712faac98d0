//! The embedding queue, shared fairly between users.
//!
//! Jobs wait in one queue per owner; the worker takes them in turns until a
//! batch is full, sharing texts rather than jobs (deficit round robin): each
//! turn credits an owner with a quantum of texts, and a job runs once its
//! owner's credit covers it. So a user with one short text waiting gets into
//! the next batch however much another user has queued, and a user sending
//! 16 texts per request gets no more of each batch than users sending one.
//! An owner alone in the queue, at the start of a batch, never waits for
//! credit. Each owner may hold
//! only a share of the queue's capacity, so one user cannot fill it for
//! everyone.
//!
//! The model cannot be interrupted, so a text that arrives while a batch
//! runs waits for all of it. While several owners have been using the
//! queue, no owner puts more than a quarter of a batch's texts into one
//! batch: the others then wait for short batches, not full ones. Alone for
//! a while, an owner gets full batches again.
//!
//! A batch is bounded in tokens as well as in texts, because the model's
//! time grows with tokens: 32 texts of 256 tokens hold as many as some 350
//! short ones. A job that would pass the token budget waits for the next
//! batch while shorter ones behind it fill this one, so long texts do not
//! make a batch, and everyone waiting behind it, slow. A small job (at most
//! a 16th of the budget) always fits: it adds little to the batch's time,
//! and the worker answers it before the long texts beside it are done.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::owner::OwnerHash;

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The whole queue is full.
    Full,
    /// This owner already holds its share of the queue.
    OwnerFull,
    /// The worker is gone.
    Closed,
}

/// A queued job's size, in texts and in tokens.
pub trait Texts {
    /// Texts it holds.
    fn texts(&self) -> usize;
    /// Tokens over all its texts.
    fn tokens(&self) -> usize;
}

/// One owner's waiting requests (each a run of jobs, its pieces) and
/// unspent credit, in texts.
struct Lane<J> {
    requests: VecDeque<VecDeque<J>>,
    credit: usize,
    /// Batches in a row this owner was left out of in favour of lighter ones.
    passed_over: u32,
}

/// Batches in a row an owner with a backlog may be left out of while owners
/// with a single request wait; then it gets its share of the next one.
const PASS_OVER_LIMIT: u32 = 4;

/// A job of at most this share of the token budget (a 16th: 64 tokens of
/// 1,024) fits any batch with room in texts, full of tokens or not.
const SMALL_JOB_SHARE: usize = 16;

struct State<J> {
    per_owner: HashMap<OwnerHash, Lane<J>>,
    turns: VecDeque<OwnerHash>,
    len: usize,
    /// Texts waiting, over all requests.
    texts: usize,
    closed: bool,
    /// Until when one owner's part of a batch stays capped.
    shared_until: Option<Instant>,
}

/// How long the queue counts as shared after two owners were in it at once.
/// Long enough to span the gaps between one agent's requests under load,
/// short enough that a bulk load on a quiet server soon gets full batches.
const SHARED_FOR: Duration = Duration::from_secs(1);

/// A queue of jobs per owner, taken in turns.
pub struct FairQueue<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    capacity: usize,
    per_owner: usize,
}

impl<J: Texts> FairQueue<J> {
    /// A queue of at most `capacity` requests, `per_owner` of them per owner.
    pub fn new(capacity: usize, per_owner: usize) -> Self {
        Self {
            state: Mutex::new(State {
                per_owner: HashMap::new(),
                turns: VecDeque::new(),
                len: 0,
                texts: 0,
                closed: false,
                shared_until: None,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            per_owner: per_owner.clamp(1, capacity.max(1)),
        }
    }

    /// Queues one request of `owner`, split into `jobs` that may run in
    /// different batches. The capacity and the owner's share count
    /// requests, however many pieces each has.
    pub fn push(&self, owner: &OwnerHash, jobs: Vec<J>) -> Result<(), Refused> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.len >= self.capacity {
            return Err(Refused::Full);
        }
        let waiting = state
            .per_owner
            .get(owner)
            .map_or(0, |lane| lane.requests.len());
        if waiting >= self.per_owner {
            return Err(Refused::OwnerFull);
        }
        if jobs.is_empty() {
            return Ok(());
        }
        state.texts += jobs.iter().map(Texts::texts).sum::<usize>();
        if waiting == 0 {
            if !state.turns.is_empty() {
                state.shared_until = Some(Instant::now() + SHARED_FOR);
            }
            state.turns.push_back(owner.clone());
        }
        state
            .per_owner
            .entry(owner.clone())
            .or_insert_with(|| Lane {
                requests: VecDeque::new(),
                credit: 0,
                passed_over: 0,
            })
            .requests
            .push_back(jobs.into());
        state.len += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits for work, then takes jobs in turns until they hold `max_texts`
    /// texts or `max_tokens` tokens, or a whole round of turns adds nothing
    /// (a first job larger than that is taken alone). `None` once the queue
    /// is closed and empty.
    pub fn take_batch(&self, max_texts: usize, max_tokens: usize) -> Option<Vec<J>> {
        let mut state = self.state.lock();
        while state.len == 0 {
            if state.closed {
                return None;
            }
            self.ready.wait(&mut state);
        }
        let quantum = (max_texts / 16).max(1);
        let shared = state
            .shared_until
            .is_some_and(|until| Instant::now() < until);
        let share = if shared { quantum } else { max_texts };
        // While owners share the queue, one with a backlog (several requests
        // waiting) steps aside for owners with a single request: their
        // batch then holds none of its texts and is as short as if it were
        // not there. It is passed over a few batches at most, so a steady
        // stream of light requests cannot starve it.
        let light_waiting = shared
            && state.turns.iter().any(|o| {
                state
                    .per_owner
                    .get(o)
                    .is_some_and(|l| l.requests.len() == 1)
            });
        let mut passed: Vec<OwnerHash> = Vec::new();
        let mut batch = Vec::new();
        let mut texts = 0;
        let mut tokens = 0;
        // Texts each owner already has in this batch.
        let mut taken: Vec<(OwnerHash, usize)> = Vec::new();
        // Turns in a row that took nothing; a whole round of them ends a
        // batch that has something (an empty one waits for credit to grow).
        let mut idle = 0;
        while let Some(owner) = state.turns.pop_front() {
            let others = state.turns.len();
            let lane = state
                .per_owner
                .get_mut(&owner)
                .expect("an owner in the turns has a lane");
            let (next, next_tokens) = lane
                .requests
                .front()
                .and_then(VecDeque::front)
                .map_or((0, 0), |job| (job.texts(), job.tokens()));
            let had = taken
                .iter()
                .find(|(o, _)| *o == owner)
                .map_or(0, |(_, n)| *n);
            let pass_over = light_waiting
                && had == 0
                && lane.requests.len() > 1
                && (passed.contains(&owner) || lane.passed_over < PASS_OVER_LIMIT);
            if pass_over {
                if !passed.contains(&owner) {
                    lane.passed_over += 1;
                    passed.push(owner.clone());
                }
                state.turns.push_back(owner);
                idle += 1;
                if !batch.is_empty() && idle > others {
                    break;
                }
                continue;
            }
            let fits = batch.is_empty()
                || (texts + next <= max_texts
                    && (tokens + next_tokens <= max_tokens
                        || next_tokens * SMALL_JOB_SHARE <= max_tokens)
                    && (had == 0 || had + next <= share));
            if fits {
                lane.credit += quantum;
            }
            // Credit decides whenever someone else is waiting or already in
            // the batch: a flooder must not top up the others' batch with a
            // long job it has not earned (that makes the batch slower for
            // them). Alone at the start of a batch, nobody waits on it.
            if !fits || ((others > 0 || !batch.is_empty()) && lane.credit < next) {
                state.turns.push_back(owner);
                idle += 1;
                if !batch.is_empty() && idle > others {
                    break;
                }
                continue;
            }
            idle = 0;
            lane.passed_over = 0;
            lane.credit = lane.credit.saturating_sub(next);
            let request = lane
                .requests
                .front_mut()
                .expect("an owner in the turns has a request");
            let job = request
                .pop_front()
                .expect("a queued request has a piece left");
            let request_done = request.is_empty();
            if request_done {
                lane.requests.pop_front();
            }
            if lane.requests.is_empty() {
                state.per_owner.remove(&owner);
            } else {
                state.turns.push_back(owner.clone());
            }
            if request_done {
                state.len -= 1;
            }
            state.texts -= next;
            texts += next;
            tokens += next_tokens;
            batch.push(job);
            match taken.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, n)) => *n += next,
                None => taken.push((owner, next)),
            }
            if texts >= max_texts {
                break;
            }
        }
        Some(batch)
    }

    /// Texts waiting for a batch (the queue-depth gauge).
    pub fn texts_waiting(&self) -> usize {
        self.state.lock().texts
    }

    /// Refuses new jobs; the worker drains what is queued, then stops.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    struct Job {
        name: &'static str,
        texts: usize,
        tokens: usize,
    }

    impl Texts for Job {
        fn texts(&self) -> usize {
            self.texts
        }
        fn tokens(&self) -> usize {
            self.tokens
        }
    }

    /// Tokens per text in the tests that are not about tokens: few enough
    /// that the token budget never binds there.
    const SHORT: usize = 10;

    /// A job of `texts` short texts.
    fn job(name: &'static str, texts: usize) -> Job {
        Job {
            name,
            texts,
            tokens: texts * SHORT,
        }
    }

    /// A job of one text of `tokens` tokens.
    fn text_of(name: &'static str, tokens: usize) -> Job {
        Job {
            name,
            texts: 1,
            tokens,
        }
    }

    /// A token budget that short texts never reach.
    const ROOMY: usize = 100_000;

    fn owner(name: &str) -> OwnerHash {
        OwnerHash::derive(&Secret::new(vec![3u8; 32]), "t", name)
    }

    fn push(queue: &FairQueue<Job>, owner: &OwnerHash, job: Job) -> Result<(), Refused> {
        queue.push(owner, vec![job])
    }

    fn texts_of(batch: &[Job], name: &str) -> usize {
        batch
            .iter()
            .filter(|j| j.name == name)
            .map(|j| j.texts)
            .sum()
    }

    #[test]
    fn while_owners_share_the_queue_batches_stay_short() {
        let queue = FairQueue::new(1000, 1000);
        for _ in 0..100 {
            push(&queue, &owner("flood"), job("flood", 1)).expect("queued");
        }
        push(&queue, &owner("calm"), job("calm", 1)).expect("queued");
        let shared = queue.take_batch(32, ROOMY).expect("work");
        assert_eq!(texts_of(&shared, "calm"), 1);
        assert_eq!(texts_of(&shared, "flood"), 0, "the backlog steps aside");
        // The calm owner has gone, but it was here a moment ago: the
        // flooder alone gets a short batch (a sixteenth of the most), so
        // whoever comes next does not wait behind a full one.
        let alone = queue.take_batch(32, ROOMY).expect("work");
        assert_eq!(texts_of(&alone, "flood"), 2);
    }

    #[test]
    fn an_owner_with_a_backlog_steps_aside_for_single_requests_but_is_not_starved() {
        let queue = FairQueue::new(1000, 1000);
        for _ in 0..100 {
            push(&queue, &owner("flood"), job("flood", 1)).expect("queued");
        }
        let mut with_flood = Vec::new();
        for round in 0..10 {
            push(&queue, &owner(&format!("calm{round}")), job("calm", 1)).expect("queued");
            let batch = queue.take_batch(32, ROOMY).expect("work");
            assert_eq!(texts_of(&batch, "calm"), 1, "round {round}");
            with_flood.push(texts_of(&batch, "flood") > 0);
        }
        // Left out four batches in a row, then in the fifth.
        assert_eq!(
            with_flood,
            [
                false, false, false, false, true, false, false, false, false, true
            ]
        );
    }

    #[test]
    fn an_owner_that_has_been_alone_gets_full_batches() {
        let queue = FairQueue::new(1000, 1000);
        for _ in 0..100 {
            push(&queue, &owner("bulk"), job("bulk", 1)).expect("queued");
        }
        assert_eq!(queue.take_batch(32, ROOMY).map(|b| b.len()), Some(32));
    }

    #[test]
    fn a_request_counts_once_against_the_share_however_many_pieces_it_has() {
        let queue = FairQueue::new(100, 2);
        let pieces = || (0..6).map(|_| job("a", 1)).collect::<Vec<_>>();
        queue.push(&owner("a"), pieces()).expect("first request");
        // Two pieces run; the rest of the first request still waits and
        // still counts.
        assert_eq!(queue.take_batch(2, ROOMY).map(|b| b.len()), Some(2));
        queue.push(&owner("a"), pieces()).expect("second request");
        assert_eq!(queue.push(&owner("a"), pieces()), Err(Refused::OwnerFull));
        let mut left = 0;
        while left < 10 {
            left += queue.take_batch(32, ROOMY).map_or(0, |b| b.len());
        }
        assert_eq!(left, 10);
        queue.push(&owner("a"), pieces()).expect("room again");
    }

    #[test]
    fn a_user_with_one_job_shares_the_next_batch_with_a_flooder() {
        let queue = FairQueue::new(1000, 1000);
        for _ in 0..100 {
            push(&queue, &owner("flood"), job("flood", 1)).expect("queued");
        }
        push(&queue, &owner("calm"), job("calm", 1)).expect("queued");
        let batch = queue.take_batch(4, ROOMY).expect("work");
        let names: Vec<&str> = batch.iter().map(|j| j.name).collect();
        assert!(names.contains(&"calm"), "{names:?}");
    }

    #[test]
    fn one_owner_cannot_take_more_than_its_share() {
        let queue = FairQueue::new(10, 3);
        for _ in 0..3 {
            push(&queue, &owner("a"), job("a", 1)).expect("queued");
        }
        assert_eq!(
            push(&queue, &owner("a"), job("a", 1)),
            Err(Refused::OwnerFull)
        );
        push(&queue, &owner("b"), job("b", 1)).expect("another owner still fits");
    }

    #[test]
    fn a_short_job_is_not_held_behind_a_big_one_which_then_goes_alone() {
        let queue = FairQueue::new(10, 10);
        push(&queue, &owner("a"), job("big", 50)).expect("queued");
        push(&queue, &owner("b"), job("small", 1)).expect("queued");
        let first = queue.take_batch(32, ROOMY).expect("work");
        assert_eq!(first.iter().map(|j| j.name).collect::<Vec<_>>(), ["small"]);
        let second = queue.take_batch(32, ROOMY).expect("work");
        assert_eq!(second.iter().map(|j| j.name).collect::<Vec<_>>(), ["big"]);
    }

    #[test]
    fn owners_share_texts_not_jobs() {
        let queue = FairQueue::new(100, 100);
        for i in 0..10 {
            push(&queue, &owner("flood"), job("flood", 16)).expect("queued");
            if i < 6 {
                push(&queue, &owner("calm"), job("calm", 1)).expect("queued");
            }
        }
        let first = queue.take_batch(32, ROOMY).expect("work");
        // One job per turn would have put 16 flood texts next to each calm
        // one; by credit, the flood job waits until its turns have earned
        // 16 texts, and the calm owner gets its share of the batch (2).
        assert_eq!(texts_of(&first, "calm"), 2);
        assert_eq!(texts_of(&first, "flood"), 0);
    }

    /// Queues one text of `tokens` tokens for each of `users` users.
    fn one_text_each(queue: &FairQueue<Job>, name: &'static str, users: usize, tokens: usize) {
        for i in 0..users {
            queue
                .push(&owner(&format!("{name}{i}")), vec![text_of(name, tokens)])
                .expect("queued");
        }
    }

    #[test]
    fn long_texts_stop_at_the_token_budget_and_short_ones_fill_the_rest() {
        let queue = FairQueue::new(100, 100);
        // Sixteen users with one long text each, two with a short one,
        // queued behind them.
        one_text_each(&queue, "long", 16, 250);
        one_text_each(&queue, "short", 2, 12);
        let batch = queue.take_batch(32, 1024).expect("work");
        let tokens: usize = batch.iter().map(|j| j.tokens).sum();
        assert!(tokens <= 1024, "{tokens} tokens");
        assert_eq!(texts_of(&batch, "long"), 4);
        assert_eq!(
            texts_of(&batch, "short"),
            2,
            "short texts are not held back"
        );
        // Everyone gets through, four long texts a batch.
        for _ in 0..3 {
            let batch = queue.take_batch(32, 1024).expect("work");
            assert_eq!(texts_of(&batch, "long"), 4);
            assert!(batch.iter().map(|j| j.tokens).sum::<usize>() <= 1024);
        }
        assert_eq!(queue.texts_waiting(), 0);
    }

    #[test]
    fn a_job_over_the_token_budget_runs_with_small_ones_only() {
        let queue = FairQueue::new(10, 10);
        push(&queue, &owner("a"), text_of("huge", 5000)).expect("queued");
        push(&queue, &owner("b"), text_of("long", 250)).expect("queued");
        push(&queue, &owner("c"), text_of("short", 12)).expect("queued");
        let first = queue.take_batch(32, 2048).expect("work");
        assert_eq!(
            first.iter().map(|j| j.name).collect::<Vec<_>>(),
            ["huge", "short"]
        );
        let second = queue.take_batch(32, 2048).expect("work");
        assert_eq!(second.iter().map(|j| j.name).collect::<Vec<_>>(), ["long"]);
    }

    #[test]
    fn a_small_job_joins_a_batch_that_long_texts_have_filled() {
        let queue = FairQueue::new(100, 100);
        one_text_each(&queue, "long", 12, 256);
        // Queued last, behind enough long texts to fill two batches.
        queue
            .push(&owner("probe"), vec![text_of("probe", 9)])
            .expect("queued");
        let batch = queue.take_batch(32, 2048).expect("work");
        assert_eq!(texts_of(&batch, "long"), 8);
        assert_eq!(texts_of(&batch, "probe"), 1);
    }

    #[test]
    fn an_owner_alone_never_waits_for_credit() {
        let queue = FairQueue::new(10, 10);
        push(&queue, &owner("a"), job("big", 20)).expect("queued");
        assert_eq!(queue.take_batch(32, ROOMY).map(|b| b.len()), Some(1));
    }

    #[test]
    fn a_closed_queue_is_drained_then_ends() {
        let queue = FairQueue::new(10, 10);
        push(&queue, &owner("a"), job("a", 1)).expect("queued");
        queue.close();
        assert_eq!(push(&queue, &owner("a"), job("a", 1)), Err(Refused::Closed));
        assert_eq!(queue.take_batch(8, ROOMY).map(|b| b.len()), Some(1));
        assert!(queue.take_batch(8, ROOMY).is_none());
    }
}
