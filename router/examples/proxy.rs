//! The router and activator, standalone, in front of one fixed backend: what
//! `bench/proxy/run.sh` measures. Not a product binary (`sluice up` wires the same parts).
//!
//! `proxy <listen> <backend> [--activator] [--routes N]` serves host
//! `hello.default.localhost` from `<backend>`, with the activator in path or not, plus N
//! other routes so the route table has a realistic size. Prints `LISTENING <addr>`.
//!
//! `proxy <listen> <backend> --routes N --swap-test` instead publishes 20 route changes
//! (one new host each) over an N-route table and prints how long each took to become
//! visible: from building the new snapshot to the first 200 on the new host.
//!
//! `proxy <listen> <backend> --release-test` holds a request for a revision at zero in the
//! activator 20 times, and prints how long after a replica is published the request is
//! answered (the activator's share of a cold start).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_activator::{Activator, ActivatorConfig};
use sluice_core::{
    Endpoint, HostRoute, NamespacedName, RevisionRoute, RoutingSnapshot, WeightedTarget,
};
use sluice_proxy::Forwarder;
use sluice_router::{Router, ServeConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

fn route(
    snap: &mut RoutingSnapshot,
    host: String,
    name: String,
    backend: SocketAddr,
    activator: bool,
) {
    let key = NamespacedName::new("default", name);
    snap.hosts.insert(
        host,
        HostRoute {
            service: key.clone(),
            targets: vec![WeightedTarget {
                revision: key.clone(),
                percent: 100,
            }],
        },
    );
    snap.revisions.insert(
        key.clone(),
        RevisionRoute {
            key,
            endpoints: vec![Endpoint { addr: backend }],
            container_concurrency: 0,
            timeout: Duration::from_secs(300),
            activator_in_path: activator,
            unavailable: None,
        },
    );
}

/// Holds a request at zero, publishes a ready replica, and measures until the answer.
async fn release(
    publish: watch::Sender<Arc<RoutingSnapshot>>,
    mut snap: RoutingSnapshot,
    mut stats: mpsc::Receiver<sluice_core::StatReport>,
    backend: SocketAddr,
    router: SocketAddr,
) {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let mut times = Vec::new();
    for i in 0..20 {
        let host = format!("cold{i}.default.localhost");
        let key = NamespacedName::new("default", format!("cold{i}-00001"));
        route(&mut snap, host.clone(), key.name.clone(), backend, true);
        snap.revisions.get_mut(&key).unwrap().endpoints.clear();
        publish.send(Arc::new(snap.clone())).unwrap();
        let req = http::Request::get(format!("http://{router}/"))
            .header("host", &host)
            .body(Empty::new())
            .unwrap();
        let pending = tokio::spawn(client.request(req));
        // The activator pokes the autoscaler once the request is held.
        while stats.recv().await.unwrap().revision != key {}
        snap.revisions.get_mut(&key).unwrap().endpoints = vec![Endpoint { addr: backend }];
        let t0 = tokio::time::Instant::now();
        publish.send(Arc::new(snap.clone())).unwrap();
        assert_eq!(pending.await.unwrap().unwrap().status(), 200);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "RELEASE held=20 median_ms={:.3} max_ms={:.3}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// Publishes route changes and measures when each is visible to a client.
async fn swap(
    publish: watch::Sender<Arc<RoutingSnapshot>>,
    mut snap: RoutingSnapshot,
    backend: SocketAddr,
    router: SocketAddr,
    routes: usize,
) {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let mut times = Vec::new();
    for i in 0..20 {
        let t0 = tokio::time::Instant::now();
        let host = format!("new{i}.default.localhost");
        route(
            &mut snap,
            host.clone(),
            format!("new{i}-00001"),
            backend,
            false,
        );
        publish.send(Arc::new(snap.clone())).unwrap();
        loop {
            let req = http::Request::get(format!("http://{router}/"))
                .header("host", &host)
                .body(Empty::new())
                .unwrap();
            if client.request(req).await.unwrap().status() == 200 {
                break;
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "SWAP routes={routes} changes=20 median_ms={:.3} max_ms={:.3}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// The allocator `sluice` itself runs with.
#[global_allocator]
static ALLOCATOR: sluice_alloc::SplitAlloc = sluice_alloc::SplitAlloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = args[1].parse().unwrap();
    let backend: SocketAddr = args[2].parse().unwrap();
    let activator_in_path = args.iter().any(|a| a == "--activator");
    let extra: usize = args
        .iter()
        .position(|a| a == "--routes")
        .map_or(0, |i| args[i + 1].parse().unwrap());
    let mut snap = RoutingSnapshot {
        hosts: BTreeMap::new(),
        revisions: BTreeMap::new(),
        timeouts: BTreeMap::new(),
    };
    route(
        &mut snap,
        "hello.default.localhost".into(),
        "hello-00001".into(),
        backend,
        activator_in_path,
    );
    for i in 0..extra {
        route(
            &mut snap,
            format!("svc{i}.default.localhost"),
            format!("svc{i}-00001"),
            backend,
            false,
        );
    }
    let swap_test = args.iter().any(|a| a == "--swap-test");
    let base = snap.clone();
    let (publish, snapshot) = watch::channel(Arc::new(snap));
    let release_test = args.iter().any(|a| a == "--release-test");
    let (stats_tx, stats_rx) = mpsc::channel(1024);
    let mut stats_rx = Some(stats_rx);
    if !release_test && let Some(mut rx) = stats_rx.take() {
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
    }
    let activator = Arc::new(Activator::new(
        ActivatorConfig::default(),
        snapshot.clone(),
        stats_tx,
        Forwarder::new(),
    ));
    tokio::spawn(activator.clone().run_stats());
    let router = Arc::new(Router::new(snapshot, activator, Forwarder::new()));
    let listener = TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    println!("LISTENING {addr}");
    if let Some(stats_rx) = stats_rx {
        let publish = publish.clone();
        let base = base.clone();
        tokio::spawn(async move {
            release(publish, base, stats_rx, backend, addr).await;
            std::process::exit(0);
        });
    }
    if swap_test {
        tokio::spawn(async move {
            swap(publish, base, backend, addr, extra).await;
            std::process::exit(0);
        });
    }
    serve(listener, router, ServeConfig::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
}
