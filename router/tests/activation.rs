//! The router and activator over real sockets on port 0: host routing, scale from zero
//! through the activator, overload and timeouts.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_activator::{Activator, ActivatorConfig};
use sluice_core::{
    Endpoint, HostRoute, NamespacedName, RevisionRoute, RoutingSnapshot, StatReport, StatSource,
    WeightedTarget,
};
use sluice_proxy::Forwarder;
use sluice_router::{Router, ServeConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const HOST: &str = "hello.default.localhost";

/// An upstream replica that answers with the value of `k-proxy-request` it received.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(format!(
                        "upstream saw proxy={}",
                        header("k-proxy-request")
                    ))));
                    for name in ["traceparent", "x-request-id"] {
                        resp.headers_mut()
                            .insert(name, header(name).parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn snapshot(
    endpoints: Vec<SocketAddr>,
    activator_in_path: bool,
    timeout: Duration,
) -> RoutingSnapshot {
    let key = NamespacedName::new("default", "hello-00001");
    let mut hosts = BTreeMap::new();
    hosts.insert(
        HOST.to_owned(),
        HostRoute {
            service: NamespacedName::new("default", "hello"),
            targets: vec![WeightedTarget {
                revision: key.clone(),
                percent: 100,
            }],
        },
    );
    let mut revisions = BTreeMap::new();
    revisions.insert(
        key.clone(),
        RevisionRoute {
            key,
            endpoints: endpoints
                .into_iter()
                .map(|addr| Endpoint { addr })
                .collect(),
            container_concurrency: 0,
            timeout,
            activator_in_path,
            unavailable: None,
        },
    );
    RoutingSnapshot {
        hosts,
        revisions,
        ..RoutingSnapshot::default()
    }
}

struct Harness {
    addr: SocketAddr,
    publish: watch::Sender<Arc<RoutingSnapshot>>,
    stats: mpsc::Receiver<StatReport>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(initial: RoutingSnapshot, max_queued: usize) -> Harness {
    let (publish, snapshot) = watch::channel(Arc::new(initial));
    let (stats_tx, stats) = mpsc::channel(16);
    let activator = Arc::new(Activator::new(
        ActivatorConfig {
            max_queued_per_revision: max_queued,
            ..ActivatorConfig::default()
        },
        snapshot.clone(),
        stats_tx,
        Forwarder::new(),
    ));
    let router = Arc::new(Router::new(snapshot, activator, Forwarder::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, router, ServeConfig::default(), async {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        publish,
        stats,
        _stop: stop,
    }
}

async fn get(addr: SocketAddr, host: &str) -> (StatusCode, http::HeaderMap, String) {
    get_with(addr, host, &[]).await
}

async fn get_with(
    addr: SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::get(format!("http://{addr}/")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn unknown_host_is_404_naming_the_host() {
    let h = start(RoutingSnapshot::default(), 10).await;
    let (status, _, body) = get(h.addr, "nope.default.localhost:8080").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["error"],
        "no service for host \"nope.default.localhost:8080\""
    );
}

#[tokio::test]
async fn direct_path_skips_the_activator() {
    let up = upstream().await;
    let h = start(snapshot(vec![up], false, Duration::from_secs(5)), 10).await;
    let (status, _, body) = get(h.addr, HOST).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "upstream saw proxy=")
    );
}

#[tokio::test]
async fn trace_context_and_request_id_are_propagated() {
    let up = upstream().await;
    let h = start(snapshot(vec![up], false, Duration::from_secs(5)), 10).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, headers, _) = get_with(
        h.addr,
        HOST,
        &[("traceparent", parent), ("x-request-id", "req-1")],
    )
    .await;
    assert_eq!(headers["x-request-id"], "req-1");
    let seen = headers["traceparent"].to_str().unwrap();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert_ne!(seen, parent, "the router forwards as a span of its own");
    let (_, headers, _) = get(h.addr, HOST).await;
    assert_eq!(
        headers["x-request-id"].len(),
        36,
        "a missing request id is created"
    );
}

#[tokio::test]
async fn request_at_zero_is_held_until_a_replica_is_ready() {
    let up = upstream().await;
    let mut h = start(snapshot(vec![], true, Duration::from_secs(30)), 10).await;
    let addr = h.addr;
    let pending = tokio::spawn(async move { get(addr, HOST).await });
    // The activator pokes the autoscaler at once.
    let poke = h.stats.recv().await.unwrap();
    assert_eq!(poke.source, StatSource::Activator);
    assert_eq!(poke.revision, NamespacedName::new("default", "hello-00001"));
    // A replica becomes ready: the held request goes out through the activator.
    h.publish
        .send(Arc::new(snapshot(vec![up], true, Duration::from_secs(30))))
        .unwrap();
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "upstream saw proxy=activator")
    );
}

fn failing(mut snap: RoutingSnapshot) -> RoutingSnapshot {
    for route in snap.revisions.values_mut() {
        route.unavailable = Some("replica exited with exit status: 1: cannot load model".into());
    }
    snap
}

#[tokio::test]
async fn held_request_fails_fast_when_its_replica_fails() {
    let mut h = start(snapshot(vec![], true, Duration::from_secs(30)), 10).await;
    let addr = h.addr;
    let pending = tokio::spawn(async move { get(addr, HOST).await });
    h.stats.recv().await.unwrap();
    h.publish
        .send(Arc::new(failing(snapshot(
            vec![],
            true,
            Duration::from_secs(30),
        ))))
        .unwrap();
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("is unavailable: replica exited with exit status: 1: cannot load model"),
        "{body}"
    );
    // Later requests do not wait at all.
    let (status, _, _) = get(h.addr, HOST).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn full_buffer_is_503_with_retry_after() {
    let h = start(snapshot(vec![], true, Duration::from_secs(30)), 0).await;
    let (status, headers, body) = get(h.addr, HOST).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("is full"), "{body}");
}

#[tokio::test]
async fn no_replica_within_the_timeout_is_504() {
    let h = start(snapshot(vec![], true, Duration::from_millis(100)), 10).await;
    let (status, _, body) = get(h.addr, HOST).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("activator request timeout"), "{body}");
}
