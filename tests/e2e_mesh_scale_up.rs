//! Zero loss while scaling up with the mesh on (issue 14), end to end with the real `sluice`
//! binary: the default `sluice up` (mesh on), a Knative Service with `containerConcurrency: 1`
//! and `min-scale: "1"` whose replica is a Python HTTP server (a program not written by
//! Sluice, behind `sluice queue`), applied at start from the manifest folder, and 300
//! requests of 20 ms from 100 concurrent clients while new replicas come up. Every response
//! must be a 200 with its own body, and no user process may ever see the caller
//! attestation: it is bound to the mTLS hop into the replica and must not travel on the
//! plaintext hop behind it (where it once reached another replica's queue layer through a
//! port taken by that replica, and was refused there with a 403 naming the header).
//!
//! No waiting on the admin API: the first request is held by the activator until the
//! replica is ready.

// This test drives another process in real time: the wall clock (std Instant) is the right
// clock here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const HOST: &str = "pyapp.default.localhost";
const WAIT: Duration = Duration::from_secs(90);
const REQUESTS: usize = 300;
const CLIENTS: usize = 100;

/// The user program: answers `GET /r/<n>` after 20 ms with a body naming the path, its pid
/// and whether the request carried Sluice's caller attestation.
const APP: &str = r#"
import os, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(0.02)
        seen = "x-sluice-caller-attestation" in self.headers
        body = ("ok %s attestation=%s pid=%d" % (self.path, seen, os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn manifest(app: &Path) -> String {
    format!(
        "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: pyapp, namespace: default}}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: \"1\"
        autoscaling.knative.dev/max-scale: \"40\"
    spec:
      containerConcurrency: 1
      containers:
      - command: [python3, {app}]
",
        app = app.display()
    )
}

/// A running `sluice up`; stopped with SIGTERM (its replicas with it) on drop.
struct Up {
    child: Child,
    router: SocketAddr,
    log: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

impl Up {
    fn start(dir: &Path) -> Up {
        let log = dir.join("up.log");
        let mut child = Command::new(SLUICE)
            .args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--autoscaler-tick", "1s"])
            .arg(dir.join("manifests"))
            .env("SLUICE_LOG", "info")
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
        let router = loop {
            let line = rx
                .recv_timeout(WAIT)
                .expect("sluice up announces its router");
            if line.starts_with("sluice: router listening on") {
                break line
                    .rsplit("http://")
                    .next()
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap();
            }
        };
        Up { child, router, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One plaintext HTTP/1.1 GET over a fresh connection: status and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

#[test]
fn mesh_on_scale_up_at_cc1_answers_every_request_and_never_leaks_the_attestation() {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-scale-up-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let app = dir.join("app.py");
    std::fs::write(&app, APP).unwrap();
    std::fs::write(dir.join("manifests/pyapp.yaml"), manifest(&app)).unwrap();
    let up = Up::start(&dir);

    // The activator holds the first request until the min-scale replica is ready.
    let (status, body) = get(up.router, "/r/first").unwrap();
    assert_eq!(status, 200, "{body}\n{}", up.log());

    let next = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let leaked = Arc::new(AtomicUsize::new(0));
    let pids: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, failures, leaked, pids) =
                (next.clone(), failures.clone(), leaked.clone(), pids.clone());
            let router = up.router;
            std::thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= REQUESTS {
                        return;
                    }
                    let path = format!("/r/{n}");
                    let outcome = match get(router, &path) {
                        Ok((200, body)) if body.starts_with(&format!("ok {path} ")) => {
                            if body.contains("attestation=True") {
                                leaked.fetch_add(1, Ordering::SeqCst);
                            }
                            if let Some(pid) = body.rsplit("pid=").next() {
                                pids.lock().unwrap().insert(pid.to_owned());
                            }
                            None
                        }
                        Ok((status, body)) => Some(format!("{status} {body}")),
                        Err(e) => Some(format!("transport error: {e}")),
                    };
                    if let Some(what) = outcome {
                        *failures.lock().unwrap().entry(what).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    let failed: usize = failures.values().sum();
    let replicas = pids.lock().unwrap().len();
    println!(
        "{REQUESTS} requests from {CLIENTS} clients: {failed} failed, served by {replicas} user processes"
    );
    for (what, count) in failures.iter() {
        println!("  {count} x {what}");
    }
    assert_eq!(failed, 0, "every request gets a 200: {failures:#?}");
    assert_eq!(
        leaked.load(Ordering::SeqCst),
        0,
        "the caller attestation reached a user process"
    );
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
