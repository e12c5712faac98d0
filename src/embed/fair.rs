//! The embedding queue, shared fairly between users.
//!
//! Requests wait in one queue per owner, each split into pieces of at most
//! a 16th of a batch's texts ([`piece_texts`]), and the worker takes one
//! piece per owner per turn until a batch is full: round robin over texts,
//! not over requests. So a user with one short text waiting gets into the
//! next batch however much another user has queued, and a user sending 16
//! texts per request gets one piece per turn, as a user sending one does.
//! Turns count texts, not tokens; the token budget below bounds how long a
//! batch of long texts takes. Each owner may hold only a share of the
//! queue's capacity, counted in requests, so one user cannot fill it for
//! everyone. A request whose caller has gone (timed out, disconnected)
//! gives its place back before the next batch is taken.
//!
//! The model cannot be interrupted, so a text that arrives while a batch
//! runs waits for all of it. For a second after an owner joined the queue
//! while others were waiting, no owner puts more than a 16th of a batch's
//! texts into one batch, and an owner with a backlog steps aside for owners
//! with a single request: newcomers then wait for short batches, not full
//! ones. Owners that stay in the queue without newcomers get full batches
//! again once that second is over, so a lasting bulk load, one owner's or
//! several's, runs at the model's full rate. (A 16th is at least one text,
//! for batches of fewer than 16.)
//!
//! A batch is bounded in tokens as well as in texts, because the model's
//! time grows with tokens: 32 texts of 256 tokens hold as many as some 350
//! short ones. A piece that would pass the token budget waits for the next
//! batch while shorter ones behind it fill this one, so long texts do not
//! make a batch, and everyone waiting behind it, slow. A small piece (at
//! most a 16th of the budget) joins a batch even when the budget is full,
//! as long as there is room in texts and its owner is not stepping aside or
//! over its part of the batch: it adds little to the batch's time, and the
//! worker answers it before the long texts beside it are done.

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

/// A queued piece: its size, in texts and in tokens, and whether anyone
/// still waits for it.
pub trait Texts {
    /// Texts it holds.
    fn texts(&self) -> usize;
    /// Tokens over all its texts.
    fn tokens(&self) -> usize;
    /// Whether its caller has gone, so that its request need not run. All
    /// pieces of one request are abandoned together.
    fn abandoned(&self) -> bool {
        false
    }
}

/// Most texts in one piece of a request, for batches of `max_texts`: a
/// 16th of a batch, which is also the most an owner puts into one batch
/// while the queue is shared.
pub fn piece_texts(max_texts: usize) -> usize {
    (max_texts / 16).max(1)
}

/// One owner's waiting requests, each a run of pieces.
struct Lane<J> {
    requests: VecDeque<VecDeque<J>>,
    /// Batches in a row this owner was left out of in favour of lighter ones.
    passed_over: u32,
}

/// Batches in a row an owner with a backlog may be left out of while owners
/// with a single request wait; then it gets its share of the next one.
const PASS_OVER_LIMIT: u32 = 4;

/// A piece of at most this share of the token budget (a 16th: 64 tokens of
/// 1,024) fits any batch with room in texts, full of tokens or not.
const SMALL_PIECE_SHARE: usize = 16;

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

impl<J: Texts> State<J> {
    /// Removes the requests nobody waits for any more, so that they give
    /// back their place in the queue and their owner's share, and take no
    /// turn in a batch.
    fn drop_abandoned(&mut self) {
        let (mut requests, mut texts) = (0, 0);
        let mut emptied = Vec::new();
        for (owner, lane) in &mut self.per_owner {
            lane.requests.retain(|request| {
                let gone = request.front().is_some_and(Texts::abandoned);
                if gone {
                    requests += 1;
                    texts += request.iter().map(Texts::texts).sum::<usize>();
                }
                !gone
            });
            if lane.requests.is_empty() {
                emptied.push(owner.clone());
            }
        }
        for owner in &emptied {
            self.per_owner.remove(owner);
        }
        if !emptied.is_empty() {
            self.turns.retain(|o| self.per_owner.contains_key(o));
        }
        self.len -= requests;
        self.texts -= texts;
    }
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
    shared_for: Duration,
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
            shared_for: SHARED_FOR,
        }
    }

    /// The same queue with the shared window set to `window`, so that a
    /// test does not depend on the machine's speed.
    #[cfg(test)]
    fn with_shared_for(mut self, window: Duration) -> Self {
        self.shared_for = window;
        self
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
                state.shared_until = Some(Instant::now() + self.shared_for);
            }
            state.turns.push_back(owner.clone());
        }
        state
            .per_owner
            .entry(owner.clone())
            .or_insert_with(|| Lane {
                requests: VecDeque::new(),
                passed_over: 0,
            })
            .requests
            .push_back(jobs.into());
        state.len += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits for work, then takes pieces in turns until they hold
    /// `max_texts` texts or a whole round of turns adds nothing. A piece
    /// that would pass `max_tokens` waits for a later batch unless it is
    /// small (a 16th of the budget); the batch's first piece is taken
    /// whatever its size. `None` once the queue is closed and empty.
    pub fn take_batch(&self, max_texts: usize, max_tokens: usize) -> Option<Vec<J>> {
        let mut state = self.state.lock();
        loop {
            while state.len == 0 {
                if state.closed {
                    return None;
                }
                self.ready.wait(&mut state);
            }
            state.drop_abandoned();
            if state.len > 0 {
                break;
            }
        }
        let shared = state
            .shared_until
            .is_some_and(|until| Instant::now() < until);
        let share = if shared {
            piece_texts(max_texts)
        } else {
            max_texts
        };
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
        // Turns in a row that took nothing; a whole round of them ends the
        // batch (never an empty one: its first piece always fits).
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
                        || next_tokens * SMALL_PIECE_SHARE <= max_tokens)
                    && (had == 0 || had + next <= share));
            if !fits {
                state.turns.push_back(owner);
                idle += 1;
                if !batch.is_empty() && idle > others {
                    break;
                }
                continue;
            }
            idle = 0;
            lane.passed_over = 0;
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
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;
    use crate::secret::Secret;

    struct Job {
        name: &'static str,
        texts: usize,
        tokens: usize,
        /// Set once the job's caller has gone.
        gone: Rc<Cell<bool>>,
    }

    impl Texts for Job {
        fn texts(&self) -> usize {
            self.texts
        }
        fn tokens(&self) -> usize {
            self.tokens
        }
        fn abandoned(&self) -> bool {
            self.gone.get()
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
            gone: Rc::default(),
        }
    }

    /// A job of one text of `tokens` tokens.
    fn text_of(name: &'static str, tokens: usize) -> Job {
        Job {
            name,
            texts: 1,
            tokens,
            gone: Rc::default(),
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

    /// A large queue whose shared window outlasts any test.
    fn shared_queue() -> FairQueue<Job> {
        FairQueue::new(1000, 1000).with_shared_for(Duration::from_secs(600))
    }

    /// Queues 100 one-text requests of the owner `name`.
    fn backlog(queue: &FairQueue<Job>, name: &'static str) {
        for _ in 0..100 {
            push(queue, &owner(name), job(name, 1)).expect("queued");
        }
    }

    #[test]
    fn while_owners_share_the_queue_batches_stay_short() {
        let queue = shared_queue();
        backlog(&queue, "flood");
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
        let queue = shared_queue();
        backlog(&queue, "flood");
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
    fn owners_that_stay_backlogged_get_full_batches_once_the_window_is_over() {
        let queue = shared_queue();
        backlog(&queue, "a");
        backlog(&queue, "b");
        let shared = queue.take_batch(32, ROOMY).expect("work");
        assert_eq!(shared.len(), 4, "two texts each while b is new");
        // The window ends; nobody joins after it.
        queue.state.lock().shared_until = Some(Instant::now());
        let full = queue.take_batch(32, ROOMY).expect("work");
        assert_eq!((texts_of(&full, "a"), texts_of(&full, "b")), (16, 16));
    }

    #[test]
    fn an_owner_that_has_been_alone_gets_full_batches() {
        let queue = FairQueue::new(1000, 1000);
        backlog(&queue, "bulk");
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
        backlog(&queue, "flood");
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
    fn a_short_request_is_not_held_behind_a_big_one() {
        let queue = FairQueue::new(10, 10).with_shared_for(Duration::from_secs(600));
        // 50 texts, queued as the batcher splits them: pieces of two.
        queue
            .push(&owner("a"), (0..25).map(|_| job("big", 2)).collect())
            .expect("queued");
        push(&queue, &owner("b"), job("small", 1)).expect("queued");
        let first = queue.take_batch(32, ROOMY).expect("work");
        assert_eq!(texts_of(&first, "small"), 1);
        assert_eq!(texts_of(&first, "big"), 2, "one piece while others wait");
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
    fn a_request_whose_caller_left_gives_its_place_back_and_does_not_run() {
        // Room for five requests, three of them one owner's.
        let queue = FairQueue::new(5, 3);
        let gone = Rc::new(Cell::new(false));
        let left = || Job {
            gone: gone.clone(),
            ..job("left", 1)
        };
        queue
            .push(&owner("a"), vec![left(), left()])
            .expect("queued");
        push(&queue, &owner("a"), left()).expect("queued");
        push(&queue, &owner("a"), job("kept", 1)).expect("queued");
        push(&queue, &owner("b"), left()).expect("queued");
        assert_eq!(
            push(&queue, &owner("a"), job("a", 1)),
            Err(Refused::OwnerFull)
        );
        gone.set(true);
        // Room for one text: the abandoned requests must not take it.
        let batch = queue.take_batch(1, ROOMY).expect("work");
        assert_eq!(batch.iter().map(|j| j.name).collect::<Vec<_>>(), ["kept"]);
        assert_eq!(queue.texts_waiting(), 0);
        for _ in 0..3 {
            push(&queue, &owner("a"), job("a", 1)).expect("the share is free again");
        }
        push(&queue, &owner("c"), job("c", 1)).expect("and so is the queue");
        // The owners that left must hold no turn (a stale one panics).
        let mut rest = 0;
        for _ in 0..4 {
            if queue.texts_waiting() == 0 {
                break;
            }
            rest += queue.take_batch(32, ROOMY).map_or(0, |b| b.len());
        }
        assert_eq!(rest, 4);
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
