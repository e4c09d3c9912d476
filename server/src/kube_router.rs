//! The router of Kubernetes mode (`sluice router --kube`): the ingress with the activator
//! in-process, routing from watched Routes, Services, InferenceServices, Revisions and
//! EndpointSlices, calling replicas over mTLS as the router Pod's identity.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sluice_activator::ActivatorConfig;
use sluice_activator::stats_post::{self, StatsTarget};
use sluice_controller::admin;
use sluice_controller::kube_mesh::{self, RouterMeshConfig};
use sluice_controller::reconcile::kube_routing;
use sluice_controller::runtime::KubeRuntime;
use sluice_controller::store::KubeStore;
use sluice_controller::store::kube::infer_client;
use sluice_core::RoutingSnapshot;
use sluice_mesh::guard::ListenerGuard;
use sluice_mesh::identity::SpiffeId;
use sluice_router::ingress::Ingress;
use sluice_router::{DataPlane, DataPlaneConfig, RouterConfig, ServeConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Spans, Stop};

/// Everything `sluice router --kube` is told.
pub struct KubeRouterConfig {
    /// The ingress's address.
    pub listen: SocketAddr,
    /// The controller's stats endpoint, where the activator posts its stats (checked
    /// against the mesh by `stats_post::stats_target`); `None`: they are dropped (counted)
    /// and revisions at zero stay there.
    pub autoscaler: Option<StatsTarget>,
    /// Mutual TLS to replicas and to the stats endpoint (`Some`, the default).
    pub mesh: Option<RouterMesh>,
    /// Where to serve `/metrics`; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// The activator's settings.
    pub activator: ActivatorConfig,
    /// The router's settings.
    pub router: RouterConfig,
    /// How the ingress serves connections.
    pub serve: ServeConfig,
    /// Span export of the router's hops.
    pub spans: Option<Spans>,
    /// One access-log line per request and hop (replicas' too, in local mode).
    pub access_log: bool,
}

/// The router's mesh settings.
pub struct RouterMesh {
    /// How to reach the mesh CA and what to send it.
    pub ca: RouterMeshConfig,
    /// The controller's ServiceAccount in the router's namespace: stats go only to a
    /// server presenting that identity.
    pub controller_service_account: String,
}

/// The router, serving.
pub struct KubeRouter {
    /// Where the ingress listens.
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when it is.
    pub metrics_addr: Option<SocketAddr>,
    /// The router's SPIFFE identity, with the mesh on.
    pub identity: Option<SpiffeId>,
    stop: Stop,
    tasks: Vec<JoinHandle<()>>,
    spans: Option<Spans>,
}

/// Takes the router's identity from the CA (mesh on), waits for the CRDs, watches what
/// routes are built from, and serves the ingress (and `/metrics`). `stopped` ends the wait
/// for the CA or the CRDs early.
pub async fn start<F>(
    config: KubeRouterConfig,
    stopped: impl Fn() -> F + Send + Sync + 'static,
) -> anyhow::Result<KubeRouter>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (mesh, identity, stats_mesh, ingress_mesh) = match &config.mesh {
        Some(settings) => {
            let kube_mesh::RouterIdentity { out: mesh, tls, id } =
                kube_mesh::router_mesh(&settings.ca, &stopped).await?;
            let ingress = tls
                .server_config()
                .context("the router's mesh TLS for its ingress")?;
            // The autoscaler is the controller's identity in the router's namespace.
            let server = SpiffeId::new(
                &settings.ca.trust_domain,
                id.namespace(),
                &settings.controller_service_account,
            )
            .context("--controller-service-account")?;
            let stats = stats_post::StatsMesh {
                out: mesh.clone(),
                server,
            };
            (Some(mesh), Some(id), Some(stats), Some(ingress))
        }
        None => (None, None, None, None),
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("binding the metrics endpoint to {addr} (--metrics-listen)")
        })?),
        None => None,
    };
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::new(client.clone());
    store.wait_for_crds(&stopped).await?;
    store.start_watching_kinds(&kube_routing::ROUTER_KINDS);
    let runtime = KubeRuntime::endpoints_only(client);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the router to {}", config.listen))?;
    let addr = listener.local_addr()?;

    let stop = Stop::new();
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let mut tasks = vec![tokio::spawn(kube_routing::run(
        store,
        runtime,
        snapshot_tx,
        stop.stopped(),
    ))];
    // The activator's stats (with the immediate one on a request to a revision at zero) go
    // to the controller's autoscaler.
    let (stats_tx, stats_rx) = mpsc::channel(stats_post::STATS_QUEUE);
    let outcomes_to = config.autoscaler.clone().zip(Some(stats_mesh.clone()));
    tokio::spawn(stats_post::post_stats(
        config.autoscaler,
        stats_mesh,
        stats_rx,
    ));
    // Replicas are called over mTLS as the router's identity (by the router and by the
    // activator in-process), or in plaintext with the mesh off. Each hop has a registry of
    // its own (as in local mode), merged on `/metrics`.
    let data_plane = DataPlane::start(DataPlaneConfig {
        activator: config.activator,
        snapshot: snapshot_rx,
        stats: stats_tx,
        router_mesh: mesh.clone(),
        activator_mesh: mesh,
        spans: config.spans.as_ref().map(|s| s.exporter.clone()),
        access_log: config.access_log,
        service: "sluice-router",
        router: config.router,
    });
    // The router hop's request outcomes go to the leader too, for SLO-gated rollouts.
    if let Some((target, mesh)) = outcomes_to {
        tokio::spawn(stats_post::post_outcomes(
            target,
            mesh,
            data_plane.router_registry.clone(),
            sluice_controller::rollout_signals::run_source("router"),
        ));
    }
    tasks.push(tokio::spawn(sluice_router::serve_ingress(
        listener,
        data_plane.router.clone(),
        config.serve,
        Ingress {
            mesh: ingress_mesh,
            ..data_plane.ingress()
        },
        stop.stopped(),
    )));
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let local = listener.local_addr()?;
            let app = admin::guarded(
                sluice_controller::metrics::app(data_plane.registries()),
                ListenerGuard::in_cluster("the router's metrics endpoint", local),
            );
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.stopped());
            tasks.push(tokio::spawn(async move {
                let _ = serve.await;
            }));
            Some(local)
        }
        None => None,
    };
    Ok(KubeRouter {
        addr,
        metrics_addr,
        identity,
        stop,
        tasks,
        spans: config.spans,
    })
}

impl KubeRouter {
    /// Stops serving (open requests finish), stops the watches and flushes the spans.
    pub async fn stop(self) {
        self.stop.stop();
        for task in self.tasks {
            let _ = task.await;
        }
        crate::flush(self.spans).await;
    }
}
