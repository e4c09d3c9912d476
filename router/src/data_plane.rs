//! The data plane of one process: the router and its in-process activator, each hop with
//! a metrics registry of its own, an access-log line per request and, when spans are
//! exported, a span per request. `sluice up` and `sluice router --kube` build it the same
//! way; they differ only in where routes and stats come from and which identities the hops
//! call replicas with.

use std::sync::Arc;

use sluice_activator::{Activator, ActivatorConfig};
use sluice_core::{RoutingSnapshot, StatReport};
use sluice_mesh::otlp::SpanExporter;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::telemetry::{AccessLog, HopTelemetry, Registry};
use sluice_proxy::Forwarder;
use tokio::sync::{mpsc, watch};

use crate::ingress::Ingress;
use crate::{Router, RouterConfig};

/// What the data plane is built from.
pub struct DataPlaneConfig {
    /// The activator's settings.
    pub activator: ActivatorConfig,
    /// The routes (the controller's in local mode, the router's own watch on Kubernetes).
    pub snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    /// Where the activator's stats go (the autoscaler, in-process or posted).
    pub stats: mpsc::Sender<StatReport>,
    /// The identity the router calls replicas with (mesh on).
    pub router_mesh: Option<OutboundMesh>,
    /// The identity the activator calls replicas with (mesh on).
    pub activator_mesh: Option<OutboundMesh>,
    /// Span export, when a collector is configured.
    pub spans: Option<SpanExporter>,
    /// One JSON access-log line per request and hop (`sluice::access` events of the
    /// process's `tracing` subscriber); off by default, as Istio's and Knative's are.
    pub access_log: bool,
    /// The exporter's own metrics are registered with the router's under this service name.
    pub service: &'static str,
    /// The router's settings.
    pub router: RouterConfig,
}

/// The router and its activator, running.
pub struct DataPlane {
    /// The router (hand it to [`crate::serve_ingress`]).
    pub router: Arc<Router>,
    /// The router hop's metrics.
    pub router_registry: Registry,
    /// The activator hop's metrics.
    pub activator_registry: Registry,
    telemetry: HopTelemetry,
}

impl DataPlane {
    /// Builds both hops and starts the activator's stats reporting (call inside a Tokio
    /// runtime).
    pub fn start(config: DataPlaneConfig) -> Self {
        let hop = |registry: &Registry, name: &'static str| {
            let log = if config.access_log {
                AccessLog::Tracing
            } else {
                AccessLog::Off
            };
            let t = HopTelemetry::new(registry.clone(), name, log);
            match &config.spans {
                Some(exporter) => t.with_spans(exporter.clone()),
                None => t,
            }
        };
        let forwarder = |mesh: &Option<OutboundMesh>| match mesh {
            Some(m) => Forwarder::new().with_mesh(m.clone()),
            None => Forwarder::new(),
        };
        let (router_registry, activator_registry) = (Registry::new(), Registry::new());
        if let Some(exporter) = &config.spans {
            exporter.register_metrics(&router_registry, config.service);
        }
        let activator = Arc::new(
            Activator::new(
                config.activator.clone(),
                config.snapshot.clone(),
                config.stats.clone(),
                forwarder(&config.activator_mesh),
            )
            .with_telemetry(hop(&activator_registry, "activator")),
        );
        tokio::spawn(activator.clone().run_stats());
        let router = Arc::new(Router::with_config(
            config.snapshot.clone(),
            activator,
            forwarder(&config.router_mesh),
            config.router.clone(),
        ));
        Self {
            router,
            telemetry: hop(&router_registry, "router"),
            router_registry,
            activator_registry,
        }
    }

    /// The ingress settings with the router hop's telemetry.
    pub fn ingress(&self) -> Ingress {
        Ingress {
            telemetry: Some(self.telemetry.clone()),
            ..Ingress::default()
        }
    }

    /// Both hops' registries, for a merged `/metrics`.
    pub fn registries(&self) -> Vec<Registry> {
        vec![
            self.router_registry.clone(),
            self.activator_registry.clone(),
        ]
    }
}
