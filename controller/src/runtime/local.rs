//! Local mode's runtime: each replica is a child process, supervised here.
//!
//! A replica announces its address and readiness on stdout (`sluice_core::replica`); the
//! runtime confirms with a readiness probe before reporting it ready, keeps the end of its
//! stderr for failure messages, stops it with SIGTERM (then SIGKILL after the drain
//! timeout), and backs off exponentially when replicas keep failing. Each child's stdin is
//! a pipe held here: if this process dies, the child sees EOF and exits.
//!
//! Each replica runs under `sluice replica-guard` (this binary), in a process group of its
//! own: the guard ends the replica's whole process tree (the queue layer, the user process
//! and whatever it forks) when the replica exits, when told to stop now ([`STOP_NOW`], at
//! the end of the drain grace), and when this process is gone, however it ended (the kernel
//! signals the guard on its parent's death).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;
use sluice_core::NamespacedName;
use sluice_core::replica::{HandshakeLine, PROBE_HEADER, PROBE_PATH, parse_handshake};
use sluice_mesh::tls::MeshHttpConnector;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{ReplicaFailure, ReplicaSpec, RevisionRuntimeStatus, Runtime, RuntimeError};

/// Local runtime settings.
#[derive(Clone, Debug)]
pub struct LocalRuntimeConfig {
    /// The `sluice` binary, run when a command names `sluice`.
    pub self_exe: PathBuf,
    /// How long a replica may take from start to ready.
    pub ready_timeout: Duration,
    /// First delay before restarting a failing revision; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Longest restart delay.
    pub max_backoff: Duration,
    /// Lines of stderr kept for failure messages.
    pub stderr_lines: usize,
    /// Mesh identity for replicas (certificates handed over a private directory, mTLS
    /// probes); `None` = mesh off.
    pub mesh: Option<super::mesh::LocalMesh>,
    /// Environment every replica gets (before its own `env`, which may override it).
    pub env: Vec<(String, String)>,
    /// Run each replica under `self_exe replica-guard` (see the module docs); off only
    /// where `self_exe` is not a `sluice` binary (this crate's own tests).
    pub guard: bool,
}

impl LocalRuntimeConfig {
    /// Defaults for running `self_exe`.
    pub fn new(self_exe: PathBuf) -> Self {
        Self {
            self_exe,
            ready_timeout: Duration::from_secs(120),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            stderr_lines: 20,
            mesh: None,
            env: Vec::new(),
            guard: true,
        }
    }
}

/// The subcommand of `sluice` that runs a replica's command under a guard:
/// `sluice replica-guard --parent <PID> -- command...`.
pub const GUARD_SUBCOMMAND: &str = "replica-guard";

/// Sent to a replica's guard to kill the replica's whole process tree at once (the drain
/// grace is over, or the replica failed its start).
pub const STOP_NOW: Signal = Signal::SIGUSR1;

/// Child processes as replicas.
#[derive(Clone, Debug)]
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LocalRuntimeConfig,
    revisions: Mutex<HashMap<NamespacedName, Procs>>,
    changes: watch::Sender<u64>,
    next_id: AtomicU64,
    probe: Client<MeshHttpConnector, Empty<Bytes>>,
}

#[derive(Debug, Default)]
struct Procs {
    replicas: Vec<Replica>,
    failure: Option<ReplicaFailure>,
    consecutive_failures: u32,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct Replica {
    id: u64,
    ready: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    /// Said it can no longer serve (`SLUICE_NOT_READY`) and is about to exit: neither
    /// routed to nor counted, so a replacement starts at once.
    leaving: bool,
}

impl Replica {
    /// Counted and routed to: neither told to stop nor leaving on its own.
    fn active(&self) -> bool {
        self.stop.is_some() && !self.leaving
    }
}

impl LocalRuntime {
    /// A runtime with no replicas.
    pub fn new(config: LocalRuntimeConfig) -> Self {
        let (changes, _) = watch::channel(0);
        let probe_tls = config.mesh.as_ref().map(|m| m.client().connector().clone());
        Self {
            inner: Arc::new(Inner {
                config,
                revisions: Mutex::new(HashMap::new()),
                changes,
                next_id: AtomicU64::new(1),
                probe: Client::builder(TokioExecutor::new())
                    .build(MeshHttpConnector::new(probe_tls)),
            }),
        }
    }
}

impl Inner {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<NamespacedName, Procs>) -> T) -> T {
        let mut guard = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn program(&self, spec: &ReplicaSpec) -> Result<(PathBuf, Vec<String>), RuntimeError> {
        let (first, rest) =
            spec.command
                .split_first()
                .ok_or_else(|| RuntimeError::InvalidSpec {
                    revision: spec.revision.clone(),
                    message: "the container has no command".into(),
                })?;
        let program = if first == "sluice" {
            self.config.self_exe.clone()
        } else {
            PathBuf::from(first)
        };
        Ok((program, rest.to_vec()))
    }

    fn record_failure(&self, key: &NamespacedName, id: u64, failure: ReplicaFailure) {
        tracing::warn!(revision = %key, reason = %failure.reason, "replica failed: {}", failure.message);
        self.with(|map| {
            let procs = map.entry(key.clone()).or_default();
            procs.replicas.retain(|r| r.id != id);
            procs.consecutive_failures += 1;
            let delay = sluice_core::Backoff::after(
                self.config.backoff,
                self.config.max_backoff,
                procs.consecutive_failures,
            );
            procs.retry_at = Some(Instant::now() + delay);
            procs.failure = Some(failure);
        });
        self.bump();
    }

    fn remove(&self, key: &NamespacedName, id: u64) {
        self.with(|map| {
            if let Some(procs) = map.get_mut(key) {
                procs.replicas.retain(|r| r.id != id);
                if procs.replicas.is_empty() && procs.failure.is_none() {
                    map.remove(key);
                }
            }
        });
        self.bump();
    }

    async fn probe_ok(&self, addr: SocketAddr) -> bool {
        let Ok(req) = http::Request::get(format!("http://{addr}{PROBE_PATH}"))
            .header(PROBE_HEADER, "queue")
            .body(Empty::<Bytes>::new())
        else {
            return false;
        };
        let attempt = async {
            let resp = self.probe.request(req).await.ok()?;
            let ok = resp.status() == http::StatusCode::OK;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some(ok && body.as_ref() == b"queue")
        };
        tokio::time::timeout(Duration::from_millis(300), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }
}

impl Runtime for LocalRuntime {
    async fn scale(&self, spec: &ReplicaSpec, replicas: u32) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        let (program, args) = inner.program(spec)?;
        let now = Instant::now();
        let to_start = inner.with(|map| {
            let procs = map.entry(spec.revision.clone()).or_default();
            let active: Vec<usize> = (0..procs.replicas.len())
                .filter(|&i| procs.replicas[i].active())
                .collect();
            let want = replicas as usize;
            if active.len() > want {
                // Stop starting replicas first, then the newest ready ones.
                let mut victims = active.clone();
                victims.sort_by_key(|&i| {
                    (
                        procs.replicas[i].ready.is_some(),
                        std::cmp::Reverse(procs.replicas[i].id),
                    )
                });
                for &i in victims.iter().take(active.len() - want) {
                    if let Some(stop) = procs.replicas[i].stop.take() {
                        let _ = stop.send(());
                    }
                }
                0
            } else if procs.retry_at.is_some_and(|at| now < at) {
                0
            } else {
                want - active.len()
            }
        });
        for _ in 0..to_start {
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            // The replica's identity, over a private directory named in its environment.
            let handoff = match &inner.config.mesh {
                Some(mesh) => match mesh.hand_off(spec, id) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        inner.record_failure(
                            &spec.revision,
                            id,
                            ReplicaFailure {
                                reason: "IdentityFailed".into(),
                                message: format!("cannot hand the replica its identity: {e}"),
                            },
                        );
                        continue;
                    }
                },
                None => None,
            };
            let mut command = if inner.config.guard {
                let mut guarded = Command::new(&inner.config.self_exe);
                guarded
                    .arg(GUARD_SUBCOMMAND)
                    .arg("--parent")
                    .arg(std::process::id().to_string())
                    .arg("--")
                    .arg(&program)
                    // Away from the terminal's process group: Ctrl-C reaches `sluice up`
                    // alone, which stops its replicas in order.
                    .process_group(0)
                    // Dropped (this process exiting), the guard ends the replica itself;
                    // a SIGKILL here would leave the replica's processes behind.
                    .kill_on_drop(false);
                guarded
            } else {
                let mut plain = Command::new(&program);
                plain.kill_on_drop(true);
                plain
            };
            if let Some(h) = &handoff {
                command.env(sluice_mesh::handoff::DIR_ENV, h.dir());
            }
            command
                .args(&args)
                .envs(inner.config.env.iter().map(|(k, v)| (k, v)))
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                // Replicas exit when this process (their stdin's writer) is gone.
                .env("SLUICE_EXIT_ON_STDIN_CLOSE", "true")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            match command.spawn() {
                Ok(child) => {
                    let (stop_tx, stop_rx) = oneshot::channel();
                    inner.with(|map| {
                        map.entry(spec.revision.clone())
                            .or_default()
                            .replicas
                            .push(Replica {
                                id,
                                ready: None,
                                stop: Some(stop_tx),
                                leaving: false,
                            })
                    });
                    tracing::info!(revision = %spec.revision, pid = child.id(), "started replica");
                    tokio::spawn(supervise(
                        inner.clone(),
                        spec.clone(),
                        id,
                        child,
                        stop_rx,
                        handoff,
                    ));
                }
                Err(e) => inner.record_failure(
                    &spec.revision,
                    id,
                    ReplicaFailure {
                        reason: "StartFailed".into(),
                        message: if inner.config.guard {
                            format!(
                                "cannot start {} (the guard of {}): {e}",
                                inner.config.self_exe.display(),
                                program.display()
                            )
                        } else {
                            format!("cannot start {}: {e}", program.display())
                        },
                    },
                ),
            }
        }
        inner.bump();
        Ok(())
    }

    fn remove(&self, revision: &NamespacedName) {
        let gone = self.inner.with(|map| {
            let Some(procs) = map.get_mut(revision) else {
                return false;
            };
            procs.failure = None;
            for r in &mut procs.replicas {
                if let Some(stop) = r.stop.take() {
                    let _ = stop.send(());
                }
            }
            if procs.replicas.is_empty() {
                map.remove(revision);
            }
            true
        });
        if gone {
            self.inner.bump();
        }
    }

    fn status(&self, revision: &NamespacedName) -> RevisionRuntimeStatus {
        self.inner.with(|map| {
            let Some(procs) = map.get(revision) else {
                return RevisionRuntimeStatus::default();
            };
            let running = procs.replicas.iter().filter(|r| r.active());
            RevisionRuntimeStatus {
                ready: running.clone().filter_map(|r| r.ready).collect(),
                starting: running.filter(|r| r.ready.is_none()).count() as u32,
                failure: procs.failure.clone(),
            }
        })
    }

    fn revisions(&self) -> Vec<NamespacedName> {
        self.inner.with(|map| map.keys().cloned().collect())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    async fn shutdown(&self) {
        let mut changes = self.inner.changes.subscribe();
        loop {
            let running = self.inner.with(|map| {
                let mut running = 0;
                for procs in map.values_mut() {
                    procs.retry_at = Some(Instant::now() + Duration::from_secs(3600));
                    for r in &mut procs.replicas {
                        if let Some(stop) = r.stop.take() {
                            let _ = stop.send(());
                        }
                        running += 1;
                    }
                }
                running
            });
            if running == 0 || changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Watches one child from start to exit.
async fn supervise(
    inner: Arc<Inner>,
    spec: ReplicaSpec,
    id: u64,
    mut child: Child,
    mut stop: oneshot::Receiver<()>,
    // Keeps the replica's certificate rotating; removes its private directory when dropped.
    _handoff: Option<super::mesh::ReplicaHandoff>,
) {
    let key = spec.revision.clone();
    let guarded = inner.config.guard;
    // Held until the child is gone: closing it tells the child to exit.
    let _stdin = child.stdin.take();
    let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let mut stderr_done = None;
    if let Some(stderr) = child.stderr.take() {
        let (tail, keep, key) = (tail.clone(), inner.config.stderr_lines, key.clone());
        stderr_done = Some(tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            while let Ok(Some(line)) = next_line(&mut reader).await {
                if line.starts_with("{\"start_time\"") {
                    // A replica's access-log line: the process's access log, not an error.
                    tracing::info!(target: "sluice::access", "{line}");
                    continue;
                }
                tracing::debug!(revision = %key, "replica: {line}");
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == keep {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }));
    }
    let (hs_tx, mut handshake) = mpsc::channel::<HandshakeLine>(4);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            while let Ok(Some(line)) = next_line(&mut reader).await {
                if let Some(h) = parse_handshake(&line)
                    && hs_tx.send(h).await.is_err()
                {
                    return;
                }
            }
        });
    }
    // After an exit, the rest of stderr is still in the pipe: read it before reporting.
    let tail_text = |tail: Arc<Mutex<VecDeque<String>>>,
                     done: Option<tokio::task::JoinHandle<()>>| async move {
        if let Some(done) = done {
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        }
        let t = tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    };

    let deadline = Instant::now() + inner.config.ready_timeout;
    let mut addr: Option<SocketAddr> = None;
    // Phase 1: until ready.
    loop {
        tokio::select! {
            line = handshake.recv() => match line {
                Some(HandshakeLine::Listening(a)) => addr = Some(a),
                // Its exit follows.
                Some(HandshakeLine::NotReady) => {}
                Some(HandshakeLine::Ready) => {
                    let Some(a) = addr else { continue };
                    if inner.probe_ok(a).await {
                        break;
                    }
                    kill_now(&mut child, guarded).await;
                    inner.record_failure(&key, id, ReplicaFailure {
                        reason: "ProbeFailed".into(),
                        message: format!("replica at {a} announced ready but failed its readiness probe"),
                    });
                    return;
                }
                None => {
                    // stdout closed: wait for the exit below.
                    let status = child.wait().await;
                    exit_failure(&inner, &key, id, status, &tail_text(tail, stderr_done).await);
                    return;
                }
            },
            status = child.wait() => {
                exit_failure(&inner, &key, id, status, &tail_text(tail, stderr_done).await);
                return;
            }
            _ = &mut stop => {
                stop_child(&mut child, spec.drain_timeout, guarded).await;
                inner.remove(&key, id);
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                kill_now(&mut child, guarded).await;
                inner.record_failure(&key, id, ReplicaFailure {
                    reason: "ReadyTimeout".into(),
                    message: format!("replica was not ready within {:?}: {}", inner.config.ready_timeout, tail_text(tail, stderr_done).await),
                });
                return;
            }
        }
    }
    let Some(ready_addr) = addr else { return };
    inner.with(|map| {
        if let Some(procs) = map.get_mut(&key) {
            if let Some(r) = procs.replicas.iter_mut().find(|r| r.id == id) {
                r.ready = Some(ready_addr);
            }
            procs.failure = None;
            procs.consecutive_failures = 0;
            procs.retry_at = None;
        }
    });
    tracing::info!(revision = %key, addr = %ready_addr, "replica ready");
    inner.bump();
    // Phase 2: serving until stopped or dead.
    match while_serving(
        &inner,
        &key,
        id,
        ready_addr,
        &mut child,
        &mut stop,
        &mut handshake,
    )
    .await
    {
        Served::Exited(status) => {
            exit_failure(
                &inner,
                &key,
                id,
                status,
                &tail_text(tail, stderr_done).await,
            );
        }
        Served::Stop => {
            stop_child(&mut child, spec.drain_timeout, guarded).await;
            tracing::info!(revision = %key, addr = %ready_addr, "replica stopped");
            inner.remove(&key, id);
        }
    }
}

/// How a ready replica's service ended.
enum Served {
    /// It exited on its own.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// The runtime told it to stop.
    Stop,
}

/// A ready replica serves until stopped or dead. One that says it can no longer serve
/// leaves the routes at once: it lets its open connections finish only after that, so no
/// request is sent on a connection it is closing.
async fn while_serving(
    inner: &Inner,
    key: &NamespacedName,
    id: u64,
    ready_addr: SocketAddr,
    child: &mut Child,
    stop: &mut oneshot::Receiver<()>,
    handshake: &mut mpsc::Receiver<HandshakeLine>,
) -> Served {
    let mut listening = true;
    loop {
        tokio::select! {
            status = child.wait() => return Served::Exited(status),
            _ = &mut *stop => return Served::Stop,
            line = handshake.recv(), if listening => match line {
                Some(HandshakeLine::NotReady) => {
                    tracing::warn!(revision = %key, addr = %ready_addr, "replica can no longer serve: no longer routed to");
                    inner.with(|map| {
                        if let Some(r) = map
                            .get_mut(key)
                            .and_then(|procs| procs.replicas.iter_mut().find(|r| r.id == id))
                        {
                            r.leaving = true;
                        }
                    });
                    inner.bump();
                }
                Some(_) => {}
                None => listening = false,
            },
        }
    }
}

fn exit_failure(
    inner: &Inner,
    key: &NamespacedName,
    id: u64,
    status: std::io::Result<std::process::ExitStatus>,
    tail: &str,
) {
    let what = match status {
        Ok(s) => format!("replica exited with {s}"),
        Err(e) => format!("replica could not be waited for: {e}"),
    };
    let message = if tail.is_empty() {
        what
    } else {
        format!("{what}: {tail}")
    };
    inner.record_failure(
        key,
        id,
        ReplicaFailure {
            reason: "ExitCode".into(),
            message,
        },
    );
}

/// Longest line kept from a replica's output; the rest of a longer line is dropped.
const MAX_LINE: usize = 16 * 1024;

/// Reads one line of at most [`MAX_LINE`] bytes, so a child that prints without newlines
/// cannot grow this process's memory. `None` at end of output.
async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (chunk, consumed, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(consumed);
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

fn signal_child(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// SIGTERM, then [`kill_now`] if the child has not exited within `drain` (plus a second).
async fn stop_child(child: &mut Child, drain: Duration, guarded: bool) {
    signal_child(child, Signal::SIGTERM);
    if tokio::time::timeout(drain + Duration::from_secs(1), child.wait())
        .await
        .is_err()
    {
        kill_now(child, guarded).await;
    }
}

/// Ends a replica at once: a guarded one by [`STOP_NOW`] to its guard, which kills the
/// whole tree (SIGKILL of the guard itself only if it does not exit within 5 s); an
/// unguarded one by SIGKILL.
async fn kill_now(child: &mut Child, guarded: bool) {
    if guarded {
        signal_child(child, STOP_NOW);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str]) -> ReplicaSpec {
        ReplicaSpec {
            revision: NamespacedName::new("default", "r-00001"),
            uid: String::new(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![],
            drain_timeout: Duration::from_secs(1),
        }
    }

    async fn wait_for_failure(rt: &LocalRuntime, key: &NamespacedName) -> ReplicaFailure {
        let mut changes = rt.changes();
        loop {
            if let Some(f) = rt.status(key).failure {
                return f;
            }
            changes.changed().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_crashing_replica_reports_its_stderr_and_backs_off() {
        // A long first backoff, so a slow machine cannot outlast it mid-test.
        let rt = LocalRuntime::new(LocalRuntimeConfig {
            backoff: Duration::from_secs(600),
            guard: false,
            ..LocalRuntimeConfig::new("/nonexistent/sluice".into())
        });
        let spec = spec(&[
            "sh",
            "-c",
            "echo 'cannot load model: no such file' >&2; exit 3",
        ]);
        rt.scale(&spec, 1).await.unwrap();
        let failure = wait_for_failure(&rt, &spec.revision).await;
        assert_eq!(failure.reason, "ExitCode");
        assert!(
            failure.message.contains("exit status: 3"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("cannot load model: no such file"),
            "{}",
            failure.message
        );
        // Within the backoff, scaling again starts nothing.
        rt.scale(&spec, 1).await.unwrap();
        assert_eq!(rt.status(&spec.revision).starting, 0);
        rt.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_program_is_a_start_failure_and_sluice_means_self() {
        let rt = LocalRuntime::new(LocalRuntimeConfig::new("/nonexistent/sluice".into()));
        let spec = spec(&["sluice", "model-server"]);
        rt.scale(&spec, 1).await.unwrap();
        let failure = rt.status(&spec.revision).failure.unwrap();
        assert_eq!(failure.reason, "StartFailed");
        assert!(
            failure.message.contains("/nonexistent/sluice"),
            "{}",
            failure.message
        );
        let empty = rt.scale(&self::spec(&[]), 1).await.unwrap_err();
        assert!(empty.to_string().contains("no command"));
    }

    /// Waits (30 s at most) until the revision's status satisfies `done`.
    async fn wait_until(
        rt: &LocalRuntime,
        key: &NamespacedName,
        done: impl Fn(&RevisionRuntimeStatus) -> bool,
    ) {
        let mut changes = rt.changes();
        let wait = async {
            while !done(&rt.status(key)) {
                changes.changed().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("status stayed {:?}", rt.status(key)));
    }

    /// A replica whose user process died says so before it closes its connections; the
    /// runtime must stop routing to it (and stop counting it) at once, while it still runs.
    #[tokio::test]
    async fn a_replica_that_says_not_ready_leaves_the_routes_while_it_still_runs() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The readiness probe's answer, as a queue layer gives it.
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = probe.accept().await {
                tokio::spawn(async move {
                    let (mut got, mut buf) = (Vec::new(), [0u8; 1024]);
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nqueue";
                    let _ = conn.write_all(answer).await;
                });
            }
        });
        // The replica goes on when the test writes to a FIFO (`read` is a shell builtin,
        // so no child process is left behind).
        let dir = std::env::temp_dir().join(format!("sluice-not-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (go, end) = (dir.join("go"), dir.join("end"));
        for fifo in [&go, &end] {
            let made = std::process::Command::new("mkfifo").arg(fifo).status();
            assert!(made.unwrap().success());
        }
        let script = format!(
            "echo 'SLUICE_LISTENING {addr}'; echo SLUICE_READY; read _ < '{}'; \
             echo SLUICE_NOT_READY; read _ < '{}'",
            go.display(),
            end.display()
        );
        let rt = LocalRuntime::new(LocalRuntimeConfig {
            backoff: Duration::from_secs(600),
            guard: false,
            ..LocalRuntimeConfig::new("/nonexistent/sluice".into())
        });
        let spec = spec(&["sh", "-c", &script]);
        rt.scale(&spec, 1).await.unwrap();
        wait_until(&rt, &spec.revision, |s| s.ready == [addr]).await;

        tokio::fs::write(&go, b"\n").await.unwrap();
        wait_until(&rt, &spec.revision, |s| s.ready.is_empty()).await;
        let status = rt.status(&spec.revision);
        assert_eq!(status.starting, 0, "a leaving replica is not starting");
        assert!(
            status.failure.is_none(),
            "it has not exited yet: {status:?}"
        );

        tokio::fs::write(&end, b"\n").await.unwrap();
        let failure = wait_for_failure(&rt, &spec.revision).await;
        assert_eq!(failure.reason, "ExitCode");
        rt.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("short\n{long}\nlast");
        let mut reader = BufReader::new(input.as_bytes());
        assert_eq!(
            next_line(&mut reader).await.unwrap().as_deref(),
            Some("short")
        );
        assert_eq!(
            next_line(&mut reader).await.unwrap().unwrap().len(),
            MAX_LINE
        );
        assert_eq!(
            next_line(&mut reader).await.unwrap().as_deref(),
            Some("last")
        );
        assert_eq!(next_line(&mut reader).await.unwrap(), None);
    }
}
