//! One term as leader in Kubernetes mode: the reconcilers on the store with a fresh runtime
//! and autoscaler, the scraper of replicas' stats, the routers' stats taken through the
//! stats endpoint and the endpoint advertised on the autoscaler's Service, until
//! leadership is lost or the process is told to stop.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_autoscaler::endpoint::StatsSink;
use sluice_autoscaler::{AutoscalerConfig, Scraper};
use sluice_core::RoutingSnapshot;
use tokio::sync::{mpsc, watch};

use crate::kube_mesh::ControllerMesh;
use crate::leader::{LeaderElector, advertise};
use crate::reconcile::{Controller, ControllerConfig};
use crate::retry::with_retries;
use crate::runtime::KubeRuntime;
use crate::runtime::kube::PodTemplate;
use crate::store::KubeStore;

/// Where the leader advertises its stats endpoint: the selector-less Service `service` of
/// `namespace` gets an EndpointSlice naming `ip:port`.
#[derive(Clone, Debug)]
pub struct Advertise {
    /// The leader's Pod IP.
    pub ip: IpAddr,
    /// The stats endpoint's port.
    pub port: u16,
    /// The Service's namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
}

/// What every term runs with.
#[derive(Clone, Debug)]
pub struct TermConfig {
    /// The reconcilers' settings.
    pub controller: ControllerConfig,
    /// The autoscaler's settings.
    pub autoscaler: AutoscalerConfig,
    /// Replica Pods (their mesh is filled in from the CA this replica serves).
    pub pods: PodTemplate,
    /// Scrape replicas' queue layers (off where Pod IPs are not reachable).
    pub scrape_stats: bool,
    /// Advertise the stats endpoint, when there is one and the Pod IP is known.
    pub advertise: Option<Advertise>,
}

/// How a term as leader ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// The process was told to stop: the Lease was released.
    Stopped,
    /// Leadership was lost.
    Lost,
}

/// Runs one term: until `elector` loses the Lease (then [`Term::Lost`]) or `stop`
/// resolves (the Lease is released, [`Term::Stopped`]).
pub async fn lead(
    config: &TermConfig,
    store: &KubeStore,
    elector: &mut LeaderElector,
    sink: &StatsSink,
    mesh: Option<ControllerMesh>,
    stop: impl Future<Output = ()>,
) -> Term {
    let (pod_mesh, scrape_tls) = match mesh {
        Some(m) => (Some(m.pods), Some(m.scrape)),
        None => (None, None),
    };
    let runtime = KubeRuntime::new(
        store.client().clone(),
        PodTemplate {
            mesh: pod_mesh,
            ..config.pods.clone()
        },
    );
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let (stats_tx, stats_rx) = mpsc::channel(1024);
    let (decisions_tx, decisions_rx) = mpsc::channel(256);
    let (autoscaler, autoscaler_task) =
        sluice_autoscaler::spawn(config.autoscaler.clone(), stats_rx, decisions_tx);
    // Replicas' queue layers are scraped for the autoscaler (Pod IPs, from EndpointSlices),
    // over mTLS as the controller with the mesh on.
    let scraper = config.scrape_stats.then(|| {
        tokio::spawn(
            Scraper::with_mesh(Duration::from_millis(500), scrape_tls).run(
                Duration::from_secs(1),
                snapshot_rx,
                stats_tx.clone(),
            ),
        )
    });
    // The routers' activators post their stats here (through the stats endpoint) while this
    // replica leads; the leader points the autoscaler's Service at itself.
    sink.set(Some(stats_tx.clone()));
    let advertised = config.advertise.clone().map(|a| {
        let client = store.client().clone();
        tokio::spawn(async move {
            let advertised = with_retries(
                "advertising the stats endpoint",
                |_| true,
                || advertise(client.clone(), &a.namespace, &a.service, a.ip, a.port),
                std::future::pending::<()>,
            )
            .await;
            if advertised.is_ok() {
                tracing::info!(ip = %a.ip, port = a.port, service = %a.service, "stats endpoint advertised");
            }
        })
    });
    let mut controller = Controller::new(
        config.controller.clone(),
        store.clone(),
        runtime,
        autoscaler,
        snapshot_tx,
    );
    // SLO-gated rollouts judge by what the routers post of their request outcomes.
    controller.set_signals(Arc::new(crate::rollout_signals::RoutersSignals(
        sink.outcomes.clone(),
    )));
    let mut term = Term::Lost;
    let stop = async {
        tokio::select! {
            () = elector.hold() => {}
            () = stop => {
                elector.release().await;
                term = Term::Stopped;
            }
        }
    };
    controller.run(decisions_rx, stop).await;
    // The autoscaler runs while its stats channel is open: until here.
    sink.set(None);
    drop(stats_tx);
    if let Some(a) = advertised {
        a.abort();
    }
    if let Some(s) = scraper {
        s.abort();
    }
    autoscaler_task.abort();
    term
}
