//! No process of a replica outlives `sluice up`, however it ends: the real binary, `sluice
//! up DIR` (mesh on, the default) with a Knative Service whose user process (Python, behind
//! `sluice queue`) ignores SIGTERM and forks a child that ignores it too. Once the user
//! process reports in, the test records every process below `sluice up` (guard, queue
//! layer, user process, its fork), ends `sluice up` one way or another, and checks that
//! every one of them is gone.
//!
//! Waiting is on events (the user process connecting to the test, `sluice up` exiting),
//! except the death of processes no longer ours to wait for, polled from /proc up to a
//! deadline.

// This test drives other processes in real time: the wall clock (std Instant) is the right
// clock here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(120);
/// How long the processes of a replica may take to die once `sluice up` is gone.
const DIE_WITHIN: Duration = Duration::from_secs(20);

/// Ignores SIGTERM, forks a child (which ignores it too), serves on $PORT, and reports
/// `<pid> <child pid>` to the test.
const STUBBORN: &str = r#"
import http.server, os, signal, socket, sys, time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    while True:
        time.sleep(3600)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
host, port = os.environ["REPORT_TO"].rsplit(":", 1)
with socket.create_connection((host, int(port))) as report:
    report.sendall(f"{os.getpid()} {child}\n".encode())
server.serve_forever()
"#;

fn manifest(script: &Path, report_to: &str) -> String {
    format!(
        "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {{name: stubborn, namespace: default}}
spec:
  template:
    metadata:
      annotations: {{autoscaling.knative.dev/min-scale: \"1\"}}
    spec:
      timeoutSeconds: 2
      containers:
      - command: [python3]
        args: [{script}]
        env: [{{name: REPORT_TO, value: \"{report_to}\"}}]
",
        script = script.display()
    )
}

/// A process as first seen: its PID and its start time, so a PID reused later is not
/// mistaken for it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    pid: i32,
    start: u64,
    cmdline: String,
}

/// `(ppid, state, start time)` from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(i32, String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3 and ppid field 4; starttime is field 22.
    Some((
        fields.get(1)?.parse().ok()?,
        (*fields.first()?).to_owned(),
        fields.get(19)?.parse().ok()?,
    ))
}

/// Every live process below `root`.
fn below(root: i32) -> Vec<Seen> {
    let mut children: HashMap<i32, Vec<(i32, u64)>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((ppid, state, start)) = stat(pid)
            && state != "Z"
        {
            children.entry(ppid).or_default().push((pid, start));
        }
    }
    let mut out = Vec::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for &(pid, start) in children.get(&parent).into_iter().flatten() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push(Seen {
                pid,
                start,
                cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " "),
            });
            next.push(pid);
        }
    }
    out
}

/// Still running (a zombie has exited: it holds no port and runs nothing).
fn alive(p: &Seen) -> bool {
    stat(p.pid).is_some_and(|(_, state, start)| start == p.start && state != "Z")
}

/// `sluice up` and the processes of its replica; on drop, whatever is left is killed, so a
/// failing test leaves nothing behind either.
struct Run {
    up: Child,
    dir: PathBuf,
    replica: Vec<Seen>,
    /// What `sluice up` wrote to stderr so far, signalled on every line.
    log: Arc<(Mutex<String>, Condvar)>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.up.kill();
        let _ = self.up.wait();
        for p in &self.replica {
            if alive(p) {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Run {
    fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.up.id() as i32), signal).unwrap();
    }

    /// Waits (up to `within`) for `sluice up` to exit: a thread blocks in `waitid` without
    /// reaping it (`WNOWAIT`), then the exit status is collected here.
    fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = Pid::from_raw(self.up.id() as i32);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            let _ = tx.send(waitid(Id::Pid(pid), flags));
        });
        let exited = rx.recv_timeout(within);
        assert!(
            matches!(exited, Ok(Ok(_))),
            "sluice up did not exit within {within:?} ({exited:?})\n{}",
            self.log()
        );
        self.up.wait().unwrap()
    }

    /// Waits until the log holds `text` (woken by every line `sluice up` writes).
    fn logged(&self, text: &str) {
        let (log, wrote) = &*self.log;
        let (log, timeout) = wrote
            .wait_timeout_while(log.lock().unwrap(), WAIT, |l| !l.contains(text))
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "sluice up never logged {text:?}\n{log}"
        );
    }

    /// Asserts that every process of the replica is gone (within [`DIE_WITHIN`]).
    fn nothing_left(&self) {
        let deadline = Instant::now() + DIE_WITHIN;
        loop {
            let left: Vec<&Seen> = self.replica.iter().filter(|p| alive(p)).collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} processes of the replica outlived sluice up: {left:#?}\n{}",
                left.len(),
                self.log()
            );
            // These processes are not this test's children: nothing signals their end (a
            // pidfd would, but needs unsafe code), so look again shortly.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `sluice up` with the stubborn Service and waits until its user process and the
/// user process's fork run and the replica is ready; records every process below `sluice
/// up`.
fn start(name: &str) -> Run {
    let dir = std::env::temp_dir().join(format!(
        "sluice-lifetime-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let script = dir.join("stubborn.py");
    std::fs::write(&script, STUBBORN).unwrap();
    let reports = TcpListener::bind("127.0.0.1:0").unwrap();
    let report_to = reports.local_addr().unwrap().to_string();
    std::fs::write(
        manifests.join("stubborn.yaml"),
        manifest(&script, &report_to),
    )
    .unwrap();
    let mut up = Command::new(SLUICE)
        .args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg(&manifests)
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice up starts");
    let log: Arc<(Mutex<String>, Condvar)> = Arc::default();
    let stderr = up.stderr.take().unwrap();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let (log, wrote) = &*lines;
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
            wrote.notify_all();
        }
    });
    let mut run = Run {
        up,
        dir,
        replica: Vec::new(),
        log,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = reports.accept() {
            let mut line = String::new();
            let _ = BufReader::new(conn).read_line(&mut line);
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("the user process never reported in\n{}", run.log()));
    let pids: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // Serving: stopping it from here on is a drain, not an aborted start.
    run.logged("replica ready");
    run.replica = below(run.up.id() as i32);
    for pid in &pids {
        assert!(
            run.replica.iter().any(|p| p.pid == *pid),
            "user process {pid} is not below sluice up: {:#?}",
            run.replica
        );
    }
    assert!(
        run.replica.iter().any(|p| p.cmdline.contains(" queue ")),
        "no queue layer below sluice up: {:#?}",
        run.replica
    );
    run
}

#[test]
fn sigkill_half_way_through_the_drain_leaves_no_process_of_a_replica() {
    let mut run = start("term-kill");
    run.signal(Signal::SIGTERM);
    // The drain has begun (the user process ignores SIGTERM: it lasts until the grace).
    run.logged("shutting down: stopping replicas");
    run.signal(Signal::SIGKILL);
    run.exited(WAIT);
    run.nothing_left();
}

#[test]
fn sigkill_while_serving_leaves_no_process_of_a_replica() {
    let mut run = start("kill");
    run.signal(Signal::SIGKILL);
    run.exited(WAIT);
    run.nothing_left();
}

#[test]
fn sigint_stops_every_process_of_a_replica_even_one_ignoring_sigterm() {
    let mut run = start("int");
    run.signal(Signal::SIGINT);
    // timeoutSeconds 2: the drain grace is over in seconds.
    let status = run.exited(WAIT);
    assert!(status.success(), "{status}\n{}", run.log());
    run.nothing_left();
}
