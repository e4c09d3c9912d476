//! The `sluice model-server` process: bind, announce, load, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use sluice_core::replica::{LISTENING_PREFIX, READY_LINE};
use sluice_proxy::BoxError;
use sluice_queue::mesh::{InboundMesh, METRICS_PATH, ReplicaGate, replica_mesh, serve_replica};
use sluice_queue::{Queue, QueueConfig};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::batch::BatchConfig;
use crate::http::{AppState, router};
use crate::model::LoadError;
use crate::repository::{ModelControl, ModelSource, Repository};

/// Line prefix announcing the extra gRPC port on stdout (after the main port's
/// `SLUICE_LISTENING` line, before `SLUICE_READY`).
pub const GRPC_LISTENING_PREFIX: &str = "SLUICE_GRPC_LISTENING ";

/// Settings of one model server.
#[derive(Clone, Debug)]
pub struct ModelServerConfig {
    /// Address to serve on (port 0 picks a free one, announced on stdout).
    pub listen: SocketAddr,
    /// An extra port serving gRPC (and REST) besides `listen`, if any.
    pub grpc_listen: Option<SocketAddr>,
    /// Models given by name and source (the single-model flags).
    pub models: Vec<(String, ModelSource)>,
    /// A model repository folder: every subfolder is a model, loaded at start.
    pub model_repository: Option<PathBuf>,
    /// Where downloaded models are cached.
    pub cache_dir: PathBuf,
    /// Whether the repository API may load and unload models.
    pub model_control: ModelControl,
    /// Batching settings for repository models without their own.
    pub batching: BatchConfig,
    /// Threads for the numeric kernels (0 = one per core).
    pub cpu_threads: usize,
    /// Maximum concurrent inferences; 0 = unlimited.
    pub container_concurrency: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// The revision this replica serves (`K_REVISION`), named in metrics and access logs.
    pub revision: String,
    /// An extra PEM file of CA certificates for `https://` storage URIs (the system's roots
    /// are trusted either way).
    pub ca_file: Option<PathBuf>,
    /// The process's environment variables as the command read them: the replica's mesh
    /// hand-off (`SLUICE_MESH_DIR`, or the CA's address and the Pod's names) and span
    /// export (`OTEL_*`) come from them.
    pub vars: sluice_queue::mesh::Vars,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A model could not be loaded.
    #[error("cannot load model")]
    Load(#[from] LoadError),
    /// A model could not be loaded.
    #[error("cannot load model")]
    Model(#[from] crate::error::InferError),
    /// A batching setting is out of range.
    #[error("invalid batching setting")]
    Batching(#[from] crate::batch::BatchConfigError),
    /// No model was given.
    #[error("no model to serve: give --model-name/--storage-uri or --model-repository")]
    NoModels,
    /// Serving failed.
    #[error("server failed")]
    Io(#[from] std::io::Error),
    /// The mesh material handed over by `sluice up` is unusable.
    #[error("mesh setup failed")]
    Mesh(#[from] sluice_queue::mesh::ReplicaMeshError),
    /// The serving task died.
    #[error("server task failed: {0}")]
    Task(String),
}

/// Runs a model server until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: ModelServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if config.cpu_threads > 0
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(config.cpu_threads)
            .build_global()
    {
        tracing::warn!("cannot set the kernel thread count: {e}");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    announce(&format!("{LISTENING_PREFIX}{addr}"));

    let queue = Arc::new(Queue::new(
        QueueConfig {
            container_concurrency: config.container_concurrency,
            max_queued: None,
        },
        Instant::now(),
    ));
    let (repository, names) = open_repository(&config)?;
    let state = Arc::new(AppState {
        repository: repository.clone(),
        queue: queue.clone(),
    });
    let app = router(state.clone(), config.max_body_bytes);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (extra_stop_tx, extra_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc_listener = match config.grpc_listen {
        Some(grpc_addr) => {
            Some(
                TcpListener::bind(grpc_addr)
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: grpc_addr,
                        source,
                    })?,
            )
        }
        None => None,
    };
    // Every port goes through the replica's mesh gate: mTLS under the peer-authentication
    // mode in force, authorization policy (with the port each listener serves on), Istio and
    // Knative telemetry into one registry, the access log.
    let setup = replica_mesh(addr.port(), "model-server", &config.vars).await?;
    let revision = config.revision.clone();
    let extra = match grpc_listener {
        Some(grpc_listener) => {
            let grpc_addr = grpc_listener.local_addr()?;
            let mesh = setup.for_port(grpc_addr.port())?;
            let gate = Arc::new(ReplicaGate::new(
                mesh.clone(),
                Some(setup.telemetry.clone()),
                queue.clone(),
                &revision,
            ));
            tracing::info!(addr = %grpc_addr, "gRPC port (REST answers too)");
            announce(&format!("{GRPC_LISTENING_PREFIX}{grpc_addr}"));
            Some(spawn_gated(
                grpc_listener,
                mesh,
                gate,
                app.clone(),
                extra_stop_rx,
            ))
        }
        None => None,
    };
    let _follower = setup.follower;
    let spans = setup.spans;
    let gate = Arc::new(ReplicaGate::new(
        setup.mesh.clone(),
        Some(setup.telemetry),
        queue.clone(),
        &revision,
    ));
    let server = spawn_gated(listener, setup.mesh, gate, app, stop_rx);

    let started = Instant::now();
    let load_all = async {
        for name in &names {
            repository.load(name).await?;
        }
        Ok::<_, crate::error::InferError>(())
    };
    tokio::pin!(shutdown);
    let loaded = tokio::select! {
        loaded = load_all => Some(loaded),
        () = &mut shutdown => None,
    };
    let Some(loaded) = loaded else {
        let _ = stop_tx.send(());
        return Ok(());
    };
    if let Err(e) = loaded {
        let _ = stop_tx.send(());
        return Err(e.into());
    }
    tracing::info!(
        models = ?names,
        load_ms = started.elapsed().as_millis() as u64,
        %addr,
        "models loaded; serving"
    );
    announce(READY_LINE);

    shutdown.await;
    drain(&queue, config.drain_timeout).await;
    let _ = stop_tx.send(());
    let _ = extra_stop_tx.send(());
    if let Some(extra) = extra
        && let Err(e) = extra.await
    {
        tracing::warn!("gRPC port failed: {e}");
    }
    let served = server.await;
    if let Some(spans) = spans
        && tokio::time::timeout(Duration::from_secs(2), spans.flush())
            .await
            .is_err()
    {
        tracing::warn!("spans not exported before exit: the collector did not answer in 2 s");
    }
    match served {
        Ok(result) => result.map_err(ServeError::Io),
        Err(e) => Err(ServeError::Task(e.to_string())),
    }
}

/// The repository with the models of `config` (named ones and the repository folder's);
/// their names, in load order.
fn open_repository(
    config: &ModelServerConfig,
) -> Result<(Arc<Repository>, Vec<String>), ServeError> {
    let repository = Arc::new(
        Repository::new(
            config.model_repository.clone(),
            config.cache_dir.clone(),
            config.batching.clone(),
        )
        .with_ca_file(config.ca_file.clone())
        .with_control(config.model_control),
    );
    config.batching.validate()?;
    let mut names = Vec::new();
    for (name, source) in &config.models {
        source.batching.validate()?;
        repository.add(name, source.clone());
        names.push(name.clone());
    }
    names.extend(repository.scan()?);
    if names.is_empty() {
        return Err(ServeError::NoModels);
    }
    Ok((repository, names))
}

/// Probes fail from now on; waits up to `timeout` for the requests in flight.
async fn drain(queue: &Queue, timeout: Duration) {
    queue.start_drain();
    if tokio::time::timeout(timeout, queue.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = queue.recorder().in_flight(),
            "drain timeout passed with requests still in flight"
        );
    }
}

/// Serves `app` on `listener` behind `gate` (and `mesh`'s accept, when on) until `stop`.
fn spawn_gated(
    listener: TcpListener,
    mesh: Option<Arc<InboundMesh>>,
    gate: Arc<ReplicaGate>,
    app: axum::Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<(), std::io::Error>> {
    tokio::spawn(async move {
        serve_replica(
            listener,
            mesh,
            move |req| {
                let (gate, app) = (gate.clone(), app.clone());
                async move {
                    let metrics = gate.clone();
                    gate.handle(req, |req| async move {
                        if req.uri().path() == METRICS_PATH {
                            return metrics.metrics();
                        }
                        match app.oneshot(req).await {
                            Ok(resp) => resp.map(|b| {
                                SyncBody(std::sync::Mutex::new(b))
                                    .map_err(BoxError::from)
                                    .boxed()
                            }),
                            Err(never) => match never {},
                        }
                    })
                    .await
                }
            },
            async {
                let _ = stop.await;
            },
        )
        .await;
        Ok(())
    })
}

/// axum's body is `Send` but not `Sync`; the data plane's boxed body must be both. Only
/// `poll_frame(&mut self)` touches it, so the mutex is never contended (`get_mut`).
struct SyncBody(std::sync::Mutex<axum::body::Body>);

impl http_body::Body for SyncBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let body = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        std::pin::Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().map(|b| b.is_end_stream()).unwrap_or(true)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}

fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout means nobody waits for the handshake; serving goes on regardless.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
