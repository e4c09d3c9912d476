//! The `sluice model-server` process: bind, announce, load, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_activator::queue::{Queue, QueueConfig};
use sluice_core::replica::{LISTENING_PREFIX, READY_LINE};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::http::{AppState, router};
use crate::model::{LoadError, Model, load_model, local_path};

/// Settings of one model server.
#[derive(Clone, Debug)]
pub struct ModelServerConfig {
    /// Address to serve on (port 0 picks a free one, announced on stdout).
    pub listen: SocketAddr,
    /// Name the model is served under.
    pub model_name: String,
    /// Model format (`sluice-mlp`).
    pub model_format: String,
    /// Where the model is (folder path or `file://` URI).
    pub storage_uri: String,
    /// Maximum concurrent inferences; 0 = unlimited.
    pub container_concurrency: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
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
    /// The model could not be loaded.
    #[error("cannot load model")]
    Load(#[from] LoadError),
    /// Serving failed.
    #[error("server failed")]
    Io(#[from] std::io::Error),
    /// The loading task died.
    #[error("model loading task failed: {0}")]
    Task(String),
}

/// Runs a model server until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: ModelServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
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
    let state = Arc::new(AppState {
        model_name: config.model_name.clone(),
        model: OnceLock::new(),
        queue: queue.clone(),
    });
    let app = router(state.clone(), config.max_body_bytes);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );

    let started = Instant::now();
    let (format, name, uri) = (
        config.model_format.clone(),
        config.model_name.clone(),
        config.storage_uri.clone(),
    );
    let load = tokio::task::spawn_blocking(move || -> Result<Box<dyn Model>, LoadError> {
        let dir: PathBuf = local_path(&uri)?;
        load_model(&format, &name, &dir)
    });
    tokio::pin!(shutdown);
    let loaded = tokio::select! {
        loaded = load => Some(loaded),
        () = &mut shutdown => None,
    };
    let Some(loaded) = loaded else {
        let _ = stop_tx.send(());
        return Ok(());
    };
    let model = match loaded.map_err(|e| ServeError::Task(e.to_string())) {
        Ok(Ok(model)) => model,
        Ok(Err(e)) => {
            let _ = stop_tx.send(());
            return Err(e.into());
        }
        Err(e) => {
            let _ = stop_tx.send(());
            return Err(e);
        }
    };
    let _ = state.model.set(Arc::from(model));
    tracing::info!(
        model = %config.model_name,
        format = %config.model_format,
        load_ms = started.elapsed().as_millis() as u64,
        %addr,
        "model loaded; serving"
    );
    announce(READY_LINE);

    shutdown.await;
    queue.start_drain();
    if tokio::time::timeout(config.drain_timeout, queue.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = queue.recorder().in_flight(),
            "drain timeout passed with requests still in flight"
        );
    }
    let _ = stop_tx.send(());
    match server.await {
        Ok(result) => result.map_err(ServeError::Io),
        Err(e) => Err(ServeError::Task(e.to_string())),
    }
}

fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout means nobody waits for the handshake; serving goes on regardless.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
