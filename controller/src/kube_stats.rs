//! The autoscaler's stats endpoint on Kubernetes, where the routers' activators post their
//! stats: mutual TLS as the controller's own SVID, taking stats from the router's identity
//! only, with the mesh on; plain HTTP from anyone with it off.

use std::net::SocketAddr;

use sluice_autoscaler::endpoint::{self as stats, Posters, StatsSink};
use sluice_mesh::guard::ListenerGuard;
use sluice_mesh::tls::{MeshAcceptor, TlsConfigError};

use crate::admin;
use crate::kube_mesh::ControllerMesh;

/// Why the endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum StatsEndpointError {
    /// Its address could not be bound.
    #[error("binding the stats endpoint to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The controller's certificate makes no TLS configuration.
    #[error("the stats endpoint's TLS config")]
    Tls(#[source] TlsConfigError),
}

/// Serves the endpoint on `addr` in the background, feeding `sink`; returns where it
/// listens.
pub async fn serve_stats_endpoint(
    addr: SocketAddr,
    sink: &StatsSink,
    mesh: Option<&ControllerMesh>,
) -> Result<SocketAddr, StatsEndpointError> {
    let bind = |source| StatsEndpointError::Bind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    let guard = ListenerGuard::in_cluster("the autoscaler's stats endpoint", local);
    match mesh {
        Some(m) => {
            let acceptor =
                MeshAcceptor::new(m.tls.server_config().map_err(StatsEndpointError::Tls)?);
            let app = admin::guarded(
                stats::stats_app(sink.clone(), Posters::Only(m.router.clone())),
                guard,
            );
            tokio::spawn(stats::serve_mtls(listener, app, acceptor));
            tracing::info!(router = %m.router, "the stats endpoint is mTLS and takes the router's stats only");
        }
        None => {
            let app = admin::guarded(stats::stats_app(sink.clone(), Posters::Anyone), guard);
            tokio::spawn(axum::serve(listener, app).into_future());
        }
    }
    Ok(local)
}
