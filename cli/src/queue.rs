//! `sluice queue`: the queue layer as a sidecar in front of a user process (a Knative
//! Service revision's replica in local mode).
//!
//! Starts the command with `PORT=<free loopback port>`, passes its output through to
//! stderr, probes it until it accepts connections, serves the queue layer, and speaks the
//! replica handshake on stdout. On SIGTERM (or stdin closing) it fails probes, drains, and
//! stops the child; if the child exits on its own, so does `sluice queue`, non-zero, with
//! the child's last stderr lines.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_activator::queue::QueueConfig;
use sluice_activator::queue::sidecar::{self, Sidecar, SidecarConfig};
use sluice_activator::timeouts::Timeouts;
use sluice_core::NamespacedName;
use sluice_core::replica::{LISTENING_PREFIX, READY_LINE};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::shutdown;

/// Lines of the user process's stderr kept for the exit report.
const TAIL_LINES: usize = 20;
/// Longest line kept from the user process's output.
const MAX_LINE: usize = 4096;

/// Flags of `sluice queue`.
#[derive(Args, Debug)]
pub struct QueueArgs {
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

/// Runs the sidecar until told to stop or the user process exits.
pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let grace = config.timeouts.request;
    // A free loopback port for the user process.
    let app_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the user process")?
        .port();
    let app = SocketAddr::from(([127, 0, 0, 1], app_port));
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let (mut child, stderr_relay) = spawn(&args.command, app_port, tail.clone())?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the queue layer to {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The mesh material `sluice up` handed over (none when the mesh is off).
    let setup = sluice_activator::queue::mesh::replica_mesh_from_env(addr.port(), "queue")
        .await
        .context("setting up the replica's mesh identity")?;
    let _follower = setup.follower;
    let spans = setup.spans;
    let sidecar = Sidecar::with_mesh(config, app, setup.mesh, Some(setup.telemetry));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(sidecar::serve(listener, sidecar.clone(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    say(&format!("{LISTENING_PREFIX}{addr}"))?;

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

    tokio::select! {
        () = sidecar::wait_until_accepting(app, args.probe_interval) => {
            sidecar.set_app_ready();
            say(READY_LINE)?;
            tracing::info!(%addr, %app, "user process ready");
        }
        status = child.wait() => return exited(status, stderr_relay, &tail).await,
        () = &mut stop => {
            let _ = child.start_kill();
            return Ok(());
        }
    }

    tokio::select! {
        status = child.wait() => {
            let _ = stop_tx.send(true);
            return exited(status, stderr_relay, &tail).await;
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
    stop_child(&mut child).await;
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

fn spawn(
    command: &[String],
    port: u16,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> anyhow::Result<(Child, Option<JoinHandle<()>>)> {
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
    if let Some(out) = child.stdout.take() {
        tokio::spawn(relay(out, None));
    }
    let stderr_relay = child
        .stderr
        .take()
        .map(|err| tokio::spawn(relay(err, Some(tail))));
    Ok((child, stderr_relay))
}

/// Copies the user process's output, line by line, to our stderr (stdout carries the
/// handshake), keeping the last lines of its stderr.
async fn relay(stream: impl AsyncRead + Unpin, tail: Option<Arc<Mutex<VecDeque<String>>>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        eprintln!("{line}");
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

/// The user process has exited: reports its status with the last lines of its stderr, once
/// the relay has read them to the end (bounded: a grandchild holding the pipe open cannot
/// keep the queue from exiting).
async fn exited(
    status: std::io::Result<std::process::ExitStatus>,
    stderr_relay: Option<JoinHandle<()>>,
    tail: &Mutex<VecDeque<String>>,
) -> anyhow::Result<()> {
    let status = status.context("waiting for the user process")?;
    if let Some(relay) = stderr_relay {
        let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
    }
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    let last: Vec<&str> = tail.iter().map(String::as_str).collect();
    if last.is_empty() {
        bail!("user process exited with {status}");
    }
    bail!("user process exited with {status}: {}", last.join("\n"))
}

/// SIGTERM, then SIGKILL if the child has not exited within a few seconds.
async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}
