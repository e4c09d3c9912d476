//! A model's queue and instances, in one of two kinds.
//!
//! * Text models (a [`TextEmbedder`], e.g. `bert`) with `max_batch_tokens` > 0: token-budget
//!   batching as text-embeddings-inference does it ([`crate::text_batch`]).
//! * Every other model (and text models with `max_batch_tokens` = 0): Triton-style dynamic
//!   batching. Requests wait in a bounded queue; each of the model's instances takes the
//!   first waiting request, gathers compatible ones (same inputs, datatypes and non-batch
//!   dimensions) until the batch holds `max_batch_size` rows or `max_queue_delay` has
//!   passed, runs them as one model call off the reactor, and splits the outputs back by
//!   rows.
//!
//! Either way a full queue refuses at once ([`InferError::QueueFull`]: 429, gRPC
//! RESOURCE_EXHAUSTED), and a request whose client went away before its batch started is
//! dropped without computing it (counted in `sluice_requests_dropped_client_gone_total`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

use crate::error::InferError;
use crate::metrics::ModelMetrics;
use crate::model::{Model, TextEmbedder};
use crate::tensor::{DataType, NamedTensor, TensorData};
use crate::text_batch::{TextBatcher, TokenBudget, check_budget};

/// `max_batch_tokens` by default, as text-embeddings-inference's `--max-batch-tokens`.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 16384;
/// The largest `max_batch_tokens` taken (a bound on one batch's memory).
pub const MAX_BATCH_TOKENS_LIMIT: usize = 1 << 22;
/// Requests carrying more text than this are tokenized off the reactor.
const INLINE_TOKENIZE_BYTES: usize = 64 * 1024;

/// How a model's requests are queued and batched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows in one model call; 0 or 1 disables batching.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch.
    pub max_queue_delay: Duration,
    /// Requests that may wait; beyond that, 503.
    pub max_queue: usize,
    /// Model instances computing in parallel.
    pub instances: usize,
    /// Text models: most padded tokens (rows × longest text) in one batch; 0 = batch them
    /// with the timer like other models.
    pub max_batch_tokens: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_queue_delay: Duration::from_millis(2),
            max_queue: 1024,
            instances: 1,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
        }
    }
}

/// A batching setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BatchConfigError {
    /// The setting (`max_batch_tokens`), as the repository's settings file spells it.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl BatchConfig {
    /// Checks the settings that can be checked without the model; the token budget is
    /// checked against the model's longest input when it starts ([`Executor::start`]).
    pub fn validate(&self) -> Result<(), BatchConfigError> {
        if self.max_batch_tokens > MAX_BATCH_TOKENS_LIMIT {
            return Err(BatchConfigError {
                field: "max_batch_tokens",
                message: format!(
                    "{} is more than {MAX_BATCH_TOKENS_LIMIT}; use 0 for the timer batcher \
                     or a budget between the model's longest input and {MAX_BATCH_TOKENS_LIMIT}",
                    self.max_batch_tokens
                ),
            });
        }
        Ok(())
    }
}

type Reply = oneshot::Sender<Result<Vec<NamedTensor>, InferError>>;

struct Job {
    inputs: Vec<NamedTensor>,
    queued_at: Instant,
    /// Leading dimension shared by every input; `None` when they disagree (runs alone).
    rows: Option<usize>,
    reply: Reply,
}

impl Job {
    fn fits_with(&self, other: &Job) -> bool {
        self.rows.is_some()
            && other.rows.is_some()
            && self.inputs.len() == other.inputs.len()
            && self.inputs.iter().zip(&other.inputs).all(|(a, b)| {
                a.name == b.name
                    && a.datatype() == b.datatype()
                    && a.shape.get(1..) == b.shape.get(1..)
            })
    }
}

/// Runs a model's requests through its queue and instances.
pub struct Executor {
    name: String,
    model: Arc<dyn Model>,
    queue: Queue,
    metrics: Arc<ModelMetrics>,
}

enum Queue {
    Timer(mpsc::Sender<Job>),
    Tokens(TextBatcher),
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.queue {
            Queue::Timer(_) => "timer",
            Queue::Tokens(_) => "tokens",
        };
        f.debug_struct("Executor")
            .field("name", &self.name)
            .field("batcher", &kind)
            .finish()
    }
}

impl Executor {
    /// Starts the model's instance tasks on the current runtime. They end when the
    /// executor is dropped and the queue has drained. Refused when the settings are out of
    /// range, or a text model's token budget is below its longest input.
    pub fn start(
        name: &str,
        model: Arc<dyn Model>,
        config: &BatchConfig,
        metrics: Arc<ModelMetrics>,
    ) -> Result<Self, BatchConfigError> {
        config.validate()?;
        let capacity = config.max_queue.max(1);
        metrics
            .queue_capacity
            .store(capacity as i64, Ordering::Relaxed);
        let max_rows = if model.batchable() {
            config.max_batch_size.max(1)
        } else {
            1
        };
        if config.max_batch_tokens > 0
            && let Some(embedder) = model.text_embedder()
        {
            check_budget(config.max_batch_tokens, embedder).map_err(|message| {
                BatchConfigError {
                    field: "max_batch_tokens",
                    message,
                }
            })?;
            let budget = TokenBudget {
                max_tokens: config.max_batch_tokens,
                max_rows,
            };
            let batcher = TextBatcher::start(
                name,
                model.clone(),
                budget,
                capacity,
                config.instances,
                metrics.clone(),
            );
            return Ok(Self {
                name: name.to_owned(),
                model,
                queue: Queue::Tokens(batcher),
                metrics,
            });
        }
        let (tx, rx) = mpsc::channel(capacity);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..config.instances.max(1) {
            tokio::spawn(instance(
                rx.clone(),
                model.clone(),
                max_rows,
                config.max_queue_delay,
                metrics.clone(),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            model,
            queue: Queue::Timer(tx),
            metrics,
        })
    }

    /// Queues validated inputs and waits for the model's outputs.
    pub async fn run(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, InferError> {
        let tx = match &self.queue {
            Queue::Timer(tx) => tx,
            Queue::Tokens(batcher) => return self.run_texts(batcher, inputs).await,
        };
        let rows = inputs.first().and_then(|t| t.shape.first().copied());
        let rows = rows.filter(|&r| inputs.iter().all(|t| t.shape.first() == Some(&r)));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            queued_at: Instant::now(),
            rows,
            reply,
        };
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = tx.try_send(job) {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => InferError::QueueFull(self.name.clone()),
                mpsc::error::TrySendError::Closed(_) => InferError::NotReady(self.name.clone()),
            });
        }
        answer
            .await
            .map_err(|_| InferError::Task("the model instance stopped".into()))?
    }

    /// Embeddings of `texts` from a text model, row-major `[texts, dimensions]`, of unit
    /// length with `normalize`; `tokens` is each text's token count cut to the model's
    /// maximum (the embedding APIs have counted them already).
    pub async fn embed(
        &self,
        texts: Vec<String>,
        tokens: Vec<usize>,
        normalize: bool,
    ) -> Result<Vec<f32>, InferError> {
        if let Queue::Tokens(batcher) = &self.queue {
            return batcher.embed(texts, tokens, normalize).await;
        }
        if normalize {
            // What the model's `infer` computes: through the timer batcher like OIP requests.
            let rows = texts.len();
            let bytes = texts.into_iter().map(String::into_bytes).collect();
            let input = NamedTensor::new(self.text_input(), vec![rows], TensorData::Bytes(bytes));
            let outputs = self.run(vec![input]).await?;
            return match outputs.into_iter().next().map(|t| t.data) {
                Some(TensorData::Fp32(values)) => Ok(values),
                _ => Err(InferError::Task(
                    "the model answered no FP32 embedding".into(),
                )),
            };
        }
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder(model.as_ref())?.embed_texts(&refs, false)
        })
        .await
        .map_err(|e| InferError::Task(e.to_string()))?
    }

    /// An OIP request to a token-batched text model: its one BYTES input's texts, counted
    /// and queued; the embeddings come back as the model's output tensor.
    async fn run_texts(
        &self,
        batcher: &TextBatcher,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        let texts = texts_of(inputs)?;
        let rows = texts.len();
        let size: usize = texts.iter().map(String::len).sum();
        let (texts, tokens) = if size <= INLINE_TOKENIZE_BYTES {
            let tokens = count(self.model.as_ref(), &texts)?;
            (texts, tokens)
        } else {
            let model = self.model.clone();
            tokio::task::spawn_blocking(move || {
                count(model.as_ref(), &texts).map(|tokens| (texts, tokens))
            })
            .await
            .map_err(|e| InferError::Task(e.to_string()))??
        };
        let values = batcher.embed(texts, tokens, true).await?;
        let dims = embedder(self.model.as_ref())?.dimensions();
        let output = self
            .model
            .metadata()
            .outputs
            .first()
            .map(|o| o.name.clone());
        let output = output.ok_or_else(|| InferError::Task("the model has no output".into()))?;
        Ok(vec![NamedTensor::new(
            output,
            vec![rows, dims],
            TensorData::Fp32(values),
        )])
    }

    /// The name of the model's first input (a text model's only one).
    fn text_input(&self) -> String {
        let inputs = &self.model.metadata().inputs;
        inputs.first().map(|i| i.name.clone()).unwrap_or_default()
    }
}

fn embedder(model: &dyn Model) -> Result<&dyn TextEmbedder, InferError> {
    model
        .text_embedder()
        .ok_or_else(|| InferError::Task("the model is not a text embedder".into()))
}

/// Each text's tokens, cut to the model's maximum (as the model cuts them).
fn count(model: &dyn Model, texts: &[String]) -> Result<Vec<usize>, InferError> {
    let embedder = embedder(model)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let max = embedder.max_tokens();
    let counts = embedder.count_tokens(&refs)?;
    Ok(counts.into_iter().map(|n| n.min(max)).collect())
}

/// The texts of a text model's validated inputs: one BYTES tensor of UTF-8 strings.
fn texts_of(inputs: Vec<NamedTensor>) -> Result<Vec<String>, InferError> {
    let [input] =
        <[NamedTensor; 1]>::try_from(inputs).map_err(|inputs| InferError::InvalidInput {
            tensor: inputs.first().map(|t| t.name.clone()).unwrap_or_default(),
            message: format!("expected exactly one input, got {}", inputs.len()),
        })?;
    if input.datatype() != DataType::Bytes {
        return Err(input.invalid(format!(
            "datatype is {}, the model expects BYTES",
            input.datatype()
        )));
    }
    let name = input.name.clone();
    let TensorData::Bytes(items) = input.data else {
        return Err(InferError::InvalidInput {
            tensor: name,
            message: "the model expects BYTES".into(),
        });
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            String::from_utf8(b).map_err(|e| InferError::InvalidInput {
                tensor: name.clone(),
                message: format!("element {i} is not UTF-8 text: {}", e.utf8_error()),
            })
        })
        .collect()
}

async fn instance(
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    model: Arc<dyn Model>,
    max_rows: usize,
    delay: Duration,
    metrics: Arc<ModelMetrics>,
) {
    let mut carry: Option<Job> = None;
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            let mut rows = first.rows.unwrap_or(max_rows);
            batch.push(first);
            if max_rows > 1 {
                let deadline = Instant::now() + delay;
                while rows < max_rows {
                    let Ok(Some(next)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                        break;
                    };
                    metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    let next_rows = next.rows.unwrap_or(max_rows);
                    if batch[0].fits_with(&next) && rows + next_rows <= max_rows {
                        rows += next_rows;
                        batch.push(next);
                    } else {
                        // Counted again when it starts the next batch.
                        metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
                        carry = Some(next);
                        break;
                    }
                }
            }
        }
        let gone = batch.iter().filter(|j| j.reply.is_closed()).count();
        if gone > 0 {
            batch.retain(|j| !j.reply.is_closed());
            let m = &metrics.dropped_client_gone;
            m.fetch_add(gone as u64, Ordering::Relaxed);
            tracing::debug!(dropped = gone, "requests dropped: their clients went away");
        }
        if batch.is_empty() {
            continue;
        }
        let rows: usize = batch.iter().map(|j| j.rows.unwrap_or(1)).sum();
        metrics.batch_size.observe(rows as f64);
        let now = Instant::now();
        for job in &batch {
            metrics.queue_wait.observe_duration(now - job.queued_at);
        }
        let model = model.clone();
        let done = tokio::task::spawn_blocking(move || run_batch(model.as_ref(), batch)).await;
        if let Err(e) = done {
            tracing::error!("model instance task failed: {e}");
        }
    }
}

/// Runs jobs as one call when there are several, falling back to one call each when the
/// batched call fails (so an error reaches only the request that caused it).
fn run_batch(model: &dyn Model, batch: Vec<Job>) -> usize {
    let n = batch.len();
    if n == 1 {
        for job in batch {
            let _ = job.reply.send(model.infer(&job.inputs));
        }
        return 1;
    }
    let rows: Vec<usize> = batch.iter().map(|j| j.rows.unwrap_or(0)).collect();
    let total: usize = rows.iter().sum();
    let mut merged = batch[0].inputs.clone();
    for t in &mut merged {
        t.shape[0] = total;
    }
    for job in &batch[1..] {
        for (m, t) in merged.iter_mut().zip(&job.inputs) {
            m.data.extend_from(&t.data);
        }
    }
    match model
        .infer(&merged)
        .and_then(|outs| split(outs, &rows, total))
    {
        Ok(per_job) => {
            for (job, outs) in batch.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(outs));
            }
        }
        Err(e) => {
            tracing::debug!("batched call failed ({e}); retrying requests one by one");
            for job in batch {
                let _ = job.reply.send(model.infer(&job.inputs));
            }
        }
    }
    n
}

fn split(
    outputs: Vec<NamedTensor>,
    rows: &[usize],
    total: usize,
) -> Result<Vec<Vec<NamedTensor>>, InferError> {
    let mut per_job: Vec<Vec<NamedTensor>> = rows.iter().map(|_| Vec::new()).collect();
    for out in outputs {
        if out.shape.first() != Some(&total) || total == 0 {
            return Err(InferError::Task(format!(
                "output {:?} has shape {:?}, not a batch of {total} rows",
                out.name, out.shape
            )));
        }
        let per_row = out.data.len() / total;
        let mut start = 0;
        for (slot, &r) in per_job.iter_mut().zip(rows) {
            let mut shape = out.shape.clone();
            shape[0] = r;
            let end = start + r * per_row;
            slot.push(NamedTensor {
                name: out.name.clone(),
                shape,
                parameters: out.parameters.clone(),
                data: out.data.slice(start, end),
            });
            start = end;
        }
    }
    Ok(per_job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelMetadata, tensor_meta};
    use crate::tensor::{DataType, TensorData};

    /// Doubles its input; refuses negative numbers (to test per-request error fallback).
    struct Doubler(ModelMetadata);

    impl Doubler {
        fn new() -> Self {
            Self(ModelMetadata {
                name: "d".into(),
                versions: vec![],
                platform: "test".into(),
                inputs: vec![tensor_meta("x", DataType::Fp32, vec![-1, 1])],
                outputs: vec![tensor_meta("y", DataType::Fp32, vec![-1, 1])],
            })
        }
    }

    impl Model for Doubler {
        fn metadata(&self) -> &ModelMetadata {
            &self.0
        }
        fn infer(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, InferError> {
            let TensorData::Fp32(v) = &inputs[0].data else {
                return Err(inputs[0].invalid("not fp32"));
            };
            if v.iter().any(|x| *x < 0.0) {
                return Err(inputs[0].invalid("negative"));
            }
            Ok(vec![NamedTensor::new(
                "y",
                inputs[0].shape.clone(),
                TensorData::Fp32(v.iter().map(|x| x * 2.0).collect()),
            )])
        }
        fn batchable(&self) -> bool {
            true
        }
    }

    fn x(values: &[f32]) -> Vec<NamedTensor> {
        vec![NamedTensor::new(
            "x",
            vec![values.len(), 1],
            TensorData::Fp32(values.to_vec()),
        )]
    }

    #[tokio::test(start_paused = true)]
    async fn requests_within_the_delay_share_one_call_and_split_back() {
        let metrics = Arc::new(ModelMetrics::default());
        let config = BatchConfig {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(50),
            max_queue: 16,
            instances: 1,
            max_batch_tokens: 0,
        };
        let ex = Executor::start("d", Arc::new(Doubler::new()), &config, metrics.clone()).unwrap();
        let (a, b, c) = tokio::join!(
            ex.run(x(&[1.0, 2.0])),
            ex.run(x(&[3.0])),
            ex.run(x(&[-1.0]))
        );
        assert_eq!(a.unwrap()[0].data, TensorData::Fp32(vec![2.0, 4.0]));
        let b = b.unwrap();
        assert_eq!(b[0].data, TensorData::Fp32(vec![6.0]));
        assert_eq!(b[0].shape, vec![1, 1]);
        assert_eq!(c.unwrap_err().to_string(), "input \"x\": negative");
        // One batch of 4 rows: the three requests were gathered, not run one by one.
        assert_eq!(metrics.batch_size.count(), 1);
        assert_eq!(metrics.queue_depth.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_with_queue_full() {
        let metrics = Arc::new(ModelMetrics::default());
        let config = BatchConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            max_queue: 1,
            instances: 1,
            max_batch_tokens: 0,
        };
        let ex = Executor::start("d", Arc::new(Doubler::new()), &config, metrics).unwrap();
        // Nothing has been polled yet: the instance task has not taken a job, so the
        // second request finds the single queue slot taken.
        let first = ex.run(x(&[1.0]));
        let second = ex.run(x(&[2.0]));
        tokio::pin!(first);
        let polled = futures_poll_once(first.as_mut()).await;
        assert!(polled.is_none());
        let err = second.await.unwrap_err();
        assert!(matches!(err, InferError::QueueFull(_)), "{err}");
        assert_eq!(first.await.unwrap()[0].data, TensorData::Fp32(vec![2.0]));
    }

    /// Each call waits until another call is inside `infer` too: only two instances
    /// computing at the same time let both finish.
    struct Rendezvous(ModelMetadata, std::sync::Barrier);

    impl Model for Rendezvous {
        fn metadata(&self) -> &ModelMetadata {
            &self.0
        }
        fn infer(&self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, InferError> {
            self.1.wait();
            Ok(inputs.to_vec())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_compute_in_parallel() {
        let model = Rendezvous(Doubler::new().0, std::sync::Barrier::new(2));
        let config = BatchConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            max_queue: 4,
            instances: 2,
            max_batch_tokens: 0,
        };
        let ex = Executor::start("r", Arc::new(model), &config, Arc::default()).unwrap();
        let (a, b) = tokio::join!(ex.run(x(&[1.0])), ex.run(x(&[2.0])));
        assert_eq!(a.unwrap()[0].data, TensorData::Fp32(vec![1.0]));
        assert_eq!(b.unwrap()[0].data, TensorData::Fp32(vec![2.0]));
    }

    /// Polls a future once, returning its output if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
