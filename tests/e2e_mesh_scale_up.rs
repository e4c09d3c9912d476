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

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::{TempDir, Up, request};

const HOST: &str = "pyapp.default.localhost";
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

/// One plaintext HTTP/1.1 GET over a fresh connection: status and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let r = request(addr, "GET", HOST, path, b"")?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

#[test]
fn mesh_on_scale_up_at_cc1_answers_every_request_and_never_leaks_the_attestation() {
    let dir = TempDir::new("e2e-scale-up");
    let dir = &dir.0;
    let app = dir.join("app.py");
    std::fs::write(&app, APP).unwrap();
    std::fs::write(dir.join("manifests/pyapp.yaml"), manifest(&app)).unwrap();
    let up = Up::start(dir, &["--autoscaler-tick", "1s"], "info");

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
}
