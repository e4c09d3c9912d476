//! Per-model Prometheus metrics: request phase latencies (`request_preprocess_seconds`,
//! `request_predict_seconds`, `request_postprocess_seconds`, as KServe names them) and the
//! whole request's (`sluice_request_duration_seconds`); the batcher's view of load, for an
//! endpoint picker or an autoscaler: queue size (requests and tokens waiting, capacity), time
//! waited in the queue, rows and padded tokens per batch, tokens computed, requests dropped
//! because their client went away; in-flight requests. Rendered in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const TOKEN_BUCKETS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 262144.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths of the unit.
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        for (bound, c) in self.bounds.iter().zip(&self.counts) {
            if value <= *bound {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of the values observed.
    pub fn sum(&self) -> f64 {
        self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{bound}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum());
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The metrics of one served model.
#[derive(Debug)]
pub struct ModelMetrics {
    /// Decoding and validating the request.
    pub preprocess: Histogram,
    /// Queueing plus computing.
    pub predict: Histogram,
    /// Encoding the response.
    pub postprocess: Histogram,
    /// The whole request, decoding to encoding.
    pub request: Histogram,
    /// Time from entering the batching queue to the start of the batch that computes it.
    pub queue_wait: Histogram,
    /// Rows per executed batch.
    pub batch_size: Histogram,
    /// Padded tokens per executed batch of text (rows × longest sequence): what
    /// `max_batch_tokens` bounds.
    pub batch_tokens: Histogram,
    /// Tokens of the texts computed (without padding).
    pub tokens: AtomicU64,
    /// Requests taken off the queue without computing them because their client had gone.
    pub dropped_client_gone: AtomicU64,
    /// Requests waiting in the batching queue.
    pub queue_depth: AtomicI64,
    /// Tokens of the texts waiting in the batching queue (text models).
    pub queue_tokens: AtomicI64,
    /// Most requests the batching queue holds (beyond it: 429).
    pub queue_capacity: AtomicI64,
    /// Requests being served (decode to encode).
    pub in_flight: AtomicI64,
}

impl ModelMetrics {
    /// Counts a request in flight until the guard drops, and then records its duration.
    pub fn request(&self) -> RequestGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            metrics: self,
            started: tokio::time::Instant::now(),
        }
    }
}

/// A request being served: see [`ModelMetrics::request`].
#[derive(Debug)]
pub struct RequestGuard<'a> {
    metrics: &'a ModelMetrics,
    started: tokio::time::Instant,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .request
            .observe_duration(self.started.elapsed());
    }
}

impl Default for ModelMetrics {
    fn default() -> Self {
        Self {
            preprocess: Histogram::new(SECONDS_BUCKETS),
            predict: Histogram::new(SECONDS_BUCKETS),
            postprocess: Histogram::new(SECONDS_BUCKETS),
            request: Histogram::new(SECONDS_BUCKETS),
            queue_wait: Histogram::new(SECONDS_BUCKETS),
            batch_size: Histogram::new(BATCH_BUCKETS),
            batch_tokens: Histogram::new(TOKEN_BUCKETS),
            tokens: AtomicU64::new(0),
            dropped_client_gone: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            queue_tokens: AtomicI64::new(0),
            queue_capacity: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl<'a> GaugeGuard<'a> {
    /// Increments `gauge` until the guard drops.
    pub fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Pick = fn(&ModelMetrics) -> &Histogram;
type Gauge = fn(&ModelMetrics) -> &AtomicI64;
type Counter = fn(&ModelMetrics) -> &AtomicU64;

const HISTOGRAMS: [(&str, &str, Pick); 7] = [
    (
        "request_preprocess_seconds",
        "Time decoding and validating a request.",
        |m| &m.preprocess,
    ),
    (
        "request_predict_seconds",
        "Time a request spends queued and computing.",
        |m| &m.predict,
    ),
    (
        "request_postprocess_seconds",
        "Time encoding a response.",
        |m| &m.postprocess,
    ),
    (
        "sluice_request_duration_seconds",
        "Time serving an inference request, decoding to encoding.",
        |m| &m.request,
    ),
    (
        "sluice_queue_wait_seconds",
        "Time a request waits in the batching queue before its batch starts.",
        |m| &m.queue_wait,
    ),
    (
        "sluice_batch_size",
        "Rows per executed (dynamically batched) model call.",
        |m| &m.batch_size,
    ),
    (
        "sluice_batch_tokens",
        "Padded tokens (rows x longest sequence) per executed batch of text.",
        |m| &m.batch_tokens,
    ),
];

const GAUGES: [(&str, &str, Gauge); 4] = [
    (
        "sluice_queue_depth",
        "Requests waiting in the model's batching queue.",
        |m| &m.queue_depth,
    ),
    (
        "sluice_queue_tokens",
        "Tokens of the texts waiting in the model's batching queue.",
        |m| &m.queue_tokens,
    ),
    (
        "sluice_queue_capacity",
        "Most requests the model's batching queue holds; beyond it, 429.",
        |m| &m.queue_capacity,
    ),
    (
        "sluice_inflight_requests",
        "Inference requests being served.",
        |m| &m.in_flight,
    ),
];

const COUNTERS: [(&str, &str, Counter); 2] = [
    (
        "sluice_tokens_total",
        "Tokens of the texts computed, without padding.",
        |m| &m.tokens,
    ),
    (
        "sluice_requests_dropped_client_gone_total",
        "Requests dropped before computing because their client went away.",
        |m| &m.dropped_client_gone,
    ),
];

/// Renders every model's metrics in the Prometheus text format.
pub fn render<'a>(models: impl IntoIterator<Item = (&'a str, &'a ModelMetrics)>) -> String {
    let models: Vec<_> = models.into_iter().collect();
    let mut out = String::new();
    for (name, help, pick) in HISTOGRAMS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (model, m) in &models {
            pick(m).render(&mut out, name, &format!("model_name=\"{}\"", escape(model)));
        }
    }
    for (name, help, pick) in GAUGES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (model, m) in &models {
            let value = pick(m).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{model_name=\"{}\"}} {value}", escape(model));
        }
    }
    for (name, help, pick) in COUNTERS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (model, m) in &models {
            let value = pick(m).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{model_name=\"{}\"}} {value}", escape(model));
        }
    }
    out
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_and_gauges() {
        let m = ModelMetrics::default();
        m.batch_size.observe(3.0);
        m.batch_size.observe(1.0);
        let _g = GaugeGuard::new(&m.in_flight);
        let text = render([("iris", &m)]);
        assert!(text.contains("sluice_batch_size_bucket{model_name=\"iris\",le=\"1\"} 1\n"));
        assert!(text.contains("sluice_batch_size_bucket{model_name=\"iris\",le=\"4\"} 2\n"));
        assert!(text.contains("sluice_batch_size_count{model_name=\"iris\"} 2\n"));
        assert!(text.contains("sluice_batch_size_sum{model_name=\"iris\"} 4\n"));
        assert!(text.contains("sluice_inflight_requests{model_name=\"iris\"} 1\n"));
        assert!(text.contains("# TYPE request_predict_seconds histogram\n"));
        m.tokens.fetch_add(12, Ordering::Relaxed);
        let text = render([("iris", &m)]);
        assert!(text.contains("# TYPE sluice_tokens_total counter\n"));
        assert!(text.contains("sluice_tokens_total{model_name=\"iris\"} 12\n"));
        assert!(text.contains("# TYPE sluice_queue_capacity gauge\n"));
    }
}
