//! OTLP/HTTP span export to a collector on loopback: the JSON it receives, batching by size,
//! and a refusing collector counted as failed without stopping the exporter.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use sluice_mesh::otlp::{OtlpConfig, SpanExporter, SpanKind, SpanRecord};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A collector answering each POST with `status`; sends (path, body) of each on the channel.
async fn collector(status: u16) -> (String, mpsc::Receiver<(String, serde_json::Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(tcp);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).await.unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).await.unwrap();
            let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            reader.get_mut().write_all(reply.as_bytes()).await.unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap().to_owned();
            tx.send((path, serde_json::from_slice(&body).unwrap()))
                .await
                .unwrap();
        }
    });
    (endpoint, rx)
}

fn span(i: u64, status: u16) -> SpanRecord {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    SpanRecord {
        trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
        span_id: 0x100 + i,
        parent_span_id: Some(0x00f067aa0ba902b7),
        name: "activator".into(),
        kind: SpanKind::Server,
        start,
        end: start + Duration::from_micros(1500),
        attributes: vec![("sluice.revision".into(), "iris-00001".into())],
        status_code: Some(status),
    }
}

#[tokio::test]
async fn exports_otlp_json_in_batches() {
    let (endpoint, mut received) = collector(200).await;
    let mut config = OtlpConfig::new(&endpoint, "sluice-activator");
    config.batch_size = 2;
    let (exporter, _task) = SpanExporter::spawn(config).unwrap();
    exporter.record(span(1, 200));
    exporter.record(span(2, 503));
    // A full batch goes out by itself.
    let (path, body) = received.recv().await.unwrap();
    assert_eq!(path, "/v1/traces");
    let resource = &body["resourceSpans"][0];
    assert_eq!(resource["resource"]["attributes"][0]["key"], "service.name");
    assert_eq!(
        resource["resource"]["attributes"][0]["value"]["stringValue"],
        "sluice-activator"
    );
    let spans = resource["scopeSpans"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(spans[0]["spanId"], "0000000000000101");
    assert_eq!(spans[0]["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(spans[0]["kind"], 2);
    assert_eq!(spans[0]["startTimeUnixNano"], "1700000000000000000");
    assert_eq!(spans[0]["endTimeUnixNano"], "1700000000001500000");
    assert_eq!(spans[0]["status"]["code"], 0);
    assert_eq!(spans[1]["status"]["code"], 2, "5xx is an error");
    assert_eq!(
        spans[0]["attributes"][1]["key"],
        "http.response.status_code"
    );
    assert_eq!(spans[0]["attributes"][1]["value"]["intValue"], "200");

    // A partial batch goes out on flush.
    exporter.record(span(3, 200));
    exporter.flush().await;
    let (_, body) = received.recv().await.unwrap();
    assert_eq!(
        body["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_refusing_collector_is_counted_and_the_exporter_goes_on() {
    let (endpoint, mut received) = collector(503).await;
    let (exporter, _task) = SpanExporter::spawn(OtlpConfig::new(&endpoint, "s")).unwrap();
    exporter.record(span(1, 200));
    exporter.flush().await;
    received.recv().await.unwrap();
    assert_eq!(exporter.stats().failed.load(Ordering::Relaxed), 1);
    exporter.record(span(2, 200));
    exporter.flush().await;
    received.recv().await.unwrap();
    assert_eq!(exporter.stats().failed.load(Ordering::Relaxed), 2);
    assert_eq!(exporter.stats().exported.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn refuses_unusable_endpoints_and_sizes() {
    for bad in [
        "https://collector:4318",
        "collector:4318",
        "http://collector",
        "http://c:port",
    ] {
        assert!(
            SpanExporter::spawn(OtlpConfig::new(bad, "s")).is_err(),
            "{bad}"
        );
    }
    let mut zero = OtlpConfig::new("http://127.0.0.1:4318", "s");
    zero.batch_size = 0;
    assert!(SpanExporter::spawn(zero).is_err());
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let (endpoint, mut received) = collector(200).await;
    let mut config = OtlpConfig::new(&endpoint, "s");
    config.queue_capacity = 2;
    let (exporter, _task) = SpanExporter::spawn(config).unwrap();
    // The export task cannot run between these calls (single-threaded test runtime, no
    // await): two spans fit, eight are dropped.
    for i in 0..10 {
        exporter.record(span(i, 200));
    }
    assert_eq!(exporter.stats().dropped.load(Ordering::Relaxed), 8);
    // The counts reach a registry too, earlier ones included.
    let registry = sluice_mesh::telemetry::Registry::new();
    exporter.register_metrics(&registry, "p1");
    exporter.record(span(10, 200));
    let text = registry.encode();
    assert!(
        text.contains("sluice_otlp_spans_total{outcome=\"dropped\",pod=\"p1\"} 9"),
        "{text}"
    );
    exporter.flush().await;
    let (_, body) = received.recv().await.unwrap();
    assert_eq!(
        body["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        registry
            .encode()
            .contains("sluice_otlp_spans_total{outcome=\"exported\",pod=\"p1\"} 2")
    );
}

#[test]
fn config_from_the_standard_variables() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert!(OtlpConfig::from_lookup("s", env(&[])).unwrap().is_none());
    assert!(
        OtlpConfig::from_lookup("s", env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]))
            .unwrap()
            .is_none()
    );
    let c = OtlpConfig::from_lookup(
        "svc",
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.endpoint, "http://127.0.0.1:4318");
    assert_eq!(c.service_name, "svc");
    assert_eq!(c.flush_interval, Duration::from_millis(50));
    assert_eq!((c.queue_capacity, c.batch_size), (64, 8));
    assert_eq!(c.timeout, Duration::from_secs(2));
    let err = OtlpConfig::from_lookup(
        "s",
        env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("https://collector:4318"), "{err}");
    let err = OtlpConfig::from_lookup(
        "s",
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("OTEL_BSP_SCHEDULE_DELAY"), "{err}");
    let err = OtlpConfig::from_lookup(
        "s",
        env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{err}");
}

/// A hop's telemetry exports its own span, child of the caller's, in the caller's trace.
#[tokio::test]
async fn a_hop_exports_its_span_as_a_child_of_the_callers() {
    use sluice_mesh::telemetry::{AccessLog, HopTelemetry, Registry};
    let (endpoint, mut received) = collector(200).await;
    let (exporter, _task) = SpanExporter::spawn(OtlpConfig::new(&endpoint, "hop")).unwrap();
    let telemetry =
        HopTelemetry::new(Registry::new(), "queue", AccessLog::Off).with_spans(exporter.clone());
    let mut req = http::Request::get("http://hello.default/x")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "req-1")
        .body(())
        .unwrap();
    let mut exchange = telemetry.start(&req);
    let own = sluice_mesh::trace::propagate(req.headers_mut());
    exchange.set_span(own);
    exchange.finish(503, 10);
    exporter.flush().await;
    let (_, body) = received.recv().await.unwrap();
    let spans = &body["resourceSpans"][0]["scopeSpans"][0]["spans"];
    assert_eq!(spans.as_array().unwrap().len(), 1);
    let s = &spans[0];
    assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(s["spanId"], format!("{:016x}", own.parent_id));
    assert_eq!(s["name"], "queue GET");
    assert_eq!(s["kind"], 2);
    assert_eq!(s["status"]["code"], 2);
    let attr = |k: &str| {
        s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
    };
    assert_eq!(attr("sluice.request_id").unwrap()["stringValue"], "req-1");
    assert_eq!(attr("url.path").unwrap()["stringValue"], "/x");
    assert_eq!(
        attr("http.response.status_code").unwrap()["intValue"],
        "503"
    );
}
