//! `sluice model-server`: flags → `ModelServerConfig`, run until told to stop.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_model_server::{ModelServerConfig, run as serve};

use crate::shutdown;

/// Flags of `sluice model-server`.
#[derive(Args, Debug)]
pub struct ModelServerArgs {
    /// Name the model is served under (`/v2/models/{name}`).
    #[arg(long, env = "SLUICE_MODEL_NAME")]
    model_name: String,
    /// Model format (`sluice-mlp`).
    #[arg(long, env = "SLUICE_MODEL_FORMAT", default_value = "sluice-mlp")]
    model_format: String,
    /// Model folder (plain path or file:// URI).
    #[arg(long, env = "SLUICE_STORAGE_URI")]
    storage_uri: String,
    /// Address to serve on; port 0 picks one, announced on stdout.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Maximum concurrent inferences (0 = unlimited).
    #[arg(long, env = "SLUICE_CONTAINER_CONCURRENCY", default_value_t = 0)]
    container_concurrency: u32,
    /// Largest request body in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Exit when stdin closes (set by `sluice up` for its replicas).
    #[arg(long, env = "SLUICE_EXIT_ON_STDIN_CLOSE")]
    exit_on_stdin_close: bool,
}

/// Runs the model server until SIGTERM/SIGINT (or stdin EOF when asked).
pub async fn run(args: ModelServerArgs) -> anyhow::Result<()> {
    let config = ModelServerConfig {
        listen: args.listen,
        model_name: args.model_name,
        model_format: args.model_format,
        storage_uri: args.storage_uri,
        container_concurrency: args.container_concurrency,
        max_body_bytes: args.max_body_bytes,
        drain_timeout: args.drain_timeout,
    };
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
    serve(config, stop).await.context("model server failed")
}
