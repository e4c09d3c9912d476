//! `sluice queue`: the queue layer as a sidecar in front of a user process (a Knative
//! Service revision's replica in local mode).
//!
//! [`run`] starts the command with `PORT=<free loopback port>`, passes its output through
//! to stderr, probes it until it accepts connections, serves the queue layer, and speaks
//! the replica handshake on stdout. When told to stop it fails probes, drains, and stops
//! the child; if the child exits on its own, so does the sidecar, with an error carrying
//! the child's last stderr lines.
//!
//! The port is held from the moment it is chosen until the user process listens on it (see
//! `AppPort`), and a user process that still cannot bind it (it says "address already in
//! use") is started again on another port before the replica is reported ready: the
//! replica stays starting, so the requests waiting for it are not lost.
//!
//! The sidecar is a subreaper: whatever the user process forks stays below it, and is
//! killed with it ([`crate::proctree`]).

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_core::replica::{LISTENING_PREFIX, NOT_READY_LINE, READY_LINE};
use sluice_mesh::vars::Vars;
use tokio::net::TcpListener;

use crate::mesh::replica_mesh;
use crate::proctree;
use crate::sidecar::{self, Sidecar, SidecarConfig};

mod error;
mod user_process;

pub use error::SuperviseError;
use user_process::{AppPort, KILL_WITHIN, UserProcess};

/// Times the user process is started on a fresh port when it cannot bind the one it got.
const BIND_ATTEMPTS: u32 = 5;

/// What `sluice queue` runs, and how.
#[derive(Debug)]
pub struct SuperviseConfig {
    /// The queue layer in front of the user process.
    pub sidecar: SidecarConfig,
    /// The user process and its arguments.
    pub command: Vec<String>,
    /// Address of the queue layer; port 0 picks one, announced on stdout.
    pub listen: SocketAddr,
    /// How often to probe the user process until it accepts connections.
    pub probe_interval: Duration,
    /// Threads serving the queue layer's port, each with its own runtime (0: one per CPU).
    pub shards: usize,
    /// The environment: the mesh material `sluice up` handed over, and what `$(VAR)` in the
    /// command expands to.
    pub vars: Vars,
    /// This binary: what a command of `sluice` runs.
    pub self_exe: PathBuf,
}

/// Runs the sidecar until `stop` resolves or the user process exits.
pub async fn run(
    config: SuperviseConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), SuperviseError> {
    let grace = config.sidecar.timeouts.request;
    // Forks of the user process whose parent exits come here, not to init: killed with it.
    proctree::become_subreaper();
    let tail = user_process::tail();
    let start = |port: u16| {
        UserProcess::spawn(
            &config.command,
            port,
            &config.vars,
            &config.self_exe,
            tail.clone(),
        )
    };
    // Held until the user process listens; see `AppPort`.
    let mut port = AppPort::choose(true)?;
    let mut user = start(port.port)?;

    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| SuperviseError::Bind {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SuperviseError::Bind {
            addr: config.listen,
            source,
        })?;
    // The mesh material `sluice up` handed over (none when the mesh is off).
    let setup = replica_mesh(addr.port(), "queue", &config.vars)
        .await
        .map_err(SuperviseError::Mesh)?;
    let _follower = setup.follower;
    let spans = setup.spans;
    tokio::pin!(stop);

    // Until the user process accepts connections on its port: started again on a fresh
    // port, up to `BIND_ATTEMPTS` times, while it says it cannot bind.
    let mut attempt = 1;
    let app = loop {
        let app = port.addr();
        let cannot_bind = user.cannot_bind.clone();
        tokio::select! {
            () = sidecar::wait_until_accepting(app, config.probe_interval) => break app,
            () = cannot_bind.notified(), if attempt < BIND_ATTEMPTS => {
                tracing::warn!(port = port.port, attempt, "the user process cannot bind its port: starting it again on another");
                user.stop_now().await;
            }
            status = user.child.wait() => {
                // Its last lines (an "address in use" among them?) are read to the end first.
                user.relays_done().await;
                proctree::kill_all_below(None, KILL_WITHIN).await;
                if !(attempt < BIND_ATTEMPTS && user.cannot_bind_seen()) {
                    return Err(user_process::exited(status, &tail));
                }
                tracing::warn!(port = port.port, attempt, "the user process exited as it could not bind its port: starting it again on another");
            }
            () = &mut stop => {
                user.stop_now().await;
                return Ok(());
            }
        }
        // The likely cause with a held port: a program that binds without SO_REUSEADDR,
        // which cannot share it. From now on its port is chosen and let go at once (the
        // race that remains is what these attempts are for).
        port = AppPort::choose(false)?;
        attempt += 1;
        user = start(port.port)?;
    };
    // Listening: the port is the user process's alone now.
    drop(port);
    let sidecar = Sidecar::with_mesh(config.sidecar, app, setup.mesh, Some(setup.telemetry));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shards = sluice_proxy::shards::count(config.shards);
    let stopped = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(sidecar::serve_on_shards(
        listener,
        sidecar.clone(),
        shards,
        stopped,
    ));
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
            // Nothing more is sent to it, and the runtime hears at once, so it routes nothing
            // more here before connections close.
            sidecar.set_app_gone();
            let _ = say(NOT_READY_LINE);
            sidecar.queue().start_drain();
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            user.relays_done().await;
            proctree::kill_all_below(None, KILL_WITHIN).await;
            return Err(user_process::exited(status, &tail));
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
    user.stop().await;
    // Spans still queued go out before exit (bounded: a silent collector costs 2 s at most).
    if let Some(spans) = spans {
        let _ = tokio::time::timeout(Duration::from_secs(2), spans.flush()).await;
    }
    Ok(())
}

/// Prints one handshake line on stdout at once.
fn say(line: &str) -> Result<(), SuperviseError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(SuperviseError::Handshake)
}
