//! Istio's standard request metrics, with Istio's names, labels and buckets, so existing
//! dashboards (Grafana's Istio boards, Kiali) read Sluice unchanged.

use std::borrow::Cow;
use std::time::Duration;

use super::registry::{Counter, Family, Histogram, LabelHash, Registry};

/// `istio_request_duration_milliseconds` buckets (Istio's defaults).
pub const DURATION_BUCKETS_MS: [f64; 19] = sluice_core::outcomes::LATENCY_BOUNDS_MS;

/// `istio_request_bytes` / `istio_response_bytes` buckets: powers of ten from 1 B to 1 GB.
pub const SIZE_BUCKETS: [f64; 10] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
    1000000000.0,
];

/// The label names, in exposition order.
pub const LABELS: [&str; 13] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_service",
    "destination_principal",
    "destination_revision",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "connection_security_policy",
];

/// Who reports: the caller's side or the callee's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    /// The client side of a hop.
    Source,
    /// The server side of a hop.
    Destination,
}

/// One label's value: most are fixed words or names the hop already holds, so building a
/// request's labels allocates only what the request itself brings.
pub type LabelValue = Cow<'static, str>;

/// The labels of one request. Unknown values are `unknown`, as Istio writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLabels {
    /// Which side reports.
    pub reporter: Reporter,
    /// Calling workload (e.g. `activator`).
    pub source_workload: LabelValue,
    /// Its namespace.
    pub source_workload_namespace: LabelValue,
    /// Its SPIFFE ID (`spiffe://…`), `unknown` for plaintext.
    pub source_principal: LabelValue,
    /// Called workload (the revision's deployment name).
    pub destination_workload: LabelValue,
    /// Its namespace.
    pub destination_workload_namespace: LabelValue,
    /// Host called (`iris.default.svc.cluster.local`).
    pub destination_service: LabelValue,
    /// The callee's SPIFFE ID.
    pub destination_principal: LabelValue,
    /// The revision (`iris-00001`).
    pub destination_revision: LabelValue,
    /// `http` or `grpc`.
    pub request_protocol: LabelValue,
    /// HTTP status.
    pub response_code: u16,
    /// gRPC status for gRPC requests; `None` otherwise (exposed as empty, like Istio).
    pub grpc_response_status: Option<u32>,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: LabelValue,
}

impl RequestLabels {
    /// Labels with every value `unknown`, code 0, protocol `http`, security `unknown`.
    pub fn unknown(reporter: Reporter) -> Self {
        let u = || Cow::Borrowed("unknown");
        Self {
            reporter,
            source_workload: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            destination_workload: u(),
            destination_workload_namespace: u(),
            destination_service: u(),
            destination_principal: u(),
            destination_revision: u(),
            request_protocol: Cow::Borrowed("http"),
            response_code: 0,
            grpc_response_status: None,
            connection_security_policy: u(),
        }
    }

    /// The values in [`LABELS`]' order; the two numbers are written into `code` and `grpc`.
    fn values<'a>(&'a self, code: &'a mut String, grpc: &'a mut String) -> [&'a str; 13] {
        use std::fmt::Write as _;
        let _ = write!(code, "{}", self.response_code);
        if let Some(status) = self.grpc_response_status {
            let _ = write!(grpc, "{status}");
        }
        [
            match self.reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            },
            &self.source_workload,
            &self.source_workload_namespace,
            &self.source_principal,
            &self.destination_workload,
            &self.destination_workload_namespace,
            &self.destination_service,
            &self.destination_principal,
            &self.destination_revision,
            &self.request_protocol,
            code,
            grpc,
            &self.connection_security_policy,
        ]
    }
}

/// The four Istio request metric families.
#[derive(Clone, Debug)]
pub struct IstioMetrics {
    requests: Family<Counter>,
    duration: Family<Histogram>,
    request_bytes: Family<Histogram>,
    response_bytes: Family<Histogram>,
}

impl IstioMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        Self {
            requests: registry.counter(
                "istio_requests_total",
                "Requests processed, by the proxy reporting them.",
                &LABELS,
            ),
            duration: registry.histogram(
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds.",
                &LABELS,
                &DURATION_BUCKETS_MS,
            ),
            request_bytes: registry.histogram(
                "istio_request_bytes",
                "Request body sizes in bytes.",
                &LABELS,
                &SIZE_BUCKETS,
            ),
            response_bytes: registry.histogram(
                "istio_response_bytes",
                "Response body sizes in bytes.",
                &LABELS,
                &SIZE_BUCKETS,
            ),
        }
    }

    /// Records one finished request.
    pub fn record(
        &self,
        labels: &RequestLabels,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let (mut code, mut grpc) = (String::new(), String::new());
        let values = labels.values(&mut code, &mut grpc);
        let hash = LabelHash::of(&values);
        if let Some(c) = self.requests.with_hashed(hash, &values) {
            c.inc();
        }
        if let Some(h) = self.duration.with_hashed(hash, &values) {
            h.observe(duration.as_secs_f64() * 1000.0);
        }
        if let Some(h) = self.request_bytes.with_hashed(hash, &values) {
            h.observe(request_bytes as f64);
        }
        if let Some(h) = self.response_bytes.with_hashed(hash, &values) {
            h.observe(response_bytes as f64);
        }
    }
}
