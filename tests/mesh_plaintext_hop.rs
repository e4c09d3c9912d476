//! Issue 14, the root cause of `403 x-sluice-caller-attestation: signed by a trusted attester
//! but the connection's peer is none` while replicas came up under load with the mesh on.
//!
//! The activator reaches a replica's queue layer over mTLS and attaches the original
//! caller's attestation, bound to that mTLS connection. The queue layer forwards to its user
//! process over plaintext, and used to forward the attestation too. When the port handed to
//! the user process had been taken by another replica's queue layer (the user process then
//! dies with `Address already in use`, but the queue layer's probe finds the port
//! accepting), the requests went to that other replica, which saw an attestation on a
//! connection without a verified peer and refused it, as it must.
//!
//! In one process over real sockets with real TLS: the activator's mesh forwarder, a queue
//! layer (`Sidecar`, mesh on) and behind it either a user process that reports what it was
//! sent, or another replica's mesh listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_core::NamespacedName;
use sluice_mesh::attestation::HEADER;
use sluice_mesh::handoff::{Handoff, WorkloadInfo, WorkloadMesh};
use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::inbound::InboundMesh;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{ConnectionSecurity, MeshHttpConnector, MeshTls, PeerInfo};
use sluice_proxy::timeouts::Timeouts;
use sluice_proxy::{Forwarder, Outbound};
use sluice_queue::QueueConfig;
use sluice_queue::sidecar::{self, Sidecar, SidecarConfig};
use tokio::net::TcpListener;

const REVISION: &str = "hello-00001";

struct Pki {
    dir: PathBuf,
    ca: Arc<CertificateAuthority>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!("sluice-plain-hop-{}", uuid::Uuid::new_v4()));
    let ca = CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.join("ca")))
        .unwrap();
    Pki {
        dir,
        ca: Arc::new(ca),
    }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

/// What `sluice up` hands a replica of `hello-00001`: no policies (PERMISSIVE), the
/// activator trusted to attest callers.
fn hand_over(pki: &Pki) -> (Handoff, WorkloadMesh, tokio::task::JoinHandle<()>) {
    let dir = pki.dir.join(format!("replica-{}", uuid::Uuid::new_v4()));
    let handoff = Handoff::create(&dir).unwrap();
    handoff.write_bundle(&pki.ca.root_pem()).unwrap();
    handoff
        .write_workload(&WorkloadInfo {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service: "hello".into(),
            configuration: "hello".into(),
            revision: REVISION.into(),
            pod: format!("{REVISION}-1"),
            labels: BTreeMap::from([("serving.knative.dev/revision".into(), REVISION.into())]),
            attesters: vec![id("sluice-system", "activator").to_string()],
        })
        .unwrap();
    handoff.write_policies("").unwrap();
    handoff
        .write_svid(
            &pki.ca
                .issue(&id("default", "default"), Duration::from_secs(3600))
                .unwrap(),
        )
        .unwrap();
    let (workload, follower) = WorkloadMesh::load(&dir).unwrap();
    (handoff, workload, follower)
}

/// A replica's queue layer (mesh on) in front of the user process it believes is on `app`.
async fn queue_layer(pki: &Pki, app: SocketAddr) -> (SocketAddr, Handoff) {
    let (handoff, workload, follower) = hand_over(pki);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inbound = Arc::new(InboundMesh::new(&workload, addr.port()).unwrap());
    let sc = Sidecar::with_mesh(
        SidecarConfig {
            queue: QueueConfig {
                container_concurrency: 1,
                max_queued: None,
            },
            timeouts: Timeouts::request_only(Duration::from_secs(30)),
            h2c: false,
            revision: NamespacedName::new("default", REVISION),
        },
        app,
        Some(inbound),
        None,
    );
    sc.set_app_ready();
    tokio::spawn(async move {
        let _follower = follower;
        sidecar::serve(listener, sc, std::future::pending()).await;
    });
    (addr, handoff)
}

/// A user process answering with how many caller attestations it was sent.
async fn user_process() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let seen = req.headers().get_all(HEADER).iter().count();
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(format!(
                    "attestations seen: {seen}"
                )))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// Sends `GET /` from the mesh caller `default/a` through the activator's forwarder (mTLS,
/// attestation attached) to the replica at `replica`.
async fn through_activator(pki: &Pki, replica: SocketAddr) -> (u16, String) {
    let svid = pki
        .ca
        .issue(&id("sluice-system", "activator"), Duration::from_secs(3600))
        .unwrap();
    let tls = MeshTls::new(
        Arc::new(pki.ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(svid),
    );
    let forwarder = Forwarder::new().with_mesh(OutboundMesh::new(tls).unwrap());
    let mut req = Request::get("/")
        .header("host", "hello.default.localhost")
        .header("x-request-id", "r-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(PeerInfo {
        identity: Some(id("default", "a")),
        security: ConnectionSecurity::MutualTls,
        peer_not_after: None,
    });
    let mut out = Outbound::new(req, None).unwrap();
    let deadline = Timeouts::request_only(Duration::from_secs(30))
        .response_deadline(tokio::time::Instant::now());
    let resp = forwarder
        .send(
            &NamespacedName::new("default", REVISION),
            replica,
            &mut out,
            deadline,
            None,
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_user_process_never_sees_the_caller_attestation() {
    let pki = pki();
    let app = user_process().await;
    let (replica, _dir) = queue_layer(&pki, app).await;
    assert_eq!(
        through_activator(&pki, replica).await,
        (200, "attestations seen: 0".to_owned())
    );
}

#[tokio::test]
async fn a_user_port_taken_by_another_replica_does_not_turn_into_403s() {
    let pki = pki();
    // Replica B, whose user process is fine.
    let app = user_process().await;
    let (b, _b_dir) = queue_layer(&pki, app).await;
    // Replica A was handed the port B's queue layer then took.
    let (a, _a_dir) = queue_layer(&pki, b).await;
    assert_eq!(
        through_activator(&pki, a).await,
        (200, "attestations seen: 0".to_owned())
    );

    // The receiving side is unchanged: an attestation arriving on a connection without a
    // verified peer is still refused.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(MeshHttpConnector::new(None));
    let forged = Request::get(format!("http://{b}/"))
        .header("host", "hello.default.localhost")
        .header(HEADER, "m1.e30")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(forged).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "x-sluice-caller-attestation: signed by a trusted attester but the connection's peer is none"
    );
}
