//! What the end-to-end tests share: a running `sluice up` (the real binary, stopped with
//! SIGTERM on drop), the CLI against it, and a closed-loop load generator whose every
//! request carries a body the replica must echo intact.
//!
//! Only std threads and std sockets: the least powerful tools that speak to a real router.

// These tests drive other processes in real time: the wall clock (std Instant) is the right
// clock here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_types,
    dead_code,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, mpsc};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// How long anything may take before a test gives up (a slow CI machine builds and starts
/// many processes at once).
pub const WAIT: Duration = Duration::from_secs(90);

/// A fresh folder for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // SLUICE_KEEP_TEST_DIR=1 keeps it (logs, state) for a look after a failure.
        if std::env::var_os("SLUICE_KEEP_TEST_DIR").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `sluice up`; stopped with SIGTERM (its replicas with it) on drop.
pub struct Up {
    child: Child,
    pub router: SocketAddr,
    pub admin: SocketAddr,
    pub state_dir: PathBuf,
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
    /// `sluice up` on port 0 over `dir/manifests`, state in `dir/state`, with `flags`.
    pub fn start(dir: &Path, flags: &[&str], log_filter: &str) -> Up {
        let log = dir.join("up.log");
        let state_dir = dir.join("state");
        let mut child = Command::new(SLUICE)
            .args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(flags)
            .arg(dir.join("manifests"))
            // SLUICE_TEST_LOG (a filter) overrides the test's, to look into a failure.
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| log_filter.to_owned()),
            )
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
        let addr = |l: &str| {
            l.rsplit("http://")
                .next()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap()
        };
        let (mut router, mut admin) = (None, None);
        while router.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("sluice up announces its addresses: {log:?}"));
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
            state_dir,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `sluice <args> --server … --state-dir …` and returns its stdout; panics with its
    /// stderr when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(SLUICE)
            .args(args)
            .args(["--server", &format!("http://{}", self.admin)])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sluice {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One GET on the admin API with the state directory's bearer token: status and JSON.
    pub fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        let token = std::fs::read_to_string(self.state_dir.join("admin-token")).unwrap();
        let mut stream = TcpStream::connect(self.admin).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Connection: close\r\n\r\n",
            self.admin,
            token.trim()
        )
        .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Waits (by the admin API's long poll on the object's version) until
    /// `default/{name}` of `plural` satisfies `ok`; returns it.
    pub fn wait_for(
        &self,
        plural: &str,
        name: &str,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + WAIT;
        let path = format!("/v1/{plural}/default/{name}");
        let mut version = String::new();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {plural}/{name}: {what}\n{}",
                self.log()
            );
            let (status, obj) = self.admin_get(&format!("{path}?after={version}&timeout=10"));
            if status == 200 && ok(&obj) {
                return obj;
            }
            version = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
    }

    /// `sluice apply -f` of `yaml` (written next to the state folder as `name`).
    pub fn apply(&self, name: &str, yaml: &str) -> String {
        let file = self.state_dir.with_file_name(name);
        std::fs::write(&file, yaml).unwrap();
        self.cli(&["apply", "-f", file.to_str().unwrap()])
    }
}

/// The replica program of the zero-loss tests, a program not written by Sluice: a threaded
/// Python HTTP server that waits `DELAY_MS`, then answers with the SHA-256 of the body it
/// received, its revision and pid, and the body itself (or, with `FAIL_EVERY=N`, every Nth
/// request with a 500: a faulty revision on purpose).
pub const ECHO_APP: &str = r#"
import hashlib, os, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

DELAY = int(os.environ.get("DELAY_MS", "20")) / 1000.0
REVISION = os.environ.get("K_REVISION", "?")
FAIL_EVERY = int(os.environ.get("FAIL_EVERY", "0"))
SERVED = [0]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        time.sleep(DELAY)
        SERVED[0] += 1
        if FAIL_EVERY and SERVED[0] % FAIL_EVERY == 0:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        head = "%s rev=%s pid=%d attestation=%s\n" % (
            hashlib.sha256(body).hexdigest(), REVISION, os.getpid(),
            "x-sluice-caller-attestation" in self.headers)
        out = head.encode() + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = answer
    do_POST = answer

    def log_message(self, *args):
        pass

ThreadingHTTPServer.request_queue_size = 256
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// The body of request `n`: 0 to 16 KiB of bytes that depend on `n`, so a body delivered
/// to the wrong request, cut short or corrupted never passes for the right one.
pub fn body_of(n: usize) -> Vec<u8> {
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (next() % (16 * 1024 + 1)) as usize;
    (0..len).map(|_| next() as u8).collect()
}

/// A response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One plaintext HTTP/1.1 request over a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/octet-stream\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| std::io::Error::other("cut chunked body"))?;
        let size = std::str::from_utf8(&raw[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or_else(|| std::io::Error::other("bad chunk size"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(std::io::Error::other("cut chunk"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// What a served request told about the replica that served it.
#[derive(Clone, Debug)]
pub struct Served {
    pub revision: String,
    pub pid: u32,
    pub attestation_leaked: bool,
}

/// Checks an [`ECHO_APP`] answer to `POST` of `sent`: a 200, the replica's SHA-256 of what it
/// received equals the sender's, and the echoed body is the sent one, byte for byte.
pub fn check_echo(response: &Response, sent: &[u8]) -> Result<Served, String> {
    if response.status != 200 {
        let body = String::from_utf8_lossy(&response.body);
        let retry = response
            .header("retry-after")
            .map(|v| format!(" (Retry-After: {v})"))
            .unwrap_or_default();
        return Err(format!(
            "{}{retry} {}",
            response.status,
            body.chars().take(160).collect::<String>().trim()
        ));
    }
    let newline = response
        .body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("200 without the replica's header line")?;
    let head = String::from_utf8_lossy(&response.body[..newline]).into_owned();
    let echoed = &response.body[newline + 1..];
    let mut fields = head.split(' ');
    let digest = fields.next().unwrap_or_default();
    let expected = hex(&Sha256::digest(sent));
    if digest != expected {
        return Err("200 but the replica received a different body".into());
    }
    if echoed != sent {
        return Err("200 but the echoed body differs from the sent one".into());
    }
    let field = |name: &str| {
        head.split(' ')
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Served {
        revision: field("rev="),
        pid: field("pid=").parse().unwrap_or_default(),
        attestation_leaked: field("attestation=") == "True",
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Outcomes of the requests of a load run, in completion order.
#[derive(Default)]
pub struct Tally {
    pub served: Vec<Served>,
    /// Failure (status and reason, or transport error) → count.
    pub failures: BTreeMap<String, usize>,
}

impl Tally {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    pub fn total(&self) -> usize {
        self.served.len() + self.failed()
    }

    pub fn pids(&self) -> BTreeSet<u32> {
        self.served.iter().map(|s| s.pid).collect()
    }

    pub fn revisions(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in &self.served {
            *out.entry(s.revision.clone()).or_insert(0) += 1;
        }
        out
    }

    pub fn leaked(&self) -> usize {
        self.served.iter().filter(|s| s.attestation_leaked).count()
    }

    /// Prints the counts, every failure by cause, and the revisions that served.
    pub fn print(&self, scenario: &str) {
        println!(
            "{scenario}: {} requests, {} answered 200 intact, {} failed; {} user processes; by revision {:?}",
            self.total(),
            self.served.len(),
            self.failed(),
            self.pids().len(),
            self.revisions()
        );
        for (what, count) in &self.failures {
            println!("  {count} x {what}");
        }
    }
}

/// The outcomes of a load, and a signal on every change (a request answered, the number
/// of active clients changed, stop).
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    tally: Tally,
    /// Clients that send (the others wait).
    active: usize,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Changes the state and wakes everyone waiting on it.
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

/// Sends one echo request numbered `n` and records its outcome.
fn one(router: SocketAddr, host: &str, n: usize, shared: &Shared) {
    let sent = body_of(n);
    let outcome = request(router, "POST", host, &format!("/r/{n}"), &sent)
        .map_err(|e| format!("transport error: {e}"))
        .and_then(|r| check_echo(&r, &sent));
    shared.update(|state| match outcome {
        Ok(served) => state.tally.served.push(served),
        Err(what) => *state.tally.failures.entry(what).or_insert(0) += 1,
    });
}

/// `count` requests sent at once (each on its own thread, released together).
pub fn burst(router: SocketAddr, host: &str, count: usize) -> Tally {
    let shared = Arc::new(Shared::default());
    let barrier = Arc::new(Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|n| {
            let (shared, barrier, host) = (shared.clone(), barrier.clone(), host.to_owned());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    one(router, &host, n, &shared);
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::mem::take(&mut shared.lock().tally)
}

/// A closed-loop load: `clients` threads, each sending its next request as soon as the last
/// one is answered, until stopped. Request numbers are unique across clients.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(router: SocketAddr, host: &str, clients: usize) -> Load {
        let shared = Arc::new(Shared::default());
        shared.lock().active = clients;
        let next = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|id| {
                let (shared, next, host) = (shared.clone(), next.clone(), host.to_owned());
                std::thread::spawn(move || {
                    loop {
                        // A client whose id is at or over the active count waits (scale-down
                        // scenarios lower the load without stopping it).
                        let state = shared
                            .changed
                            .wait_while(shared.lock(), |s| !s.stop && id >= s.active)
                            .unwrap();
                        if state.stop {
                            return;
                        }
                        drop(state);
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        one(router, &host, n, &shared);
                    }
                })
            })
            .collect();
        Load { shared, threads }
    }

    /// From now on only the first `clients` clients send.
    pub fn set_clients(&self, clients: usize) {
        self.shared.update(|s| s.active = clients);
    }

    /// Requests answered so far (200 or not).
    pub fn done(&self) -> usize {
        self.peek(Tally::total)
    }

    /// Calls `f` on the outcomes so far.
    pub fn peek<T>(&self, f: impl FnOnce(&Tally) -> T) -> T {
        f(&self.shared.lock().tally)
    }

    /// Waits until `f` holds of the outcomes so far, checked each time a request is
    /// answered (so `f` may also look at the world outside, which the load's requests keep
    /// sampling); panics with `what` after [`WAIT`].
    pub fn until(&self, what: &str, f: impl Fn(&Tally) -> bool) {
        let (state, timeout) = self
            .shared
            .changed
            .wait_timeout_while(self.shared.lock(), WAIT, |s| !f(&s.tally))
            .unwrap();
        drop(state);
        assert!(!timeout.timed_out(), "timed out waiting for {what}");
    }

    /// Keeps the load on until `more` further requests have been answered.
    pub fn run_for(&self, more: usize) {
        let target = self.done() + more;
        self.until(&format!("{more} more requests"), |t| t.total() >= target);
    }

    /// Stops the clients (each finishes its request in flight) and returns the outcomes.
    pub fn stop(self) -> Tally {
        self.shared.update(|s| s.stop = true);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut self.shared.lock().tally)
    }
}

/// Whether process `pid` still exists.
pub fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}
