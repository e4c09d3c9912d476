//! Kubernetes mode's certificate issuance over real sockets and TLS handshakes: the CA's
//! HTTPS service with a table of tokens standing in for TokenReview (the TokenReview
//! authenticator is tested against a real API server in the Kubernetes tier), the workload's
//! client, renewal, mTLS between two remotely issued identities, and every refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, SanType};
use sluice_mesh::handoff::{WorkloadInfo, WorkloadMesh};
use sluice_mesh::identity::{CertificateAuthority, RotationConfig, SpiffeId, TrustBundle};
use sluice_mesh::issuance::policies::{FollowConfig, fetch_policies};
use sluice_mesh::issuance::{
    AuthError, CERTIFICATES_PATH, ErrorBody, IssueError, POLICIES_PATH, PolicyObject,
    PolicyPublisher, RemoteCa, ServiceAccountRef, TokenAuthenticator, remote_identity,
    request_certificate, serve, serve_with_policies,
};
use sluice_mesh::tls::PeerAuthMode;
use sluice_mesh::tls::{ExpectedServer, MeshAcceptor, MeshConnector, MeshStream, MeshTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use x509_parser::prelude::FromDer;

const TD: &str = "cluster.local";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-issuance-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes a token file (as kubelet would) and returns its path.
    fn token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tokens → ServiceAccounts; `down` means the API server is unreachable.
struct Tokens(HashMap<&'static str, (&'static str, &'static str)>);

impl TokenAuthenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ServiceAccountRef, AuthError>> + Send + 'a>> {
        Box::pin(async move {
            if token == "down" {
                return Err(AuthError::Unavailable("API server unreachable".into()));
            }
            self.0
                .get(token)
                .map(|(ns, sa)| ServiceAccountRef {
                    namespace: (*ns).into(),
                    name: (*sa).into(),
                })
                .ok_or_else(|| AuthError::Rejected("unknown token".into()))
        })
    }
}

struct Ca {
    addr: SocketAddr,
    ca: Arc<CertificateAuthority>,
    policies: Arc<PolicyPublisher>,
    bundle: Arc<TrustBundle>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Ca {
    async fn start(workload_ttl: Duration) -> Self {
        let (ca, _) =
            CertificateAuthority::generate(TD, Duration::from_secs(24 * 3600), workload_ttl)
                .unwrap();
        let ca = Arc::new(ca);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = Tokens(HashMap::from([
            ("tok1", ("ns1", "sa1")),
            ("tok2", ("ns2", "sa2")),
        ]));
        let (stop, stopped) = oneshot::channel::<()>();
        let policies = Arc::new(PolicyPublisher::new("sluice-system"));
        // Known (empty) from the start, as a controller's after its first listing.
        policies.publish(Vec::new());
        let server = tokio::spawn(serve_with_policies(
            listener,
            ca.clone(),
            SpiffeId::new(TD, "sluice-system", "sluice-controller").unwrap(),
            Arc::new(tokens),
            Some(policies.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            policies,
            bundle: Arc::new(ca.trust_bundle().unwrap()),
            ca,
            stop: Some(stop),
            server: Some(server),
        }
    }

    fn remote(&self, token_file: PathBuf) -> RemoteCa {
        RemoteCa {
            addr: self.addr.to_string(),
            token_file,
            bundle: self.bundle.clone(),
        }
    }

    /// Stops the server and checks it returned cleanly.
    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.server.take().unwrap().await.unwrap().unwrap();
    }
}

fn sa(ns: &str, name: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, name).unwrap()
}

fn csr_pem(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn certificate_request(csr: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "csr": csr })).unwrap()
}

/// An HTTPS connection to the CA that presents no client certificate.
async fn tls_to(ca: &Ca) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config =
        MeshTls::anonymous_client_config(ca.bundle.clone(), ExpectedServer::AnyInTrustDomain)
            .unwrap();
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(ca.addr).await.unwrap();
    let (tls, server) = MeshConnector::new(Arc::new(config))
        .connect(tcp)
        .await
        .unwrap();
    assert_eq!(server, sa("sluice-system", "sluice-controller"));
    tls
}

/// One request over a fresh connection; the status and the JSON error text (or the body).
async fn call(
    ca: &Ca,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, http::HeaderMap, String) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_to(ca).await))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sluice-ca")
        .header("content-type", "application/json");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(error) => error.error,
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    };
    (status, headers, text)
}

fn serial(cert: &[u8]) -> String {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).unwrap();
    parsed.raw_serial_as_string()
}

fn public_key(cert: &[u8]) -> Vec<u8> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).unwrap();
    parsed.public_key().subject_public_key.data.to_vec()
}

#[tokio::test]
async fn the_token_decides_the_identity_and_the_key_never_leaves_the_workload() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let dir = TempDir::new();
    let token = dir.token("token", "tok1");
    let remote = ca.remote(token.clone());
    let svid = request_certificate(&remote, None).await.unwrap();
    assert_eq!(
        svid.id().to_string(),
        "spiffe://cluster.local/ns/ns1/sa/sa1"
    );
    // The certificate certifies the key the client generated and still holds.
    let held = KeyPair::try_from(svid.key_der().secret_pkcs8_der()).unwrap();
    assert_eq!(public_key(svid.cert_der()), held.public_key_raw());
    assert_eq!(svid.lifetime(), Duration::from_secs(3600));

    // The token file is read for every request: kubelet's rewrite is picked up.
    std::fs::write(&token, "tok2").unwrap();
    let shorter = request_certificate(&remote, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(shorter.id(), &sa("ns2", "sa2"));
    assert_eq!(shorter.lifetime(), Duration::from_secs(60));
    ca.stop().await;
}

#[tokio::test]
async fn two_remotely_issued_workloads_talk_mtls_and_see_each_others_ids() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let dir = TempDir::new();
    let (server_id, _server_task) = remote_identity(
        ca.remote(dir.token("server", "tok1")),
        RotationConfig::new(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    // The client side through the Pod loader's path (default policies, info from the SVID).
    let (client_mesh, _client_task) = WorkloadMesh::remote(
        ca.remote(dir.token("client", "tok2")),
        WorkloadInfo {
            trust_domain: TD.into(),
            attesters: vec!["spiffe://cluster.local/ns/ns1/sa/sa1".into()],
            ..WorkloadInfo::default()
        },
        RotationConfig::new(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(client_mesh.info.namespace, "ns2");
    assert_eq!(client_mesh.attesters, vec![sa("ns1", "sa1")]);
    // Default policies: PERMISSIVE, and no authorization policy to match.
    let workload = client_mesh.info.workload();
    let policies = client_mesh.policies.borrow().clone();
    assert_eq!(
        policies.peer.mode_for(&workload, 8080),
        PeerAuthMode::Permissive
    );
    assert!(policies.authorization.unmatched_policies(&[]).is_empty());

    let server_tls = MeshTls::new(ca.bundle.clone(), server_id);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MeshAcceptor::new(server_tls.server_config().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (stream, peer) = acceptor.accept(tcp, PeerAuthMode::Strict).await.unwrap();
        let MeshStream::Tls(mut tls) = stream else {
            panic!("STRICT gave a plaintext stream");
        };
        let mut line = [0u8; 5];
        tls.read_exact(&mut line).await.unwrap();
        tls.write_all(b"pong\n").await.unwrap();
        tls.shutdown().await.unwrap();
        peer.identity
    });
    let connector = MeshConnector::new(
        client_mesh
            .tls
            .client_config(ExpectedServer::Exactly(sa("ns1", "sa1")))
            .unwrap(),
    );
    let (mut tls, seen_server) = connector
        .connect(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    tls.write_all(b"ping\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "pong\n");
    assert_eq!(seen_server, sa("ns1", "sa1"));
    assert_eq!(server.await.unwrap(), Some(sa("ns2", "sa2")));
    ca.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_names_what_was_wrong() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let good = certificate_request(&csr_pem(vec![]));
    let post = |auth: Option<&'static str>, body: Vec<u8>| {
        let ca = &ca;
        async move { call(ca, Method::POST, CERTIFICATES_PATH, auth, body).await }
    };

    // The good request first, so every refusal below differs from it in one thing.
    let (status, _, body) = post(Some("Bearer tok1"), good.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["trustBundle"][0].as_str().unwrap(), ca.ca.root_pem());
    assert!(
        answer["certificateChain"][0]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    let cases: Vec<(Option<&'static str>, Vec<u8>, StatusCode, &str)> = vec![
        (
            None,
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "Authorization header missing",
        ),
        (
            Some("Basic dG9rMQ=="),
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "Bearer",
        ),
        (
            Some("Bearer "),
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "Bearer",
        ),
        (
            Some("Bearer nope"),
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "unknown token",
        ),
        (
            Some("Bearer down"),
            good.clone(),
            StatusCode::SERVICE_UNAVAILABLE,
            "API server unreachable",
        ),
        (
            Some("Bearer tok1"),
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "body:",
        ),
        (
            Some("Bearer tok1"),
            br#"{"csr": 42}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "at csr",
        ),
        (
            Some("Bearer tok1"),
            br#"{"csr": "x", "ttl": 5}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "unknown field `ttl`",
        ),
        (
            Some("Bearer tok1"),
            certificate_request(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ),
            StatusCode::BAD_REQUEST,
            "csr: not a DER PKCS#10",
        ),
        (
            Some("Bearer tok1"),
            serde_json::to_vec(&serde_json::json!({
                "csr": csr_pem(vec![]), "ttlSeconds": 0
            }))
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "ttlSeconds",
        ),
        (
            Some("Bearer tok1"),
            certificate_request(&csr_pem(vec![SanType::URI(
                "spiffe://cluster.local/ns/ns1/sa/admin".try_into().unwrap(),
            )])),
            StatusCode::FORBIDDEN,
            "URI:spiffe://cluster.local/ns/ns1/sa/admin is not allowed",
        ),
        (
            Some("Bearer tok1"),
            vec![b' '; 100 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 65536 bytes",
        ),
    ];
    for (auth, body, expected, says) in cases {
        let (status, headers, error) = post(auth, body).await;
        assert_eq!(status, expected, "{auth:?}: {error}");
        assert!(error.contains(says), "{auth:?}: {error:?} lacks {says:?}");
        assert!(
            !error.contains("tok1"),
            "the token is never echoed: {error}"
        );
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
    }

    let (status, headers, error) = call(
        &ca,
        Method::GET,
        CERTIFICATES_PATH,
        Some("Bearer tok1"),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{error}");
    assert_eq!(headers["allow"], "POST");
    let (status, _, error) = call(&ca, Method::POST, "/v1/nope", Some("Bearer tok1"), good).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert!(error.contains("/v1/nope"), "{error}");

    // A body with no declared length is cut off at the limit too.
    let mut tls = tls_to(&ca).await;
    let chunk = vec![b' '; 16 * 1024];
    let head = format!(
        "POST {CERTIFICATES_PATH} HTTP/1.1\r\nhost: sluice-ca\r\nauthorization: Bearer tok1\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    for _ in 0..8 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if tls.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    ca.stop().await;
}

#[tokio::test]
async fn serves_http2_when_alpn_picks_it() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let config =
        MeshTls::anonymous_client_config(ca.bundle.clone(), ExpectedServer::AnyInTrustDomain)
            .unwrap();
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(ca.addr).await.unwrap();
    let (tls, _) = MeshConnector::new(Arc::new(config))
        .connect(tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = Request::post(format!("https://sluice-ca{CERTIFICATES_PATH}"))
        .header("authorization", "Bearer tok2")
        .body(Full::new(Bytes::from(certificate_request(&csr_pem(
            vec![],
        )))))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let leaf = answer["certificateChain"][0].as_str().unwrap();
    let der = pem_der(leaf);
    let id = ca
        .bundle
        .verify(
            &der,
            sluice_mesh::identity::Usage::Client,
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap();
    assert_eq!(id, sa("ns2", "sa2"));
    ca.stop().await;
}

/// The DER of a one-certificate PEM text.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[tokio::test]
async fn client_errors_name_the_token_file_the_address_and_the_cas_answer() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let dir = TempDir::new();

    let missing = dir.0.join("no-token");
    let err = request_certificate(&ca.remote(missing.clone()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, IssueError::Token { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let err = request_certificate(&ca.remote(dir.token("empty", " ")), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let err = request_certificate(&ca.remote(dir.token("unknown", "nope")), None)
        .await
        .unwrap_err();
    match &err {
        IssueError::Status {
            status, message, ..
        } => {
            assert_eq!(*status, 401);
            assert!(message.contains("unknown token"), "{message}");
        }
        other => panic!("expected a 401, got {other}"),
    }
    assert!(err.to_string().contains(&ca.addr.to_string()), "{err}");

    // Nobody listens on a port that was just released.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let mut remote = ca.remote(dir.token("tok", "tok1"));
    remote.addr = closed_addr.to_string();
    let err = request_certificate(&remote, None).await.unwrap_err();
    assert!(matches!(err, IssueError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&closed_addr.to_string()), "{err}");
    ca.stop().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let dir = TempDir::new();
    let (other, _) =
        CertificateAuthority::generate(TD, Duration::from_secs(3600 * 2), Duration::from_secs(60))
            .unwrap();
    let remote = RemoteCa {
        addr: ca.addr.to_string(),
        token_file: dir.token("token", "tok1"),
        bundle: Arc::new(other.trust_bundle().unwrap()),
    };
    let err = request_certificate(&remote, None).await.unwrap_err();
    assert!(matches!(err, IssueError::Handshake { .. }), "{err}");
    ca.stop().await;
}

#[tokio::test]
async fn the_remote_identity_renews_before_expiry_with_a_new_certificate() {
    // Two-second certificates: renewal at 0.8–1 s of real time.
    let ca = Ca::start(Duration::from_secs(2)).await;
    let dir = TempDir::new();
    let mut config = RotationConfig::new(Duration::from_secs(2));
    config.retry_min = Duration::from_millis(100);
    config.retry_max = Duration::from_millis(400);
    let (mut holder, task) = remote_identity(ca.remote(dir.token("token", "tok1")), config)
        .await
        .unwrap();
    let reader = holder.clone();
    let mut serials = vec![serial(holder.current().cert_der())];
    for _ in 0..2 {
        // A deadline against a hang, not a synchronization: `changed` is the signal.
        let renewed = tokio::time::timeout(Duration::from_secs(60), holder.changed())
            .await
            .expect("no renewal within a minute of 2 s certificates");
        assert!(renewed);
        let current = reader.current();
        assert_eq!(current.id(), &sa("ns1", "sa1"));
        assert_eq!(current.lifetime(), Duration::from_secs(2));
        let serial = serial(current.cert_der());
        assert!(!serials.contains(&serial), "{serial} issued twice");
        serials.push(serial);
    }
    drop(holder);
    drop(reader);
    // Every holder gone: the renewal task ends by itself.
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
    ca.stop().await;
}

/// Set in the child process of [`from_env_in_a_pod_environment`].
const CHILD_ENV: &str = "SLUICE_ISSUANCE_TEST_CHILD";

/// `WorkloadMesh::from_vars` as a Pod runs it (over its process environment): the test re-runs itself as a child process with
/// the Pod's environment (the parent's own environment is never modified), and the child
/// prints what it loaded.
#[tokio::test]
async fn from_env_in_a_pod_environment() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let vars = sluice_mesh::vars::Vars::new(std::env::vars_os());
        let (mesh, _task) = WorkloadMesh::from_vars(&vars).await.unwrap().unwrap();
        let id = mesh.tls.identity().current().id().to_string();
        println!(
            "LOADED {}",
            serde_json::json!({
                "id": id,
                "namespace": mesh.info.namespace,
                "pod": mesh.info.pod,
                "revision": mesh.info.revision,
                "labels": mesh.info.labels,
                "attesters": mesh.attesters.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        );
        return;
    }
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let dir = TempDir::new();
    let token = dir.token("token", "tok1");
    // A ConfigMap volume's file: world-readable, and that is fine for a root certificate.
    let root = dir.0.join("root-cert.pem");
    std::fs::write(&root, ca.ca.root_pem()).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "from_env_in_a_pod_environment", "--nocapture"])
            .env(CHILD_ENV, "1")
            .env_remove("SLUICE_MESH_DIR")
            .env("SLUICE_MESH_CA_ADDR", ca.addr.to_string())
            .env("SLUICE_MESH_TOKEN_FILE", &token)
            .env("SLUICE_MESH_ROOT_FILE", &root)
            .env("POD_NAMESPACE", "ns1")
            .env("POD_NAME", "hello-00001-deployment-abc")
            .env("K_SERVICE", "hello")
            .env("K_CONFIGURATION", "hello")
            .env("K_REVISION", "hello-00001")
            .env(
                "SLUICE_MESH_LABELS",
                r#"{"app":"hello","serving.knative.dev/service":"hello"}"#,
            )
            .env(
                "SLUICE_MESH_ATTESTERS",
                "spiffe://cluster.local/ns/sluice-system/sa/router",
            )
            .kill_on_drop(true);
        for (k, v) in extra {
            child.env(k, v);
        }
        child.output()
    };
    let output = run(&[]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let loaded: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOADED "))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_else(|| panic!("child printed nothing loaded: {stdout}"));
    assert_eq!(loaded["id"], "spiffe://cluster.local/ns/ns1/sa/sa1");
    assert_eq!(loaded["namespace"], "ns1");
    assert_eq!(loaded["pod"], "hello-00001-deployment-abc");
    assert_eq!(loaded["revision"], "hello-00001");
    assert_eq!(loaded["labels"]["serving.knative.dev/service"], "hello");
    assert_eq!(loaded["labels"]["app"], "hello");
    assert_eq!(
        loaded["labels"]["serving.knative.dev/revision"],
        "hello-00001"
    );

    // Labels that are not a JSON object of strings are refused, naming the variable.
    let output = run(&[("SLUICE_MESH_LABELS", r#"{"app": 1}"#)])
        .await
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("SLUICE_MESH_LABELS") && text.contains("not a JSON object"),
        "{text}"
    );
    assert_eq!(
        loaded["attesters"],
        serde_json::json!(["spiffe://cluster.local/ns/sluice-system/sa/router"])
    );

    // A bad attester is refused, naming the variable.
    let output = run(&[("SLUICE_MESH_ATTESTERS", "router")]).await.unwrap();
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("$SLUICE_MESH_ATTESTERS"), "{text}");
    ca.stop().await;
}

// ---- policy distribution (GET /v1/policies) ----

fn policy(kind: &str, ns: &str, name: &str, spec: &str) -> PolicyObject {
    let api = if kind == "PeerAuthentication" {
        "security.istio.io/v1beta1"
    } else {
        "security.istio.io/v1"
    };
    PolicyObject {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
        manifest: format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec: {spec}\n"
        ),
    }
}

/// An identity of ServiceAccount ns1/sa1 from the CA, as a replica holds it.
async fn workload_tls(ca: &Ca, dir: &TempDir) -> MeshTls {
    let (svid, _task) = remote_identity(
        ca.remote(dir.token("policy-client", "tok1")),
        RotationConfig::new(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    MeshTls::new(ca.bundle.clone(), svid)
}

#[tokio::test]
async fn policies_need_the_workloads_certificate() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    // No client certificate: 401, naming what is needed.
    let (status, _, error) = call(&ca, Method::GET, POLICIES_PATH, None, Vec::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error.contains("SVID"), "{error}");
    // A token is not a certificate.
    let (status, _, _) = call(
        &ca,
        Method::GET,
        POLICIES_PATH,
        Some("Bearer tok1"),
        Vec::new(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // CSR bootstrap without a certificate still works on the same port.
    let dir = TempDir::new();
    request_certificate(&ca.remote(dir.token("t", "tok1")), None)
        .await
        .unwrap();
    // A certificate from another CA fails the handshake.
    let (other, _) =
        CertificateAuthority::generate(TD, Duration::from_secs(7200), Duration::from_secs(3600))
            .unwrap();
    let foreign = other.issue_default(&sa("ns1", "sa1")).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(foreign));
    let foreign_tls = MeshTls::new(
        ca.bundle.clone(),
        sluice_mesh::identity::RotatingSvid::from_receiver(rx),
    );
    let err = fetch_policies(
        &ca.addr.to_string(),
        &foreign_tls,
        None,
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, IssueError::Handshake { .. } | IssueError::Http { .. }),
        "{err}"
    );
    drop(tx);
    ca.stop().await;
}

#[tokio::test]
async fn a_workload_gets_its_namespaces_and_the_root_namespaces_policies() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    ca.policies.publish(vec![
        policy("AuthorizationPolicy", "ns1", "mine", "{action: ALLOW}"),
        policy("AuthorizationPolicy", "ns2", "theirs", "{action: DENY}"),
        policy(
            "PeerAuthentication",
            "sluice-system",
            "mesh",
            "{mtls: {mode: STRICT}}",
        ),
    ]);
    let dir = TempDir::new();
    let tls = workload_tls(&ca, &dir).await;
    let addr = ca.addr.to_string();
    let answer = fetch_policies(&addr, &tls, None, Duration::from_secs(1))
        .await
        .unwrap()
        .expect("a first request is answered");
    assert_eq!(answer.root_namespace, "sluice-system");
    assert!(
        answer.policies.contains("name: mine"),
        "{}",
        answer.policies
    );
    assert!(
        answer.policies.contains("name: mesh"),
        "{}",
        answer.policies
    );
    assert!(!answer.policies.contains("theirs"), "{}", answer.policies);
    // What is served parses as the replica parses it; the root namespace's STRICT applies.
    let parsed =
        sluice_mesh::handoff::Policies::parse_in(&answer.policies, &answer.root_namespace).unwrap();
    let workload = sluice_mesh::policy::Workload::new("ns1", []);
    assert_eq!(parsed.peer.mode_for(&workload, 8080), PeerAuthMode::Strict);
    ca.stop().await;
}

#[tokio::test]
async fn a_long_poll_returns_on_a_change_and_says_no_change_after_its_wait() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    let dir = TempDir::new();
    let tls = workload_tls(&ca, &dir).await;
    let addr = ca.addr.to_string();
    let first = fetch_policies(&addr, &tls, None, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.policies, "");
    // The current version and a one-second wait, no change: 304, no policies.
    let unchanged = fetch_policies(&addr, &tls, Some(&first.version), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(unchanged, None);
    // A long wait ends as soon as the policies change (whether the change lands before or
    // while the request waits, the answer is the new set).
    let waiting = {
        let (addr, tls, version) = (addr.clone(), tls.clone(), first.version.clone());
        tokio::spawn(async move {
            fetch_policies(&addr, &tls, Some(&version), Duration::from_secs(30)).await
        })
    };
    ca.policies
        .publish(vec![policy("AuthorizationPolicy", "ns1", "new", "{}")]);
    let changed = waiting
        .await
        .unwrap()
        .unwrap()
        .expect("a change is answered");
    assert_ne!(changed.version, first.version);
    assert!(changed.policies.contains("name: new"));
    // An unknown version (another CA replica's) is answered at once.
    let other = fetch_policies(&addr, &tls, Some("elsewhere-7"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(other.unwrap().version, changed.version);
    ca.stop().await;
}

#[tokio::test]
async fn a_remote_workload_starts_with_its_policies_and_follows_their_changes() {
    let ca = Ca::start(Duration::from_secs(3600)).await;
    ca.policies
        .publish(vec![policy("AuthorizationPolicy", "ns2", "deny-all", "{}")]);
    let dir = TempDir::new();
    let follow = FollowConfig {
        first_attempts: 2,
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        wait: Duration::from_secs(30),
    };
    let (mesh, _task) = WorkloadMesh::remote_with(
        ca.remote(dir.token("client", "tok2")),
        WorkloadInfo {
            trust_domain: TD.into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ..WorkloadInfo::default()
        },
        RotationConfig::new(Duration::from_secs(3600)),
        follow,
    )
    .await
    .unwrap();
    let workload = mesh.info.workload();
    let headers = http::HeaderMap::new();
    let request = sluice_mesh::policy::RequestAttributes {
        source: None,
        source_ip: None,
        method: "GET",
        path: "/",
        host: "web",
        port: 8080,
        headers: &headers,
    };
    let mut policies = mesh.policies.clone();
    // Known before the workload serves: the empty ALLOW policy denies everything.
    assert!(
        !policies
            .borrow_and_update()
            .authorization
            .evaluate(&workload, &request)
            .is_allowed()
    );
    // Deleted in the cluster: the follower publishes the new (empty) set.
    ca.policies.publish(Vec::new());
    tokio::time::timeout(Duration::from_secs(60), policies.changed())
        .await
        .expect("no policy update within a minute")
        .unwrap();
    assert!(
        policies
            .borrow_and_update()
            .authorization
            .evaluate(&workload, &request)
            .is_allowed()
    );
    ca.stop().await;
}

#[tokio::test]
async fn a_workload_does_not_start_when_the_ca_serves_no_policies() {
    let (ca, _) =
        CertificateAuthority::generate(TD, Duration::from_secs(7200), Duration::from_secs(3600))
            .unwrap();
    let ca = Arc::new(ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tokens = Tokens(HashMap::from([("tok1", ("ns1", "sa1"))]));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        ca.clone(),
        sa("sluice-system", "sluice-controller"),
        Arc::new(tokens),
        async move {
            let _ = stopped.await;
        },
    ));
    let dir = TempDir::new();
    let remote = RemoteCa {
        addr: addr.to_string(),
        token_file: dir.token("t", "tok1"),
        bundle: Arc::new(ca.trust_bundle().unwrap()),
    };
    let follow = FollowConfig {
        first_attempts: 2,
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(10),
        wait: Duration::from_secs(1),
    };
    let err = WorkloadMesh::remote_with(
        remote,
        WorkloadInfo {
            trust_domain: TD.into(),
            ..WorkloadInfo::default()
        },
        RotationConfig::new(Duration::from_secs(3600)),
        follow,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("security policies") && err.contains("404"),
        "{err}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
