//! The controller of Kubernetes mode (`sluice controller --kube`): every replica serves the
//! mesh CA; the one holding the Lease reconciles, scales revisions and takes the routers'
//! stats, the others stand by.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use sluice_autoscaler::endpoint::StatsSink;
use sluice_controller::kube_mesh::{ControllerMesh, MeshCaConfig, serve_mesh_ca};
use sluice_controller::kube_stats::serve_stats_endpoint;
use sluice_controller::kube_term::{Advertise, Term, TermConfig, lead};
use sluice_controller::leader::{LeaderElector, LeaseConfig};
use sluice_controller::store::KubeStore;
use sluice_controller::store::kube::infer_client;

/// Everything `sluice controller --kube` is told.
pub struct KubeControllerConfig {
    /// The leader election Lease (its namespace is the controller's).
    pub lease: LeaseConfig,
    /// The mesh CA this replica serves (`Some`, the default), leader or standby.
    pub mesh_ca: Option<MeshCaConfig>,
    /// Where the autoscaler's stats endpoint listens; off when `None`.
    pub stats_listen: Option<SocketAddr>,
    /// This replica's Pod IP and the Service the leader advertises its stats endpoint on.
    pub advertise: Option<(IpAddr, String)>,
    /// One term as leader (its `advertise` is filled in here).
    pub term: TermConfig,
}

/// What a controller replica has to say, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The mesh CA serves on this address (before the CRDs are there: workloads get their
    /// certificates meanwhile).
    MeshCa(SocketAddr),
    /// The stats endpoint serves on this URL.
    Stats(String),
    /// This replica (its Lease identity) took the Lease.
    Leading(String),
    /// This replica lost the Lease (the API server was out of reach past the renew
    /// deadline, or another replica took over) and stands by.
    Lost(String),
}

/// Serves the CA, waits for the CRDs, serves the stats endpoint, then leads whenever it
/// holds the Lease until `stopped` resolves (the Lease is released then).
pub async fn run<F>(
    mut config: KubeControllerConfig,
    stopped: impl Fn() -> F + Send + Sync + 'static,
    mut on_event: impl FnMut(Event),
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    config.lease.validate().map_err(anyhow::Error::msg)?;
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::new(client.clone());
    let mesh: Option<ControllerMesh> = match &config.mesh_ca {
        Some(ca) => {
            let mesh = serve_mesh_ca(ca, store.client(), &stopped).await?;
            on_event(Event::MeshCa(mesh.listening));
            Some(mesh)
        }
        None => None,
    };
    store.wait_for_crds(&stopped).await?;

    let sink = StatsSink::default();
    if let Some(addr) = config.stats_listen {
        let local = serve_stats_endpoint(addr, &sink, mesh.as_ref()).await?;
        let scheme = if mesh.is_some() { "https" } else { "http" };
        on_event(Event::Stats(format!("{scheme}://{local}/v1/stats")));
        config.term.advertise = config.advertise.map(|(ip, service)| Advertise {
            ip,
            port: local.port(),
            namespace: config.lease.namespace.clone(),
            service,
        });
    }
    let mut elector = LeaderElector::new(client, config.lease);
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            () = stopped() => return Ok(()),
        }
        on_event(Event::Leading(elector.identity().to_owned()));
        store.start_watching();
        let term = lead(
            &config.term,
            &store,
            &mut elector,
            &sink,
            mesh.clone(),
            stopped(),
        )
        .await;
        match term {
            Term::Stopped => return Ok(()),
            // Stop reconciling, stand by, and start afresh (a full pass from a re-listed
            // cache) if this replica leads again.
            Term::Lost => on_event(Event::Lost(elector.identity().to_owned())),
        }
    }
}
