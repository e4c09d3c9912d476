//! The mesh wired end to end in one process, with real TLS handshakes on loopback: a
//! replica behind the replica gate (identity handed over in a private directory, peer
//! authentication at accept, authorization policy, telemetry), the router's ingress and its
//! forwarder, and the activator's forwarder with the caller attestation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use sluice_activator::{Activator, ActivatorConfig};
use sluice_mesh::handoff::{Handoff, WorkloadInfo, WorkloadMesh};
use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::inbound::InboundMesh;
use sluice_mesh::otlp::{OtlpConfig, SpanExporter};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::telemetry::{AccessLog, HopTelemetry, Registry, RevisionLabels};
use sluice_mesh::tls::{MeshHttpConnector, MeshTls};
use sluice_proxy::{Forwarder, full_body};
use sluice_queue::mesh::{ReplicaGate, serve_replica};
use sluice_queue::{Queue, QueueConfig};
use sluice_router::ingress::Ingress;
use sluice_router::{Router, ServeConfig, serve_ingress};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use common::{HOST, Snap, revision};

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
    let dir = std::env::temp_dir().join(format!("sluice-mesh-wiring-{}", uuid::Uuid::new_v4()));
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

fn tls(ca: &CertificateAuthority, ns: &str, sa: &str) -> MeshTls {
    let svid = ca.issue(&id(ns, sa), Duration::from_secs(3600)).unwrap();
    MeshTls::new(
        Arc::new(ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(svid),
    )
}

fn outbound(ca: &CertificateAuthority, ns: &str, sa: &str) -> OutboundMesh {
    OutboundMesh::new(tls(ca, ns, sa)).unwrap()
}

/// A clock two days ahead: a 1 h certificate is long expired by it.
#[derive(Debug)]
struct Ahead;

impl TimeProvider for Ahead {
    fn current_time(&self) -> Option<UnixTime> {
        let now = UnixTime::now().as_secs() + 2 * 24 * 3600;
        Some(UnixTime::since_unix_epoch(Duration::from_secs(now)))
    }
}

struct Replica {
    addr: SocketAddr,
    registry: Registry,
    handoff: Handoff,
    policies: watch::Receiver<Arc<sluice_mesh::handoff::Policies>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A replica of `hello-00001` (namespace default, sa hello, label app=hello) serving "ok"
/// behind the replica gate, with `policies` handed over like `sluice up` does.
async fn replica(pki: &Pki, policies: &str, expired_clock: bool) -> Replica {
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
            labels: BTreeMap::from([
                ("app".into(), "hello".into()),
                ("serving.knative.dev/revision".into(), REVISION.into()),
            ]),
            attesters: vec![
                id("sluice-system", "router").to_string(),
                id("sluice-system", "activator").to_string(),
            ],
        })
        .unwrap();
    handoff.write_policies(policies).unwrap();
    handoff
        .write_svid(
            &pki.ca
                .issue(&id("default", "hello"), Duration::from_secs(3600))
                .unwrap(),
        )
        .unwrap();
    let (mut workload, follower) = WorkloadMesh::load(&dir).unwrap();
    if expired_clock {
        workload.tls = workload.tls.clone().with_time_provider(Arc::new(Ahead));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inbound = Arc::new(InboundMesh::new(&workload, addr.port()).unwrap());
    let registry = Registry::new();
    let telemetry = HopTelemetry::new(registry.clone(), "queue", AccessLog::Off).with_revision(
        RevisionLabels {
            namespace: "default".into(),
            service: "hello".into(),
            configuration: "hello".into(),
            revision: REVISION.into(),
            pod: format!("{REVISION}-1"),
            container: "queue".into(),
        },
    );
    let queue = Arc::new(Queue::new(
        QueueConfig {
            container_concurrency: 0,
            max_queued: None,
        },
        tokio::time::Instant::now(),
    ));
    let gate = Arc::new(ReplicaGate::new(
        Some(inbound.clone()),
        Some(telemetry),
        queue,
        REVISION,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _follower = follower;
        serve_replica(
            listener,
            Some(inbound),
            move |req| {
                let gate = gate.clone();
                async move {
                    gate.handle(req, |_| async { http::Response::new(full_body("ok")) })
                        .await
                }
            },
            async {
                let _ = stopped.await;
            },
        )
        .await;
    });
    Replica {
        addr,
        registry,
        handoff,
        policies: workload.policies.clone(),
        _stop: stop,
    }
}

type MeshClient = Client<MeshHttpConnector, Full<Bytes>>;

fn client(mesh: Option<&OutboundMesh>) -> MeshClient {
    let connector = match mesh {
        Some(m) => m.http_connector(),
        None => MeshHttpConnector::new(None),
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// `Ok((status, body))`, or `Err` when the connection (handshake) failed.
async fn call(client: &MeshClient, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

const STRICT: &str = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: default}\nspec: {mtls: {mode: STRICT}}\n";
const DISABLE: &str = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: off, namespace: default}\nspec: {mtls: {mode: DISABLE}}\n";
const ALLOW_A: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-a, namespace: default}\nspec:\n  selector: {matchLabels: {app: hello}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/a\"]}\n";
const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: default}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/admin*\"]}\n";

#[tokio::test]
async fn strict_refuses_plaintext_and_a_foreign_ca_and_admits_a_mesh_client() {
    let pki = pki();
    let other = self::pki();
    let r = replica(&pki, STRICT, false).await;
    let plain = call(&client(None), r.addr, "/").await;
    assert!(
        plain.is_err(),
        "plaintext was served under STRICT: {plain:?}"
    );
    let foreign = call(
        &client(Some(&outbound(&other.ca, "default", "a"))),
        r.addr,
        "/",
    )
    .await;
    assert!(
        foreign.is_err(),
        "a foreign CA's client was served: {foreign:?}"
    );
    let ok = call(
        &client(Some(&outbound(&pki.ca, "default", "a"))),
        r.addr,
        "/",
    )
    .await;
    assert_eq!(ok, Ok((200, "ok".into())));
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let pki = pki();
    // The replica's clock is two days ahead: the client's 1 h certificate has expired.
    let r = replica(&pki, STRICT, true).await;
    let expired = call(
        &client(Some(&outbound(&pki.ca, "default", "a"))),
        r.addr,
        "/",
    )
    .await;
    assert!(
        expired.is_err(),
        "an expired certificate was accepted: {expired:?}"
    );
}

#[tokio::test]
async fn permissive_serves_both_and_metrics_label_them() {
    let pki = pki();
    let r = replica(&pki, "", false).await;
    let a = client(Some(&outbound(&pki.ca, "default", "a")));
    assert_eq!(call(&a, r.addr, "/").await, Ok((200, "ok".into())));
    assert_eq!(
        call(&client(None), r.addr, "/").await,
        Ok((200, "ok".into()))
    );
    // Policies arrive through the handed-over file: now only a is allowed.
    let mut policies = r.policies.clone();
    policies.borrow_and_update();
    r.handoff.write_policies(ALLOW_A).unwrap();
    policies.changed().await.unwrap();
    let b = client(Some(&outbound(&pki.ca, "default", "b")));
    assert_eq!(
        call(&b, r.addr, "/").await,
        Ok((403, "RBAC: access denied".into()))
    );

    let text = r.registry.encode();
    let line = |needles: &[&str]| {
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
    };
    let mtls = line(&[
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/a\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/hello\"",
        "destination_revision=\"hello-00001\"",
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
    ]);
    assert!(mtls.is_some(), "{text}");
    let plain = line(&[
        "source_principal=\"unknown\"",
        "response_code=\"200\"",
        "connection_security_policy=\"none\"",
    ]);
    assert!(plain.is_some(), "{text}");
    let refused = line(&[
        "source_principal=\"spiffe://cluster.local/ns/default/sa/b\"",
        "response_code=\"403\"",
        "connection_security_policy=\"mutual_tls\"",
    ]);
    assert!(refused.is_some(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("revision_request_count{")
                && l.contains("revision_name=\"hello-00001\"")
                && l.contains("response_code=\"403\"")),
        "{text}"
    );
    assert!(
        text.contains("istio_request_duration_milliseconds_bucket{"),
        "{text}"
    );
}

#[tokio::test]
async fn allow_admits_a_refuses_b_and_deny_beats_allow() {
    let pki = pki();
    let r = replica(&pki, &format!("{ALLOW_A}---\n{DENY_ADMIN}"), false).await;
    let a = client(Some(&outbound(&pki.ca, "default", "a")));
    let b = client(Some(&outbound(&pki.ca, "default", "b")));
    assert_eq!(call(&a, r.addr, "/").await, Ok((200, "ok".into())));
    assert_eq!(
        call(&b, r.addr, "/").await,
        Ok((403, "RBAC: access denied".into()))
    );
    assert_eq!(
        call(&client(None), r.addr, "/").await,
        Ok((403, "RBAC: access denied".into()))
    );
    // a is allowed, but DENY on /admin comes first.
    assert_eq!(
        call(&a, r.addr, "/admin/x").await,
        Ok((403, "RBAC: access denied".into()))
    );
    // b cannot claim to speak for a: a statement is believed only on a trusted attester's
    // own mTLS connection.
    let claim = sluice_mesh::attestation::Attester::new(RotatingSvid::fixed(
        pki.ca
            .issue(&id("default", "b"), Duration::from_secs(3600))
            .unwrap(),
    ))
    .with_mode(sluice_mesh::attestation::AttestationMode::MtlsBound)
    .attest(
        Some(&id("default", "a")),
        sluice_mesh::tls::ConnectionSecurity::MutualTls,
        sluice_mesh::attestation::RequestBinding {
            method: "GET",
            authority: HOST,
            path: "/",
            request_id: "",
        },
        UnixTime::now(),
    )
    .unwrap();
    let forged = Request::get(format!("http://{}/", r.addr))
        .header("host", HOST)
        .header(sluice_mesh::attestation::HEADER, claim)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = b.request(forged).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("not trusted to attest"),
        "{body:?}"
    );
    // Sluice's own paths are not the user's to deny (probes, stats, metrics).
    let probe = Request::get(format!("http://{}/healthz", r.addr))
        .header("k-network-probe", "queue")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_ne!(
        b.request(probe).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn disable_authenticates_nobody_yet_serves_the_router() {
    let pki = pki();
    let r = replica(&pki, DISABLE, false).await;
    let p = plane(&pki, r.addr, false).await;
    // The router's hop still arrives (encrypted), but as nobody: no principal, `none`.
    assert_eq!(
        call(
            &client(Some(&outbound(&pki.ca, "default", "a"))),
            p.addr,
            "/"
        )
        .await,
        Ok((200, "ok".into()))
    );
    assert_eq!(
        call(&client(None), r.addr, "/").await,
        Ok((200, "ok".into()))
    );
    let text = r.registry.encode();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert!(!series.is_empty(), "{text}");
    assert!(
        series
            .iter()
            .all(|l| l.contains("source_principal=\"unknown\"")
                && l.contains("connection_security_policy=\"none\"")),
        "{text}"
    );
}

/// Router (ingress with mesh mTLS) → activator → replica, the caller attested across.
struct Plane {
    addr: SocketAddr,
    publish: watch::Sender<Arc<sluice_core::RoutingSnapshot>>,
    router_registry: Registry,
    activator_registry: Registry,
    _stop: tokio::sync::oneshot::Sender<()>,
    _stats: mpsc::Receiver<sluice_core::StatReport>,
}

async fn plane(pki: &Pki, replica: SocketAddr, activator_in_path: bool) -> Plane {
    plane_with(pki, replica, activator_in_path, None).await
}

/// [`plane`], the router's and activator's hops exporting spans to `spans` when given (and
/// the activator's access-log lines going to `tracing`).
async fn plane_with(
    pki: &Pki,
    replica: SocketAddr,
    activator_in_path: bool,
    spans: Option<SpanExporter>,
) -> Plane {
    let snap = Snap::default()
        .host(HOST, "hello", &[(REVISION, 100)])
        .revision(revision(REVISION, &[replica], 0, Duration::from_secs(30)))
        .activator(REVISION, activator_in_path)
        .build();
    let (publish, snapshot) = watch::channel(snap);
    let (stats_tx, stats) = mpsc::channel(1024);
    let with_spans = |hop: HopTelemetry| match &spans {
        Some(exporter) => hop.with_spans(exporter.clone()),
        None => hop,
    };
    let activator_registry = Registry::new();
    let activator = Arc::new(
        Activator::new(
            ActivatorConfig::default(),
            snapshot.clone(),
            stats_tx,
            Forwarder::new().with_mesh(outbound(&pki.ca, "sluice-system", "activator")),
        )
        .with_telemetry(with_spans(HopTelemetry::new(
            activator_registry.clone(),
            "activator",
            AccessLog::Tracing,
        ))),
    );
    let router_tls = tls(&pki.ca, "sluice-system", "router");
    let router = Arc::new(Router::new(
        snapshot,
        activator,
        Forwarder::new().with_mesh(OutboundMesh::new(router_tls.clone()).unwrap()),
    ));
    let router_registry = Registry::new();
    let ingress = Ingress {
        mesh: Some(router_tls.server_config().unwrap()),
        telemetry: Some(with_spans(HopTelemetry::new(
            router_registry.clone(),
            "router",
            AccessLog::Off,
        ))),
        ..Ingress::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig {
        shards: 1,
        ..ServeConfig::default()
    };
    tokio::spawn(serve_ingress(listener, router, config, ingress, async {
        let _ = stopped.await;
    }));
    Plane {
        addr,
        publish,
        router_registry,
        activator_registry,
        _stop: stop,
        _stats: stats,
    }
}

#[tokio::test]
async fn a_policy_behind_the_activator_sees_the_original_caller() {
    let pki = pki();
    let r = replica(&pki, &format!("{STRICT}---\n{ALLOW_A}"), false).await;
    let p = plane(&pki, r.addr, true).await;
    let a = client(Some(&outbound(&pki.ca, "default", "a")));
    let b = client(Some(&outbound(&pki.ca, "default", "b")));
    // Both reach the replica over the activator's mTLS connection; the replica decides on
    // the caller the activator attests, not on the activator.
    assert_eq!(call(&a, p.addr, "/").await, Ok((200, "ok".into())));
    assert_eq!(
        call(&b, p.addr, "/").await,
        Ok((403, "RBAC: access denied".into()))
    );
    assert_eq!(
        call(&client(None), p.addr, "/").await,
        Ok((403, "RBAC: access denied".into()))
    );
    // The same on the router's direct path.
    let direct = Snap::default()
        .host(HOST, "hello", &[(REVISION, 100)])
        .revision(revision(REVISION, &[r.addr], 0, Duration::from_secs(30)))
        .build();
    p.publish.send_replace(direct);
    assert_eq!(call(&a, p.addr, "/").await, Ok((200, "ok".into())));
    assert_eq!(
        call(&b, p.addr, "/").await,
        Ok((403, "RBAC: access denied".into()))
    );
    // A caller cannot forge the attestation: one it sends is replaced by the router's.
    let forged = Request::get(format!("http://{}/", p.addr))
        .header("host", HOST)
        .header(sluice_mesh::attestation::HEADER, "v1.forged.by.b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(b.request(forged).await.unwrap().status(), 403);

    // Both hops reported: the router as source, the replica as destination, with the
    // original caller.
    let router_text = p.router_registry.encode();
    assert!(
        router_text
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/a\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "{router_text}"
    );
    let replica_text = r.registry.encode();
    assert!(
        replica_text
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/a\"")
                && l.contains("response_code=\"200\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "{replica_text}"
    );
}

/// A user CA and leaves for ingress TLS, as files (what `--tls-cert/--tls-key/--tls-dir` read).
fn user_leaf(
    dir: &std::path::Path,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    host: &str,
) -> (
    sluice_mesh::tls::IngressCertificate,
    rustls::pki_types::CertificateDer<'static>,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{host}.crt")),
        dir.join(format!("{host}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        sluice_mesh::tls::IngressCertificate {
            hosts: vec![host.to_owned()],
            cert_path,
            key_path,
        },
        cert.der().clone(),
    )
}

#[tokio::test]
async fn ingress_tls_by_sni_and_mesh_mtls_share_the_router_port() {
    let pki = pki();
    let r = replica(&pki, "", false).await;
    // The user's CA and one certificate per host.
    let user_dir = pki.dir.join("user");
    std::fs::create_dir_all(&user_dir).unwrap();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let user_ca = ca_params.self_signed(&ca_key).unwrap().der().clone();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let (hello, hello_der) = user_leaf(&user_dir, &issuer, HOST);
    let (other, other_der) = user_leaf(&user_dir, &issuer, "other.default.localhost");
    let ingress_tls = sluice_mesh::tls::ingress_server_config(&[hello, other], None).unwrap();

    let snap = Snap::default()
        .host(HOST, "hello", &[(REVISION, 100)])
        .host("other.default.localhost", "hello", &[(REVISION, 100)])
        .revision(revision(REVISION, &[r.addr], 0, Duration::from_secs(30)))
        .build();
    let (_publish, snapshot) = watch::channel(snap);
    let (stats_tx, _stats) = mpsc::channel(16);
    let activator = Arc::new(Activator::new(
        ActivatorConfig::default(),
        snapshot.clone(),
        stats_tx,
        Forwarder::new().with_mesh(outbound(&pki.ca, "sluice-system", "activator")),
    ));
    let router_tls = tls(&pki.ca, "sluice-system", "router");
    let router = Arc::new(Router::new(
        snapshot,
        activator,
        Forwarder::new().with_mesh(OutboundMesh::new(router_tls.clone()).unwrap()),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ingress = Ingress {
        tls: Some(ingress_tls),
        mesh: Some(router_tls.server_config().unwrap()),
        ..Ingress::default()
    };
    let config = ServeConfig {
        shards: 1,
        ..ServeConfig::default()
    };
    tokio::spawn(serve_ingress(
        listener,
        router,
        config,
        ingress,
        std::future::pending(),
    ));

    // A browser-like client: SNI, the user's CA, no client certificate.
    let https_get = |sni: &'static str| {
        let user_ca = user_ca.clone();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(user_ca).unwrap();
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(rustls::pki_types::ServerName::try_from(sni).unwrap(), tcp)
                .await
                .unwrap();
            let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let resp = send
                .send_request(
                    Request::get("/")
                        .header("host", sni)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (served, status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (served, status, body) = https_get(HOST).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(served, hello_der, "the certificate for {HOST}");
    let (served, status, _) = https_get("other.default.localhost").await;
    assert_eq!(status, 200);
    assert_eq!(served, other_der, "SNI picks the other host's certificate");
    // On the same port, a mesh client (no SNI) gets mTLS with the router's SVID, and
    // plaintext is still served.
    let a = client(Some(&outbound(&pki.ca, "default", "a")));
    assert_eq!(call(&a, addr, "/").await, Ok((200, "ok".into())));
    assert_eq!(call(&client(None), addr, "/").await, Ok((200, "ok".into())));
    let text = r.registry.encode();
    assert!(
        text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/a\"")),
        "{text}"
    );
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
    /// The JSON access-log lines of hop `reporter`.
    fn access_lines(&self, reporter: &str) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains("sluice::access"))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l[l.find('{')?..]).ok())
            .filter(|v| v["reporter"] == reporter)
            .collect()
    }
}

/// An OTLP/HTTP collector on loopback: sends the spans of every export on the channel.
async fn collector() -> (String, mpsc::Receiver<Vec<serde_json::Value>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(tcp);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
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
                    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    reader.get_mut().write_all(reply.as_bytes()).await.unwrap();
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let _ = tx.send(spans).await;
                }
            });
        }
    });
    (endpoint, rx)
}

/// The value of string attribute `key` of an exported span.
fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test]
async fn the_activator_reports_its_own_hop_metrics_access_log_and_span() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish(),
    );
    let (endpoint, mut exported) = collector().await;
    let (spans, _export) =
        SpanExporter::spawn(OtlpConfig::new(&endpoint, "sluice-router")).unwrap();
    let pki = pki();
    let r = replica(&pki, STRICT, false).await;
    let p = plane_with(&pki, r.addr, true, Some(spans.clone())).await;
    let a = client(Some(&outbound(&pki.ca, "default", "a")));

    // Through router → activator → replica, in the caller's trace.
    let req = Request::get(format!("http://{}/work", p.addr))
        .header("host", HOST)
        .header("x-request-id", "activator-hop-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = a.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");

    // Istio's request metrics for the activator's hop: the source side of its hop to the
    // revision, the original caller as source, the replica's verified identity as
    // destination, over mTLS.
    let text = p.activator_registry.encode();
    let labels = "{reporter=\"source\",source_workload=\"a\",source_workload_namespace=\"default\",\
        source_principal=\"spiffe://cluster.local/ns/default/sa/a\",destination_workload=\"hello-00001\",\
        destination_workload_namespace=\"default\",destination_service=\"hello.default.localhost\",\
        destination_principal=\"spiffe://cluster.local/ns/default/sa/hello\",\
        destination_revision=\"hello-00001\",request_protocol=\"http\",\
        response_code=\"200\",grpc_response_status=\"\",connection_security_policy=\"mutual_tls\"}";
    assert!(
        text.lines()
            .any(|l| l == format!("istio_requests_total{labels} 1")),
        "{text}"
    );
    for family in ["istio_request_bytes", "istio_response_bytes"] {
        assert!(
            text.lines()
                .any(|l| l == format!("{family}_count{labels} 1")),
            "{family}: {text}"
        );
    }
    assert!(
        text.lines().any(|l| l
            .starts_with("istio_request_duration_milliseconds_bucket{reporter=\"source\"")
            && l.contains("destination_revision=\"hello-00001\"")
            && l.contains("le=\"+Inf\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    // Knative's queue depth at the activator: back to zero once the response ended.
    assert!(
        text.lines().any(|l| l
            == "revision_queue_depth{namespace_name=\"default\",service_name=\"unknown\",\
                configuration_name=\"unknown\",revision_name=\"hello-00001\",pod_name=\"activator\",\
                container_name=\"activator\"} 0"),
        "{text}"
    );
    // The router's registry has its own hop only (one request), named
    // with the revision it routed to.
    let router_text = p.router_registry.encode();
    let router_lines: Vec<&str> = router_text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(router_lines.len(), 1, "{router_text}");
    assert!(
        router_lines[0].contains("reporter=\"source\"")
            && router_lines[0].contains("destination_revision=\"hello-00001\"")
            && router_lines[0].ends_with(" 1"),
        "{router_text}"
    );

    // One access-log line for the activator's hop.
    let lines = logs.access_lines("activator");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["request_id"], "activator-hop-1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/work");
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["bytes_sent"], 2);
    assert_eq!(line["revision"], "hello-00001");
    assert_eq!(
        line["source_principal"],
        "spiffe://cluster.local/ns/default/sa/a"
    );
    assert_eq!(line["connection_security_policy"], "mutual_tls");
    assert_eq!(
        line["destination_principal"],
        "spiffe://cluster.local/ns/default/sa/hello"
    );
    assert_eq!(line["upstream_host"], r.addr.to_string());

    // Its span is the router's child, in the caller's trace, and is the span it logged.
    spans.flush().await;
    let mut got = Vec::new();
    while !(got
        .iter()
        .any(|s| attribute(s, "sluice.reporter") == Some("router"))
        && got
            .iter()
            .any(|s| attribute(s, "sluice.reporter") == Some("activator")))
    {
        got.extend(exported.recv().await.unwrap());
    }
    let by = |hop: &str| {
        got.iter()
            .find(|s| attribute(s, "sluice.reporter") == Some(hop))
            .unwrap()
            .clone()
    };
    let (router_span, activator_span) = (by("router"), by("activator"));
    assert_eq!(router_span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(router_span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(
        activator_span["traceId"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(activator_span["parentSpanId"], router_span["spanId"]);
    assert_eq!(activator_span["spanId"], line["span_id"]);
    assert_eq!(activator_span["name"], "activator GET");
    assert_eq!(
        attribute(&activator_span, "sluice.revision"),
        Some("hello-00001")
    );
}
