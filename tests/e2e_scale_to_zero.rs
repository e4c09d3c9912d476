//! End to end with the real `sluice` binary: `sluice up` on free ports, `sluice apply` of an
//! InferenceService whose model path is relative to its manifest, inference through the
//! router, scale to zero (the replica process really exits), inference from zero through
//! the activator, bad input at each door, and a restart that loses nothing.
//!
//! Waiting is event-driven: the admin API's long poll (`?after=<resourceVersion>`) returns
//! when an object changes. Only the exit of the replica process is polled, from /proc.

// This test drives another process in real time: the wall clock (std Instant) is the right
// clock here, and paused tokio time would be meaningless.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const HOST: &str = "iris.default.localhost";
const WAIT: Duration = Duration::from_secs(90);

/// A running `sluice up`, stopped (and its replicas with it) on drop.
struct Up {
    child: Child,
    router: SocketAddr,
    admin: SocketAddr,
    state_dir: PathBuf,
    stderr_path: PathBuf,
}

impl Up {
    fn start(state_dir: &Path, log: &Path, extra: &[&str]) -> Up {
        let stderr = std::fs::File::create(log).unwrap();
        let mut child = Command::new(SLUICE)
            .args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--scale-to-zero-grace", "1s", "--autoscaler-tick", "1s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
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
        let mut router = None;
        let mut admin = None;
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
            state_dir: state_dir.to_owned(),
            stderr_path: log.to_owned(),
        }
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "sluice up exits cleanly on SIGTERM: {status}"
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Child processes of `sluice up` that are model servers.
    fn replica_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return pids;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("model-server") {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
fn http(addr: SocketAddr, method: &str, host: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn admin_get(up: &Up, path: &str) -> (u16, Value) {
    let (status, body) = admin_http(up, "GET", path, "");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// One request to the admin API with the bearer token of `up`'s state directory.
fn admin_http(up: &Up, method: &str, path: &str, body: &str) -> (u16, String) {
    let token = std::fs::read_to_string(up.state_dir.join("admin-token")).unwrap();
    let mut stream = TcpStream::connect(up.admin).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        up.admin,
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Waits (by long poll) until the object satisfies `ok`.
fn wait_for(up: &Up, plural: &str, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    let path = format!("/v1/{plural}/default/{name}");
    let mut version = String::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {plural}/{name}: {what}\n{}",
            up.log()
        );
        let (status, obj) = admin_get(up, &format!("{path}?after={version}&timeout=10"));
        if status == 200 && ok(&obj) {
            return obj;
        }
        version = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
}

fn ready(obj: &Value) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

const FLOWERS: &str = r#"{"id": "e2e", "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP32",
    "data": [[5.1, 3.5, 1.4, 0.2], [6.8, 2.8, 4.8, 1.4], [6.3, 3.3, 6.0, 2.5]]}]}"#;

fn infer(up: &Up) -> Value {
    let (status, body) = http(up.router, "POST", HOST, "/v2/models/iris/infer", FLOWERS);
    assert_eq!(status, 200, "inference answered: {body}\n{}", up.log());
    let resp: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resp["id"], "e2e");
    assert_eq!(resp["outputs"][0]["name"], "output-0");
    // setosa, versicolor, virginica
    assert_eq!(resp["outputs"][0]["data"], json!([0, 1, 2]));
    resp
}

/// The CLI against the `sluice up` whose state directory is `state`, its admin token given
/// as `SLUICE_TOKEN` (as a user on another machine or folder would).
fn sluice(state: &Path, args: &[&str]) -> std::process::Output {
    let token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    Command::new(SLUICE)
        .args(args)
        .env("SLUICE_TOKEN", token.trim())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

/// `sluice apply -f path`, which must succeed; returns its stdout.
fn apply_ok(state: &Path, server: &str, path: &Path) -> String {
    let out = sluice(
        state,
        &["apply", "-f", path.to_str().unwrap(), "--server", server],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn serves_scales_to_zero_and_back_and_survives_restart() {
    let root = std::env::temp_dir().join(format!("sluice-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
    // The model sits beside the manifest folder; the manifest names it relatively.
    std::fs::create_dir_all(root.join("models/iris")).unwrap();
    std::fs::create_dir_all(root.join("manifests")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            samples.join("iris/model").join(f),
            root.join("models/iris").join(f),
        )
        .unwrap();
    }
    let manifest = std::fs::read_to_string(samples.join("iris.yaml"))
        .unwrap()
        .replace("\"60s\"", "\"6s\"")
        .replace("./iris/model", "../models/iris");
    assert!(manifest.contains("\"6s\"") && manifest.contains("../models/iris"));
    let manifest_path = root.join("manifests/iris.yaml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let state = root.join("state");

    let mut up = Up::start(&state, &root.join("up-1.log"), &[]);
    let server = format!("http://{}", up.admin);

    // Bad input first: an invalid manifest is refused whole, naming file, document, field.
    let bad_path = root.join("manifests/bad.yaml");
    std::fs::write(
        &bad_path,
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: ok}\n\
         spec: {predictor: {model: {modelFormat: {name: sluice-mlp}, storageUri: /x}}}\n---\n\
         apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: broken}\n\
         spec: {predictor: {minReplicas: -2, model: {modelFormat: {name: sluice-mlp}, storageUri: /x}}}\n",
    )
    .unwrap();
    let out = sluice(
        &state,
        &[
            "apply",
            "-f",
            bad_path.to_str().unwrap(),
            "--server",
            &server,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml: document 2: spec.predictor.minReplicas: must be >= 0"),
        "{err}"
    );
    std::fs::remove_file(&bad_path).unwrap();
    let (_, list) = admin_get(&up, "/v1/isvc");
    assert_eq!(
        list["items"],
        json!([]),
        "nothing of a refused apply is stored"
    );

    // Apply, then wait until the InferenceService is ready.
    assert_eq!(
        apply_ok(&state, &server, &manifest_path),
        "inferenceservice.serving.kserve.io/iris created"
    );
    let isvc = wait_for(&up, "inferenceservices", "iris", "Ready=True", ready);
    assert_eq!(
        isvc["spec"]["predictor"]["model"]["storageUri"],
        root.join("models/iris").to_str().unwrap()
    );
    assert_eq!(
        isvc["status"]["url"],
        format!("http://{HOST}:{}", up.router.port())
    );

    // `sluice get` speaks JSON lists and tables.
    let out = sluice(&state, &["get", "rev", "-o", "json", "--server", &server]);
    let revs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revs["items"][0]["metadata"]["name"], "iris-predictor-00001");
    let out = sluice(&state, &["get", "isvc", "iris", "--server", &server]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("iris-predictor-00001"));

    // Serve through the router.
    infer(&up);
    assert_eq!(up.replica_pids().len(), 1);

    // Bad requests at the data plane.
    let (status, body) = http(up.router, "GET", "nope.default.localhost", "/", "");
    assert_eq!(status, 404);
    assert!(
        body.contains("no service for host \\\"nope.default.localhost\\\""),
        "{body}"
    );
    let (status, body) = http(
        up.router,
        "POST",
        HOST,
        "/v2/models/iris/infer",
        r#"{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, "x", 4]}]}"#,
    );
    assert_eq!(status, 400);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("input \"input-0\""),
        "{body}"
    );

    // A model that cannot load: Ready=False with the replica's own error, a fast 503, and
    // `sluice delete` removes it with everything it owns.
    let broken_path = root.join("manifests/broken.yaml");
    std::fs::write(
        &broken_path,
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: broken}\n\
         spec: {predictor: {model: {modelFormat: {name: sluice-mlp}, storageUri: ../no-such-model}}}\n",
    )
    .unwrap();
    apply_ok(&state, &server, &broken_path);
    let broken = wait_for(&up, "inferenceservices", "broken", "Ready=False", |o| {
        o["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "False")
        })
    });
    let message = broken["status"]["conditions"].to_string();
    assert!(
        message.contains("cannot load model") && message.contains("no-such-model"),
        "{message}"
    );
    let (status, body) = http(
        up.router,
        "POST",
        "broken.default.localhost",
        "/v2/models/broken/infer",
        FLOWERS,
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot load model"), "{body}");
    let out = sluice(&state, &["delete", "isvc", "broken", "--server", &server]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = admin_get(&up, "/v1/revisions/default/broken-predictor-00001");
    assert_eq!(
        status, 404,
        "owned revisions are deleted with their InferenceService"
    );

    // Idle: the revision scales to zero and its process exits.
    let rev = wait_for(
        &up,
        "revisions",
        "iris-predictor-00001",
        "scaled to zero",
        |r| r["status"]["actualReplicas"] == 0 && r["status"]["desiredReplicas"] == 0,
    );
    assert!(ready(&rev), "a revision at zero stays Ready: {rev}");
    let deadline = std::time::Instant::now() + WAIT;
    while !up.replica_pids().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "replica process did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // From zero: the activator holds the request until a replica is ready.
    infer(&up);
    assert!(
        up.log()
            .contains("cold start: request held by the activator answered after"),
        "{}",
        up.log()
    );
    let (_, rev) = admin_get(&up, "/v1/revisions/default/iris-predictor-00001");
    assert_eq!(rev["status"]["desiredReplicas"], 1);

    // Restart on the same state: nothing is lost, no new revision appears.
    up.stop();
    assert!(up.replica_pids().is_empty());
    let up = Up::start(&state, &root.join("up-2.log"), &[]);
    wait_for(
        &up,
        "inferenceservices",
        "iris",
        "Ready=True after restart",
        ready,
    );
    infer(&up);
    let (_, revs) = admin_get(&up, "/v1/revisions");
    let names: Vec<&str> = revs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["iris-predictor-00001"]);
    drop(up);
    std::fs::remove_dir_all(&root).unwrap();
}
