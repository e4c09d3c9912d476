//! A replica's mesh gate, shared by the `sluice queue` sidecar and the model server's
//! listener: accept each connection under the peer-authentication mode in force, check each
//! request against authorization policy (403 `RBAC: access denied`), continue the trace,
//! and record Istio and Knative telemetry with the caller and connection security.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
pub use sluice_mesh::inbound::InboundMesh;
use sluice_mesh::inbound::is_internal;
use sluice_mesh::telemetry::{CONTENT_TYPE, HopTelemetry};
use sluice_mesh::tls::{ConnectionSecurity, MeshStream, PeerInfo};
use tokio::net::TcpListener;

pub use sluice_mesh::vars::Vars;
use sluice_proxy::strip_internal_headers;

use super::Queue;
use sluice_proxy::{BoxError, ProxyBody, full_body};

pub use sluice_core::replica::METRICS_PATH;

fn plaintext() -> PeerInfo {
    PeerInfo {
        identity: None,
        security: ConnectionSecurity::None,
        peer_not_after: None,
    }
}

/// Per-request mesh work at a replica.
#[derive(Debug)]
pub struct ReplicaGate {
    mesh: Option<Arc<InboundMesh>>,
    telemetry: Option<HopTelemetry>,
    queue: Arc<Queue>,
    revision: String,
}

impl ReplicaGate {
    /// A gate enforcing `mesh` (when on) and recording `telemetry` (when given) for
    /// `revision`, whose queue depth is read from `queue`.
    pub fn new(
        mesh: Option<Arc<InboundMesh>>,
        telemetry: Option<HopTelemetry>,
        queue: Arc<Queue>,
        revision: &str,
    ) -> Self {
        Self {
            mesh,
            telemetry,
            queue,
            revision: revision.to_owned(),
        }
    }

    /// The inbound mesh, when on.
    pub fn mesh(&self) -> Option<&Arc<InboundMesh>> {
        self.mesh.as_ref()
    }

    /// The replica's metrics in Prometheus text.
    pub fn metrics(&self) -> Response<ProxyBody> {
        let text = self
            .telemetry
            .as_ref()
            .map(|t| t.registry().encode())
            .unwrap_or_default();
        let mut resp = Response::new(full_body(text));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        resp
    }

    /// Authorizes `req` (Sluice's own paths are exempt), continues its trace, hands it to
    /// `inner` and records the exchange when the response body ends.
    pub async fn handle<F, Fut>(&self, mut req: Request<Incoming>, inner: F) -> Response<ProxyBody>
    where
        F: FnOnce(Request<Incoming>) -> Fut,
        Fut: Future<Output = Response<ProxyBody>>,
    {
        let peer = req
            .extensions_mut()
            .remove::<PeerInfo>()
            .unwrap_or_else(plaintext);
        let (mut parts, body) = req.into_parts();
        if is_internal(&parts) {
            // Sluice's own paths use no attestation; none goes on to whatever serves them.
            strip_internal_headers(&mut parts.headers);
            return inner(Request::from_parts(parts, body)).await;
        }
        let mut exchange = self.telemetry.as_ref().map(|t| t.start_parts(&parts));
        let caller = match &self.mesh {
            Some(mesh) => match mesh.authorize(&parts, &peer, None) {
                Ok(caller) => caller,
                Err(refusal) => {
                    tracing::info!(revision = %self.revision, "refused: {refusal}");
                    let resp = refusal.to_response().map(full_body);
                    return match exchange {
                        Some(mut ex) => {
                            // The refused request is still a span of the caller's trace
                            // (nothing is forwarded, so the headers stay as they came).
                            ex.set_span(sluice_mesh::trace::propagate(&mut parts.headers.clone()));
                            mesh.label(&mut ex, peer.identity.as_ref(), &peer);
                            ex.entry.response_flags = "RBAC".into();
                            ex.wrap(resp).map(|b| b.map_err(BoxError::from).boxed())
                        }
                        None => resp,
                    };
                }
            },
            None => peer.identity.clone(),
        };
        if let Some(ex) = exchange.as_mut() {
            match &self.mesh {
                Some(mesh) => mesh.label(ex, caller.as_ref(), &peer),
                None => {
                    ex.labels.connection_security_policy = peer.security.label().into();
                    ex.labels.destination_revision = self.revision.clone().into();
                    ex.entry.connection_security_policy = peer.security.label().to_owned();
                    ex.entry.revision = self.revision.clone();
                }
            }
        }
        // The replica is a hop of the trace (after authorization: the attestation is bound
        // to the request id the caller sent).
        let own = sluice_mesh::trace::propagate(&mut parts.headers);
        if let Some(ex) = exchange.as_mut() {
            ex.set_span(own);
        }
        // The attestation has been verified (or, mesh off, means nothing): the mesh's headers
        // are Sluice's business between its hops, never the user process's.
        strip_internal_headers(&mut parts.headers);
        let resp = inner(Request::from_parts(parts, body)).await;
        if let Some(t) = &self.telemetry {
            t.set_queue_depth(self.queue.recorder().in_flight() as usize);
        }
        match exchange {
            Some(ex) => ex.wrap(resp).map(|b| b.map_err(BoxError::from).boxed()),
            None => resp,
        }
    }
}

/// How long open connections keep taking requests after the listener closes, before each
/// is shut down gracefully (see [`serve_replica`]); with none open, shutdown does not wait.
pub const LINGER: Duration = Duration::from_millis(500);

/// Serves `handler` on `listener` until `shutdown` resolves, then refuses new connections,
/// lets open ones take requests for [`LINGER`] more and finish them. With `mesh`, each connection is accepted under the
/// peer-authentication mode in force (the handshake runs in the connection's own task, so a
/// slow client holds up nobody), its peer reaches the handler as a [`PeerInfo`] request
/// extension, and an mTLS connection is closed gracefully when its peer's certificate
/// expires, so the peer reconnects with a fresh one.
pub async fn serve_replica<H, Fut>(
    listener: TcpListener,
    mesh: Option<Arc<InboundMesh>>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (mesh, handler, builder, mut stop) = (
            mesh.clone(),
            handler.clone(),
            builder.clone(),
            stop_rx.clone(),
        );
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            let (io, peer) = match &mesh {
                Some(mesh) => match mesh.accept(stream).await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::info!(%client, "connection refused: {e}");
                        return;
                    }
                },
                None => (MeshStream::Plain(stream), plaintext()),
            };
            let expires = peer
                .peer_not_after
                .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(365 * 24 * 3600));
            let service = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let fut = handler(req);
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            let expiry = tokio::time::sleep(expires);
            tokio::pin!(expiry);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stop.wait_for(|s| *s), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = &mut expiry, if !closing => {
                        tracing::debug!(%client, "peer certificate expired: closing the connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
    // New connections are refused from now on (a refused connection is safe to retry
    // elsewhere). The open ones go on serving for a moment: a client may have just written a
    // request on an idle keep-alive connection, and closing that connection now would reset
    // the request with no way for the client to know it was never processed. By the end of
    // the linger the routes no longer name this replica.
    drop(listener);
    while conns.try_join_next().is_some() {}
    if !conns.is_empty() {
        tokio::time::sleep(LINGER).await;
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

/// A replica's mesh and telemetry, as `sluice up` handed them over.
#[derive(Debug)]
pub struct ReplicaMeshSetup {
    /// The inbound mesh; `None` when no private directory was handed over (mesh off).
    pub mesh: Option<Arc<InboundMesh>>,
    /// Telemetry for every request (always on; labels say `none` without the mesh).
    pub telemetry: HopTelemetry,
    /// The task following certificate and policy files (keep it alive with the server).
    pub follower: Option<tokio::task::JoinHandle<()>>,
    /// The OTLP span exporter, when `$OTEL_EXPORTER_OTLP_ENDPOINT` names a collector
    /// (flush it before exiting).
    pub spans: Option<sluice_mesh::otlp::SpanExporter>,
}

impl ReplicaMeshSetup {
    /// The same workload's mesh for another listener of the replica on `port` (the model
    /// server's extra gRPC port): same identity, policies and peer-authentication, with
    /// port-level `PeerAuthentication` and `to[].operation.ports` judged against `port`.
    /// `None` when the mesh is off.
    pub fn for_port(&self, port: u16) -> Result<Option<Arc<InboundMesh>>, ReplicaMeshError> {
        match &self.mesh {
            Some(mesh) => Ok(Some(Arc::new(InboundMesh::new(
                mesh.workload_mesh(),
                port,
            )?))),
            None => Ok(None),
        }
    }
}

/// Why a replica's mesh could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaMeshError {
    /// The handed-over files are unusable.
    #[error("mesh identity ($SLUICE_MESH_DIR or $SLUICE_MESH_CA_ADDR): {0}")]
    Handoff(#[from] sluice_mesh::handoff::HandoffError),
    /// The TLS config could not be built.
    #[error(transparent)]
    Tls(#[from] sluice_mesh::tls::TlsConfigError),
    /// The OTLP settings in the environment are unusable.
    #[error("span export: {0}")]
    Otlp(#[from] sluice_mesh::otlp::OtlpError),
    /// `$SLUICE_ACCESS_LOG` is neither on nor off.
    #[error(transparent)]
    AccessLog(#[from] sluice_mesh::telemetry::BadAccessLogVar),
}

/// Loads the mesh material named by `$SLUICE_MESH_DIR` in `vars` (the process's environment as
/// the command read it), or obtains the identity from
/// the CA at `$SLUICE_MESH_CA_ADDR` (Kubernetes mode), for a replica listening on
/// `port`, reporting as `container` (`queue` or `model-server`); revision labels come from
/// the handed-over workload file, else from `K_SERVICE`/`K_CONFIGURATION`/`K_REVISION`.
/// With `$OTEL_EXPORTER_OTLP_ENDPOINT` set (and the `OTEL_BSP_*` tuning variables), every
/// request's span is exported there; with `$SLUICE_ACCESS_LOG` on, every request is one JSON
/// line on stderr.
pub async fn replica_mesh(
    port: u16,
    container: &'static str,
    vars: &Vars,
) -> Result<ReplicaMeshSetup, ReplicaMeshError> {
    use sluice_mesh::telemetry::{AccessLog, Registry, RevisionLabels};
    let env = |k: &str| vars.value(k).unwrap_or_else(|| "unknown".into());
    let (mesh, follower, labels) = match sluice_mesh::handoff::WorkloadMesh::from_vars(vars).await {
        Some(loaded) => {
            let (workload, task) = loaded?;
            let info = workload.info.clone();
            let inbound = Arc::new(InboundMesh::new(&workload, port)?);
            let labels = RevisionLabels {
                namespace: info.namespace,
                service: info.service,
                configuration: info.configuration,
                revision: info.revision,
                pod: info.pod,
                container: container.to_owned(),
            };
            (Some(inbound), Some(task), labels)
        }
        None => (
            None,
            None,
            RevisionLabels {
                namespace: env("SLUICE_NAMESPACE"),
                service: env("K_SERVICE"),
                configuration: env("K_CONFIGURATION"),
                revision: env("K_REVISION"),
                pod: format!("{}-{}", env("K_REVISION"), std::process::id()),
                container: container.to_owned(),
            },
        ),
    };
    let pod = labels.pod.clone();
    // Spans name the Knative Service the replica serves (else the container).
    let service_name = if labels.service.is_empty() || labels.service == "unknown" {
        container.to_owned()
    } else {
        labels.service.clone()
    };
    let log = if sluice_mesh::telemetry::access_log_on(vars)? {
        AccessLog::Stderr
    } else {
        AccessLog::Off
    };
    let mut telemetry = HopTelemetry::new(Registry::new(), container, log).with_revision(labels);
    let spans = match sluice_mesh::otlp::OtlpConfig::from_lookup(&service_name, |k| vars.value(k))?
    {
        Some(config) => {
            tracing::info!(endpoint = %config.endpoint, "exporting spans over OTLP");
            // The export task ends when the last exporter handle is dropped.
            let (exporter, _task) = sluice_mesh::otlp::SpanExporter::spawn(config)?;
            exporter.register_metrics(telemetry.registry(), &pod);
            telemetry = telemetry.with_spans(exporter.clone());
            Some(exporter)
        }
        None => None,
    };
    Ok(ReplicaMeshSetup {
        mesh,
        telemetry,
        follower,
        spans,
    })
}
