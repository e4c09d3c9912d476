//! The router and activator, standalone, in front of one fixed backend: what
//! `bench/proxy/run.sh` measures. Not a product binary (`sluice up` wires the same parts).
//!
//! `proxy <listen> <backend> [--activator] [--routes N]` serves host
//! `hello.default.localhost` from `<backend>`, with the activator in path or not, plus N
//! other routes so the route table has a realistic size. Prints `LISTENING <addr>`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_activator::{Activator, ActivatorConfig, Forwarder};
use sluice_core::{
    Endpoint, HostRoute, NamespacedName, RevisionRoute, RoutingSnapshot, WeightedTarget,
};
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
    let (_publish, snapshot) = watch::channel(Arc::new(snap));
    let (stats_tx, mut stats_rx) = mpsc::channel(1024);
    tokio::spawn(async move { while stats_rx.recv().await.is_some() {} });
    let activator = Arc::new(Activator::new(
        ActivatorConfig::default(),
        snapshot.clone(),
        stats_tx,
        Forwarder::new(),
    ));
    tokio::spawn(activator.clone().run_stats());
    let router = Arc::new(Router::new(snapshot, activator, Forwarder::new()));
    let listener = TcpListener::bind(listen).await.unwrap();
    println!("LISTENING {}", listener.local_addr().unwrap());
    serve(listener, router, ServeConfig::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
}
