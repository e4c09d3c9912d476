//! What mTLS adds on the proxy's backend path, measured in one process and one run:
//! client → router → (activator →) replica gate → handler, with the mesh off (plaintext) and
//! on (mTLS with SVIDs, the caller attestation signed by the router/activator and verified by
//! the replica, an ALLOW policy evaluated), at a fixed request rate. What `bench/mesh/run.sh`
//! runs after the handshake benchmark.
//!
//! `mesh_hops [requests] [rate_per_s] [concurrency]` prints one table row per configuration:
//! p50/p99 latency, and CPU time of the whole process per 10,000 requests (client included,
//! the same in every row, so differences are the mesh's).

#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
use sluice_mesh::handoff::{Handoff, WorkloadInfo, WorkloadMesh};
use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::inbound::InboundMesh;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::telemetry::{AccessLog, HopTelemetry, Registry};
use sluice_mesh::tls::MeshTls;
use sluice_proxy::{Forwarder, full_body};
use sluice_queue::mesh::{ReplicaGate, serve_replica};
use sluice_queue::{Queue, QueueConfig};
use sluice_router::{Router, ServeConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const HOST: &str = "hello.default.localhost";
const ALLOW: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow, namespace: default}\nspec:\n  rules:\n  - from:\n    - source: {notPrincipals: [\"cluster.local/ns/default/sa/nobody\"]}\n";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

fn out(ca: &CertificateAuthority, sa: &str) -> OutboundMesh {
    let svid = ca
        .issue(&id("sluice-system", sa), Duration::from_secs(3600))
        .unwrap();
    OutboundMesh::new(MeshTls::new(
        Arc::new(ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(svid),
    ))
    .unwrap()
}

/// A replica gate answering "ok"; with the mesh when `ca` is given.
async fn replica(ca: Option<(&CertificateAuthority, &std::path::Path)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mesh = ca.map(|(ca, dir)| {
        let h = Handoff::create(dir).unwrap();
        h.write_bundle(&ca.root_pem()).unwrap();
        h.write_workload(&WorkloadInfo {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service: "hello".into(),
            configuration: "hello".into(),
            revision: "hello-00001".into(),
            pod: "hello-00001-1".into(),
            labels: BTreeMap::new(),
            attesters: vec![
                id("sluice-system", "router").to_string(),
                id("sluice-system", "activator").to_string(),
            ],
        })
        .unwrap();
        h.write_policies(ALLOW).unwrap();
        h.write_svid(
            &ca.issue(&id("default", "hello"), Duration::from_secs(3600))
                .unwrap(),
        )
        .unwrap();
        let (w, task) = WorkloadMesh::load(dir).unwrap();
        std::mem::forget(task);
        Arc::new(InboundMesh::new(&w, addr.port()).unwrap())
    });
    let queue = Arc::new(Queue::new(
        QueueConfig {
            container_concurrency: 0,
            max_queued: None,
        },
        tokio::time::Instant::now(),
    ));
    let gate = Arc::new(ReplicaGate::new(mesh.clone(), None, queue, "hello-00001"));
    tokio::spawn(serve_replica(
        listener,
        mesh,
        move |req| {
            let gate = gate.clone();
            async move {
                gate.handle(req, |_| async { http::Response::new(full_body("ok")) })
                    .await
            }
        },
        std::future::pending(),
    ));
    addr
}

async fn router(
    backend: SocketAddr,
    activator_in_path: bool,
    ca: Option<&CertificateAuthority>,
    activator_telemetry: bool,
) -> SocketAddr {
    let key = NamespacedName::new("default", "hello-00001");
    let mut snap = RoutingSnapshot::default();
    snap.hosts.insert(
        HOST.into(),
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
            activator_in_path,
            unavailable: None,
        },
    );
    let (tx, snapshot) = watch::channel(Arc::new(snap));
    std::mem::forget(tx);
    let (stats_tx, mut stats) = mpsc::channel(1024);
    tokio::spawn(async move { while stats.recv().await.is_some() {} });
    let forwarder = |sa| match ca {
        Some(ca) => Forwarder::new().with_mesh(out(ca, sa)),
        None => Forwarder::new(),
    };
    let activator = Activator::new(
        ActivatorConfig::default(),
        snapshot.clone(),
        stats_tx,
        forwarder("activator"),
    );
    // The activator's own hop telemetry, as `sluice up` wires it (no log sink here).
    let activator = Arc::new(if activator_telemetry {
        activator.with_telemetry(HopTelemetry::new(
            Registry::new(),
            "activator",
            AccessLog::Off,
        ))
    } else {
        activator
    });
    let router = Arc::new(Router::new(snapshot, activator, forwarder("router")));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServeConfig {
        shards: 1,
        ..ServeConfig::default()
    };
    tokio::spawn(serve(listener, router, config, std::future::pending()));
    addr
}

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
    // Fields 14 and 15 of stat (utime, stime), counted after the ")".
    (ticks(11) + ticks(12)) / 100.0
}

struct Row {
    p50_us: f64,
    p99_us: f64,
    cpu_ms_per_10k: f64,
    errors: usize,
}

async fn load(addr: SocketAddr, requests: usize, rate: u64, concurrency: usize) -> Row {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // Warm the pools.
    for _ in 0..200 {
        let req = http::Request::get(format!("http://{addr}/"))
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let _ = client.request(req).await.map(|r| r.into_body().collect());
    }
    let (tick_tx, tick_rx) = async_channel(concurrency * 4);
    let cpu0 = cpu_seconds();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..requests {
            every.tick().await;
            if tick_tx.send(()).await.is_err() {
                return;
            }
        }
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, rx) = (client.clone(), tick_rx.clone());
        workers.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while rx.recv().await.is_some() {
                let req = http::Request::get(format!("http://{addr}/"))
                    .header("host", HOST)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let start = tokio::time::Instant::now();
                match client.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        lat.push(start.elapsed().as_secs_f64() * 1e6);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        });
    }
    drop(tick_rx);
    let _ = ticker.await;
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(Ok((lat, e))) = workers.join_next().await {
        all.extend(lat);
        errors += e;
    }
    let cpu = cpu_seconds() - cpu0;
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Row {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_ms_per_10k: cpu * 1000.0 * 10_000.0 / requests as f64,
        errors,
    }
}

/// A bounded multi-consumer channel from tokio parts (a mutex-guarded receiver).
fn async_channel(
    cap: usize,
) -> (
    mpsc::Sender<()>,
    Arc<tokio::sync::Mutex<mpsc::Receiver<()>>>,
) {
    let (tx, rx) = mpsc::channel(cap);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

trait Recv {
    async fn recv(&self) -> Option<()>;
}

impl Recv for Arc<tokio::sync::Mutex<mpsc::Receiver<()>>> {
    async fn recv(&self) -> Option<()> {
        self.lock().await.recv().await
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rate: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let concurrency: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(16);
    let dir = std::env::temp_dir().join(format!("sluice-mesh-hops-{}", std::process::id()));
    let ca = CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.join("ca")))
        .unwrap();

    let plain_replica = replica(None).await;
    let mesh_replica = replica(Some((&ca, &dir.join("replica")))).await;
    println!(
        "# mesh_hops: {requests} GETs per row at {rate}/s, {concurrency} client connections, 2 runtime threads"
    );
    println!("| path | mesh | p50 µs | p99 µs | CPU ms / 10k req | errors |");
    println!("|---|---|---|---|---|---|");
    let mut results = BTreeMap::new();
    for (path, activator) in [
        ("router → replica", false),
        ("router → activator → replica", true),
    ] {
        for (mesh, backend, ca) in [
            ("off", plain_replica, None),
            ("mTLS", mesh_replica, Some(&ca)),
        ] {
            let front = router(backend, activator, ca, false).await;
            let row = load(front, requests, rate, concurrency).await;
            println!(
                "| {path} | {mesh} | {:.0} | {:.0} | {:.0} | {} |",
                row.p50_us, row.p99_us, row.cpu_ms_per_10k, row.errors
            );
            results.insert((activator, mesh), row);
        }
    }
    // The activator's own telemetry (Istio metrics, queue depth, its span id; no log sink).
    let front = router(mesh_replica, true, Some(&ca), true).await;
    let row = load(front, requests, rate, concurrency).await;
    println!(
        "| router → activator → replica, activator telemetry | mTLS | {:.0} | {:.0} | {:.0} | {} |",
        row.p50_us, row.p99_us, row.cpu_ms_per_10k, row.errors
    );
    let plain = &results[&(true, "mTLS")];
    println!(
        "added by the activator's telemetry (mTLS): p50 {:+.0} µs, p99 {:+.0} µs, CPU {:+.0} ms / 10k requests",
        row.p50_us - plain.p50_us,
        row.p99_us - plain.p99_us,
        row.cpu_ms_per_10k - plain.cpu_ms_per_10k
    );
    for activator in [false, true] {
        let (off, on) = (
            &results[&(activator, "off")],
            &results[&(activator, "mTLS")],
        );
        println!(
            "added by the mesh on {}: p50 {:+.0} µs, p99 {:+.0} µs, CPU {:+.0} ms / 10k requests",
            if activator {
                "router → activator → replica (one mTLS hop)"
            } else {
                "router → replica (one mTLS hop)"
            },
            on.p50_us - off.p50_us,
            on.p99_us - off.p99_us,
            on.cpu_ms_per_10k - off.cpu_ms_per_10k
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
