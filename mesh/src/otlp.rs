//! Span export over OTLP/HTTP (JSON encoding, `POST <endpoint>/v1/traces`) when a collector
//! endpoint is configured.
//!
//! Recording never blocks a request: spans go into a bounded queue, and when it is full they
//! are dropped and counted. A background task sends batches (by size or every flush interval);
//! a batch the collector refuses or that times out is dropped, counted, and logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::telemetry::Registry;
use crate::telemetry::registry::Counter;

/// OTLP span kinds Sluice records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// A hop receiving a request.
    Server,
    /// A hop sending a request on.
    Client,
    /// Work inside a process.
    Internal,
}

impl SpanKind {
    fn code(self) -> u8 {
        match self {
            Self::Internal => 1,
            Self::Server => 2,
            Self::Client => 3,
        }
    }
}

/// One finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// Trace id (from `traceparent`).
    pub trace_id: u128,
    /// This span's id.
    pub span_id: u64,
    /// The caller's span id, if any.
    pub parent_span_id: Option<u64>,
    /// Operation name (`router`, `activator`, `POST /v2/models/iris/infer`, …).
    pub name: String,
    /// Server, client or internal.
    pub kind: SpanKind,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// String attributes (`http.response.status_code` is added from `status_code`).
    pub attributes: Vec<(String, String)>,
    /// HTTP status, if the span is a request.
    pub status_code: Option<u16>,
}

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// Collector base URL, `http://host:port` (plain HTTP; a collector beside the process).
    pub endpoint: String,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Spans per request to the collector.
    pub batch_size: usize,
    /// Spans waiting at most; more are dropped.
    pub queue_capacity: usize,
    /// Longest a recorded span waits before being sent.
    pub flush_interval: Duration,
    /// Deadline of one export request.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// Defaults (batches of 512, queue 4096, flush every 5 s, 10 s timeout).
    pub fn new(endpoint: &str, service_name: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            service_name: service_name.to_owned(),
            batch_size: 512,
            queue_capacity: 4096,
            flush_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The standard OpenTelemetry variable naming the collector (`http://host:port`).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

impl OtlpConfig {
    /// The configuration the standard OpenTelemetry variables give, read through `lookup`:
    /// [`ENDPOINT_ENV`] (unset or empty: no export), `OTEL_BSP_SCHEDULE_DELAY` (flush
    /// interval, ms), `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (ms). A value that is not a number is an error naming
    /// the variable.
    pub fn from_lookup(
        service_name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtlpError> {
        let Some(endpoint) = lookup(ENDPOINT_ENV).filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        let mut config = Self::new(endpoint.trim(), service_name);
        parse_endpoint(&config.endpoint)?;
        let number = |name: &'static str| -> Result<Option<u64>, OtlpError> {
            match lookup(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| OtlpError::Variable { name, value: v }),
            }
        };
        if let Some(ms) = number("OTEL_BSP_SCHEDULE_DELAY")? {
            config.flush_interval = Duration::from_millis(ms.max(1));
        }
        if let Some(n) = number("OTEL_BSP_MAX_QUEUE_SIZE")? {
            config.queue_capacity = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            config.batch_size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(ms) = number("OTEL_EXPORTER_OTLP_TIMEOUT")? {
            config.timeout = Duration::from_millis(ms.max(1));
        }
        if config.batch_size == 0 {
            return Err(OtlpError::Size("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"));
        }
        if config.queue_capacity == 0 {
            return Err(OtlpError::Size("OTEL_BSP_MAX_QUEUE_SIZE"));
        }
        // Bounded either way: a huge queue size from the environment is capped.
        config.queue_capacity = config.queue_capacity.min(1 << 20);
        Ok(Some(config))
    }

    /// [`OtlpConfig::from_lookup`] over the process environment.
    pub fn from_env(service_name: &str) -> Result<Option<Self>, OtlpError> {
        Self::from_lookup(service_name, |k| std::env::var(k).ok())
    }
}

/// Checks that `endpoint` is one the exporter can send to (`http://host:port[/prefix]`).
pub fn validate_endpoint(endpoint: &str) -> Result<(), OtlpError> {
    parse_endpoint(endpoint).map(|_| ())
}

/// The endpoint is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    /// Not `http://host:port[/prefix]`.
    #[error("OTLP endpoint {0:?}: expected http://host:port")]
    Endpoint(String),
    /// Sizes must be at least one.
    #[error("OTLP config: {0} must be at least 1")]
    Size(&'static str),
    /// An environment variable is not a number.
    #[error("{name}={value:?}: expected a whole number")]
    Variable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
}

struct Target {
    authority: String,
    path: String,
}

fn parse_endpoint(endpoint: &str) -> Result<Target, OtlpError> {
    let bad = || OtlpError::Endpoint(endpoint.to_owned());
    let rest = endpoint.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let (_, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let prefix = prefix.trim_end_matches('/');
    Ok(Target {
        authority: authority.to_owned(),
        path: if prefix.is_empty() {
            "/v1/traces".to_owned()
        } else {
            format!("/{prefix}/v1/traces")
        },
    })
}

enum Msg {
    Span(Box<SpanRecord>),
    Flush(oneshot::Sender<()>),
}

/// Counters of what did not reach the collector.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans in batches the collector refused or that failed.
    pub failed: AtomicU64,
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// The same counts as `sluice_otlp_spans_total` series, once registered.
    series: std::sync::OnceLock<[Arc<Counter>; 3]>,
}

/// The metric family of [`SpanExporter::register_metrics`].
pub const SPANS_METRIC: &str = "sluice_otlp_spans_total";

impl ExportStats {
    fn count(&self, outcome: usize, n: u64) {
        let counter = match outcome {
            0 => &self.exported,
            1 => &self.dropped,
            _ => &self.failed,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        if let Some(series) = self.series.get() {
            series[outcome].add(n);
        }
    }
}

const EXPORTED: usize = 0;
const DROPPED: usize = 1;
const FAILED: usize = 2;

/// Handle to record spans; cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanExporter {
    tx: mpsc::Sender<Msg>,
    stats: Arc<ExportStats>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl SpanExporter {
    /// Starts the export task for `config`.
    pub fn spawn(config: OtlpConfig) -> Result<(Self, JoinHandle<()>), OtlpError> {
        let target = parse_endpoint(&config.endpoint)?;
        if config.batch_size == 0 {
            return Err(OtlpError::Size("batch_size"));
        }
        if config.queue_capacity == 0 {
            return Err(OtlpError::Size("queue_capacity"));
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let stats = Arc::new(ExportStats::default());
        let task = tokio::spawn(export_loop(config, target, rx, stats.clone()));
        Ok((Self { tx, stats }, task))
    }

    /// Queues a finished span; drops (and counts) it when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            self.stats.count(DROPPED, 1);
        }
    }

    /// Also counts spans in `registry` as `sluice_otlp_spans_total{outcome, pod}`
    /// (`exported`, `dropped`: the queue was full, `failed`: the collector refused or did
    /// not answer), `pod` naming this process. Counts before the call are included; a second
    /// call changes nothing.
    pub fn register_metrics(&self, registry: &Registry, pod: &str) {
        let family = registry.counter(
            SPANS_METRIC,
            "Spans handed to the OTLP exporter, by what became of them.",
            &["outcome", "pod"],
        );
        let series = [
            ("exported", &self.stats.exported),
            ("dropped", &self.stats.dropped),
            ("failed", &self.stats.failed),
        ]
        .map(|(outcome, so_far)| {
            let c = family
                .with(&[outcome, pod])
                .unwrap_or_else(|| Arc::new(Counter::default()));
            c.add(so_far.load(Ordering::Relaxed));
            c
        });
        let _ = self.stats.series.set(series);
    }

    /// Sends everything queued so far and waits until that attempt finished.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// What was dropped, failed and exported.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }
}

async fn export_loop(
    config: OtlpConfig,
    target: Target,
    mut rx: mpsc::Receiver<Msg>,
    stats: Arc<ExportStats>,
) {
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(config.batch_size);
    let mut tick = tokio::time::interval(config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate; the first flush is one interval from now.
    tick.tick().await;
    loop {
        let mut flushed = None;
        let mut ticked = false;
        tokio::select! {
            biased;
            msg = rx.recv() => match msg {
                Some(Msg::Span(span)) => batch.push(*span),
                Some(Msg::Flush(done)) => flushed = Some(done),
                None => {
                    send(&config, &target, &mut batch, &stats).await;
                    return;
                }
            },
            _ = tick.tick() => ticked = true,
        }
        if batch.len() >= config.batch_size || flushed.is_some() || ticked {
            send(&config, &target, &mut batch, &stats).await;
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

async fn send(
    config: &OtlpConfig,
    target: &Target,
    batch: &mut Vec<SpanRecord>,
    stats: &ExportStats,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let body = encode(&config.service_name, batch).to_string();
    batch.clear();
    match tokio::time::timeout(config.timeout, post(target, &body)).await {
        Ok(Ok(())) => {
            stats.count(EXPORTED, n);
        }
        Ok(Err(error)) => {
            stats.count(FAILED, n);
            tracing::warn!(endpoint = %config.endpoint, %error, spans = n, "OTLP export failed");
        }
        Err(_) => {
            stats.count(FAILED, n);
            tracing::warn!(endpoint = %config.endpoint, spans = n, "OTLP export timed out");
        }
    }
}

async fn post(target: &Target, body: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(&target.authority).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    // Only the status line matters; read a bounded amount.
    let mut buf = vec![0u8; 1024];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut buf[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let status = std::str::from_utf8(&buf[..read])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(std::io::Error::other(format!("collector answered {code}"))),
        None => Err(std::io::Error::other("collector sent no HTTP status")),
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans`.
pub fn encode(service_name: &str, spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut attributes: Vec<Value> = s
                .attributes
                .iter()
                .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
                .collect();
            if let Some(code) = s.status_code {
                attributes.push(json!({
                    "key": "http.response.status_code",
                    "value": {"intValue": code.to_string()}
                }));
            }
            let mut span = json!({
                "traceId": format!("{:032x}", s.trace_id),
                "spanId": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": s.kind.code(),
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                // 2 = error for 5xx, as OTel's HTTP conventions say for servers; else unset.
                "status": {"code": if s.status_code.is_some_and(|c| c >= 500) { 2 } else { 0 }},
            });
            if let (Some(parent), Some(obj)) = (s.parent_span_id, span.as_object_mut()) {
                obj.insert("parentSpanId".into(), json!(format!("{parent:016x}")));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service_name}}
            ]},
            "scopeSpans": [{"scope": {"name": "sluice"}, "spans": spans}]
        }]
    })
}
