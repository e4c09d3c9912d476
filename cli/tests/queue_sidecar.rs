//! `sluice queue -- sluice hello` as real processes: the handshake, probes, proxying with
//! the revision's env, the concurrency bound, SIGTERM drain, and a crashing user process.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A running `sluice queue`, stopped on drop (SIGTERM: it drains and stops its user
/// process, so nothing outlives the test).
struct Queue {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

fn start(flags: &[&str]) -> Queue {
    start_user(flags, &[SLUICE, "hello"])
}

fn start_user(flags: &[&str], user: &[&str]) -> Queue {
    let mut child = Command::new(SLUICE)
        .arg("queue")
        .args(flags)
        .arg("--")
        .args(user)
        .env("K_SERVICE", "hello")
        .env("K_REVISION", "hello-00001")
        .env("TARGET", "Sluice")
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("SLUICE_LISTENING ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "SLUICE_READY");
    Queue {
        child,
        addr,
        _stdout: stdout,
    }
}

/// One HTTP/1.1 request on its own connection; returns (status, body).
fn http(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: hello.default.localhost\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn proxies_to_the_user_process_with_its_env_and_answers_probes() {
    let q = start(&["--container-concurrency", "0", "--timeout-seconds", "10"]);
    let (status, body) = http(q.addr, "/healthz", &["K-Network-Probe: queue"]);
    assert_eq!((status, body.as_str()), (200, "queue"));
    let (status, body) = http(q.addr, "/some/path?x=1", &["X-Forwarded-For: 10.0.0.1"]);
    assert_eq!(status, 200);
    assert!(body.starts_with("Hello Sluice!\n"), "{body}");
    assert!(body.contains("revision: hello-00001\n"), "{body}");
    assert!(body.contains("path: /some/path?x=1\n"), "{body}");
    assert!(
        body.contains("header x-forwarded-for: 10.0.0.1\n"),
        "{body}"
    );
    let (status, body) = http(q.addr, "/sluice/queue/stats", &[]);
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(stats["request_count"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn beyond_cc_running_and_ten_times_cc_waiting_is_503() {
    let q = start(&["--container-concurrency", "1", "--timeout-seconds", "30"]);
    let addr = q.addr;
    let handles: Vec<_> = (0..40)
        .map(|_| std::thread::spawn(move || http(addr, "/?sleep_ms=300", &[])))
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let full = answers
        .iter()
        .filter(|(s, b)| *s == 503 && b.contains("pending request queue full"))
        .count();
    assert_eq!(ok + full, 40, "{answers:?}");
    assert!(
        full >= 1,
        "40 requests at cc=1 must overflow 1 running + 10 waiting"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let mut q = start(&["--container-concurrency", "0", "--timeout-seconds", "10"]);
    let addr = q.addr;
    // A request that is running when SIGTERM arrives.
    let (tx, rx) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /?sleep_ms=500 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .unwrap();
        tx.send(()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    });
    rx.recv().unwrap();
    // Wait until the queue layer counts the request as in flight, via its stats.
    loop {
        let (_, body) = http(addr, "/sluice/queue/stats", &[]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["in_flight"].as_u64().unwrap() >= 1 {
            break;
        }
        std::thread::yield_now();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(q.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let resp = slow.join().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let status = q.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_crashing_user_process_takes_the_queue_down_with_its_last_words() {
    let out = Command::new(SLUICE)
        .args([
            "queue",
            "--",
            "sh",
            "-c",
            "echo 'cannot open model: no such file' >&2; exit 3",
        ])
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("user process exited with exit status: 3: cannot open model: no such file"),
        "{stderr}"
    );
}

#[test]
fn timeout_flags_answer_504_naming_the_limit_and_h2c_speaks_http2() {
    let q = start(&[
        "--timeout-seconds",
        "30",
        "--response-start-timeout-seconds",
        "1",
        "--h2c",
    ]);
    let (status, body) = http(q.addr, "/?sleep_ms=5000", &[]);
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("queue request timeout: revision default/hello-00001 gave no response within 1s (responseStartTimeoutSeconds)"),
        "{body}"
    );
    let (status, body) = http(q.addr, "/", &[]);
    assert_eq!(status, 200);
    assert!(body.contains("version: HTTP/2.0\n"), "{body}");
}

#[test]
fn port_and_env_references_in_args_expand_like_the_kubelet() {
    // The user command only starts `sluice hello` when its arguments arrived expanded:
    // `$(PORT)` to the port the queue chose, `$(TARGET)` from the env, `$$(PORT)` kept as
    // `$(PORT)` (the script is expanded too, hence its own `$$`).
    let script =
        r#"test "$1" = "$PORT" && test "$2" = Sluice && test "$3" = '$$(PORT)' && exec "$0" hello"#;
    let q = start_user(
        &[],
        &[
            "sh",
            "-c",
            script,
            SLUICE,
            "$(PORT)",
            "$(TARGET)",
            "$$(PORT)",
        ],
    );
    let (status, body) = http(q.addr, "/", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("Hello Sluice!"), "{body}");
}
