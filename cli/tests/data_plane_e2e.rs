//! The data plane end to end with real replica processes: the router and activator
//! (in-process, port 0) in front of two revisions, each a real `sluice queue -- sluice hello`
//! process pair, routed by weight, tag host and `Knative-Serving-Tag`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_activator::{Activator, ActivatorConfig};
use sluice_core::{
    Endpoint, HostRoute, NamespacedName, RevisionRoute, RoutingSnapshot, WeightedTarget,
};
use sluice_proxy::Forwarder;
use sluice_router::{Router, ServeConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// One revision's replica: `sluice queue` in front of `sluice hello`; SIGTERM on drop.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

fn replica(revision: &str, target: &str, cc: u32) -> Replica {
    let mut child = Command::new(SLUICE)
        .args([
            "queue",
            "--container-concurrency",
            &cc.to_string(),
            "--timeout-seconds",
            "30",
        ])
        .args(["--", SLUICE, "hello"])
        .env("K_SERVICE", "hello")
        .env("K_REVISION", revision)
        .env("TARGET", target)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("SLUICE_LISTENING ")
        .unwrap()
        .parse()
        .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "SLUICE_READY");
    Replica { child, addr }
}

fn revision(name: &str, addr: SocketAddr, cc: u32, activator: bool) -> RevisionRoute {
    RevisionRoute {
        key: NamespacedName::new("default", name),
        endpoints: vec![Endpoint { addr }],
        container_concurrency: cc,
        timeout: Duration::from_secs(30),
        activator_in_path: activator,
        unavailable: None,
    }
}

fn host(targets: &[(&str, u32)]) -> HostRoute {
    HostRoute {
        service: NamespacedName::new("default", "hello"),
        targets: targets
            .iter()
            .map(|(r, p)| WeightedTarget {
                revision: NamespacedName::new("default", *r),
                percent: *p,
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_activator_and_queue_sidecars_serve_two_revisions() {
    let blue = replica("hello-00001", "blue", 1);
    let green = replica("hello-00002", "green", 0);
    let mut snap = RoutingSnapshot::default();
    snap.hosts.insert(
        "hello.default.localhost".into(),
        host(&[("hello-00001", 50), ("hello-00002", 50)]),
    );
    snap.hosts.insert(
        "blue-hello.default.localhost".into(),
        host(&[("hello-00001", 100)]),
    );
    snap.hosts.insert(
        "green-hello.default.localhost".into(),
        host(&[("hello-00002", 100)]),
    );
    // Blue (cc = 1) goes through the activator; green straight to its queue sidecar.
    for r in [
        revision("hello-00001", blue.addr, 1, true),
        revision("hello-00002", green.addr, 0, false),
    ] {
        snap.revisions.insert(r.key.clone(), r);
    }
    let (_publish, snapshot) = watch::channel(Arc::new(snap));
    let (stats_tx, _stats) = mpsc::channel(1024);
    let activator = Arc::new(Activator::new(
        ActivatorConfig::default(),
        snapshot.clone(),
        stats_tx,
        Forwarder::new(),
    ));
    let router = Arc::new(Router::new(snapshot, activator, Forwarder::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        router,
        ServeConfig::default(),
        std::future::pending(),
    ));

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = |host: &'static str, tag: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req =
                http::Request::get(format!("http://{addr}/greet?x=1")).header("host", host);
            if let Some(tag) = tag {
                req = req.header("knative-serving-tag", tag);
            }
            let resp = client
                .request(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };

    let (status, body) = get("green-hello.default.localhost:8080", None).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("Hello green!\n"), "{body}");
    assert!(body.contains("revision: hello-00002\n"), "{body}");
    assert!(body.contains("path: /greet?x=1\n"), "{body}");
    assert!(
        body.contains("header x-forwarded-for: 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("header x-forwarded-proto: http\n"), "{body}");
    assert!(
        body.contains("header forwarded: for=127.0.0.1;proto=http;host=\"green-hello.default.localhost:8080\"\n"),
        "{body}"
    );
    assert!(body.contains("header traceparent: 00-"), "{body}");

    let (_, body) = get("blue-hello.default.localhost", None).await;
    assert!(body.starts_with("Hello blue!\n"), "{body}");
    assert!(
        body.contains("header k-proxy-request: activator\n"),
        "{body}"
    );
    let (_, body) = get("hello.default.localhost", Some("blue")).await;
    assert!(body.starts_with("Hello blue!\n"), "{body}");

    // A client's `x-sluice-*` headers (a made-up or replayed attestation) stop at the
    // router; `sluice hello` lists every header it receives.
    let req = http::Request::get(format!("http://{addr}/"))
        .header("host", "green-hello.default.localhost")
        .header("x-sluice-caller-attestation", "v1-bound.replayed")
        .header("x-sluice-anything", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("Hello green!\n"), "{body}");
    assert!(!body.contains("x-sluice-"), "{body}");

    // 100 concurrent requests on the main host: every one answered, by both revisions
    // (blue's cc = 1 is kept by the activator, which queues instead of overflowing it).
    let handles: Vec<_> = (0..100)
        .map(|_| tokio::spawn(get("hello.default.localhost", None)))
        .collect();
    let mut by_target = BTreeMap::<String, usize>::new();
    for h in handles {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        *by_target
            .entry(body.lines().next().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(by_target.len(), 2, "{by_target:?}");
}
