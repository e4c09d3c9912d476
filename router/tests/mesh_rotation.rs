//! Certificates rotating every two seconds or so (4 s life, renewed at 40–50 %) on every hop
//! under continuous load for a full minute: zero failed requests. The replica's identity is
//! handed over and renewed by the local runtime's real handoff (private directory, atomic
//! rewrites, the replica re-reading them); the router's and activator's renew in process.
//! New connections use the new certificates, pooled ones made with an old one are retired.
//!
//! Runs about 60 s by design (a separate test target so it can be run or skipped alone).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use sluice_activator::{Activator, ActivatorConfig};
use sluice_controller::runtime::ReplicaSpec;
use sluice_controller::runtime::mesh::LocalMesh;
use sluice_core::NamespacedName;
use sluice_mesh::handoff::WorkloadMesh;
use sluice_mesh::identity::{
    CaConfig, CertificateAuthority, RotatingSvid, RotationConfig, SpiffeId, SvidIssuer,
};
use sluice_mesh::inbound::InboundMesh;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::MeshTls;
use sluice_proxy::{Forwarder, full_body};
use sluice_queue::mesh::{ReplicaGate, serve_replica};
use sluice_queue::{Queue, QueueConfig};
use sluice_router::{Router, ServeConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use common::{Snap, revision};

const LOAD_FOR: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(4);
const STRICT: &str = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: default}\nspec: {mtls: {mode: STRICT}}\n";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

fn rotating(ca: &Arc<CertificateAuthority>, sa: &str) -> MeshTls {
    let (svid, _task) = RotatingSvid::start(
        ca.clone() as Arc<dyn SvidIssuer>,
        id("sluice-system", sa),
        RotationConfig::new(TTL),
    )
    .unwrap();
    MeshTls::new(Arc::new(ca.trust_bundle().unwrap()), svid)
}

/// Counts the renewals a holder sees.
fn count_renewals(mut holder: RotatingSvid) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let counter = n.clone();
    tokio::spawn(async move {
        while holder.changed().await {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_every_few_seconds_under_load_for_a_minute_fails_no_request() {
    let dir = std::env::temp_dir().join(format!("sluice-rotation-{}", uuid::Uuid::new_v4()));
    let ca = Arc::new(
        CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.join("ca")))
            .unwrap(),
    );
    let router_tls = rotating(&ca, "router");
    let activator_tls = rotating(&ca, "activator");
    let control = OutboundMesh::new(rotating(&ca, "controller")).unwrap();

    // The replica: identity from the local runtime's handoff, renewed through files.
    let (_policies_tx, policies_rx) = watch::channel(Arc::new(STRICT.to_owned()));
    let local = LocalMesh::new(
        ca.clone(),
        dir.join("replicas"),
        RotationConfig::new(TTL),
        vec![
            id("sluice-system", "router"),
            id("sluice-system", "activator"),
        ],
        policies_rx,
        control,
    );
    let spec = ReplicaSpec {
        revision: NamespacedName::new("default", "hello-00001"),
        uid: String::new(),
        command: vec![],
        env: vec![("SLUICE_SERVICE_ACCOUNT".into(), "hello".into())],
        drain_timeout: Duration::from_secs(1),
    };
    let handoff = local.hand_off(&spec, 1).unwrap();
    let (workload, _follower) = WorkloadMesh::load(handoff.dir()).unwrap();
    let replica_renewals = count_renewals(workload.tls.identity().clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = listener.local_addr().unwrap();
    let inbound = Arc::new(InboundMesh::new(&workload, replica_addr.port()).unwrap());
    let queue = Arc::new(Queue::new(
        QueueConfig {
            container_concurrency: 0,
            max_queued: None,
        },
        Instant::now(),
    ));
    let gate = Arc::new(ReplicaGate::new(
        Some(inbound.clone()),
        None,
        queue,
        "hello-00001",
    ));
    tokio::spawn(serve_replica(
        listener,
        Some(inbound),
        move |req| {
            let gate = gate.clone();
            async move {
                gate.handle(req, |_| async { http::Response::new(full_body("ok")) })
                    .await
            }
        },
        std::future::pending(),
    ));

    // Two revisions on the same replica: one reached directly by the router, one through
    // the activator.
    let snap = Snap::default()
        .host("direct.default.localhost", "hello", &[("hello-00001", 100)])
        .host("via.default.localhost", "via", &[("via-00001", 100)])
        .revision(revision(
            "hello-00001",
            &[replica_addr],
            0,
            Duration::from_secs(30),
        ))
        .revision(revision(
            "via-00001",
            &[replica_addr],
            0,
            Duration::from_secs(30),
        ))
        .activator("via-00001", true)
        .build();
    let (_publish, snapshot) = watch::channel(snap);
    let (stats_tx, _stats) = mpsc::channel(1024);
    let router_renewals = count_renewals(router_tls.identity().clone());
    let activator_renewals = count_renewals(activator_tls.identity().clone());
    let activator = Arc::new(Activator::new(
        ActivatorConfig::default(),
        snapshot.clone(),
        stats_tx,
        Forwarder::new().with_mesh(OutboundMesh::new(activator_tls).unwrap()),
    ));
    let router = Arc::new(Router::new(
        snapshot,
        activator,
        Forwarder::new().with_mesh(OutboundMesh::new(router_tls).unwrap()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router_addr = listener.local_addr().unwrap();
    let config = ServeConfig {
        shards: 1,
        ..ServeConfig::default()
    };
    tokio::spawn(serve(listener, router, config, std::future::pending()));

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let until = Instant::now() + LOAD_FOR;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let (ok, failed) = (ok.clone(), failed.clone());
        let host = if worker % 2 == 0 {
            "direct.default.localhost"
        } else {
            "via.default.localhost"
        };
        workers.spawn(async move {
            let client = common::h1();
            while Instant::now() < until {
                let req = Request::get(format!("http://{router_addr}/"))
                    .header("host", host)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        match body {
                            Ok(b) if status == 200 && b.as_ref() == b"ok" => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failed
                                .lock()
                                .unwrap()
                                .push(format!("{host}: {status} {other:?}")),
                        }
                    }
                    Err(e) => failed.lock().unwrap().push(format!("{host}: {e:?}")),
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    let renewed = |n: &AtomicU64| n.load(Ordering::Relaxed);
    eprintln!(
        "{ok} requests served; renewals: replica {}, router {}, activator {}",
        renewed(&replica_renewals),
        renewed(&router_renewals),
        renewed(&activator_renewals)
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok > 1000, "only {ok} requests in a minute");
    // Every hop's certificate was renewed many times during the run (every 1.6–2 s).
    for (hop, n) in [
        ("replica", &replica_renewals),
        ("router", &router_renewals),
        ("activator", &activator_renewals),
    ] {
        assert!(renewed(n) >= 20, "{hop} renewed only {} times", renewed(n));
    }
    drop(handoff);
    let _ = std::fs::remove_dir_all(dir);
}
