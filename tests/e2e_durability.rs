//! End to end with the real `sluice` binary: `kill -9` of `sluice up` while a client is
//! applying manifests back to back loses no acknowledged write (SQLite WAL with
//! `synchronous=FULL`), and the restarted `sluice up` serves them all; an edit based on a
//! stale read is refused with 409 Conflict; `sluice promote`/`rollback` and `sluice get`/
//! `describe` work against the restarted server.

// This test drives another process in real time: the wall clock (std Instant) is the right
// clock here, and paused tokio time would be meaningless.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(90);

/// A running `sluice up`; killed on drop if still running.
struct Up {
    child: Child,
    admin: Admin,
    state_dir: std::path::PathBuf,
}

/// The admin API's address and bearer token (made by `sluice up` in its state directory).
#[derive(Clone)]
struct Admin {
    addr: SocketAddr,
    token: String,
}

impl Up {
    fn start(state_dir: &Path) -> Up {
        let mut child = Command::new(SLUICE)
            .args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        let mut admin = None;
        while admin.is_none() {
            match rx.recv_timeout(WAIT) {
                Ok(line) => {
                    admin = line
                        .strip_prefix("sluice: admin API on http://")
                        .map(|a| a.parse::<SocketAddr>().unwrap());
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sluice up did not announce its admin API: {e}");
                }
            }
        }
        let token = std::fs::read_to_string(state_dir.join("admin-token")).unwrap();
        Up {
            child,
            admin: Admin {
                addr: admin.unwrap(),
                token: token.trim().to_owned(),
            },
            state_dir: state_dir.to_owned(),
        }
    }

    fn kill9(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
    }

    /// Runs the CLI against this server; it finds the token in the state directory itself.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(SLUICE)
            .args(args)
            .args(["--server", &format!("http://{}", self.admin.addr)])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .unwrap()
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

/// One HTTP/1.1 request; `None` when the server is gone mid-request.
fn http(admin: &Admin, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect(admin.addr).ok()?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        admin.addr,
        admin.token,
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn isvc(name: &str) -> String {
    // A format no local runtime serves: the objects reconcile to a condition, no replica runs.
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: {name}}}\n\
         spec:\n  predictor:\n    sklearn: {{storageUri: gs://bucket/{name}}}\n"
    )
}

fn apply_body(name: &str) -> String {
    json!({"files": [{"source": format!("{name}.yaml"), "base_dir": "/", "text": isvc(name)}]})
        .to_string()
}

#[test]
fn kill_9_mid_apply_loses_no_acknowledged_write() {
    let root = std::env::temp_dir().join(format!("sluice-durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut up = Up::start(&root);

    // A client applies one object after another; each acknowledged name is reported.
    let admin = up.admin.clone();
    let (acked_tx, acked_rx) = mpsc::channel::<String>();
    let writer = std::thread::spawn(move || {
        for i in 0.. {
            let name = format!("m-{i:04}");
            match http(&admin, "POST", "/v1/apply", &apply_body(&name)) {
                Some((200, _)) => {
                    if acked_tx.send(name).is_err() {
                        return;
                    }
                }
                Some((status, body)) => panic!("apply {name}: {status} {body}"),
                None => return, // the server died under us
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 40 {
        acked.push(
            acked_rx
                .recv_timeout(WAIT)
                .expect("applies are acknowledged"),
        );
    }
    // Kill it while the writer keeps going: some apply is in flight now.
    up.kill9();
    writer.join().unwrap();
    acked.extend(acked_rx.try_iter());

    let up = Up::start(&root);
    let (status, list) = http(&up.admin, "GET", "/v1/isvc", "").unwrap();
    assert_eq!(status, 200);
    let stored: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    for name in &acked {
        assert!(
            stored.contains(name),
            "acknowledged {name} was lost; stored: {stored:?}"
        );
    }
    // At most the one unacknowledged in-flight apply may have landed as well.
    assert!(
        stored.len() <= acked.len() + 1,
        "{} stored, {} acked",
        stored.len(),
        acked.len()
    );

    // A stale edit is refused: two writers read the same version, one wins.
    let (_, read) = http(&up.admin, "GET", "/v1/isvc/default/m-0000", "").unwrap();
    let mut first = read.clone();
    first["spec"]["predictor"]["minReplicas"] = json!(0);
    let mut second = read;
    second["spec"]["predictor"]["minReplicas"] = json!(2);
    let (status, _) = http(
        &up.admin,
        "PUT",
        "/v1/isvc/default/m-0000",
        &first.to_string(),
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, body) = http(
        &up.admin,
        "PUT",
        "/v1/isvc/default/m-0000",
        &second.to_string(),
    )
    .unwrap();
    assert_eq!(status, 409, "{body}");

    // The CLI reads the restarted store: kubectl's columns, and the condition in describe.
    let out = up.cli(&["get", "isvc"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with(
            "NAME     URL   READY   PREV   LATEST   PREVROLLEDOUTREVISION   LATESTREADYREVISION   AGE"
        ),
        "{table}"
    );
    let out = up.cli(&["describe", "isvc", "m-0001"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Name:         m-0001"), "{text}");
    // Nothing is rolled out for a model no runtime serves: rollback says so.
    let out = up.cli(&["rollback", "m-0001"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to roll back to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(up);
    let _ = std::fs::remove_dir_all(&root);
}
