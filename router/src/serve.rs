//! The accept loop: HTTP/1.1 and h2c on one listener, upgrades, bounded connections,
//! header sizes and header read time, graceful stop.
//!
//! The listener is served by `shards` threads, each with its own single-threaded runtime and
//! its own connection pools (like nginx's workers): a request and its upstream connection
//! stay on one thread, with no cross-thread wake-ups on the hot path.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sluice_proxy::shards::{ShardStop, serve_on_shards};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Router;
use crate::headers::ClientAddr;
use crate::ingress::{Ingress, IngressSecurity};

/// Listener settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Connections served at once (all shards together); further ones wait in the kernel's
    /// accept queue.
    pub max_connections: usize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list) in bytes; larger → 431.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request head (slow clients are cut off).
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Threads serving the listener, each with its own runtime; 0 = one per CPU, 1 = serve
    /// on the caller's runtime.
    pub shards: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_streams: 1000,
            shards: 0,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves (or this future is dropped), then
/// lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) {
    serve_ingress(listener, router, config, Ingress::default(), shutdown).await;
}

/// As [`serve`], with ingress TLS (a certificate per host, by SNI), mesh mTLS for callers
/// with an SVID, and per-request telemetry, as `ingress` says.
pub async fn serve_ingress(
    listener: TcpListener,
    router: Arc<Router>,
    config: ServeConfig,
    ingress: Ingress,
    shutdown: impl Future<Output = ()>,
) {
    let ingress = Arc::new(ingress);
    let shards = sluice_proxy::shards::count(config.shards);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let builder = Arc::new(builder(&config));
    let serve_shard = move |_, listener, stop: ShardStop| {
        let router = if shards <= 1 {
            router
        } else {
            Arc::new(router.for_shard())
        };
        accept_loop(listener, router, builder, permits, ingress, stop.stopped())
    };
    serve_on_shards(listener, shards, "router", serve_shard, shutdown).await;
}

fn builder(config: &ServeConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_concurrent_streams);
    builder
}

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    ingress: Arc<Ingress>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: log, pause briefly, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (router, builder, ingress) = (router.clone(), builder.clone(), ingress.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // The TLS handshake (if any) runs here, in the connection's own task.
            let (io, info) = match ingress.accept(stream).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(%peer, "connection refused: {e}");
                    return;
                }
            };
            let IngressSecurity {
                peer: caller,
                scheme,
            } = info;
            let telemetry = ingress.telemetry.clone();
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let router = router.clone();
                req.extensions_mut().insert(ClientAddr(peer));
                req.extensions_mut().insert(scheme);
                req.extensions_mut().insert(caller.clone());
                let exchange = telemetry.as_ref().map(|t| {
                    // The router's line and metrics carry the trace it forwards.
                    let mut ex = t.start(&req);
                    ex.set_span(sluice_mesh::trace::propagate(req.headers_mut()));
                    req.extensions_mut().insert(sluice_mesh::trace::Continued);
                    ex.labels.source_workload = "ingress".into();
                    ex.set_source_side(caller.identity.as_ref());
                    ex.labels.connection_security_policy = caller.security.label().into();
                    ex.entry.connection_security_policy = caller.security.label().to_owned();
                    ex
                });
                async move {
                    let mut routed = None;
                    let resp = router.handle_noting(req, &mut routed).await;
                    Ok::<_, std::convert::Infallible>(match exchange {
                        Some(mut ex) => {
                            if let Some(to) = routed {
                                ex.labels.destination_workload_namespace = to.namespace.into();
                                ex.labels.destination_revision = to.name.into();
                            }
                            ex.wrap(resp).map(|b| {
                                use http_body_util::BodyExt as _;
                                b.boxed()
                            })
                        }
                        None => resp,
                    })
                }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            let conn = watcher.watch(conn);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}
