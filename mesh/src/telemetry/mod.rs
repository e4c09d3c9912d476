//! Telemetry every hop shares: Istio-compatible request metrics, Knative revision and
//! autoscaler metrics, KServe model metrics, in an injected registry with Prometheus text
//! exposition; and the JSON access-log line.

pub mod access_log;
pub mod hop;
pub mod istio;
pub mod knative;
pub mod merge;
pub mod outcomes;
pub mod registry;

pub use access_log::{ACCESS_LOG_ENV, AccessLogEntry, BadAccessLogVar, access_log_on};
pub use hop::{AccessLog, Exchange, HopTelemetry, Recorded};
pub use istio::{IstioMetrics, LabelValue, Reporter, RequestLabels};
pub use knative::{
    AutoscalerMetrics, AutoscalerSample, ModelMetrics, ModelStage, RevisionLabels, RevisionMetrics,
};
pub use registry::{CONTENT_TYPE, LabelHash, Registry};
