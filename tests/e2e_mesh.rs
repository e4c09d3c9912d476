//! The mesh end to end with the real `sluice` binary: `sluice up` with a Service, a STRICT
//! `PeerAuthentication` and an `AuthorizationPolicy` in its manifest folder. The replica
//! (`sluice queue` in front of `sluice hello`) gets its identity over a private directory,
//! the router reaches it over mTLS, the policy is enforced at the replica on the caller the
//! router attests: a plaintext client gets 403, a mesh client with the allowed SVID gets
//! through. `sluice apply` of a new policy reaches the running replica. The admin
//! `/metrics` shows the router's and the replica's series with their labels.
//!
//! Waiting is event-driven (the admin API's long poll), except for a policy applied to a
//! running replica, which re-reads its policy file about once a second: that one is polled.

// This test drives another process in real time: the wall clock (std Instant) is the right
// clock here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{MeshHttpConnector, MeshTls};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const HOST: &str = "hello.default.localhost";
const WAIT: Duration = Duration::from_secs(90);

const MANIFESTS: &str = "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  template:
    metadata:
      labels: {app: hello}
    spec:
      serviceAccountName: hello-sa
      containers:
      - command: [sluice]
        args: [hello]
        env: [{name: TARGET, value: mesh}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-tester, namespace: default}
spec:
  selector: {matchLabels: {app: hello}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/tester]}
";

const DENY_SECRET: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secret, namespace: default}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: [/secret]}
";

struct Up {
    child: Child,
    router: SocketAddr,
    admin: SocketAddr,
    state_dir: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Up {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn up(dir: &Path) -> Up {
    up_with(dir, &[], &[])
}

fn up_with(dir: &Path, flags: &[&str], env: &[(&str, &str)]) -> Up {
    let log = dir.join("up.log");
    let mut child = Command::new(SLUICE)
        // Access logs are off by default; these tests read them.
        .args([
            "up",
            "--access-log",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--cert-ttl", "1h"])
        .args(flags)
        .arg(dir.join("manifests"))
        .env("SLUICE_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("sluice up starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut router, mut admin) = (None, None);
    while router.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(WAIT)
            .expect("sluice up announces its addresses");
        let addr = |l: &str| {
            l.rsplit("http://")
                .next()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap()
        };
        if line.starts_with("sluice: router listening on") {
            router = Some(addr(&line));
        } else if line.starts_with("sluice: admin API on") {
            admin = Some(addr(&line));
        }
    }
    Up {
        child,
        router: router.unwrap(),
        admin: admin.unwrap(),
        state_dir: dir.join("state"),
        log,
    }
}

/// One GET of the admin API, with the bearer token `sluice up` made in its state directory.
fn admin_get(up: &Up, path: &str) -> (u16, String) {
    let token = std::fs::read_to_string(up.state_dir.join("admin-token")).unwrap();
    let mut stream = TcpStream::connect(up.admin).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        up.admin,
        token.trim()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

/// One plaintext HTTP/1.1 request over a fresh connection.
fn http(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

fn wait_ready(up: &Up) {
    let deadline = std::time::Instant::now() + WAIT;
    let mut version = String::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "hello never became Ready\n{}",
            up.log()
        );
        let (status, body) = admin_get(
            up,
            &format!("/v1/ksvc/default/hello?after={version}&timeout=10"),
        );
        let obj: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let ready = obj["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if status == 200 && ready {
            return;
        }
        version = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
}

type MeshClient = Client<MeshHttpConnector, Full<Bytes>>;

/// A mesh client for `spiffe://cluster.local/ns/default/sa/<sa>`, its certificate issued by
/// the CA `sluice up` keeps in its state directory.
fn mesh_client(state: &Path, sa: &str) -> MeshClient {
    let ca = CertificateAuthority::load_or_create(&CaConfig::new(
        "cluster.local",
        state.join("mesh").join("ca"),
    ))
    .unwrap();
    let id = SpiffeId::new("cluster.local", "default", sa).unwrap();
    let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    let tls = MeshTls::new(
        Arc::new(ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(svid),
    );
    Client::builder(TokioExecutor::new()).build(OutboundMesh::new(tls).unwrap().http_connector())
}

async fn mesh_get(client: &MeshClient, addr: SocketAddr, path: &str) -> (u16, String) {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_up_enforces_policy_over_mtls_and_shows_every_hop_in_metrics() {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-mesh-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/hello.yaml"), MANIFESTS).unwrap();
    let up = up(&dir);
    wait_ready(&up);
    let state = dir.join("state");

    // The CA key is private; so is each replica's directory and certificate.
    assert_eq!(mode(&state.join("mesh/ca/ca.key")), 0o600);
    let replicas: Vec<_> = std::fs::read_dir(state.join("mesh/replicas"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    assert_eq!(mode(&replicas[0]), 0o700);
    assert_eq!(mode(&replicas[0].join("svid.pem")), 0o600);
    let workload = std::fs::read_to_string(replicas[0].join("workload.json")).unwrap();
    assert!(workload.contains("\"app\": \"hello\""), "{workload}");

    // A plaintext client is nobody: the policy (enforced at the replica) refuses it.
    let (status, body) = http(up.router, HOST, "/");
    assert_eq!(
        (status, body.as_str()),
        (403, "RBAC: access denied"),
        "{}",
        up.log()
    );
    // The allowed identity, over mTLS to the router, is attested to the replica.
    let tester = mesh_client(&state, "tester");
    let (status, body) = mesh_get(&tester, up.router, "/").await;
    assert_eq!(status, 200, "{body}\n{}", up.log());
    assert!(body.contains("mesh"), "{body}");
    // The replica decided on the attested caller; `sluice hello` lists the headers it got,
    // and none of the mesh's own is among them.
    assert!(!body.contains("x-sluice-"), "{body}");
    let (status, _) = mesh_get(&mesh_client(&state, "intruder"), up.router, "/").await;
    assert_eq!(status, 403);

    // `sluice apply` of a new policy reaches the running replica (DENY before ALLOW).
    let deny = dir.join("deny.yaml");
    std::fs::write(&deny, DENY_SECRET).unwrap();
    let out = Command::new(SLUICE)
        .args(["apply", "--server", &format!("http://{}", up.admin), "-f"])
        .arg(&deny)
        .arg("--state-dir")
        .arg(&up.state_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("authorizationpolicy.security.istio.io/no-secret created"),
        "{said}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = mesh_get(&tester, up.router, "/secret").await;
        if status == 403 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the DENY policy never arrived"
        );
        // The replica re-reads its policy file about once a second.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mesh_get(&tester, up.router, "/").await.0, 200);

    // One scrape of the admin port sees the router and the replica.
    let (status, metrics) = admin_get(&up, "/metrics");
    assert_eq!(status, 200);
    let has = |needles: &[&str]| {
        metrics
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        has(&[
            "istio_requests_total{",
            "reporter=\"destination\"",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/tester\"",
            "destination_principal=\"spiffe://cluster.local/ns/default/sa/hello-sa\"",
            "response_code=\"200\"",
            "connection_security_policy=\"mutual_tls\"",
        ]),
        "{metrics}"
    );
    assert!(
        has(&[
            "istio_requests_total{",
            "reporter=\"source\"",
            "response_code=\"403\""
        ]),
        "{metrics}"
    );
    assert!(
        has(&[
            "revision_request_count{",
            "revision_name=\"hello-00001\"",
            "container_name=\"queue\""
        ]),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .matches("# TYPE istio_requests_total counter")
            .count(),
        1,
        "families merged"
    );
    // One JSON access-log line per request, the replica's included.
    let log = up.log();
    assert!(
        log.lines().any(|l| l.contains("\"reporter\":\"queue\"")
            && l.contains("\"source_principal\":\"spiffe://cluster.local/ns/default/sa/tester\"")),
        "{log}"
    );
    drop(up);
    let _ = std::fs::remove_dir_all(dir);
}

/// `sluice model-server` with a private mesh directory (as `sluice up` hands it over) and an
/// extra `--grpc-listen` port.
struct ModelServer {
    child: Child,
    listen: SocketAddr,
    grpc: SocketAddr,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn model_server(mesh_dir: &Path, log: &Path) -> ModelServer {
    let iris = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
    let mut child = Command::new(SLUICE)
        .args(["model-server", "--model-name", "iris", "--storage-uri"])
        .arg(&iris)
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .env("SLUICE_MESH_DIR", mesh_dir)
        .env("K_REVISION", "iris-00001")
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("sluice model-server starts");
    let stdout = child.stdout.take().unwrap();
    let (mut listen, mut grpc) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("SLUICE_LISTENING ") {
            listen = Some(a.parse().unwrap());
        } else if let Some(a) = line.strip_prefix("SLUICE_GRPC_LISTENING ") {
            grpc = Some(a.parse().unwrap());
        } else if line == "SLUICE_READY" {
            break;
        }
    }
    ModelServer {
        child,
        listen: listen.unwrap_or_else(|| panic!("{}", std::fs::read_to_string(log).unwrap())),
        grpc: grpc.unwrap_or_else(|| panic!("{}", std::fs::read_to_string(log).unwrap())),
    }
}

/// The model server's extra gRPC port is behind the same mesh gate as its main port:
/// STRICT refuses plaintext at the TLS layer, the ALLOW policy admits one principal and
/// refuses another with 403, and its requests land in the replica's metrics with the caller
/// and `mutual_tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_server_grpc_port_is_behind_the_mesh_gate() {
    use sluice_mesh::handoff::{Handoff, WorkloadInfo};
    let dir = std::env::temp_dir().join(format!("sluice-ms-mesh-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.join("ca")))
        .unwrap();
    let handoff = Handoff::create(&dir.join("replica")).unwrap();
    handoff.write_bundle(&ca.root_pem()).unwrap();
    let me = SpiffeId::new("cluster.local", "default", "iris-sa").unwrap();
    handoff
        .write_svid(&ca.issue(&me, Duration::from_secs(3600)).unwrap())
        .unwrap();
    handoff
        .write_workload(&WorkloadInfo {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service: "iris".into(),
            configuration: "iris".into(),
            revision: "iris-00001".into(),
            pod: "iris-00001-a".into(),
            labels: [("app".to_owned(), "iris".to_owned())].into(),
            attesters: Vec::new(),
        })
        .unwrap();
    handoff
        .write_policies(
            "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-tester, namespace: default}
spec:
  selector: {matchLabels: {app: iris}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/tester]}
",
        )
        .unwrap();
    let log = dir.join("model-server.log");
    let server = model_server(handoff.dir(), &log);
    assert_ne!(server.grpc, server.listen);

    // Plaintext is refused at the TLS layer on the gRPC port, as on the main port.
    for addr in [server.listen, server.grpc] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let _ = stream
            .write_all(b"GET /v2/models/iris HTTP/1.1\r\nHost: iris\r\nConnection: close\r\n\r\n");
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        assert!(
            !String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"),
            "plaintext served on {addr}"
        );
    }

    let client = |sa: &str| {
        let id = SpiffeId::new("cluster.local", "default", sa).unwrap();
        let tls = MeshTls::new(
            Arc::new(ca.trust_bundle().unwrap()),
            RotatingSvid::fixed(ca.issue(&id, Duration::from_secs(3600)).unwrap()),
        );
        Client::builder(TokioExecutor::new())
            .build::<_, Full<Bytes>>(OutboundMesh::new(tls).unwrap().http_connector())
    };
    let (tester, intruder) = (client("tester"), client("intruder"));
    let (status, body) = mesh_get(&tester, server.grpc, "/v2/models/iris/ready").await;
    assert_eq!(
        status,
        200,
        "{body}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let (status, body) = mesh_get(&intruder, server.grpc, "/v2/models/iris/ready").await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));

    // Both ports record into the replica's one registry.
    let (status, metrics) = mesh_get(&tester, server.listen, "/sluice/metrics").await;
    assert_eq!(status, 200);
    let has = |needles: &[&str]| {
        metrics
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        has(&[
            "istio_requests_total{",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/tester\"",
            "destination_principal=\"spiffe://cluster.local/ns/default/sa/iris-sa\"",
            "response_code=\"200\"",
            "connection_security_policy=\"mutual_tls\"",
        ]),
        "{metrics}"
    );
    assert!(
        has(&[
            "istio_requests_total{",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/intruder\"",
            "response_code=\"403\"",
        ]),
        "{metrics}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// An OTLP/HTTP collector on loopback: answers every POST 200 and sends each body on.
async fn collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(tcp);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let mut length = 0;
                loop {
                    line.clear();
                    reader.read_line(&mut line).await.unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).await.unwrap();
                reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tx.send(serde_json::from_slice(&body).unwrap());
            });
        }
    });
    (endpoint, rx)
}

const HELLO_ONLY: &str = "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  template:
    spec:
      containers:
      - command: [sluice]
        args: [hello]
";

/// A Service whose requests always go through the activator (Knative's
/// `target-burst-capacity: "-1"`).
const HELLO_VIA_ACTIVATOR: &str = "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/target-burst-capacity: \"-1\"}
    spec:
      containers:
      - command: [sluice]
        args: [hello]
";

/// `sluice up --otlp-endpoint`: the router, the activator and the replica (its queue layer,
/// a process of its own) each export a span for one request, in the caller's trace: the
/// router's span is the caller's child, the activator's the router's, the replica's the
/// activator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_up_exports_a_span_per_hop_in_one_trace() {
    let (endpoint, mut spans_rx) = collector().await;
    let dir = std::env::temp_dir().join(format!("sluice-e2e-otlp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/hello.yaml"), HELLO_VIA_ACTIVATOR).unwrap();
    let up = up_with(
        &dir,
        &["--otlp-endpoint", &endpoint],
        // Replicas inherit the batching delay; the endpoint reaches them from the flag.
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    wait_ready(&up);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut stream = TcpStream::connect(up.router).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {HOST}\r\ntraceparent: 00-{trace}-{caller_span}-01\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}\n{}", up.log());

    // Collect this trace's spans until both hops reported.
    let mut found: Vec<(String, Value)> = Vec::new();
    let has = |found: &[(String, Value)], reporter: &str| {
        found.iter().any(|(_, s)| {
            s["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["key"] == "sluice.reporter" && a["value"]["stringValue"] == reporter)
        })
    };
    while !(has(&found, "router") && has(&found, "activator") && has(&found, "queue")) {
        let body = tokio::time::timeout(WAIT, spans_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("spans missing: {found:?}\n{}", up.log()))
            .unwrap();
        for rs in body["resourceSpans"].as_array().unwrap() {
            let service = rs["resource"]["attributes"][0]["value"]["stringValue"]
                .as_str()
                .unwrap()
                .to_owned();
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for span in ss["spans"].as_array().unwrap() {
                    if span["traceId"] == trace {
                        found.push((service.clone(), span.clone()));
                    }
                }
            }
        }
    }
    let span_of =
        |reporter: &str| {
            found
                .iter()
                .find(|(_, s)| {
                    s["attributes"].as_array().unwrap().iter().any(|a| {
                        a["key"] == "sluice.reporter" && a["value"]["stringValue"] == reporter
                    })
                })
                .unwrap()
                .clone()
        };
    let (router_service, router) = span_of("router");
    let (activator_service, activator) = span_of("activator");
    let (replica_service, replica) = span_of("queue");
    assert_eq!(router_service, "sluice-router");
    assert_eq!(
        activator_service, "sluice-router",
        "router and activator share a process"
    );
    assert_eq!(replica_service, "hello");
    assert_eq!(router["parentSpanId"], caller_span, "{found:?}");
    assert_eq!(activator["parentSpanId"], router["spanId"], "{found:?}");
    assert_eq!(replica["parentSpanId"], activator["spanId"], "{found:?}");
    assert_eq!(found.len(), 3, "one span per hop: {found:?}");
    for (_, s) in [
        &(router_service, router),
        &(activator_service, activator),
        &(replica_service, replica),
    ] {
        assert!(
            s["attributes"].as_array().unwrap().iter().any(|a| {
                a["key"] == "http.response.status_code" && a["value"]["intValue"] == "200"
            }),
            "{s}"
        );
    }
    // Each exporter's counts are on the admin port's one scrape (replicas' included).
    let (status, metrics) = admin_get(&up, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("sluice_otlp_spans_total{outcome=\"exported\",pod=\"sluice-up\"}"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("sluice_otlp_spans_total{outcome=\"dropped\",pod=\"hello-00001-")
        ),
        "{metrics}"
    );
    // So is the in-process activator's hop: the source side of its mTLS hop to the revision.
    assert!(
        metrics.lines().any(
            |l| l.starts_with("istio_requests_total{reporter=\"source\"")
                && l.contains("destination_revision=\"hello-00001\"")
                && l.contains("response_code=\"200\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("revision_queue_depth{")
                && l.contains("revision_name=\"hello-00001\"")
                && l.contains("pod_name=\"activator\"")),
        "{metrics}"
    );
    drop(up);
    let _ = std::fs::remove_dir_all(dir);
}

fn sluice(args: &[&str], up: &Up) -> (bool, String, String) {
    let out = Command::new(SLUICE)
        .args(args)
        .args(["--server", &format!("http://{}", up.admin)])
        .arg("--state-dir")
        .arg(&up.state_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Security policies through `sluice apply`, `get` and `delete`: malformed and
/// unknown-version manifests are refused with field paths (nothing stored); a policy whose
/// selector matches no workload is stored with a warning; one matching the Service is not
/// warned about; `get` lists and shows them; `delete` removes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_through_apply_get_and_delete() {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-policies-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/hello.yaml"), HELLO_ONLY).unwrap();
    let up = up(&dir);
    let apply = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        sluice(&["apply", "-f", path.to_str().unwrap()], &up)
    };

    let refused = [
        (
            "action.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: MAYBE}\n",
            "spec.action",
        ),
        (
            "version.yaml",
            "apiVersion: security.istio.io/v7\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n",
            "apiVersion",
        ),
        (
            "field.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules:\n  - from: {source: {principals: [x]}}\n",
            "spec.rules[0].from",
        ),
        (
            "mode.yaml",
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: SOMETIMES}}\n",
            "spec.mtls.mode",
        ),
    ];
    for (file, text, path) in refused {
        let (ok, out, err) = apply(file, text);
        assert!(!ok, "{file} accepted: {out}");
        assert!(err.contains(path), "{file}: {path} not named in:\n{err}");
    }
    let (ok, out, _) = sluice(&["get", "authorizationpolicy"], &up);
    assert!(ok);
    assert!(out.contains("No authorizationpolicies found"), "{out}");

    // A selector matching nothing: stored, with a warning naming the selector.
    let (ok, out, err) = apply(
        "ghost.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ghost, namespace: default}\nspec:\n  selector: {matchLabels: {app: ghost}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("authorizationpolicy.security.istio.io/ghost created"),
        "{out}"
    );
    assert!(
        err.contains("Warning: AuthorizationPolicy/ghost: spec.selector.matchLabels (app=ghost) matches no workload"),
        "{err}"
    );
    // One selecting the Service's revisions: no warning.
    let (ok, out, err) = apply(
        "hello-pa.yaml",
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: hello-strict, namespace: default}\nspec:\n  selector: {matchLabels: {serving.knative.dev/service: hello}}\n  mtls: {mode: STRICT}\n",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("peerauthentication.security.istio.io/hello-strict created"),
        "{out}"
    );
    assert!(!err.contains("matches no workload"), "{err}");

    let (ok, out, err) = sluice(&["get", "ap"], &up);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ghost") && l.contains("DENY") && l.contains("app=ghost")),
        "{out}"
    );
    let (ok, out, _) = sluice(&["get", "peerauthentication", "-A"], &up);
    assert!(ok);
    assert!(
        out.lines().any(|l| l.starts_with("default")
            && l.contains("hello-strict")
            && l.contains("STRICT")),
        "{out}"
    );
    let (ok, out, _) = sluice(&["get", "ap", "ghost", "-o", "json"], &up);
    assert!(ok);
    let obj: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(obj["spec"]["action"], "DENY");
    let (ok, _, err) = sluice(&["get", "ap", "nobody"], &up);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");

    let (ok, out, err) = sluice(&["delete", "authorizationpolicy", "ghost"], &up);
    assert!(ok, "{err}");
    assert!(
        out.contains("deleted authorizationpolicy.security.istio.io/ghost"),
        "{out}"
    );
    let (ok, out, _) = sluice(&["get", "ap"], &up);
    assert!(ok);
    assert!(out.contains("No authorizationpolicies found"), "{out}");
    let (ok, _, err) = sluice(&["delete", "ap", "ghost"], &up);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    // The deletion reached the stored file too.
    let stored = std::fs::read_to_string(dir.join("state/mesh/policies.yaml")).unwrap();
    assert!(
        !stored.contains("ghost") && stored.contains("hello-strict"),
        "{stored}"
    );
    drop(up);
    let _ = std::fs::remove_dir_all(dir);
}

/// Spans still queued when `sluice up` stops are exported on the way out, by the router's
/// process and by the replica's queue layer: with a flush interval of ten minutes, nothing is
/// sent until shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_spans_are_flushed_at_shutdown() {
    let (endpoint, mut spans_rx) = collector().await;
    let dir = std::env::temp_dir().join(format!("sluice-e2e-otlp-exit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/hello.yaml"), HELLO_VIA_ACTIVATOR).unwrap();
    let up = up_with(
        &dir,
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    wait_ready(&up);
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let mut stream = TcpStream::connect(up.router).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {HOST}\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}\n{}", up.log());
    assert!(
        spans_rx.try_recv().is_err(),
        "nothing is sent before a flush"
    );
    let log = up.log.clone();
    drop(up);
    let mut reporters = std::collections::BTreeSet::new();
    while reporters.len() < 3 {
        let body = tokio::time::timeout(WAIT, spans_rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "spans missing after shutdown: have {reporters:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .unwrap();
        for rs in body["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for span in ss["spans"].as_array().unwrap() {
                    if span["traceId"] != trace {
                        continue;
                    }
                    for a in span["attributes"].as_array().unwrap() {
                        if a["key"] == "sluice.reporter" {
                            reporters
                                .insert(a["value"]["stringValue"].as_str().unwrap().to_owned());
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        reporters.into_iter().collect::<Vec<_>>(),
        ["activator", "queue", "router"]
    );
    let _ = std::fs::remove_dir_all(dir);
}
