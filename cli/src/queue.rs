//! `sluice queue`: the queue layer as a sidecar in front of a user process (a Knative
//! Service revision's replica in local mode).
//!
//! Starts the command with `PORT=<free loopback port>`, passes its output through to
//! stderr, probes it until it accepts connections, serves the queue layer, and speaks the
//! replica handshake on stdout. On SIGTERM (or stdin closing) it fails probes, drains, and
//! stops the child; if the child exits on its own, so does `sluice queue`, non-zero, with
//! the child's last stderr lines.
//!
//! The port is held from the moment it is chosen until the user process listens on it (see
//! [`AppPort`]), and a user process that still cannot bind it (it says "address already in
//! use") is started again on another port before the replica is reported ready: the
//! replica stays starting, so the requests waiting for it are not lost.
//!
//! `sluice queue` is a subreaper: whatever the user process forks stays below it, and is
//! killed with it.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nix::unistd::Pid;
use sluice_core::NamespacedName;
use sluice_core::replica::{LISTENING_PREFIX, NOT_READY_LINE, READY_LINE};
use sluice_proxy::timeouts::Timeouts;
use sluice_queue::QueueConfig;
use sluice_queue::sidecar::{self, Sidecar, SidecarConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{proctree, shutdown};

/// Lines of the user process's stderr kept for the exit report.
const TAIL_LINES: usize = 20;
/// Longest line kept from the user process's output.
const MAX_LINE: usize = 4096;

/// Flags of `sluice queue`.
#[derive(Args, Debug)]
pub(crate) struct QueueArgs {
    /// Requests run at once (0 = unlimited); 10 × this many may wait, then 503.
    #[arg(long, env = "SLUICE_CONTAINER_CONCURRENCY", default_value_t = 0)]
    container_concurrency: u32,
    /// timeoutSeconds: longest wait for a response to start; also the drain grace.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
    /// responseStartTimeoutSeconds (default: timeoutSeconds).
    #[arg(long)]
    response_start_timeout_seconds: Option<u64>,
    /// idleTimeoutSeconds (0 or absent = no limit).
    #[arg(long)]
    idle_timeout_seconds: Option<u64>,
    /// Speak HTTP/2 cleartext to the user process (its port is named h2c).
    #[arg(long)]
    h2c: bool,
    /// Address of the queue layer; port 0 picks one, announced on stdout.
    #[arg(long, env = "SLUICE_QUEUE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How often to probe the user process until it accepts connections.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    /// Exit when stdin closes (set by `sluice up` for its replicas).
    #[arg(long, env = "SLUICE_EXIT_ON_STDIN_CLOSE")]
    exit_on_stdin_close: bool,
    /// The user process and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

impl QueueArgs {
    fn config(&self) -> anyhow::Result<SidecarConfig> {
        if !(1..=3600).contains(&self.timeout_seconds) {
            bail!(
                "--timeout-seconds must be in 1..=3600, got {}",
                self.timeout_seconds
            );
        }
        let secs = Duration::from_secs;
        let revision = std::env::var("K_REVISION").unwrap_or_else(|_| "unknown".into());
        Ok(SidecarConfig {
            queue: QueueConfig {
                container_concurrency: self.container_concurrency,
                max_queued: None,
            },
            timeouts: Timeouts {
                request: secs(self.timeout_seconds),
                response_start: self.response_start_timeout_seconds.map(secs),
                idle: self.idle_timeout_seconds.filter(|s| *s > 0).map(secs),
            },
            h2c: self.h2c,
            revision: NamespacedName::new(
                std::env::var("SLUICE_NAMESPACE").unwrap_or_else(|_| "default".into()),
                revision,
            ),
        })
    }
}

/// Times the user process is started on a fresh port when it cannot bind the one it got.
const BIND_ATTEMPTS: u32 = 5;

/// Runs the sidecar until told to stop or the user process exits.
pub(crate) async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let grace = config.timeouts.request;
    // Forks of the user process whose parent exits come here, not to init: killed with it.
    proctree::become_subreaper();
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    // Held until the user process listens; see `AppPort`.
    let mut port = AppPort::choose(true)?;
    let mut user = spawn(&args.command, port.port, tail.clone())?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the queue layer to {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The mesh material `sluice up` handed over (none when the mesh is off).
    let vars = sluice_mesh::vars::Vars::new(std::env::vars_os());
    let setup = sluice_queue::mesh::replica_mesh(addr.port(), "queue", &vars)
        .await
        .context("setting up the replica's mesh identity")?;
    let _follower = setup.follower;
    let spans = setup.spans;

    let watch_stdin = args.exit_on_stdin_close;
    let stop = async move {
        if watch_stdin {
            tokio::select! {
                () = shutdown::signalled() => {}
                () = shutdown::stdin_closed() => {}
            }
        } else {
            shutdown::signalled().await;
        }
    };
    tokio::pin!(stop);

    // Until the user process accepts connections on its port: started again on a fresh
    // port, up to `BIND_ATTEMPTS` times, while it says it cannot bind.
    let mut attempt = 1;
    let app = loop {
        let app = SocketAddr::from(([127, 0, 0, 1], port.port));
        let cannot_bind = user.cannot_bind.clone();
        tokio::select! {
            () = sidecar::wait_until_accepting(app, args.probe_interval) => break app,
            () = cannot_bind.notified(), if attempt < BIND_ATTEMPTS => {
                tracing::warn!(port = port.port, attempt, "the user process cannot bind its port: starting it again on another");
                stop_now(&mut user.child).await;
            }
            status = user.child.wait() => {
                // Its last lines (an "address in use" among them?) are read to the end first.
                user.relays_done().await;
                proctree::kill_all_below(None, KILL_WITHIN).await;
                if !(attempt < BIND_ATTEMPTS && user.cannot_bind_seen()) {
                    return exited(status, &tail);
                }
                tracing::warn!(port = port.port, attempt, "the user process exited as it could not bind its port: starting it again on another");
            }
            () = &mut stop => {
                stop_now(&mut user.child).await;
                return Ok(());
            }
        }
        // The likely cause with a held port: a program that binds without SO_REUSEADDR,
        // which cannot share it. From now on its port is chosen and let go at once (the
        // race that remains is what these attempts are for).
        port = AppPort::choose(false)?;
        attempt += 1;
        user = spawn(&args.command, port.port, tail.clone())?;
    };
    // Listening: the port is the user process's alone now.
    drop(port);
    let sidecar = Sidecar::with_mesh(config, app, setup.mesh, Some(setup.telemetry));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(sidecar::serve(listener, sidecar.clone(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    sidecar.set_app_ready();
    say(&format!("{LISTENING_PREFIX}{addr}"))?;
    say(READY_LINE)?;
    tracing::info!(%addr, %app, "user process ready");

    tokio::select! {
        status = user.child.wait() => {
            // Nothing can be served any more. Probes fail, the listener closes (new
            // connections are refused, so the router tries another replica), and the
            // requests already here are answered before exit: those waiting for a slot go on
            // to the user process's port, are refused there and answered as not processed
            // (the router retries them elsewhere). Only those the process had taken are lost.
            // The runtime hears first, so it routes nothing more here before connections close.
            let _ = say(NOT_READY_LINE);
            sidecar.queue().start_drain();
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            user.relays_done().await;
            proctree::kill_all_below(None, KILL_WITHIN).await;
            return exited(status, &tail);
        }
        () = &mut stop => {}
    }
    // Drain: probes fail from now on; requests in flight get up to timeoutSeconds.
    tracing::info!("draining");
    sidecar.queue().start_drain();
    if tokio::time::timeout(grace, sidecar.queue().drained())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = sidecar.queue().recorder().in_flight(),
            "drain grace of {grace:?} passed with requests still running"
        );
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    stop_child(&mut user.child).await;
    // Spans still queued go out before exit (bounded: a silent collector costs 2 s at most).
    if let Some(spans) = spans {
        let _ = tokio::time::timeout(Duration::from_secs(2), spans.flush()).await;
    }
    Ok(())
}

/// Prints one handshake line on stdout at once.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// How long killing the user process's tree may take before `sluice queue` gives up on it.
const KILL_WITHIN: Duration = Duration::from_secs(5);

/// A loopback port for the user process.
///
/// A held port stays bound here (with `SO_REUSEADDR`, never listening) until the user
/// process listens on it: the kernel hands it to no other `bind(…:0)` and to no outgoing
/// connection meanwhile, so no other replica, nor anything else on the machine choosing a
/// free port, can take it; and a server that sets `SO_REUSEADDR` before binding, as nearly
/// all do (Python's `http.server`, uvicorn, Go, Node, Rust's std), binds and listens on it
/// all the same. A port not held is only chosen (bound and let go at once).
struct AppPort {
    port: u16,
    _hold: Option<tokio::net::TcpSocket>,
}

impl AppPort {
    fn choose(hold: bool) -> anyhow::Result<Self> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let socket = tokio::net::TcpSocket::new_v4()
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(any)?;
                Ok(s)
            })
            .context("finding a free port for the user process")?;
        let port = socket
            .local_addr()
            .context("finding a free port for the user process")?
            .port();
        Ok(Self {
            port,
            _hold: hold.then_some(socket),
        })
    }
}

/// One start of the user process.
struct UserProcess {
    child: Child,
    /// Notified when its output says it cannot bind its port.
    cannot_bind: Arc<Notify>,
    /// Its output said so.
    said_cannot_bind: Arc<AtomicBool>,
    /// The tasks copying its stdout and stderr.
    relays: Vec<JoinHandle<()>>,
}

impl UserProcess {
    /// Waits until its output has been read to the end (bounded: a grandchild holding the
    /// pipes open cannot keep the queue waiting).
    async fn relays_done(&mut self) {
        for relay in self.relays.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
        }
    }

    fn cannot_bind_seen(&self) -> bool {
        self.said_cannot_bind.load(Ordering::Acquire)
    }
}

/// Whether a line of the user process's output says it cannot bind its port, as the
/// runtimes word it: Python `[Errno 98] Address already in use`, Go `bind: address already
/// in use`, Node `EADDRINUSE`, Java `BindException: Address already in use`.
fn says_cannot_bind(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    line.contains("address already in use") || line.contains("eaddrinuse")
}

fn spawn(
    command: &[String],
    port: u16,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> anyhow::Result<UserProcess> {
    // `$(VAR)` in the command and args expands as the kubelet does, `$(PORT)` included.
    let port_text = port.to_string();
    let lookup = |name: &str| {
        if name == "PORT" {
            Some(port_text.clone())
        } else {
            std::env::var(name).ok()
        }
    };
    let command: Vec<String> = command
        .iter()
        .map(|part| sidecar::expand_env_refs(part, lookup))
        .collect();
    let (program, args) = command
        .split_first()
        .context("no user command given after --")?;
    // As in `ReplicaSpec`, a command of `sluice` means this very binary, so the samples'
    // `command: ["sluice"]` works without `sluice` on PATH.
    let program = if program == "sluice" {
        std::env::current_exe()
            .context("finding this binary to run the user command `sluice`")?
            .into_os_string()
    } else {
        program.into()
    };
    let mut child = Command::new(&program)
        .args(args)
        .env("PORT", port.to_string())
        // The user process is ours to stop; it must not exit on its own closed stdin.
        .env_remove("SLUICE_EXIT_ON_STDIN_CLOSE")
        // The replica's private key is the queue layer's, never the user process's.
        .env_remove(sluice_mesh::handoff::DIR_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the user process {program:?}"))?;
    let cannot_bind = Arc::new(Notify::new());
    let said_cannot_bind = Arc::new(AtomicBool::new(false));
    let watch = BindWatch {
        notify: cannot_bind.clone(),
        said: said_cannot_bind.clone(),
    };
    let mut relays = Vec::new();
    if let Some(out) = child.stdout.take() {
        relays.push(tokio::spawn(relay(out, None, watch.clone())));
    }
    if let Some(err) = child.stderr.take() {
        relays.push(tokio::spawn(relay(err, Some(tail), watch)));
    }
    Ok(UserProcess {
        child,
        cannot_bind,
        said_cannot_bind,
        relays,
    })
}

/// Where a relay reports that the user process cannot bind its port.
#[derive(Clone)]
struct BindWatch {
    notify: Arc<Notify>,
    said: Arc<AtomicBool>,
}

/// Copies the user process's output, line by line, to our stderr (stdout carries the
/// handshake), keeping the last lines of its stderr and watching for a failed bind.
async fn relay(
    stream: impl AsyncRead + Unpin,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    bind: BindWatch,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        // Not `eprintln!`, which panics once stderr's reader is gone: the relay goes on
        // reading, so the user process never blocks on a full pipe.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        if says_cannot_bind(&line) && !bind.said.swap(true, Ordering::AcqRel) {
            bind.notify.notify_one();
        }
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

/// The user process has exited: reports its status with the last lines of its stderr
/// (read to the end by then: see [`UserProcess::relays_done`]).
fn exited(
    status: std::io::Result<std::process::ExitStatus>,
    tail: &Mutex<VecDeque<String>>,
) -> anyhow::Result<()> {
    let status = status.context("waiting for the user process")?;
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    let last: Vec<&str> = tail.iter().map(String::as_str).collect();
    if last.is_empty() {
        bail!("user process exited with {status}");
    }
    bail!("user process exited with {status}: {}", last.join("\n"))
}

fn pid_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
}

/// SIGTERM, then [`stop_now`] if the child has not exited within a few seconds; either
/// way, whatever it forked goes with it.
async fn stop_child(child: &mut Child) {
    if let Some(pid) = pid_of(child) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        stop_now(child).await;
    }
    proctree::kill_all_below(None, KILL_WITHIN).await;
}

/// Kills the user process and everything it forked, at once.
async fn stop_now(child: &mut Child) {
    proctree::kill_all_below(pid_of(child), KILL_WITHIN).await;
    let _ = child.wait().await;
}
