//! Dynamic batching: one worker thread owns the model and drains the queue,
//! taking users' jobs in turns (see [`super::fair`]). A request is queued
//! as pieces of an eighth of a batch, so that its texts can be shared out
//! over several batches like everyone else's.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;

use tokio::sync::oneshot;

use super::fair::{FairQueue, Refused, Texts};
use super::model::{Encoded, Model};
use super::{EmbedError, EmbedSettings};
use crate::owner::OwnerHash;

/// Texts to embed for one owner (one piece of a request), with the channel
/// its answer goes back on.
struct Job {
    // A job cannot exist without its owner: the worker logs by owner tag and a
    // job is never answered on any channel but its own.
    owner: OwnerHash,
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Encoded, EmbedError>>,
}

impl Texts for Job {
    fn texts(&self) -> usize {
        self.texts.len()
    }
}

/// Handle to the embedding worker; clones share the worker.
#[derive(Clone)]
pub struct Embedder {
    queue: Arc<FairQueue<Job>>,
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
    /// Loads the model and starts the worker thread.
    pub fn start(settings: &EmbedSettings) -> Result<Self, EmbedError> {
        let model = Model::load(settings)?;
        let queue = Arc::new(FairQueue::new(
            settings.queue_capacity,
            settings.queue_per_user,
        ));
        let max_batch = settings.max_batch.max(1);
        let worker_queue = queue.clone();
        thread::Builder::new()
            .name("cordon-embed".into())
            .spawn(move || worker(model, &worker_queue, max_batch))
            .map_err(|e| EmbedError::Runtime(format!("cannot start embedding worker: {e}")))?;
        Ok(Self {
            _closer: Arc::new(Closer(queue.clone())),
            queue,
            piece: (max_batch / 16).max(1),
        })
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
        let mut jobs = Vec::with_capacity(total.div_ceil(self.piece));
        let mut answers = Vec::with_capacity(jobs.capacity());
        let mut texts = texts.into_iter().peekable();
        while texts.peek().is_some() {
            let (reply, answer) = oneshot::channel();
            jobs.push(Job {
                owner: owner.clone(),
                texts: texts.by_ref().take(self.piece).collect(),
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
        let mut encoded = Encoded {
            vectors: Vec::with_capacity(total),
            tokens: Vec::with_capacity(total),
        };
        for answer in answers {
            let piece = answer.await.map_err(|_| EmbedError::WorkerGone)??;
            encoded.vectors.extend(piece.vectors);
            encoded.tokens.extend(piece.tokens);
        }
        Ok(encoded)
    }
}

fn worker(mut model: Model, queue: &FairQueue<Job>, max_batch: usize) {
    // Requests that arrived while the previous batch ran share the next model
    // call, in turns by owner. Ends when every Embedder handle is dropped.
    while let Some(jobs) = queue.take_batch(max_batch) {
        // A panic inside the runtime must not take the worker down for good:
        // the jobs of that batch see their reply channel close (503), and the
        // next batch runs as usual.
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| run_batch(&mut model, jobs, max_batch)));
        if outcome.is_err() {
            tracing::error!("embedding batch panicked; its requests failed, the worker continues");
        }
    }
}

fn run_batch(model: &mut Model, jobs: Vec<Job>, max_batch: usize) {
    // Jobs whose caller went away (timeout, disconnect) are not worth running.
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    let all: Vec<&str> = jobs
        .iter()
        .flat_map(|j| j.texts.iter().map(String::as_str))
        .collect();
    let mut vectors = Vec::with_capacity(all.len());
    let mut tokens = Vec::with_capacity(all.len());
    for chunk in all.chunks(max_batch) {
        match model.embed(chunk) {
            Ok(encoded) => {
                vectors.extend(encoded.vectors);
                tokens.extend(encoded.tokens);
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, jobs = jobs.len(), "embedding batch failed");
                for job in jobs {
                    let _ = job.reply.send(Err(EmbedError::Runtime(message.clone())));
                }
                return;
            }
        }
    }
    let mut vectors = vectors.into_iter();
    let mut tokens = tokens.into_iter();
    for job in jobs {
        let n = job.texts.len();
        let encoded = Encoded {
            vectors: vectors.by_ref().take(n).collect(),
            tokens: tokens.by_ref().take(n).collect(),
        };
        tracing::trace!(owner = %job.owner.log_tag(), texts = n, "embedded");
        // The caller may have gone away meanwhile; nothing to do then.
        let _ = job.reply.send(Ok(encoded));
    }
}
