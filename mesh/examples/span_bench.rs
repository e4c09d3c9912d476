//! What span export adds to a hop's per-request telemetry, in one process and one run:
//! `HopTelemetry` start → own span → finish (Istio metrics recorded, access log off) without
//! an exporter, then with spans exported over OTLP/HTTP to a loopback collector (answering
//! 200 to every batch), at a steady rate the queue keeps up with and in one unpaced burst
//! that overflows the bounded queue (drops counted, the request path never waits).
//!
//! `span_bench [requests]` prints one table row per configuration: wall time per request on
//! the recording thread, CPU time of the whole process per 10,000 requests (the export task
//! and the collector included), and the exporter's counts.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_mesh::otlp::{OtlpConfig, SpanExporter};
use sluice_mesh::telemetry::{AccessLog, HopTelemetry, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A collector that reads each request to its end and answers 200.
async fn collector() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                let mut want = None;
                loop {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if want.is_none()
                        && let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n")
                    {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        want = Some(end + 4 + len);
                    }
                    if want.is_some_and(|w| seen.len() >= w) {
                        break;
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    endpoint
}

fn request(i: usize) -> http::Request<()> {
    http::Request::get("http://hello.default.svc.cluster.local/v2/models/iris/infer")
        .header(
            "traceparent",
            format!(
                "00-{:032x}-00f067aa0ba902b7-01",
                0x4bf9_0000_0000_0000u128 + i as u128 + 1
            ),
        )
        .header("x-request-id", format!("req-{i}"))
        .body(())
        .unwrap()
}

struct Row {
    ns_per_request: f64,
    cpu_ms_per_10k: f64,
    exported: u64,
    dropped: u64,
}

/// Records `requests` exchanges, `per_tick` of them every millisecond (0: unpaced).
async fn run(telemetry: &HopTelemetry, requests: usize, per_tick: usize) -> Row {
    let cpu0 = cpu_seconds();
    let mut busy = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut i = 0;
    while i < requests {
        if per_tick > 0 {
            tick.tick().await;
        }
        let batch = if per_tick == 0 { requests } else { per_tick };
        let start = Instant::now();
        for _ in 0..batch.min(requests - i) {
            let mut req = request(i);
            let mut ex = telemetry.start(&req);
            ex.set_span(sluice_mesh::trace::propagate(req.headers_mut()));
            ex.finish(200, 42);
            i += 1;
        }
        busy += start.elapsed();
    }
    let (exported, dropped) = match telemetry.spans() {
        Some(spans) => {
            spans.flush().await;
            let s = spans.stats();
            (
                s.exported.load(Ordering::Relaxed),
                s.dropped.load(Ordering::Relaxed),
            )
        }
        None => (0, 0),
    };
    Row {
        ns_per_request: busy.as_nanos() as f64 / requests as f64,
        cpu_ms_per_10k: (cpu_seconds() - cpu0) * 1000.0 * 10_000.0 / requests as f64,
        exported,
        dropped,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let endpoint = collector().await;
    println!(
        "# span_bench: {requests} recorded requests per row, 2 runtime threads, OTLP/HTTP JSON to a loopback collector"
    );
    println!(
        "| telemetry | pacing | ns / request (recording thread) | CPU ms / 10k req (process) | exported | dropped |"
    );
    println!("|---|---|---|---|---|---|");
    let plain = HopTelemetry::new(Registry::new(), "queue", AccessLog::Off);
    let with_spans = |queue: usize, batch: usize| {
        let mut config = OtlpConfig::new(&endpoint, "bench");
        config.queue_capacity = queue;
        config.batch_size = batch;
        let (exporter, _task) = SpanExporter::spawn(config).unwrap();
        HopTelemetry::new(Registry::new(), "queue", AccessLog::Off).with_spans(exporter)
    };
    for (name, pacing, per_tick) in [
        ("metrics only", "20k/s", 20),
        ("metrics + spans (queue 4096, batch 512)", "20k/s", 20),
        ("metrics only", "unpaced", 0),
        ("metrics + spans (queue 4096, batch 512)", "unpaced", 0),
        ("metrics + spans (queue 64, batch 64)", "unpaced", 0),
    ] {
        let t = match name {
            "metrics only" => plain.clone(),
            n if n.contains("queue 64") => with_spans(64, 64),
            _ => with_spans(4096, 512),
        };
        let row = run(&t, requests, per_tick).await;
        println!(
            "| {name} | {pacing} | {:.0} | {:.0} | {} | {} |",
            row.ns_per_request, row.cpu_ms_per_10k, row.exported, row.dropped
        );
    }
}
