//! The activator's own telemetry without the mesh, over real sockets: a request held at zero
//! shows in `revision_queue_depth` until a replica is up, is then answered by the replica and
//! reported as the activator's hop (plaintext: `connection_security_policy="none"`); a
//! request the activator refuses itself (its buffer full) is reported with its 503 and
//! Envoy's `UO` flag in its access-log line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_activator::{Activator, ActivatorConfig};
use sluice_core::{Endpoint, NamespacedName, RevisionRoute, RoutingSnapshot, StatReport};
use sluice_mesh::telemetry::{AccessLog, HopTelemetry, Registry};
use sluice_proxy::{Forwarder, Outbound, full_body};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

const DEPTH: &str = "revision_queue_depth{namespace_name=\"default\",service_name=\"unknown\",\
    configuration_name=\"unknown\",revision_name=\"hello-00001\",pod_name=\"activator\",\
    container_name=\"activator\"}";

/// An HTTP/1.1 replica answering `hello`.
async fn replica() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(tcp),
                service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full_body("hello")))
                }),
            ));
        }
    });
    addr
}

fn snapshot(endpoints: &[SocketAddr]) -> Arc<RoutingSnapshot> {
    let key = NamespacedName::new("default", "hello-00001");
    let route = RevisionRoute {
        key: key.clone(),
        endpoints: endpoints
            .iter()
            .map(|addr| Endpoint { addr: *addr })
            .collect(),
        container_concurrency: 1,
        timeout: Duration::from_secs(30),
        activator_in_path: true,
        unavailable: None,
    };
    Arc::new(RoutingSnapshot {
        revisions: BTreeMap::from([(key, route)]),
        ..RoutingSnapshot::default()
    })
}

fn outbound() -> Outbound {
    let req = Request::get("/greet")
        .header("host", "hello.default.localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    Outbound::new(req, None).unwrap()
}

/// Log output captured from a `tracing` subscriber (the access-log lines).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The JSON access-log lines.
    fn access_lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains("sluice::access"))
            .map(|l| serde_json::from_str(&l[l.find('{').unwrap()..]).unwrap())
            .collect()
    }
}

fn value(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
}

#[tokio::test]
async fn a_request_held_at_zero_is_counted_in_the_queue_depth_then_reported_as_the_activators_hop()
{
    let logs = Captured::default();
    let writer = logs.clone();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let replica = replica().await;
    let (publish, routes) = watch::channel(snapshot(&[]));
    let (stats_tx, mut stats) = mpsc::channel::<StatReport>(16);
    let registry = Registry::new();
    let activator = Arc::new(
        Activator::new(
            ActivatorConfig {
                max_queued_per_revision: 1,
                ..ActivatorConfig::default()
            },
            routes,
            stats_tx,
            Forwarder::new(),
        )
        .with_telemetry(HopTelemetry::new(
            registry.clone(),
            "activator",
            AccessLog::Tracing,
        )),
    );
    let key = NamespacedName::new("default", "hello-00001");

    // At zero: the request waits in the activator, which pokes the autoscaler.
    let held = tokio::spawn({
        let (activator, key) = (activator.clone(), key.clone());
        async move { activator.handle(&key, outbound(), Instant::now()).await }
    });
    let poke = stats.recv().await.unwrap();
    assert_eq!(poke.revision, key);
    let text = registry.encode();
    assert_eq!(value(&text, DEPTH).as_deref(), Some("1"), "{text}");

    // The buffer (one request) is full: the next is refused by the activator itself.
    let refused = activator.handle(&key, outbound(), Instant::now()).await;
    assert_eq!(refused.status(), 503);
    drop(refused);

    // A replica is up: the held request is answered by it.
    publish.send_replace(snapshot(&[replica]));
    let resp = held.await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");

    let text = registry.encode();
    assert_eq!(value(&text, DEPTH).as_deref(), Some("0"), "{text}");
    let labels = |code: u16| {
        format!(
            "{{reporter=\"source\",source_workload=\"unknown\",source_workload_namespace=\"unknown\",\
             source_principal=\"unknown\",destination_workload=\"hello-00001\",\
             destination_workload_namespace=\"default\",destination_service=\"hello.default.localhost\",\
             destination_principal=\"unknown\",destination_revision=\"hello-00001\",\
             request_protocol=\"http\",response_code=\"{code}\",grpc_response_status=\"\",\
             connection_security_policy=\"none\"}}"
        )
    };
    for code in [200, 503] {
        let series = format!("istio_requests_total{}", labels(code));
        assert_eq!(value(&text, &series).as_deref(), Some("1"), "{text}");
    }
    let sent = format!("istio_response_bytes_sum{}", labels(200));
    assert_eq!(value(&text, &sent).as_deref(), Some("5"), "{text}");

    // One access-log line each: the refusal says why (upstream overflow), the answered one
    // names the replica it went to.
    let lines = logs.access_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (refused, answered) = (&lines[0], &lines[1]);
    assert_eq!(refused["reporter"], "activator");
    assert_eq!(refused["response_code"], 503);
    assert_eq!(refused["response_flags"], "UO");
    assert_eq!(refused["upstream_host"], "");
    assert_eq!(answered["response_code"], 200);
    assert_eq!(answered["response_flags"], "");
    assert_eq!(answered["upstream_host"], replica.to_string());
    assert_eq!(answered["revision"], "hello-00001");
    assert_eq!(answered["connection_security_policy"], "none");
    assert_eq!(answered["bytes_sent"], 5);
}

/// Every cold spell pokes the autoscaler at once, not only the first: a revision whose one
/// request per spell is always held (never given a replica at once) used to wait for the
/// autoscaler's tick from its second cold start on.
#[tokio::test]
async fn each_cold_spell_pokes_the_autoscaler() {
    let replica = replica().await;
    let (publish, routes) = watch::channel(snapshot(&[]));
    let (stats_tx, mut stats) = mpsc::channel::<StatReport>(16);
    let activator = Arc::new(Activator::new(
        ActivatorConfig::default(),
        routes,
        stats_tx,
        Forwarder::new(),
    ));
    let key = NamespacedName::new("default", "hello-00001");
    for spell in 1..=2 {
        let held = tokio::spawn({
            let (activator, key) = (activator.clone(), key.clone());
            async move { activator.handle(&key, outbound(), Instant::now()).await }
        });
        let poke = tokio::time::timeout(Duration::from_secs(5), stats.recv())
            .await
            .unwrap_or_else(|_| panic!("no poke in cold spell {spell}"))
            .unwrap();
        assert_eq!(poke.revision, key);
        assert_eq!(poke.own_concurrency(), 1.0, "cold spell {spell}: {poke:?}");
        publish.send_replace(snapshot(&[replica]));
        assert_eq!(held.await.unwrap().status(), 200);
        // Back to zero.
        publish.send_replace(snapshot(&[]));
    }
}
