//! Knative's queue-proxy revision metrics and the autoscaler's gauges, and KServe's model
//! latency histograms, with the upstream names and labels.

use std::time::Duration;

use super::registry::{Counter, Family, Gauge, Histogram, LabelHash, Registry};

/// `revision_request_latencies` buckets in milliseconds (Knative's queue-proxy).
pub const LATENCY_BUCKETS_MS: [f64; 26] = [
    5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0,
    500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

/// Prometheus' default buckets in seconds, used by KServe's model metrics.
pub const DEFAULT_BUCKETS_S: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The labels of Knative's revision metrics (`revision_request_count`, `revision_queue_depth`…).
pub const REVISION_LABELS: [&str; 6] = [
    "namespace_name",
    "service_name",
    "configuration_name",
    "revision_name",
    "pod_name",
    "container_name",
];

const AUTOSCALER_LABELS: [&str; 4] = [
    "namespace_name",
    "service_name",
    "configuration_name",
    "revision_name",
];

/// Which revision (and replica) a metric is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionLabels {
    /// Namespace.
    pub namespace: String,
    /// Knative Service.
    pub service: String,
    /// Configuration.
    pub configuration: String,
    /// Revision.
    pub revision: String,
    /// Replica (pod or local process name).
    pub pod: String,
    /// Container (`queue-proxy` upstream; `queue` or `model-server` here).
    pub container: String,
}

impl RevisionLabels {
    fn values(&self) -> [&str; 6] {
        [
            &self.namespace,
            &self.service,
            &self.configuration,
            &self.revision,
            &self.pod,
            &self.container,
        ]
    }
}

/// The queue layer's per-revision metrics.
#[derive(Clone, Debug)]
pub struct RevisionMetrics {
    count: Family<Counter>,
    latencies: Family<Histogram>,
    queue_depth: Family<Gauge>,
}

impl RevisionMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let mut with_code = REVISION_LABELS.to_vec();
        with_code.extend(["response_code", "response_code_class"]);
        Self {
            count: registry.counter(
                "revision_request_count",
                "The number of requests that are routed to queue-proxy.",
                &with_code,
            ),
            latencies: registry.histogram(
                "revision_request_latencies",
                "The response latencies of the requests, in milliseconds.",
                &with_code,
                &LATENCY_BUCKETS_MS,
            ),
            queue_depth: registry.gauge(
                "revision_queue_depth",
                "The current number of items in the serving and waiting queue.",
                &REVISION_LABELS,
            ),
        }
    }

    /// Records one finished request.
    pub fn record(&self, labels: &RevisionLabels, status: u16, latency: Duration) {
        let code = status.to_string();
        let class = format!("{}xx", status / 100);
        let [a, b, c, d, e, f] = labels.values();
        let values = [a, b, c, d, e, f, &code, &class];
        let hash = LabelHash::of(&values);
        if let Some(c) = self.count.with_hashed(hash, &values) {
            c.inc();
        }
        if let Some(h) = self.latencies.with_hashed(hash, &values) {
            h.observe(latency.as_secs_f64() * 1000.0);
        }
    }

    /// Sets the number of requests being served or waiting.
    pub fn set_queue_depth(&self, labels: &RevisionLabels, depth: usize) {
        if let Some(g) = self.queue_depth.with(&labels.values()) {
            g.set(depth as f64);
        }
    }
}

/// The autoscaler's per-revision gauges, as Knative names them.
#[derive(Clone, Debug)]
pub struct AutoscalerMetrics {
    desired: Family<Gauge>,
    actual: Family<Gauge>,
    stable: Family<Gauge>,
    panic_concurrency: Family<Gauge>,
    panic_mode: Family<Gauge>,
}

/// One autoscaler decision's numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AutoscalerSample {
    /// Desired replicas.
    pub desired_pods: f64,
    /// Ready replicas.
    pub actual_pods: f64,
    /// Average concurrency over the stable window.
    pub stable_concurrency: f64,
    /// Average concurrency over the panic window.
    pub panic_concurrency: f64,
    /// Whether the autoscaler is in panic mode.
    pub panic_mode: bool,
}

impl AutoscalerMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let g = |name, help| registry.gauge(name, help, &AUTOSCALER_LABELS);
        Self {
            desired: g(
                "autoscaler_desired_pods",
                "Number of pods autoscaler wants to allocate.",
            ),
            actual: g(
                "autoscaler_actual_pods",
                "Number of pods that are allocated currently.",
            ),
            stable: g(
                "autoscaler_stable_request_concurrency",
                "Average of requests count per observed pod over the stable window.",
            ),
            panic_concurrency: g(
                "autoscaler_panic_request_concurrency",
                "Average of requests count per observed pod over the panic window.",
            ),
            panic_mode: g(
                "autoscaler_panic_mode",
                "1 if autoscaler is in panic mode, 0 otherwise.",
            ),
        }
    }

    /// Records a decision for `revision` (namespace, service, configuration, revision).
    pub fn record(&self, revision: [&str; 4], sample: AutoscalerSample) {
        for (family, value) in [
            (&self.desired, sample.desired_pods),
            (&self.actual, sample.actual_pods),
            (&self.stable, sample.stable_concurrency),
            (&self.panic_concurrency, sample.panic_concurrency),
            (&self.panic_mode, f64::from(u8::from(sample.panic_mode))),
        ] {
            if let Some(g) = family.with(&revision) {
                g.set(value);
            }
        }
    }
}

/// Which stage of a KServe request a latency belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelStage {
    /// `request_preprocess_seconds`.
    Preprocess,
    /// `request_predict_seconds`.
    Predict,
    /// `request_postprocess_seconds`.
    Postprocess,
}

/// KServe's per-model latency histograms.
#[derive(Clone, Debug)]
pub struct ModelMetrics {
    preprocess: Family<Histogram>,
    predict: Family<Histogram>,
    postprocess: Family<Histogram>,
}

impl ModelMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let h = |name, help| registry.histogram(name, help, &["model_name"], &DEFAULT_BUCKETS_S);
        Self {
            preprocess: h("request_preprocess_seconds", "pre-process request latency"),
            predict: h("request_predict_seconds", "predict request latency"),
            postprocess: h(
                "request_postprocess_seconds",
                "post-process request latency",
            ),
        }
    }

    /// Records how long `stage` took for `model`.
    pub fn record(&self, model: &str, stage: ModelStage, took: Duration) {
        let family = match stage {
            ModelStage::Preprocess => &self.preprocess,
            ModelStage::Predict => &self.predict,
            ModelStage::Postprocess => &self.postprocess,
        };
        if let Some(h) = family.with(&[model]) {
            h.observe(took.as_secs_f64());
        }
    }
}
