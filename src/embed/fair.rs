//! The embedding queue, shared fairly between users.
//!
//! Jobs wait in one queue per owner; the worker takes them in turns, one
//! job per owner per turn, until a batch is full. So a user with a hundred
//! jobs waiting and a user with one both get a job into the next batch: the
//! second waits for at most the batch in progress and the next one, however
//! much the first has queued. Each owner may hold only a share of the
//! queue's capacity, so one user cannot fill it for everyone.

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

struct State<J> {
    per_owner: HashMap<OwnerHash, VecDeque<J>>,
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
        let waiting = state.per_owner.get(owner).map_or(0, VecDeque::len);
        if waiting >= self.per_owner {
            return Err(Refused::OwnerFull);
        }
        if waiting == 0 {
            state.turns.push_back(owner.clone());
        }
        state
            .per_owner
            .entry(owner.clone())
            .or_default()
            .push_back(job);
        state.len += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Waits for work, then takes jobs in turns until they hold `max_texts`
    /// texts (a first job larger than that is taken alone). `None` once the
    /// queue is closed and empty.
    pub fn take_batch(&self, max_texts: usize) -> Option<Vec<J>> {
        let mut state = self.state.lock();
        while state.len == 0 {
            if state.closed {
                return None;
            }
            self.ready.wait(&mut state);
        }
        let mut batch = Vec::new();
        let mut texts = 0;
        while let Some(owner) = state.turns.pop_front() {
            let queue = state
                .per_owner
                .get_mut(&owner)
                .expect("an owner in the turns has a queue");
            let next = queue.front().map_or(0, Texts::texts);
            if !batch.is_empty() && texts + next > max_texts {
                state.turns.push_front(owner);
                break;
            }
            let job = queue.pop_front().expect("an owner in the turns has a job");
            if queue.is_empty() {
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
    fn a_batch_stops_at_the_text_budget_and_a_big_job_goes_alone() {
        let queue = FairQueue::new(10, 10);
        queue.push(&owner("a"), Job("big", 50)).expect("queued");
        queue.push(&owner("b"), Job("small", 1)).expect("queued");
        let first = queue.take_batch(32).expect("work");
        assert_eq!(first.iter().map(|j| j.0).collect::<Vec<_>>(), ["big"]);
        let second = queue.take_batch(32).expect("work");
        assert_eq!(second.iter().map(|j| j.0).collect::<Vec<_>>(), ["small"]);
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
