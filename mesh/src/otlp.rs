//! Span export over OTLP/HTTP (JSON encoding, `POST <endpoint>/v1/traces`) when a collector
//! endpoint is configured.
//!
//! Recording never waits on the network: spans go into a bounded queue (a lock held for one
//! push), and when it is full they are dropped and counted. A background task, woken only
//! when a batch is full, on a flush or every flush interval, sends batches; a batch the
//! collector refuses or that times out is dropped, counted, and logged. The encoding is
//! serialized straight from the spans (no intermediate JSON tree).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
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

/// The spans waiting for export, shared by the recorders and the export task. Recording
/// takes a lock for a push and wakes the task only when a batch is full, so a request pays
/// no cross-thread wake-up per span.
#[derive(Debug)]
struct Pending {
    queue: std::sync::Mutex<VecDeque<SpanRecord>>,
    capacity: usize,
    batch_size: usize,
    full_batch: Notify,
}

/// Handle to record spans; cheap to clone. The export task ends (after a last send) when
/// every handle is gone.
#[derive(Clone, Debug)]
pub struct SpanExporter {
    pending: Arc<Pending>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    stats: Arc<ExportStats>,
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
        let pending = Arc::new(Pending {
            queue: std::sync::Mutex::new(VecDeque::new()),
            capacity: config.queue_capacity,
            batch_size: config.batch_size,
            full_batch: Notify::new(),
        });
        let (flush, flushes) = mpsc::channel(16);
        let stats = Arc::new(ExportStats::default());
        let task = tokio::spawn(export_loop(
            config,
            target,
            pending.clone(),
            flushes,
            stats.clone(),
        ));
        Ok((
            Self {
                pending,
                flush,
                stats,
            },
            task,
        ))
    }

    /// Queues a finished span; drops (and counts) it when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        let p = &self.pending;
        let mut queue = p.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= p.capacity {
            drop(queue);
            self.stats.count(DROPPED, 1);
            return;
        }
        queue.push_back(span);
        let full = queue.len() == p.batch_size;
        drop(queue);
        if full {
            p.full_batch.notify_one();
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
        if self.flush.send(done).await.is_ok() {
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
    pending: Arc<Pending>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    stats: Arc<ExportStats>,
) {
    let mut tick = tokio::time::interval(config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate; the first flush is one interval from now.
    tick.tick().await;
    loop {
        let (everything, done, last) = tokio::select! {
            biased;
            flush = flushes.recv() => match flush {
                Some(done) => (true, Some(done), false),
                // Every handle is gone: send what is left and stop.
                None => (true, None, true),
            },
            () = pending.full_batch.notified() => (false, None, false),
            _ = tick.tick() => (true, None, false),
        };
        // Full batches, then (on a flush, a tick or the end) the rest.
        loop {
            let mut batch: Vec<SpanRecord> = {
                let mut queue = pending.queue.lock().unwrap_or_else(|e| e.into_inner());
                if queue.is_empty() || (!everything && queue.len() < config.batch_size) {
                    break;
                }
                let n = queue.len().min(config.batch_size);
                queue.drain(..n).collect()
            };
            send(&config, &target, &mut batch, &stats).await;
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        if last {
            return;
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
    let body = encode_bytes(&config.service_name, batch);
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

async fn post(target: &Target, body: &[u8]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(&target.authority).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
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

/// OTLP/JSON's `AnyValue`, as far as Sluice uses it.
#[derive(Serialize)]
enum AnyValue<'a> {
    #[serde(rename = "stringValue")]
    String(&'a str),
    /// int64 is a decimal string in OTLP/JSON.
    #[serde(rename = "intValue")]
    Int(String),
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

#[derive(Serialize)]
struct Status {
    code: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpan<'a> {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    name: &'a str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue<'a>>,
    status: Status,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<JsonSpan<'a>>,
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: [KeyValue<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

fn request<'a>(service_name: &'a str, spans: &'a [SpanRecord]) -> ExportRequest<'a> {
    let spans = spans
        .iter()
        .map(|s| {
            let mut attributes: Vec<KeyValue<'_>> = s
                .attributes
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k,
                    value: AnyValue::String(v),
                })
                .collect();
            if let Some(code) = s.status_code {
                attributes.push(KeyValue {
                    key: "http.response.status_code",
                    value: AnyValue::Int(code.to_string()),
                });
            }
            JsonSpan {
                trace_id: format!("{:032x}", s.trace_id),
                span_id: format!("{:016x}", s.span_id),
                parent_span_id: s.parent_span_id.map(|p| format!("{p:016x}")),
                name: &s.name,
                kind: s.kind.code(),
                start_time_unix_nano: nanos(s.start),
                end_time_unix_nano: nanos(s.end),
                attributes,
                // 2 = error for 5xx, as OTel's HTTP conventions say for servers; else unset.
                status: Status {
                    code: if s.status_code.is_some_and(|c| c >= 500) {
                        2
                    } else {
                        0
                    },
                },
            }
        })
        .collect();
    ExportRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: [KeyValue {
                    key: "service.name",
                    value: AnyValue::String(service_name),
                }],
            },
            scope_spans: [ScopeSpans {
                scope: Scope { name: "sluice" },
                spans,
            }],
        }],
    }
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans`, as sent.
pub fn encode_bytes(service_name: &str, spans: &[SpanRecord]) -> Vec<u8> {
    serde_json::to_vec(&request(service_name, spans)).unwrap_or_default()
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans`.
pub fn encode(service_name: &str, spans: &[SpanRecord]) -> Value {
    serde_json::to_value(request(service_name, spans)).unwrap_or(Value::Null)
}
