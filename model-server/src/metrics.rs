//! Per-model Prometheus metrics: request phase latencies (`request_preprocess_seconds`,
//! `request_predict_seconds`, `request_postprocess_seconds`, as KServe names them), the
//! dynamic batch size, queue depth and in-flight requests, rendered in the text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

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
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
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
    /// Rows per executed batch.
    pub batch_size: Histogram,
    /// Requests waiting in the batching queue.
    pub queue_depth: AtomicI64,
    /// Requests being served (decode to encode).
    pub in_flight: AtomicI64,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        Self {
            preprocess: Histogram::new(SECONDS_BUCKETS),
            predict: Histogram::new(SECONDS_BUCKETS),
            postprocess: Histogram::new(SECONDS_BUCKETS),
            batch_size: Histogram::new(BATCH_BUCKETS),
            queue_depth: AtomicI64::new(0),
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

/// Renders every model's metrics in the Prometheus text format.
pub fn render<'a>(models: impl IntoIterator<Item = (&'a str, &'a ModelMetrics)>) -> String {
    let models: Vec<_> = models.into_iter().collect();
    let mut out = String::new();
    type Pick = fn(&ModelMetrics) -> &Histogram;
    let histograms: [(&str, &str, Pick); 4] = [
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
            "sluice_batch_size",
            "Rows per executed (dynamically batched) model call.",
            |m| &m.batch_size,
        ),
    ];
    for (name, help, pick) in histograms {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (model, m) in &models {
            pick(m).render(&mut out, name, &format!("model_name=\"{}\"", escape(model)));
        }
    }
    type Gauge = fn(&ModelMetrics) -> &AtomicI64;
    let gauges: [(&str, &str, Gauge); 2] = [
        (
            "sluice_queue_depth",
            "Requests waiting in the model's batching queue.",
            |m| &m.queue_depth,
        ),
        (
            "sluice_inflight_requests",
            "Inference requests being served.",
            |m| &m.in_flight,
        ),
    ];
    for (name, help, pick) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (model, m) in &models {
            let _ = writeln!(
                out,
                "{name}{{model_name=\"{}\"}} {}",
                escape(model),
                pick(m).load(Ordering::Relaxed)
            );
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
    }
}
