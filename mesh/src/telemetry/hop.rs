//! One hop's request telemetry: Istio's request metrics, Knative's revision metrics (at a
//! replica) and one JSON access-log line per request, recorded when the response body ends
//! (or is dropped), so durations and sizes cover the whole exchange.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::access_log::AccessLogEntry;
use super::istio::{IstioMetrics, Reporter, RequestLabels};
use super::knative::{RevisionLabels, RevisionMetrics};
use super::registry::Registry;
use crate::trace::{REQUEST_ID, TRACEPARENT, TraceParent};

/// Where access-log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// Not written.
    Off,
    /// One line per request on stderr (a replica's stderr is read by `sluice up`).
    Stderr,
    /// As a `tracing` event (target `sluice::access`) of the process's subscriber.
    Tracing,
}

/// A hop's metrics and log settings; cheap to clone.
#[derive(Clone, Debug)]
pub struct HopTelemetry {
    registry: Registry,
    istio: IstioMetrics,
    revision: Option<(RevisionMetrics, Arc<RevisionLabels>)>,
    reporter: &'static str,
    log: AccessLog,
}

impl HopTelemetry {
    /// Registers Istio's families in `registry` for the hop named `reporter` (`router`,
    /// `activator`, `queue`, `model-server`).
    pub fn new(registry: Registry, reporter: &'static str, log: AccessLog) -> Self {
        Self {
            istio: IstioMetrics::register(&registry),
            registry,
            revision: None,
            reporter,
            log,
        }
    }

    /// Also records Knative's revision metrics for `labels` (a replica's queue layer).
    pub fn with_revision(mut self, labels: RevisionLabels) -> Self {
        self.revision = Some((RevisionMetrics::register(&self.registry), Arc::new(labels)));
        self
    }

    /// The registry (for `/metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets Knative's `revision_queue_depth`.
    pub fn set_queue_depth(&self, depth: usize) {
        if let Some((metrics, labels)) = &self.revision {
            metrics.set_queue_depth(labels, depth);
        }
    }

    /// Starts recording one request (call after trace headers were propagated).
    pub fn start<B>(&self, req: &http::Request<B>) -> Exchange {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let trace = TraceParent::parse(&header(TRACEPARENT));
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| header("host"));
        let grpc = header("content-type").starts_with("application/grpc");
        Exchange {
            telemetry: self.clone(),
            wall: SystemTime::now(),
            start: Instant::now(),
            entry: AccessLogEntry {
                reporter: self.reporter.to_owned(),
                trace_id: trace
                    .map(|t| format!("{:032x}", t.trace_id))
                    .unwrap_or_default(),
                span_id: trace
                    .map(|t| format!("{:016x}", t.parent_id))
                    .unwrap_or_default(),
                request_id: header(REQUEST_ID),
                method: req.method().to_string(),
                authority,
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.to_string()),
                protocol: format!("{:?}", req.version()),
                bytes_received: header("content-length").parse().unwrap_or(0),
                ..AccessLogEntry::default()
            },
            labels: RequestLabels {
                request_protocol: if grpc { "grpc" } else { "http" }.to_owned(),
                ..RequestLabels::unknown(Reporter::Destination)
            },
        }
    }
}

/// One request being recorded; [`Exchange::finish`] (or [`Exchange::wrap`]) records it.
#[derive(Debug)]
pub struct Exchange {
    telemetry: HopTelemetry,
    wall: SystemTime,
    start: Instant,
    /// The access-log line being built (fill in principals, revision, flags…).
    pub entry: AccessLogEntry,
    /// The metric labels being built.
    pub labels: RequestLabels,
}

impl Exchange {
    /// Records the request now, with `status` and `response_bytes`.
    pub fn finish(mut self, status: u16, response_bytes: u64) {
        let took = self.start.elapsed();
        self.labels.response_code = status;
        self.entry.response_code = status;
        self.entry.bytes_sent = response_bytes;
        self.entry.duration_ms = took.as_millis() as u64;
        self.entry.start_time = AccessLogEntry::format_time(self.wall);
        let t = &self.telemetry;
        t.istio.record(
            &self.labels,
            took,
            self.entry.bytes_received,
            response_bytes,
        );
        if let Some((metrics, labels)) = &t.revision {
            metrics.record(labels, status, took);
        }
        match t.log {
            AccessLog::Off => {}
            AccessLog::Stderr => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{}", self.entry.to_json_line());
            }
            AccessLog::Tracing => {
                tracing::info!(target: "sluice::access", "{}", self.entry.to_json_line());
            }
        }
    }

    /// Records the request when `response`'s body ends or is dropped.
    pub fn wrap<B>(self, response: http::Response<B>) -> http::Response<Recorded<B>> {
        let status = response.status().as_u16();
        response.map(|inner| Recorded {
            inner,
            bytes: 0,
            pending: Some((self, status)),
        })
    }
}

/// A response body that records its exchange when it ends.
#[derive(Debug)]
pub struct Recorded<B> {
    inner: B,
    bytes: u64,
    pending: Option<(Exchange, u16)>,
}

impl<B> Recorded<B> {
    fn record(&mut self) {
        if let Some((exchange, status)) = self.pending.take() {
            exchange.finish(status, self.bytes);
        }
    }
}

impl<B> Drop for Recorded<B> {
    fn drop(&mut self) {
        self.record();
    }
}

impl<B: Body + Unpin> Body for Recorded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.remaining() as u64;
                }
                if self.inner.is_end_stream() {
                    self.record();
                }
            }
            Poll::Ready(_) => self.record(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
