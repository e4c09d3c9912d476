//! `sluice model-server`: flags → `ModelServerConfig`, run until told to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_model_server::{
    BatchConfig, ModelControl, ModelServerConfig, ModelSource, run as serve,
};

use crate::shutdown;

/// Flags of `sluice model-server`.
#[derive(Args, Debug)]
pub(crate) struct ModelServerArgs {
    /// Name the model is served under (`/v2/models/{name}`); with --storage-uri.
    #[arg(long, env = "SLUICE_MODEL_NAME", requires = "storage_uri")]
    model_name: Option<String>,
    /// Model format (`sluice-mlp`, `bert`, `safetensors`).
    #[arg(long, env = "SLUICE_MODEL_FORMAT", default_value = "sluice-mlp")]
    model_format: String,
    /// Model folder: plain path, file:// URI, or http(s):// folder serving SHA256SUMS.
    #[arg(long, env = "SLUICE_STORAGE_URI", requires = "model_name")]
    storage_uri: Option<String>,
    /// Model repository folder: one subfolder per model (optional sluice-model.json).
    #[arg(long, env = "SLUICE_MODEL_REPOSITORY")]
    model_repository: Option<PathBuf>,
    /// `explicit`: the repository API's `load` and `unload` act (anyone who can reach the
    /// port, the router's included, can then reload or unload models); `none` (default):
    /// they are refused with 403 and the models loaded at start stay.
    #[arg(long, env = "SLUICE_MODEL_CONTROL_MODE", value_enum, default_value_t = ControlMode::None)]
    model_control_mode: ControlMode,
    /// Where downloaded models are cached (default: $HOME/.cache/sluice/models).
    #[arg(long, env = "SLUICE_MODEL_CACHE")]
    model_cache: Option<PathBuf>,
    /// The revision this replica serves, named in metrics and access logs.
    #[arg(long, env = "K_REVISION", default_value = "unknown")]
    revision: String,
    /// An extra PEM file of CA certificates for `https://` storage URIs (the system's roots
    /// are trusted either way).
    #[arg(long, env = sluice_model_server::storage::CA_FILE_ENV)]
    model_ca_file: Option<PathBuf>,
    /// Address to serve on; port 0 picks one, announced on stdout.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// An extra port for gRPC clients that want one (gRPC is always served on --listen too).
    #[arg(long, env = "SLUICE_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Maximum concurrent inferences (0 = unlimited).
    #[arg(long, env = "SLUICE_CONTAINER_CONCURRENCY", default_value_t = 0)]
    container_concurrency: u32,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most rows in one dynamically batched model call (1 = no batching).
    #[arg(long, env = "SLUICE_MAX_BATCH_SIZE", default_value_t = 32)]
    max_batch_size: usize,
    /// Longest a request waits for others to join its batch.
    #[arg(long, env = "SLUICE_MAX_QUEUE_DELAY", default_value = "2ms", value_parser = humantime::parse_duration)]
    max_queue_delay: Duration,
    /// Requests that may wait per model before new ones get 429.
    #[arg(long, env = "SLUICE_MAX_QUEUE", default_value_t = 1024)]
    max_queue: usize,
    /// Text models (bert): most padded tokens (rows × longest text) in one batch, as
    /// text-embeddings-inference's flag; at least the model's longest input (256 for
    /// MiniLM). 0: batch text models with the timer (--max-queue-delay) like other models.
    #[arg(long, env = "SLUICE_MAX_BATCH_TOKENS", default_value_t = sluice_model_server::batch::DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Model instances computing in parallel.
    #[arg(long, env = "SLUICE_INSTANCES", default_value_t = 1)]
    instances: usize,
    /// Threads for the numeric kernels (0 = one per core).
    #[arg(long, env = "SLUICE_CPU_THREADS", default_value_t = 0)]
    cpu_threads: usize,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Exit when stdin closes (set by `sluice up` for its replicas).
    #[arg(long, env = "SLUICE_EXIT_ON_STDIN_CLOSE")]
    exit_on_stdin_close: bool,
}

/// `--model-control-mode` (Triton's name and values).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ControlMode {
    /// The repository API's load/unload are refused.
    None,
    /// The repository API's load/unload act.
    Explicit,
}

/// Runs the model server until SIGTERM/SIGINT (or stdin EOF when asked).
pub(crate) async fn run(args: ModelServerArgs) -> anyhow::Result<()> {
    // Its memory is mostly its weights; peak RSS counts more here than allocation speed
    // (measured: bench/model-server/alloc.py).
    sluice_alloc::small_blocks_from_the_system();
    let batching = BatchConfig {
        max_batch_size: args.max_batch_size,
        max_queue_delay: args.max_queue_delay,
        max_queue: args.max_queue,
        instances: args.instances,
        max_batch_tokens: args.max_batch_tokens,
    };
    batching
        .validate()
        .map_err(|e| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.message))?;
    let mut models = Vec::new();
    if let (Some(name), Some(uri)) = (args.model_name, args.storage_uri) {
        models.push((
            name,
            ModelSource {
                format: args.model_format,
                storage_uri: uri,
                batching: batching.clone(),
            },
        ));
    }
    let cache_dir = match args.model_cache {
        Some(dir) => dir,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/sluice/models"),
    };
    let config = ModelServerConfig {
        listen: args.listen,
        grpc_listen: args.grpc_listen,
        models,
        model_repository: args.model_repository,
        cache_dir,
        model_control: match args.model_control_mode {
            ControlMode::None => ModelControl::None,
            ControlMode::Explicit => ModelControl::Explicit,
        },
        batching,
        cpu_threads: args.cpu_threads,
        container_concurrency: args.container_concurrency,
        max_body_bytes: args.max_body_bytes,
        drain_timeout: args.drain_timeout,
        revision: args.revision,
        ca_file: args.model_ca_file,
        vars: sluice_mesh::vars::Vars::new(std::env::vars_os()),
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
