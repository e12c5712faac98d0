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

use std::collections::{HashMap, VecDeque};

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

/// A queued job's size, in texts.
pub trait Texts {
    /// Texts it holds.
    fn texts(&self) -> usize;
}

/// One owner's waiting jobs and unspent credit, in texts.
struct Lane<J> {
    jobs: VecDeque<J>,
    credit: usize,
}

struct State<J> {
    per_owner: HashMap<OwnerHash, Lane<J>>,
    turns: VecDeque<OwnerHash>,
    len: usize,
    closed: bool,
}

/// A queue of jobs per owner, taken in turns.
pub struct FairQueue<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
    capacity: usize,
    per_owner: usize,
}

impl<J: Texts> FairQueue<J> {
    /// A queue of at most `capacity` jobs, `per_owner` of them per owner.
    pub fn new(capacity: usize, per_owner: usize) -> Self {
        Self {
            state: Mutex::new(State {
                per_owner: HashMap::new(),
                turns: VecDeque::new(),
                len: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            per_owner: per_owner.clamp(1, capacity.max(1)),
        }
    }

    /// Queues `job` for `owner`.
    pub fn push(&self, owner: &OwnerHash, job: J) -> Result<(), Refused> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.len >= self.capacity {
            return Err(Refused::Full);
        }
        let waiting = state.per_owner.get(owner).map_or(0, |lane| lane.jobs.len());
        if waiting >= self.per_owner {
            return Err(Refused::OwnerFull);
        }
        if waiting == 0 {
            state.turns.push_back(owner.clone());
        }
        state
            .per_owner
            .entry(owner.clone())
            .or_insert_with(|| Lane {
                jobs: VecDeque::new(),
                credit: 0,
            })
            .jobs
            .push_back(job);
        state.len += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits for work, then takes jobs in turns until they hold `max_texts`
    /// texts, or a whole round of turns adds nothing (a first job larger than
    /// that is taken alone). `None` once the queue is closed and empty.
    pub fn take_batch(&self, max_texts: usize) -> Option<Vec<J>> {
        let mut state = self.state.lock();
        while state.len == 0 {
            if state.closed {
                return None;
            }
            self.ready.wait(&mut state);
        }
        let quantum = (max_texts / 8).max(1);
        let mut batch = Vec::new();
        let mut texts = 0;
        // Turns in a row that took nothing; a whole round of them ends a
        // batch that has something (an empty one waits for credit to grow).
        let mut idle = 0;
        while let Some(owner) = state.turns.pop_front() {
            let others = state.turns.len();
            let lane = state
                .per_owner
                .get_mut(&owner)
                .expect("an owner in the turns has a lane");
            let next = lane.jobs.front().map_or(0, Texts::texts);
            let fits = batch.is_empty() || texts + next <= max_texts;
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
            lane.credit = lane.credit.saturating_sub(next);
            let job = lane
                .jobs
                .pop_front()
                .expect("an owner in the turns has a job");
            if lane.jobs.is_empty() {
                state.per_owner.remove(&owner);
            } else {
                state.turns.push_back(owner);
            }
            state.len -= 1;
            texts += next;
            batch.push(job);
            if texts >= max_texts {
                break;
            }
        }
        Some(batch)
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

    struct Job(&'static str, usize);

    impl Texts for Job {
        fn texts(&self) -> usize {
            self.1
        }
    }

    fn owner(name: &str) -> OwnerHash {
        OwnerHash::derive(&Secret::new(vec![3u8; 32]), "t", name)
    }

    #[test]
    fn a_user_with_one_job_shares_the_next_batch_with_a_flooder() {
        let queue = FairQueue::new(1000, 1000);
        for _ in 0..100 {
            queue
                .push(&owner("flood"), Job("flood", 1))
                .expect("queued");
        }
        queue.push(&owner("calm"), Job("calm", 1)).expect("queued");
        let batch = queue.take_batch(4).expect("work");
        let names: Vec<&str> = batch.iter().map(|j| j.0).collect();
        assert_eq!(names.len(), 4);
        assert!(names.contains(&"calm"), "{names:?}");
    }

    #[test]
    fn one_owner_cannot_take_more_than_its_share() {
        let queue = FairQueue::new(10, 3);
        for _ in 0..3 {
            queue.push(&owner("a"), Job("a", 1)).expect("queued");
        }
        assert_eq!(
            queue.push(&owner("a"), Job("a", 1)),
            Err(Refused::OwnerFull)
        );
        queue
            .push(&owner("b"), Job("b", 1))
            .expect("another owner still fits");
    }

    #[test]
    fn a_short_job_is_not_held_behind_a_big_one_which_then_goes_alone() {
        let queue = FairQueue::new(10, 10);
        queue.push(&owner("a"), Job("big", 50)).expect("queued");
        queue.push(&owner("b"), Job("small", 1)).expect("queued");
        let first = queue.take_batch(32).expect("work");
        assert_eq!(first.iter().map(|j| j.0).collect::<Vec<_>>(), ["small"]);
        let second = queue.take_batch(32).expect("work");
        assert_eq!(second.iter().map(|j| j.0).collect::<Vec<_>>(), ["big"]);
    }

    #[test]
    fn owners_share_texts_not_jobs() {
        let queue = FairQueue::new(100, 100);
        for _ in 0..10 {
            queue
                .push(&owner("flood"), Job("flood", 16))
                .expect("queued");
            queue.push(&owner("calm"), Job("calm", 1)).expect("queued");
        }
        let first = queue.take_batch(32).expect("work");
        let count = |name| {
            first
                .iter()
                .filter(|j| j.0 == name)
                .map(|j| j.1)
                .sum::<usize>()
        };
        // One job per turn would have put 16 flood texts next to each calm
        // one; by credit, the calm owner's ten jobs all go first.
        assert_eq!(
            count("calm"),
            10,
            "{:?}",
            first.iter().map(|j| j.0).collect::<Vec<_>>()
        );
        assert!(count("flood") <= 16);
    }

    #[test]
    fn an_owner_alone_never_waits_for_credit() {
        let queue = FairQueue::new(10, 10);
        queue.push(&owner("a"), Job("big", 20)).expect("queued");
        assert_eq!(queue.take_batch(32).map(|b| b.len()), Some(1));
    }

    #[test]
    fn a_closed_queue_is_drained_then_ends() {
        let queue = FairQueue::new(10, 10);
        queue.push(&owner("a"), Job("a", 1)).expect("queued");
        queue.close();
        assert_eq!(queue.push(&owner("a"), Job("a", 1)), Err(Refused::Closed));
        assert_eq!(queue.take_batch(8).map(|b| b.len()), Some(1));
        assert!(queue.take_batch(8).is_none());
    }
}
