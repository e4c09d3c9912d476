//! The user process's port with the real `sluice queue`: the port a replica's user process
//! is handed is its own from choice to bind, 64 replicas started at once each get their
//! own, and a user process that cannot bind its port is started again on another before
//! the replica says it is ready.
//!
//! The user processes are small Python servers (python3 is a test dependency here, as in
//! the interop tests). Waiting is on the replica handshake (`SLUICE_LISTENING`, then
//! `SLUICE_READY`) read from each queue's stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(120);

/// A server on `$PORT` answering `GET /` with `<pid> <port>`.
const SERVE: &str = r#"
import http.server, os, socket, sys

port = int(os.environ["PORT"])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.getpid()} {port}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def serve():
    # http.server sets SO_REUSEADDR, as nearly every server does.
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// Before binding, checks that no one else can take its port: a plain bind of it, as any
/// other program on the machine would do, must fail.
const HELD: &str = r#"
other = socket.socket()
try:
    other.bind(("127.0.0.1", port))
except OSError:
    pass
else:
    print(f"port {port} was free for anyone to take before its user process bound it", file=sys.stderr)
    sys.exit(3)
finally:
    other.close()
serve()
"#;

/// On its first start (no marker file yet) its port is taken when it binds it: by a socket
/// of its own here (bound as most programs bind, without SO_REUSEADDR), as by another
/// process in the race. It fails as Python does, `OSError: [Errno 98] Address already in
/// use` (at either bind, depending on who got the port first). Started again, it serves.
const TAKEN_FIRST: &str = r#"
marker = sys.argv[1]
if not os.path.exists(marker):
    with open(marker, "w") as f:
        f.write(str(port))
    thief = socket.socket()
    thief.bind(("127.0.0.1", port))
    mine = socket.socket()
    mine.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    mine.bind(("127.0.0.1", port))
serve()
"#;

/// Binds without SO_REUSEADDR (`socketserver.TCPServer`'s default).
const PLAIN_BIND: &str = r#"
import socketserver

class Plain(socketserver.TCPServer):
    allow_reuse_address = False

Plain(("127.0.0.1", port), Handler).serve_forever()
"#;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{SERVE}\n{body}")).unwrap();
    path
}

/// A `sluice queue` started by the test, stopped (SIGTERM, then SIGKILL) on drop.
struct Queue {
    child: Child,
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn queue(user: &[&str]) -> (Queue, ChildStdout) {
    let mut child = Command::new(SLUICE)
        .args(["queue", "--timeout-seconds", "5", "--"])
        .args(user)
        .env("K_REVISION", "ports-00001")
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (Queue { child }, stdout)
}

/// Reads the handshake: the queue's address once it says ready, or why it never did (its
/// stderr, once it has exited).
fn handshake(q: &mut Queue, stdout: ChildStdout) -> Result<SocketAddr, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("SLUICE_LISTENING ") {
                addr = a.parse::<SocketAddr>().ok();
            } else if line == "SLUICE_READY" {
                let _ = tx.send(addr);
                // Keep reading, so the queue never blocks on a full pipe.
                for _ in lines.by_ref() {}
                return;
            }
        }
        let _ = tx.send(None);
    });
    match rx.recv_timeout(WAIT) {
        Ok(Some(addr)) => Ok(addr),
        _ => {
            let _ = q.child.kill();
            let _ = q.child.wait();
            let mut stderr = String::new();
            if let Some(mut e) = q.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            Err(stderr)
        }
    }
}

fn get(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: ports.default.localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The port a user process answers from (`<pid> <port>`).
fn port_of(body: &str) -> u16 {
    body.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn sixty_four_replicas_started_at_once_each_get_a_port_no_one_else_can_take() {
    let dir = tempdir("held");
    let held = script(&dir, "held.py", HELD);
    let started: Vec<_> = (0..64)
        .map(|_| queue(&["python3", held.to_str().unwrap()]))
        .collect();
    let mut queues = Vec::new();
    let mut failures = Vec::new();
    for (mut q, stdout) in started {
        match handshake(&mut q, stdout) {
            Ok(addr) => queues.push((q, addr)),
            Err(stderr) => failures.push(stderr),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 64 replicas never became ready; the first said:\n{}",
        failures.len(),
        failures[0]
    );
    let mut ports = HashSet::new();
    for (_, addr) in &queues {
        let (status, body) = get(*addr);
        assert_eq!(status, 200, "{body}");
        assert!(
            ports.insert(port_of(&body)),
            "port handed out twice: {body}"
        );
    }
    assert_eq!(ports.len(), 64);
    drop(queues);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_user_process_that_cannot_bind_its_port_is_started_again_on_another() {
    let dir = tempdir("taken");
    let taken = script(&dir, "taken.py", TAKEN_FIRST);
    let marker = dir.join("first-start");
    let (mut q, stdout) = queue(&["python3", taken.to_str().unwrap(), marker.to_str().unwrap()]);
    let addr = handshake(&mut q, stdout).unwrap_or_else(|stderr| {
        panic!("the replica never became ready:\n{stderr}");
    });
    let first: u16 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
    let (status, body) = get(addr);
    assert_eq!(status, 200, "{body}");
    assert_ne!(
        port_of(&body),
        first,
        "served on the port it could not bind"
    );
    drop(q);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_user_process_binding_without_so_reuseaddr_still_starts() {
    let dir = tempdir("plain");
    let plain = script(&dir, "plain.py", PLAIN_BIND);
    let (mut q, stdout) = queue(&["python3", plain.to_str().unwrap()]);
    let addr = handshake(&mut q, stdout).unwrap_or_else(|stderr| {
        panic!("the replica never became ready:\n{stderr}");
    });
    let (status, body) = get(addr);
    assert_eq!(status, 200, "{body}");
    drop(q);
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-ports-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
