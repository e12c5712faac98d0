//! Dynamic batching: one worker thread owns the model and drains the queue,
//! taking users' jobs in turns (see [`super::fair`]). A request is queued
//! as pieces of a sixteenth of a batch, so that its texts can be shared out
//! over several batches like everyone else's.
//!
//! Texts are tokenised by the request before they are queued, so that the
//! worker spends its time in the model and tokenising runs beside it. A
//! batch holds at most [`BATCH_TOKENS`] tokens, so its length in time is
//! bounded however long the texts are. The worker sorts a batch's texts by
//! length and runs them in groups whose padded size (texts times the
//! longest) stays within [`GROUP_TOKENS`]: a short text is not padded to a
//! long neighbour's length. It never waits for company: whatever is queued
//! when the model is free is the next batch.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use tokio::sync::oneshot;

use super::fair::{FairQueue, Refused, Texts, piece_texts};
use super::model::{Encoded, Model, Sequence, TextTokenizer};
use super::{EmbedError, EmbedSettings};
use crate::owner::OwnerHash;

/// Most tokens in one batch. Short texts fill a whole batch within it (32
/// of 25 tokens are 800); texts of 256 tokens run four at a time, about
/// 0.2 s of the model on two cores. A query that arrives while such a batch
/// runs waits for it: under 16 clients of long texts a lone search's p50
/// was 0.36 s at 2,048 tokens and 0.18 s at this budget, at the same
/// throughput, and 0.8 s at 32 texts without a budget.
const BATCH_TOKENS: usize = 1024;

/// Most padded tokens (texts times the longest of them) in one model call.
/// Attention runs on padded sequences in both graphs, so a long text runs
/// apart from short ones rather than padding them all to its length.
const GROUP_TOKENS: usize = 2048;

/// Tokens from which a text runs apart from texts under half its length:
/// the short texts beside it then get their answers without waiting for
/// its call. Shorter texts keep sharing one call, which does not cost an
/// extra model call per length.
const LONG_TEXT: usize = 64;

/// Bytes of text above which tokenising leaves the async threads.
const INLINE_TOKENISE_BYTES: usize = 4096;

/// Texts to embed for one owner (one piece of a request), with the channel
/// its answer goes back on.
struct Job {
    // A job cannot exist without its owner: the worker logs by owner tag and a
    // job is never answered on any channel but its own.
    owner: OwnerHash,
    sequences: Vec<Sequence>,
    reply: Reply,
}

/// Where a job's vectors, or the reason there are none, go.
type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>;

impl Texts for Job {
    fn texts(&self) -> usize {
        self.sequences.len()
    }

    fn tokens(&self) -> usize {
        self.sequences.iter().map(Sequence::len).sum()
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// What the workers have done since start, as `/metrics` reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedStats {
    /// Batches taken from the queue.
    pub batches: u64,
    /// Texts in those batches.
    pub texts: u64,
    /// Model calls (a batch runs as one or more length groups).
    pub model_calls: u64,
    /// Time inside model calls, in seconds.
    pub model_seconds: f64,
}

/// The counters behind [`EmbedStats`], shared by the workers.
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    texts: AtomicU64,
    model_calls: AtomicU64,
    model_micros: AtomicU64,
}

/// Handle to the embedding worker; clones share the worker.
#[derive(Clone)]
pub struct Embedder {
    queue: Arc<FairQueue<Job>>,
    counters: Arc<Counters>,
    tokenizer: TextTokenizer,
    piece: usize,
    // The last handle to go closes the queue, which ends the worker.
    _closer: Arc<Closer>,
}

struct Closer(Arc<FairQueue<Job>>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Embedder {
    /// Loads the model and starts the worker threads, each with a session
    /// of its own.
    pub fn start(settings: &EmbedSettings) -> Result<Self, EmbedError> {
        let queue = Arc::new(FairQueue::new(
            settings.queue_capacity,
            settings.queue_per_user,
        ));
        let max_batch = settings.max_batch.max(1);
        let counters = Arc::new(Counters::default());
        let mut tokenizer = None;
        for n in 0..settings.workers.max(1) {
            let model = Model::load(settings)?;
            tokenizer.get_or_insert_with(|| model.tokenizer());
            let worker_queue = queue.clone();
            let worker_counters = counters.clone();
            thread::Builder::new()
                .name(format!("cordon-embed-{n}"))
                .spawn(move || worker(model, &worker_queue, &worker_counters, max_batch))
                .map_err(|e| EmbedError::Runtime(format!("cannot start embedding worker: {e}")))?;
        }
        let tokenizer = tokenizer.expect("at least one worker was started");
        Ok(Self {
            _closer: Arc::new(Closer(queue.clone())),
            queue,
            counters,
            tokenizer,
            piece: piece_texts(max_batch),
        })
    }

    /// What the workers have done since start.
    pub fn stats(&self) -> EmbedStats {
        let c = &self.counters;
        EmbedStats {
            batches: c.batches.load(Ordering::Relaxed),
            texts: c.texts.load(Ordering::Relaxed),
            model_calls: c.model_calls.load(Ordering::Relaxed),
            model_seconds: c.model_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// Texts waiting for the model.
    pub fn queued_texts(&self) -> usize {
        self.queue.texts_waiting()
    }

    /// Embeds `texts` for `owner`; one vector per text, in order.
    pub async fn embed(
        &self,
        owner: &OwnerHash,
        texts: Vec<String>,
    ) -> Result<Encoded, EmbedError> {
        let total = texts.len();
        let sequences = self.tokenize(texts).await?;
        let tokens = sequences.iter().map(Sequence::len).collect();
        let mut jobs = Vec::with_capacity(total.div_ceil(self.piece));
        let mut answers = Vec::with_capacity(jobs.capacity());
        let mut sequences = sequences.into_iter().peekable();
        while sequences.peek().is_some() {
            let (reply, answer) = oneshot::channel();
            jobs.push(Job {
                owner: owner.clone(),
                sequences: sequences.by_ref().take(self.piece).collect(),
                reply,
            });
            answers.push(answer);
        }
        match self.queue.push(owner, jobs) {
            Ok(()) => {}
            Err(Refused::Full) => return Err(EmbedError::Overloaded),
            Err(Refused::OwnerFull) => return Err(EmbedError::OwnerBusy),
            Err(Refused::Closed) => return Err(EmbedError::WorkerGone),
        }
        let mut vectors = Vec::with_capacity(total);
        for answer in answers {
            vectors.extend(answer.await.map_err(|_| EmbedError::WorkerGone)??);
        }
        Ok(Encoded { vectors, tokens })
    }

    /// Tokenises on this thread when the texts are short (a few
    /// microseconds), on the blocking pool when they are long.
    async fn tokenize(&self, texts: Vec<String>) -> Result<Vec<Sequence>, EmbedError> {
        let bytes: usize = texts.iter().map(String::len).sum();
        if bytes <= INLINE_TOKENISE_BYTES {
            return self.tokenizer.encode(&texts);
        }
        let tokenizer = self.tokenizer.clone();
        tokio::task::spawn_blocking(move || tokenizer.encode(&texts))
            .await
            .map_err(|e| EmbedError::Runtime(format!("tokeniser task failed: {e}")))?
    }
}

fn worker(mut model: Model, queue: &FairQueue<Job>, counters: &Counters, max_batch: usize) {
    // Requests that arrived while the previous batch ran share the next model
    // call, in turns by owner. Ends when every Embedder handle is dropped.
    while let Some(jobs) = queue.take_batch(max_batch, BATCH_TOKENS) {
        // A panic inside the runtime must not take the worker down for good:
        // the jobs of that batch see their reply channel close (503), and the
        // next batch runs as usual.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            run_batch(&mut model, jobs, counters, max_batch)
        }));
        if outcome.is_err() {
            tracing::error!("embedding batch panicked; its requests failed, the worker continues");
        }
    }
}

fn run_batch(model: &mut Model, jobs: Vec<Job>, counters: &Counters, max_batch: usize) {
    // The queue drops abandoned requests before it forms a batch; a caller
    // may still have gone since (timeout, disconnect).
    let (jobs, mut replies): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .filter(|j| !j.abandoned())
        .map(|j| ((j.owner, j.sequences), Some::<Reply>(j.reply)))
        .unzip();
    if jobs.is_empty() {
        return;
    }
    let all: Vec<&Sequence> = jobs.iter().flat_map(|(_, s)| s.iter()).collect();
    // Each job's texts are a run of `all`: job `j` holds `spans[j]`, and
    // text `i` belongs to job `job_of[i]`.
    let mut spans = Vec::with_capacity(jobs.len());
    let mut job_of = Vec::with_capacity(all.len());
    for (j, (_, sequences)) in jobs.iter().enumerate() {
        let start = job_of.len();
        job_of.extend(std::iter::repeat_n(j, sequences.len()));
        spans.push(start..job_of.len());
    }
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); all.len()];
    let mut missing: Vec<usize> = spans.iter().map(ExactSizeIterator::len).collect();
    let lengths: Vec<usize> = all.iter().map(|s| s.len()).collect();
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters
        .texts
        .fetch_add(all.len() as u64, Ordering::Relaxed);
    // Shortest group first, and each job answered as soon as its texts are
    // done: a short text that shares a batch with long ones does not wait
    // for them.
    for group in groups(&lengths, max_batch, GROUP_TOKENS) {
        let members: Vec<&Sequence> = group.iter().map(|&i| all[i]).collect();
        let started = Instant::now();
        let outcome = model.run(&members);
        counters.model_calls.fetch_add(1, Ordering::Relaxed);
        counters.model_micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match outcome {
            Ok(out) => {
                for (i, vector) in group.into_iter().zip(out) {
                    vectors[i] = vector;
                    let j = job_of[i];
                    missing[j] -= 1;
                    if missing[j] == 0
                        && let Some(reply) = replies[j].take()
                    {
                        let mine: Vec<Vec<f32>> = vectors[spans[j].clone()]
                            .iter_mut()
                            .map(std::mem::take)
                            .collect();
                        tracing::trace!(owner = %jobs[j].0.log_tag(), texts = mine.len(), "embedded");
                        // The caller may have gone away meanwhile; nothing to do then.
                        let _ = reply.send(Ok(mine));
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                let left: Vec<Reply> = replies.into_iter().flatten().collect();
                tracing::error!(error = %message, jobs = left.len(), "embedding batch failed");
                for reply in left {
                    let _ = reply.send(Err(EmbedError::Runtime(message.clone())));
                }
                return;
            }
        }
    }
}

/// Splits a batch into model calls, shortest first: indices sorted by
/// length, cut whenever one more would pass `max` texts or `budget` padded
/// tokens (texts times the longest), or is a long text (from [`LONG_TEXT`]
/// tokens) more than twice the group's shortest. A text longer than the
/// budget runs alone.
fn groups(lengths: &[usize], max: usize, budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newcomer is the longest of the group.
        let padded = (current.len() + 1) * lengths[i];
        let apart = current
            .first()
            .is_some_and(|&f| lengths[i] >= LONG_TEXT && lengths[i] > 2 * lengths[f]);
        if !current.is_empty() && (current.len() >= max || padded > budget || apart) {
            out.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(lengths: &[usize], groups: &[Vec<usize>]) -> usize {
        groups
            .iter()
            .map(|g| g.len() * g.iter().map(|&i| lengths[i]).max().unwrap_or(0))
            .sum()
    }

    #[test]
    fn short_texts_are_not_padded_to_a_long_neighbour() {
        // Three short texts and one long, as one batch would hold them.
        let lengths = [12, 250, 10, 14];
        let groups = groups(&lengths, 32, 600);
        assert_eq!(groups, vec![vec![2, 0, 3], vec![1]]);
        assert_eq!(padded(&lengths, &groups), 3 * 14 + 250);
        // One call padded to the longest would have cost 4 * 250.
        assert!(padded(&lengths, &groups) < 4 * 250);
    }

    #[test]
    fn groups_keep_to_the_text_cap_and_the_budget_and_cover_every_text_once() {
        let lengths: Vec<usize> = (0..100).map(|i| 5 + (i * 37) % 200).collect();
        let groups = groups(&lengths, 8, 1000);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for g in &groups {
            let longest = g.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            assert!(g.len() <= 8);
            assert!(g.len() == 1 || g.len() * longest <= 1000, "{g:?}");
        }
    }

    #[test]
    fn a_long_text_runs_apart_from_short_ones_and_after_them() {
        // Within the budget and the text cap, but 250 tokens next to 10.
        let lengths = [10, 256, 250, 12, 40];
        assert_eq!(groups(&lengths, 32, 4096), vec![vec![0, 3, 4], vec![2, 1]]);
        // Short texts of different lengths still share a call.
        assert_eq!(groups(&[3, 25, 60], 32, 4096), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn a_text_longer_than_the_budget_runs_alone() {
        // Close enough in length to share a call but for the budget.
        assert_eq!(groups(&[300, 200], 32, 256), vec![vec![1], vec![0]]);
        assert!(groups(&[], 32, 256).is_empty());
    }
}
