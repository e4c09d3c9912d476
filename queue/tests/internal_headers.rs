//! Sluice's own headers (`x-sluice-*`) stop at the queue layer: the replica gate verifies
//! the caller attestation the router or activator attached, decides on the caller it names,
//! and only then hands the request to the user process, without the attestation. Over real
//! mTLS on loopback, with the identity handed over in a private directory as `sluice up`
//! does.

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
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_core::NamespacedName;
use sluice_mesh::attestation::HEADER;
use sluice_mesh::handoff::{Handoff, WorkloadInfo, WorkloadMesh};
use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{ConnectionSecurity, MeshHttpConnector, MeshTls, PeerInfo};
use sluice_proxy::timeouts::Timeouts;
use sluice_queue::QueueConfig;
use sluice_queue::mesh::InboundMesh;
use sluice_queue::sidecar::{self, Sidecar, SidecarConfig};
use tokio::net::TcpListener;

const REVISION: &str = "hello-00001";
const HOST: &str = "hello.default.localhost";

/// Only `default/sa/a` may call the replica.
const ALLOW_A: &str = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: default}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-a, namespace: default}\nspec:\n  selector: {matchLabels: {app: hello}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/a\"]}\n";

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    TempDir(std::env::temp_dir().join(format!(
        "sluice-internal-headers-{}-{nanos}",
        std::process::id()
    )))
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

/// A user process answering with every request header it received, one per line.
async fn user_process() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut text = String::new();
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                    }
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// `sluice queue` with the mesh on, in front of [`user_process`], trusting the router's
/// attestations.
async fn replica(dir: &std::path::Path, ca: &CertificateAuthority) -> SocketAddr {
    let handoff = Handoff::create(&dir.join("replica")).unwrap();
    handoff.write_bundle(&ca.root_pem()).unwrap();
    handoff
        .write_workload(&WorkloadInfo {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service: "hello".into(),
            configuration: "hello".into(),
            revision: REVISION.into(),
            pod: format!("{REVISION}-1"),
            labels: BTreeMap::from([("app".into(), "hello".into())]),
            attesters: vec![id("sluice-system", "router").to_string()],
        })
        .unwrap();
    handoff.write_policies(ALLOW_A).unwrap();
    handoff
        .write_svid(
            &ca.issue(&id("default", "hello"), Duration::from_secs(3600))
                .unwrap(),
        )
        .unwrap();
    let (workload, follower) = WorkloadMesh::load(handoff.dir()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inbound = Arc::new(InboundMesh::new(&workload, addr.port()).unwrap());
    let app = user_process().await;
    let sc = Sidecar::with_mesh(
        SidecarConfig {
            queue: QueueConfig {
                container_concurrency: 0,
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
    sidecar::wait_until_accepting(app, Duration::from_millis(5)).await;
    sc.set_app_ready();
    tokio::spawn(async move {
        let _follower = follower;
        sidecar::serve(listener, sc, std::future::pending()).await;
    });
    addr
}

/// Sends GET / to `replica` as the router would: over its mTLS connection, attesting that
/// `caller` sent the request, with `extra` headers on top.
async fn as_router(
    router: &OutboundMesh,
    replica: SocketAddr,
    caller: &str,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut req = Request::get(format!("http://{replica}/"))
        .header("host", HOST)
        .header("x-request-id", "r-1");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let (mut parts, body) = req.body(Full::new(Bytes::new())).unwrap().into_parts();
    router
        .attest(
            &mut parts,
            &PeerInfo {
                identity: Some(id("default", caller)),
                security: ConnectionSecurity::MutualTls,
                peer_not_after: None,
            },
        )
        .unwrap();
    assert!(parts.headers.contains_key(HEADER), "nothing was attested");
    let client: Client<MeshHttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(router.http_connector());
    let resp = client
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_user_process_never_sees_the_attestation_the_gate_decided_on() {
    let dir = temp_dir();
    let ca =
        CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.0.join("ca")))
            .unwrap();
    let replica = replica(&dir.0, &ca).await;
    let router_svid = ca
        .issue(&id("sluice-system", "router"), Duration::from_secs(3600))
        .unwrap();
    let router = OutboundMesh::new(MeshTls::new(
        Arc::new(ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(router_svid),
    ))
    .unwrap();

    // The gate decided on the attested caller (only `a` is allowed)...
    let (status, body) = as_router(&router, replica, "b", &[]).await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let (status, body) = as_router(&router, replica, "a", &[("x-sluice-debug", "1")]).await;
    assert_eq!(status, 200, "{body}");
    // ...and the user process got the request without any of Sluice's own headers.
    assert!(body.contains("x-request-id: r-1\n"), "{body}");
    assert!(body.contains("host: hello.default.localhost\n"), "{body}");
    assert!(!body.contains("x-sluice-"), "{body}");
}

#[tokio::test]
async fn without_the_mesh_the_user_process_sees_none_either() {
    let app = user_process().await;
    let sc = Sidecar::new(
        SidecarConfig {
            queue: QueueConfig {
                container_concurrency: 0,
                max_queued: None,
            },
            timeouts: Timeouts::request_only(Duration::from_secs(30)),
            h2c: false,
            revision: NamespacedName::new("default", REVISION),
        },
        app,
    );
    sidecar::wait_until_accepting(app, Duration::from_millis(5)).await;
    sc.set_app_ready();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sidecar::serve(listener, sc, std::future::pending()));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // Also on a path under `/sluice/` the sidecar does not answer itself.
    for path in ["/", "/sluice/elsewhere"] {
        let req = Request::get(format!("http://{addr}{path}"))
            .header("host", HOST)
            .header(HEADER, "v1.replayed")
            .header("X-Sluice-Debug", "1")
            .header("x-sluicer", "not ours")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("x-sluice-"), "{path}: {body}");
        assert!(body.contains("x-sluicer: not ours\n"), "{path}: {body}");
    }
}
