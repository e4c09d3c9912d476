//! Token-budget batching for text models, as Hugging Face text-embeddings-inference does.
//!
//! Requests wait in a bounded queue (full → [`InferError::QueueFull`], a 429). A free model
//! instance takes the waiting requests in arrival order while the batch stays within the
//! budget: at most `max_rows` texts and at most `max_tokens` padded tokens, counted as rows ×
//! the longest text in the batch (each text's tokens cut to the model's maximum, as the model
//! cuts them). There is no timer: a free instance takes what is waiting at once, and requests
//! that arrive while it computes form the next batch. A request over the budget on its own
//! runs alone (a model's budget is never below its longest input, so every text fits; see
//! [`check_budget`]). Requests whose client went away (the reply's receiver dropped) are taken
//! off the queue without computing them and counted.
//!
//! Computing a batch: its texts are ordered by length and computed in chunks of similar
//! length (each within the budget), so short queries are not padded to a passage's length;
//! the rows go back to their requests in order, L2-normalized for the requests that ask.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::error::InferError;
use crate::metrics::ModelMetrics;
use crate::model::{Model, TextEmbedder};

/// Bounds of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBudget {
    /// Most padded tokens (rows × longest text) in one batch.
    pub max_tokens: usize,
    /// Most texts in one batch.
    pub max_rows: usize,
}

/// A request's embeddings, row-major `[texts, dimensions]`.
pub type Embeddings = Result<Vec<f32>, InferError>;

/// One request's texts waiting to be embedded.
#[derive(Debug)]
pub struct TextJob {
    texts: Vec<String>,
    /// Each text's tokens, cut to the model's maximum.
    tokens: Vec<usize>,
    normalize: bool,
    queued_at: Instant,
    reply: oneshot::Sender<Embeddings>,
}

impl TextJob {
    /// A job for `texts` with their token counts; the receiver gets the embeddings.
    pub fn new(
        texts: Vec<String>,
        tokens: Vec<usize>,
        normalize: bool,
    ) -> (Self, oneshot::Receiver<Embeddings>) {
        let (reply, answer) = oneshot::channel();
        let job = Self {
            texts,
            tokens,
            normalize,
            queued_at: Instant::now(),
            reply,
        };
        (job, answer)
    }

    fn rows(&self) -> usize {
        self.texts.len()
    }

    fn longest(&self) -> usize {
        self.tokens.iter().copied().max().unwrap_or(0)
    }

    fn token_sum(&self) -> usize {
        self.tokens.iter().sum()
    }
}

/// What [`TokenQueue::next_batch`] took off the queue.
#[derive(Debug, Default)]
pub struct Batch {
    /// The requests to compute together, in arrival order.
    pub jobs: Vec<TextJob>,
    /// Requests dropped because their client had gone.
    pub dropped: usize,
    /// Texts in the batch.
    pub rows: usize,
    /// The longest text's tokens.
    pub longest: usize,
}

impl Batch {
    /// The batch's cost against the budget: rows × longest text.
    pub fn padded_tokens(&self) -> usize {
        self.rows * self.longest
    }

    /// Tokens of its texts, without padding.
    pub fn tokens(&self) -> usize {
        self.jobs.iter().map(TextJob::token_sum).sum()
    }
}

/// The queue's state and policy, a plain struct (unit-tested without a model).
#[derive(Debug)]
pub struct TokenQueue {
    entries: VecDeque<TextJob>,
    capacity: usize,
    tokens: usize,
}

impl TokenQueue {
    /// An empty queue holding at most `capacity` requests (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            tokens: 0,
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tokens of the texts waiting.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Queues `job`. When the queue is full, requests whose client has gone are dropped
    /// first; if it is still full, the job comes back. `Ok` says how many were dropped.
    pub fn push(&mut self, job: TextJob) -> Result<usize, TextJob> {
        let mut dropped = 0;
        if self.entries.len() >= self.capacity {
            let before = self.entries.len();
            self.entries.retain(|j| !j.reply.is_closed());
            dropped = before - self.entries.len();
            self.tokens = self.entries.iter().map(TextJob::token_sum).sum();
            if self.entries.len() >= self.capacity {
                return Err(job);
            }
        }
        self.tokens += job.token_sum();
        self.entries.push_back(job);
        Ok(dropped)
    }

    /// Takes the next batch: requests in arrival order while it holds at most
    /// `budget.max_rows` texts and `budget.max_tokens` padded tokens; the first request is
    /// taken even when it alone is over the budget. Requests whose client has gone are
    /// dropped on the way. Empty when nothing (live) waits.
    pub fn next_batch(&mut self, budget: TokenBudget) -> Batch {
        let mut batch = Batch::default();
        while let Some(front) = self.entries.front() {
            if front.reply.is_closed() {
                self.tokens -= front.token_sum();
                self.entries.pop_front();
                batch.dropped += 1;
                continue;
            }
            let rows = batch.rows + front.rows();
            let longest = batch.longest.max(front.longest());
            let over = rows > budget.max_rows || rows * longest > budget.max_tokens;
            if over && !batch.jobs.is_empty() {
                break;
            }
            let Some(job) = self.entries.pop_front() else {
                break;
            };
            self.tokens -= job.token_sum();
            batch.rows = rows;
            batch.longest = longest;
            batch.jobs.push(job);
        }
        batch
    }
}

/// Why a model cannot use a token budget: one of its texts could never be computed.
pub fn check_budget(max_batch_tokens: usize, embedder: &dyn TextEmbedder) -> Result<(), String> {
    let longest = embedder.max_tokens();
    if max_batch_tokens < longest {
        return Err(format!(
            "{max_batch_tokens} is less than the model's longest input ({longest} tokens), \
             which could then never be computed: use at least {longest}, or 0 for the timer \
             batcher"
        ));
    }
    Ok(())
}

/// A text model's token-budget queue and its instances.
#[derive(Debug)]
pub struct TextBatcher {
    name: String,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    metrics: Arc<ModelMetrics>,
}

#[derive(Debug)]
struct State {
    queue: TokenQueue,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the queue's size after a change (the lock is held).
    fn gauges(&self, queue: &TokenQueue) {
        let m = &self.metrics;
        m.queue_depth.store(queue.len() as i64, Ordering::Relaxed);
        m.queue_tokens
            .store(queue.tokens() as i64, Ordering::Relaxed);
    }

    fn dropped(&self, n: usize) {
        if n > 0 {
            let m = &self.metrics.dropped_client_gone;
            m.fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(dropped = n, "requests dropped: their clients went away");
        }
    }
}

impl TextBatcher {
    /// Starts `instances` instance tasks on the current runtime for `model` (a text
    /// embedder). They end when the batcher is dropped and the queue has drained.
    pub fn start(
        name: &str,
        model: Arc<dyn Model>,
        budget: TokenBudget,
        capacity: usize,
        instances: usize,
        metrics: Arc<ModelMetrics>,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: TokenQueue::new(capacity),
                closed: false,
            }),
            notify: Notify::new(),
            metrics,
        });
        for _ in 0..instances.max(1) {
            tokio::spawn(instance(shared.clone(), model.clone(), budget));
        }
        Self {
            name: name.to_owned(),
            shared,
        }
    }

    /// Queues `texts` (with each one's tokens, cut to the model's maximum) and waits for
    /// their embeddings, of unit length with `normalize`.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        tokens: Vec<usize>,
        normalize: bool,
    ) -> Result<Vec<f32>, InferError> {
        let (job, answer) = TextJob::new(texts, tokens, normalize);
        {
            let mut state = self.shared.lock();
            let pushed = state.queue.push(job);
            self.shared.gauges(&state.queue);
            drop(state);
            match pushed {
                Ok(dropped) => self.shared.dropped(dropped),
                Err(_) => return Err(InferError::QueueFull(self.name.clone())),
            }
        }
        self.shared.notify.notify_one();
        answer
            .await
            .map_err(|_| InferError::Task("the model instance stopped".into()))?
    }
}

impl Drop for TextBatcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.notify.notify_waiters();
    }
}

/// One model instance: takes a batch when one waits, computes it off the reactor, repeats.
async fn instance(shared: Arc<Shared>, model: Arc<dyn Model>, budget: TokenBudget) {
    loop {
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (batch, more, closed) = {
            let mut state = shared.lock();
            let batch = state.queue.next_batch(budget);
            shared.gauges(&state.queue);
            (batch, !state.queue.is_empty(), state.closed)
        };
        shared.dropped(batch.dropped);
        if batch.jobs.is_empty() {
            if closed {
                return;
            }
            notified.await;
            continue;
        }
        if more {
            // Another idle instance may take the rest.
            shared.notify.notify_one();
        }
        let m = &shared.metrics;
        m.batch_size.observe(batch.rows as f64);
        m.batch_tokens.observe(batch.padded_tokens() as f64);
        m.tokens.fetch_add(batch.tokens() as u64, Ordering::Relaxed);
        let now = Instant::now();
        for job in &batch.jobs {
            m.queue_wait.observe_duration(now - job.queued_at);
        }
        let model = model.clone();
        let jobs = batch.jobs;
        let done = tokio::task::spawn_blocking(move || run_batch(model.as_ref(), jobs, budget));
        if let Err(e) = done.await {
            tracing::error!("model instance task failed: {e}");
        }
    }
}

/// Computes the jobs' texts in chunks of similar length and answers each job.
fn run_batch(model: &dyn Model, jobs: Vec<TextJob>, budget: TokenBudget) {
    let Some(embedder) = model.text_embedder() else {
        for job in jobs {
            let _ = job.reply.send(Err(InferError::Task(
                "the model is not a text embedder".into(),
            )));
        }
        return;
    };
    // Every text, as (job, row within the job), ordered by length.
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.rows()).map(move |r| (j, r)))
        .collect();
    order.sort_by_key(|&(j, r)| jobs[j].tokens[r]);
    let lengths: Vec<usize> = order.iter().map(|&(j, r)| jobs[j].tokens[r]).collect();
    let dims = embedder.dimensions();
    let mut out: Vec<Vec<f32>> = jobs.iter().map(|j| vec![0.0; j.rows() * dims]).collect();
    let mut start = 0;
    for end in chunk_ends(&lengths, budget) {
        let chunk = &order[start..end];
        let texts: Vec<&str> = chunk
            .iter()
            .map(|&(j, r)| jobs[j].texts[r].as_str())
            .collect();
        match embedder.embed_texts(&texts, false) {
            Ok(flat) if flat.len() == chunk.len() * dims => {
                for (&(j, r), row) in chunk.iter().zip(flat.chunks(dims)) {
                    out[j][r * dims..(r + 1) * dims].copy_from_slice(row);
                }
            }
            Ok(flat) => {
                let e = format!("{} values for {} texts", flat.len(), chunk.len());
                return each_alone(embedder, jobs, &e);
            }
            Err(e) => return each_alone(embedder, jobs, &e.to_string()),
        }
        start = end;
    }
    for (job, mut values) in jobs.into_iter().zip(out) {
        if job.normalize {
            normalize_rows(&mut values, dims);
        }
        let _ = job.reply.send(Ok(values));
    }
}

/// After a batched call failed: each job on its own, so an error reaches only the request
/// that caused it.
fn each_alone(embedder: &dyn TextEmbedder, jobs: Vec<TextJob>, why: &str) {
    tracing::debug!("batched call failed ({why}); computing requests one by one");
    for job in jobs {
        let texts: Vec<&str> = job.texts.iter().map(String::as_str).collect();
        let _ = job.reply.send(embedder.embed_texts(&texts, job.normalize));
    }
}

/// Texts this short share a chunk whatever their lengths (splitting them saves little).
const MIN_CHUNK_SHORTEST: usize = 8;

/// Where to cut texts sorted by length (ascending) into model calls: a chunk ends before a
/// text more than twice as long as the chunk's first (or than 16 tokens), so little of a call
/// is padding, or when the chunk would exceed the budget's rows or padded tokens. Returns
/// each chunk's end.
pub fn chunk_ends(sorted_lengths: &[usize], budget: TokenBudget) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut first = 0;
    for (i, &len) in sorted_lengths.iter().enumerate() {
        if i == first {
            continue;
        }
        let rows = i - first + 1;
        let shortest = sorted_lengths[first].max(MIN_CHUNK_SHORTEST);
        let cut =
            len > 2 * shortest || rows > budget.max_rows || rows * len > budget.max_tokens.max(len);
        if cut {
            ends.push(i);
            first = i;
        }
    }
    if !sorted_lengths.is_empty() {
        ends.push(sorted_lengths.len());
    }
    ends
}

/// Scales each row of `values` (`dims` wide) to unit length, as sentence-transformers does.
fn normalize_rows(values: &mut [f32], dims: usize) {
    for row in values.chunks_mut(dims.max(1)) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        for x in row {
            *x /= norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tokens: &[usize]) -> (TextJob, oneshot::Receiver<Embeddings>) {
        let texts = tokens.iter().map(|t| format!("{t} tokens")).collect();
        TextJob::new(texts, tokens.to_vec(), true)
    }

    const BUDGET: TokenBudget = TokenBudget {
        max_tokens: 100,
        max_rows: 8,
    };

    #[test]
    fn takes_requests_in_order_until_the_padded_cost_would_pass_the_budget() {
        let mut q = TokenQueue::new(16);
        let mut answers = Vec::new();
        for tokens in [&[10, 10][..], &[20], &[40], &[5]] {
            let (j, a) = job(tokens);
            q.push(j).unwrap();
            answers.push(a);
        }
        assert_eq!(q.tokens(), 85);
        // 2×10 = 20, then 3×20 = 60, then 4×40 = 160 > 100: stop before the 40.
        let b = q.next_batch(BUDGET);
        assert_eq!(b.jobs.len(), 2);
        assert_eq!(
            (b.rows, b.longest, b.padded_tokens(), b.tokens()),
            (3, 20, 60, 40)
        );
        // The 5 would fit with the 40, and does: 2×40 = 80.
        let b = q.next_batch(BUDGET);
        assert_eq!((b.jobs.len(), b.padded_tokens()), (2, 80));
        assert!(q.is_empty());
        assert_eq!(q.tokens(), 0);
    }

    #[test]
    fn arrival_order_is_kept_even_when_a_later_request_would_fit() {
        let mut q = TokenQueue::new(16);
        let (a, _ra) = job(&[40]);
        let (b, _rb) = job(&[80]);
        let (c, _rc) = job(&[1]);
        for j in [a, b, c] {
            q.push(j).unwrap();
        }
        // 2 × 80 is over 100: the 40 goes alone, though the 1 would have fitted with it.
        let first = q.next_batch(BUDGET);
        assert_eq!((first.jobs.len(), first.longest), (1, 40));
        assert_eq!(q.next_batch(BUDGET).longest, 80);
        assert_eq!(q.next_batch(BUDGET).longest, 1);
    }

    #[test]
    fn rows_are_bounded_as_well_as_tokens() {
        let mut q = TokenQueue::new(16);
        let (a, _ra) = job(&[1; 5]);
        let (b, _rb) = job(&[1; 4]);
        q.push(a).unwrap();
        q.push(b).unwrap();
        assert_eq!(q.next_batch(BUDGET).rows, 5, "5 + 4 rows is over 8");
        assert_eq!(q.next_batch(BUDGET).rows, 4);
    }

    #[test]
    fn a_request_over_the_budget_alone_runs_alone() {
        let mut q = TokenQueue::new(16);
        let (a, _ra) = job(&[50, 50, 50]);
        let (b, _rb) = job(&[1]);
        q.push(a).unwrap();
        q.push(b).unwrap();
        let first = q.next_batch(BUDGET);
        assert_eq!((first.jobs.len(), first.padded_tokens()), (1, 150));
        assert_eq!(q.next_batch(BUDGET).rows, 1);
    }

    #[test]
    fn requests_whose_client_went_away_are_dropped_not_computed() {
        let mut q = TokenQueue::new(16);
        let (a, ra) = job(&[10]);
        let (b, _rb) = job(&[10]);
        let (c, rc) = job(&[10]);
        for j in [a, b, c] {
            q.push(j).unwrap();
        }
        drop(ra);
        drop(rc);
        let batch = q.next_batch(BUDGET);
        assert_eq!((batch.jobs.len(), batch.dropped), (1, 2));
        assert!(q.is_empty());
        assert_eq!(q.tokens(), 0);
    }

    #[test]
    fn a_full_queue_refuses_unless_a_waiting_client_has_gone() {
        let mut q = TokenQueue::new(2);
        let (a, ra) = job(&[10]);
        let (b, _rb) = job(&[10]);
        q.push(a).unwrap();
        q.push(b).unwrap();
        let (c, _rc) = job(&[10]);
        let c = q.push(c).unwrap_err();
        drop(ra);
        assert_eq!(q.push(c).unwrap(), 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.tokens(), 20);
    }

    #[test]
    fn chunks_group_similar_lengths_within_the_budget() {
        let budget = TokenBudget {
            max_tokens: 1000,
            max_rows: 4,
        };
        // Queries of ~12 tokens apart from passages of ~200.
        assert_eq!(chunk_ends(&[10, 12, 14, 190, 200], budget), vec![3, 5]);
        // Rows: at most 4 per call.
        assert_eq!(chunk_ends(&[5; 6], budget), vec![4, 6]);
        // Padded tokens: 4 × 300 is over 1000.
        assert_eq!(chunk_ends(&[300; 5], budget), vec![3, 5]);
        // Texts up to 16 tokens go together.
        assert_eq!(chunk_ends(&[3, 9, 16, 17], budget), vec![3, 4]);
        assert!(chunk_ends(&[], budget).is_empty());
    }

    #[test]
    fn rows_are_normalized_to_unit_length() {
        let mut v = vec![3.0, 4.0, 0.0, 0.0];
        normalize_rows(&mut v, 2);
        assert_eq!(v, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
