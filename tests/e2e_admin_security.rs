//! The admin API of a default `sluice up` against the attacks of issue 21, with the real
//! binary on loopback: a `text/plain` apply of a Service whose command would run code
//! (a CORS "simple request" any web page can send) creates nothing and runs nothing, with or
//! without a browser's `Origin`, a DNS-rebinding `Host`, or a wrong token; a token file
//! other users can read stops `sluice up` at start; the CLI finds the token by itself.

// A real process on the wall clock: std's Instant bounds the wait (no paused time here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const WAIT: Duration = Duration::from_secs(90);

/// A running `sluice up` in `dir` (state in `dir/.sluice`, the default name); stopped on drop.
struct Up {
    child: Child,
    admin: SocketAddr,
    dir: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Up {
    fn start(dir: &Path) -> Up {
        let mut child = Command::new(SLUICE)
            .args(["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .current_dir(dir)
            .env_remove("SLUICE_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("up.log")).unwrap())
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
            let line = rx
                .recv_timeout(WAIT)
                .expect("sluice up announces its admin API");
            admin = line
                .strip_prefix("sluice: admin API on http://")
                .map(|a| a.parse().unwrap());
        }
        Up {
            child,
            admin: admin.unwrap(),
            dir: dir.to_owned(),
        }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join(".sluice/admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }
}

/// One raw HTTP/1.1 request with exactly `headers`; status, response head and body.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .expect("a complete HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A Knative Service whose command writes `id` into `marker`, then serves (`sluice hello`).
fn service(name: &str, marker: &Path) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  template:\n    spec:\n      containers:\n      - command: [sh]\n        \
         args: [-c, 'id > {} && exec {SLUICE} hello']\n",
        marker.display()
    )
}

fn apply_body(dir: &Path, text: &str) -> String {
    serde_json::json!({"files": [{"source": "x", "base_dir": dir, "text": text}]}).to_string()
}

#[test]
fn the_text_plain_attack_creates_nothing_and_runs_nothing() {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let up = Up::start(&dir);
    let host = format!("Host: {}", up.admin);
    let token = up.token();
    let state = dir.join(".sluice");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.join("admin-token")), 0o600);
    assert_eq!(mode(&state), 0o700);

    // The exact attack: a JSON body sent as text/plain, no token; from a page (Origin) or
    // from another local user (none); and through a rebinding name with the page's Origin.
    let pwned = dir.join("pwned");
    let attack = apply_body(&dir, &service("evil", &pwned));
    let plain = "Content-Type: text/plain".to_owned();
    let attempts: [(Vec<String>, u16); 4] = [
        (vec![host.clone(), plain.clone()], 401),
        (
            vec![
                host.clone(),
                plain.clone(),
                "Origin: http://evil.example".into(),
            ],
            403,
        ),
        (
            vec![
                format!("Host: evil.example:{}", up.admin.port()),
                plain.clone(),
                "Origin: http://evil.example".into(),
            ],
            403,
        ),
        (
            vec![
                host.clone(),
                plain.clone(),
                "Authorization: Bearer 0123456789abcdef0123456789abcdef".into(),
            ],
            401,
        ),
    ];
    for (headers, want) in &attempts {
        let (status, head, body) = raw(up.admin, "POST", "/v1/apply", headers, &attack);
        assert_eq!(status, *want, "{headers:?}: {body}");
        assert!(
            !body.contains(&token),
            "the refusal leaks the token: {body}"
        );
        assert!(
            !head.contains("access-control-allow"),
            "CORS header in {head}"
        );
    }
    // A missing token is named, with where the CLI finds it.
    let (_, head, body) = raw(up.admin, "POST", "/v1/apply", &attempts[0].0, &attack);
    assert!(
        body.contains("missing credential") && body.contains("admin-token"),
        "{body}"
    );
    assert!(head.contains("www-authenticate: bearer"), "{head}");

    // With the token, a browser's foreign Origin or a rebinding Host is still refused, and
    // so is text/plain.
    let bearer = format!("Authorization: Bearer {token}");
    for headers in [
        vec![
            host.clone(),
            bearer.clone(),
            "Origin: http://evil.example".to_owned(),
        ],
        vec![
            format!("Host: rebind.evil.example:{}", up.admin.port()),
            bearer.clone(),
        ],
    ] {
        let (status, _, body) = raw(up.admin, "GET", "/v1/ksvc", &headers, "");
        assert_eq!(status, 403, "{headers:?}: {body}");
    }
    let (status, _, body) = raw(
        up.admin,
        "POST",
        "/v1/apply",
        &[host.clone(), bearer.clone(), plain],
        &attack,
    );
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("Content-Type application/json"), "{body}");
    // A preflight gets no CORS permission.
    let (status, head, _) = raw(
        up.admin,
        "OPTIONS",
        "/v1/apply",
        &[
            host.clone(),
            "Origin: http://evil.example".into(),
            "Access-Control-Request-Method: POST".into(),
        ],
        "",
    );
    assert!(
        status >= 400 && !head.contains("access-control-allow"),
        "{status} {head}"
    );
    // The health check needs no token.
    assert_eq!(
        raw(up.admin, "GET", "/healthz", std::slice::from_ref(&host), "").0,
        200
    );

    // The CLI, run where `sluice up` runs, finds the token itself: a legitimate Service
    // with the same kind of command is applied and runs.
    let legit = dir.join("legit");
    let manifest = dir.join("legit.yaml");
    std::fs::write(&manifest, service("legit", &legit)).unwrap();
    let out = Command::new(SLUICE)
        .args([
            "apply",
            "-f",
            "legit.yaml",
            "--server",
            &format!("http://{}", up.admin),
        ])
        .current_dir(&dir)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_STATE_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait (long poll) until it is Ready: its command has run by then.
    let mut version = String::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "legit never became Ready\n{}",
            up.log()
        );
        let path = format!("/v1/ksvc/default/legit?after={version}&timeout=10");
        let (status, _, body) = raw(up.admin, "GET", &path, &[host.clone(), bearer.clone()], "");
        let obj: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let ready = obj["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if status == 200 && ready {
            break;
        }
        version = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    assert!(legit.exists(), "the legitimate command ran");
    assert!(!pwned.exists(), "the attacker's command ran:\n{}", up.log());
    let (_, _, body) = raw(up.admin, "GET", "/v1/ksvc", &[host, bearer], "");
    let list: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["legit"]);

    // `sluice get` from another folder without the token: a clear error, nothing else.
    let out = Command::new(SLUICE)
        .args(["get", "ksvc", "--server", &format!("http://{}", up.admin)])
        .current_dir(std::env::temp_dir())
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_STATE_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no admin token") && err.contains("--token"),
        "{err}"
    );
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_token_file_others_can_read_stops_sluice_up_at_start() {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-admin-loose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let file = state.join("admin-token");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(SLUICE)
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--mesh",
            "off",
        ])
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("accessible to other users (mode 0644)") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        !err.contains("0123456789abcdef"),
        "the message shows the token: {err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("admin API on"),
        "it must not serve"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
