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
use crate::identity::SpiffeId;
use crate::otlp::{SpanExporter, SpanKind, SpanRecord};
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

/// A hop's metrics and log settings; cheap to clone (one shared allocation: every request
/// holds a clone while it is recorded).
#[derive(Clone, Debug)]
pub struct HopTelemetry {
    inner: Arc<HopInner>,
}

#[derive(Clone, Debug)]
struct HopInner {
    registry: Registry,
    istio: IstioMetrics,
    revision: Option<(RevisionMetrics, Arc<RevisionLabels>)>,
    reporter: &'static str,
    log: AccessLog,
    spans: Option<SpanExporter>,
}

impl HopTelemetry {
    /// Registers Istio's families in `registry` for the hop named `reporter` (`router`,
    /// `activator`, `queue`, `model-server`).
    pub fn new(registry: Registry, reporter: &'static str, log: AccessLog) -> Self {
        Self {
            inner: Arc::new(HopInner {
                istio: IstioMetrics::register(&registry),
                registry,
                revision: None,
                reporter,
                log,
                spans: None,
            }),
        }
    }

    /// Also exports one span per request (the hop's own, see [`Exchange::set_span`]) to
    /// `exporter`.
    pub fn with_spans(mut self, exporter: SpanExporter) -> Self {
        Arc::make_mut(&mut self.inner).spans = Some(exporter);
        self
    }

    /// The span exporter, when spans are exported.
    pub fn spans(&self) -> Option<&SpanExporter> {
        self.inner.spans.as_ref()
    }

    /// Also records Knative's revision metrics for `labels` (a replica's queue layer).
    pub fn with_revision(mut self, labels: RevisionLabels) -> Self {
        let metrics = RevisionMetrics::register(&self.inner.registry);
        Arc::make_mut(&mut self.inner).revision = Some((metrics, Arc::new(labels)));
        self
    }

    /// The registry (for `/metrics`).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Sets Knative's `revision_queue_depth`.
    pub fn set_queue_depth(&self, depth: usize) {
        if let Some((metrics, labels)) = &self.inner.revision {
            metrics.set_queue_depth(labels, depth);
        }
    }

    /// Starts recording one request. Call it before propagating the trace headers and give
    /// the exchange its own span with [`Exchange::set_span`] after, so the exported span
    /// names the caller's span as its parent.
    pub fn start<B>(&self, req: &http::Request<B>) -> Exchange {
        self.start_parts_of(req.method(), req.uri(), req.version(), req.headers())
    }

    /// [`HopTelemetry::start`] for a request taken apart.
    pub fn start_parts(&self, parts: &http::request::Parts) -> Exchange {
        self.start_parts_of(&parts.method, &parts.uri, parts.version, &parts.headers)
    }

    fn start_parts_of(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        version: http::Version,
        headers: &http::HeaderMap,
    ) -> Exchange {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        self.start_head(
            method,
            uri.authority().map(|a| a.as_str()),
            path,
            version,
            headers,
        )
    }

    /// [`HopTelemetry::start`] from a request's head: its method, the authority in its
    /// URI (else the `Host` header counts), its path and query, protocol version and headers.
    pub fn start_head(
        &self,
        method: &http::Method,
        authority: Option<&str>,
        path: &str,
        version: http::Version,
        headers: &http::HeaderMap,
    ) -> Exchange {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let authority = authority.unwrap_or_else(|| header("host")).to_owned();
        let grpc = header("content-type").starts_with("application/grpc");
        let mut entry = AccessLogEntry {
            authority,
            bytes_received: header("content-length").parse().unwrap_or(0),
            ..AccessLogEntry::default()
        };
        // What only the log line and the span show is copied for them alone.
        if self.inner.log != AccessLog::Off || self.inner.spans.is_some() {
            entry.reporter = self.inner.reporter.to_owned();
            entry.request_id = header(REQUEST_ID).to_owned();
            entry.method = method.as_str().to_owned();
            entry.path = path.to_owned();
            entry.protocol = protocol_name(version).to_owned();
        }
        Exchange {
            incoming: TraceParent::parse(header(TRACEPARENT)),
            own: None,
            telemetry: self.clone(),
            wall: SystemTime::now(),
            start: Instant::now(),
            entry,
            labels: RequestLabels {
                request_protocol: if grpc { "grpc" } else { "http" }.into(),
                ..RequestLabels::unknown(Reporter::Destination)
            },
        }
    }
}

/// The protocol as the access log names it.
fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// One request being recorded; [`Exchange::finish`] (or [`Exchange::wrap`]) records it.
#[derive(Debug)]
pub struct Exchange {
    incoming: Option<TraceParent>,
    own: Option<TraceParent>,
    telemetry: HopTelemetry,
    wall: SystemTime,
    start: Instant,
    /// The access-log line being built (fill in principals, revision, flags…).
    pub entry: AccessLogEntry,
    /// The metric labels being built.
    pub labels: RequestLabels,
}

impl Exchange {
    /// Labels this exchange as the source side of a hop (a proxy calling a replica): the
    /// source is `caller` when its identity is known (the mTLS peer, or the original caller
    /// a previous hop attested), the destination service the request's host without a port.
    pub fn set_source_side(&mut self, caller: Option<&SpiffeId>) {
        self.labels.reporter = Reporter::Source;
        if let Some(id) = caller {
            self.labels.source_principal = id.to_string().into();
            self.labels.source_workload = id.service_account().to_owned().into();
            self.labels.source_workload_namespace = id.namespace().to_owned().into();
            self.entry.source_principal = id.to_string();
        }
        let host = self.entry.authority.split(':').next().unwrap_or("");
        if !host.is_empty() {
            self.labels.destination_service = host.to_owned().into();
        }
    }

    /// Sets this hop's own span: the trace context it forwards (as
    /// [`crate::trace::propagate`] returned it). The access-log line then carries this
    /// span's id (else the caller's), and the exported span (if any) is this one, child of
    /// the caller's.
    pub fn set_span(&mut self, own: TraceParent) {
        self.own = Some(own);
    }

    fn span(&self, status: u16, end: SystemTime) -> Option<SpanRecord> {
        let own = self.own?;
        let e = &self.entry;
        let mut attributes = vec![
            ("sluice.reporter".to_owned(), e.reporter.clone()),
            ("http.request.method".to_owned(), e.method.clone()),
            ("url.path".to_owned(), e.path.clone()),
            ("server.address".to_owned(), e.authority.clone()),
            (
                "network.protocol.name".to_owned(),
                self.labels.request_protocol.to_string(),
            ),
            (
                "sluice.connection_security_policy".to_owned(),
                self.labels.connection_security_policy.to_string(),
            ),
        ];
        for (key, value) in [
            ("sluice.request_id", &e.request_id),
            ("sluice.revision", &e.revision),
            ("sluice.source_principal", &e.source_principal),
            ("sluice.destination_principal", &e.destination_principal),
            ("sluice.response_flags", &e.response_flags),
        ] {
            if !value.is_empty() {
                attributes.push((key.to_owned(), value.clone()));
            }
        }
        Some(SpanRecord {
            trace_id: own.trace_id,
            span_id: own.parent_id,
            parent_span_id: self
                .incoming
                .filter(|i| i.trace_id == own.trace_id)
                .map(|i| i.parent_id),
            name: format!("{} {}", e.reporter, e.method),
            kind: SpanKind::Server,
            start: self.wall,
            end,
            attributes,
            status_code: Some(status),
        })
    }

    /// Records the request now, with `status` and `response_bytes`.
    pub fn finish(mut self, status: u16, response_bytes: u64) {
        let took = self.start.elapsed();
        self.labels.response_code = status;
        self.entry.response_code = status;
        self.entry.bytes_sent = response_bytes;
        self.entry.duration_ms = took.as_millis() as u64;
        let t = &self.telemetry;
        t.inner.istio.record(
            &self.labels,
            took,
            self.entry.bytes_received,
            response_bytes,
        );
        if let Some((metrics, labels)) = &t.inner.revision {
            metrics.record(labels, status, took);
        }
        if let Some(exporter) = &t.inner.spans
            && let Some(span) = self.span(status, self.wall + took)
        {
            exporter.record(span);
        }
        // What only the log line shows is written out for it alone.
        if t.inner.log != AccessLog::Off {
            self.entry.start_time = AccessLogEntry::format_time(self.wall);
            if let Some(trace) = self.own.or(self.incoming) {
                self.entry.trace_id = format!("{:032x}", trace.trace_id);
                self.entry.span_id = format!("{:016x}", trace.parent_id);
            }
        }
        match t.inner.log {
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
    /// A gRPC status in the response's headers (a trailers-only answer) or its trailers is
    /// recorded as `grpc_response_status`.
    pub fn wrap<B>(mut self, response: http::Response<B>) -> http::Response<Recorded<B>> {
        let status = response.status().as_u16();
        if self.labels.request_protocol == "grpc"
            && let Some(grpc) = grpc_status(response.headers())
        {
            self.labels.grpc_response_status = Some(grpc);
        }
        response.map(|inner| Recorded {
            inner,
            bytes: 0,
            pending: Some((self, status)),
        })
    }
}

/// The `grpc-status` header's value, if there is a valid one.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
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
                if let Some(grpc) = frame.trailers_ref().and_then(grpc_status)
                    && let Some((exchange, _)) = self.pending.as_mut()
                {
                    exchange.labels.grpc_response_status = Some(grpc);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http_body_util::{BodyExt as _, Full};

    use super::*;

    #[tokio::test]
    async fn grpc_status_is_recorded_from_trailers_and_trailers_only_answers() {
        let registry = Registry::new();
        let hop = HopTelemetry::new(registry.clone(), "router", AccessLog::Off);
        let req = http::Request::post("/inference.GRPCInferenceService/ModelInfer")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        // Trailers after the data.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "13".parse().unwrap());
        let body = Full::new(bytes::Bytes::from_static(b"x"))
            .with_trailers(std::future::ready(Some(Ok(trailers))));
        let resp = hop.start(&req).wrap(http::Response::new(body));
        resp.into_body().collect().await.unwrap();
        // Trailers only: the status in the headers.
        let resp = http::Response::builder()
            .header("grpc-status", "5")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        hop.start(&req)
            .wrap(resp)
            .into_body()
            .collect()
            .await
            .unwrap();
        let text = registry.encode();
        for status in ["13", "5"] {
            assert!(
                text.lines().any(|l| l.starts_with("istio_requests_total{")
                    && l.contains("request_protocol=\"grpc\"")
                    && l.contains(&format!("grpc_response_status=\"{status}\""))),
                "{status}: {text}"
            );
        }
    }
}
