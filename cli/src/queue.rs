//! `sluice queue`: the queue layer as a sidecar in front of a user process (a Knative
//! Service revision's replica in local mode). The flags become a
//! [`sluice_queue::supervise::SuperviseConfig`]; the work is [`sluice_queue::supervise`]'s.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_core::NamespacedName;
use sluice_mesh::vars::Vars;
use sluice_proxy::timeouts::Timeouts;
use sluice_queue::QueueConfig;
use sluice_queue::sidecar::SidecarConfig;
use sluice_queue::supervise::{self, SuperviseConfig};

use crate::shutdown;

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
    /// Threads serving the queue layer's port, each with its own runtime (0: one per CPU).
    #[arg(long, env = "SLUICE_QUEUE_SHARDS", default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    shards: usize,
    /// Exit when stdin closes (set by `sluice up` for its replicas).
    #[arg(long, env = "SLUICE_EXIT_ON_STDIN_CLOSE")]
    exit_on_stdin_close: bool,
    /// The user process and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

impl QueueArgs {
    fn config(self) -> anyhow::Result<SuperviseConfig> {
        if !(1..=3600).contains(&self.timeout_seconds) {
            bail!(
                "--timeout-seconds must be in 1..=3600, got {}",
                self.timeout_seconds
            );
        }
        let secs = Duration::from_secs;
        let vars = Vars::new(std::env::vars_os());
        let revision = vars.value("K_REVISION").unwrap_or_else(|| "unknown".into());
        let namespace = vars
            .value("SLUICE_NAMESPACE")
            .unwrap_or_else(|| "default".into());
        let sidecar = SidecarConfig {
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
            revision: NamespacedName::new(namespace, revision),
        };
        Ok(SuperviseConfig {
            sidecar,
            command: self.command,
            listen: self.listen,
            probe_interval: self.probe_interval,
            shards: self.shards,
            vars,
            self_exe: std::env::current_exe()
                .context("finding this binary to run the user command `sluice`")?,
        })
    }
}

/// Runs the sidecar until SIGTERM/SIGINT (or, with `--exit-on-stdin-close`, stdin closing)
/// or until the user process exits.
pub(crate) async fn run(args: QueueArgs) -> anyhow::Result<()> {
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
    supervise::run(args.config()?, stop).await?;
    Ok(())
}
