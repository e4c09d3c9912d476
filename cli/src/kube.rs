//! Kubernetes mode: `sluice controller --kube` (the reconcilers on the Kubernetes API, one
//! active replica by leader election), and the `--kube` backend of `sluice apply/get/
//! describe/delete` (the admin API served in-process on the current kubeconfig).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_autoscaler::{AutoscalerConfig, Scraper};
use sluice_controller::leader::{LeaderElector, LeaseConfig};
use sluice_controller::reconcile::{Controller, ControllerConfig};
use sluice_controller::runtime::KubeRuntime;
use sluice_controller::runtime::kube::PodTemplate;
use sluice_controller::store::KubeStore;
use sluice_controller::store::kube::{KubeError, infer_client};
use sluice_core::RoutingSnapshot;
use sluice_crds::autoscaling::ClusterConfig;
use tokio::sync::{mpsc, watch};

use crate::shutdown;

/// Flags of `sluice controller`.
#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Run on the Kubernetes API of the current kubeconfig (or the in-cluster service
    /// account). Required: the controller of local mode is part of `sluice up`.
    #[arg(long, env = "SLUICE_KUBE")]
    kube: bool,
    /// The image of replica Pods (it must hold the `sluice` binary on PATH).
    #[arg(long, env = "SLUICE_IMAGE", default_value = "sluice:latest")]
    image: String,
    /// `imagePullPolicy` of replica Pods.
    #[arg(long, env = "SLUICE_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    image_pull_policy: String,
    /// Service account of replica Pods (the namespace's default when empty).
    #[arg(long, env = "SLUICE_REPLICA_SERVICE_ACCOUNT", default_value = "")]
    replica_service_account: String,
    /// Domain of service hosts: {name}.{namespace}.{domain}.
    #[arg(long, env = "SLUICE_DOMAIN", default_value = "example.com")]
    domain: String,
    /// Port shown in URLs (the router's), omitted when 80.
    #[arg(long, env = "SLUICE_URL_PORT")]
    url_port: Option<u16>,
    /// Old revisions kept per configuration beyond those routed, latest created and latest
    /// ready.
    #[arg(long, env = "SLUICE_REVISION_HISTORY", default_value_t = 20)]
    revision_history: usize,
    /// Interval of the safety-net full pass.
    #[arg(long, env = "SLUICE_RESYNC", default_value = "5s", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// How long the activator is in path before a revision's last replica stops.
    #[arg(long, env = "SLUICE_SCALE_TO_ZERO_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    scale_to_zero_grace: Duration,
    /// Autoscaler decision interval.
    #[arg(long, env = "SLUICE_AUTOSCALER_TICK", default_value = "2s", value_parser = humantime::parse_duration)]
    autoscaler_tick: Duration,
    /// Scrape replicas' queue layers for the autoscaler's stats (off where Pod IPs are not
    /// reachable, as with kwok's simulated Pods).
    #[arg(long, env = "SLUICE_SCRAPE_STATS", default_value_t = true, action = clap::ArgAction::Set)]
    scrape_stats: bool,
    /// Namespace of the leader election Lease.
    #[arg(long, env = "SLUICE_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader election Lease.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (host name and process id when absent).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease not renewed stays held.
    #[arg(long, env = "SLUICE_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    #[arg(long, env = "SLUICE_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// How often candidates retry and the leader renews.
    #[arg(long, env = "SLUICE_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
}

fn identity(args: &ControllerArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "sluice".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

/// Waits until every CRD is installed, saying which one is missing (a clear error, never a
/// crash loop); retries with backoff up to 30 s.
async fn wait_for_crds(store: &KubeStore) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(500);
    let mut last = String::new();
    loop {
        match store.check_crds().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let message = sluice_core::error_chain(&e);
                if message != last {
                    match e {
                        KubeError::MissingCrd { .. } => {
                            tracing::error!("{message}; waiting for it")
                        }
                        _ => tracing::error!("cannot check the CRDs: {message}; retrying"),
                    }
                    last = message;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown::signalled() => bail!("stopped while waiting for the CRDs"),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// `sluice controller --kube`.
pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    if !args.kube {
        bail!(
            "sluice controller runs in Kubernetes mode only: pass --kube (in local mode the controller is part of `sluice up`)"
        );
    }
    let lease = LeaseConfig {
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
        ..LeaseConfig::new(&args.lease_namespace, &args.lease_name, &identity(&args))
    };
    lease.validate().map_err(anyhow::Error::msg)?;
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::new(client.clone());
    wait_for_crds(&store).await?;

    let mut elector = LeaderElector::new(client.clone(), lease);
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown::signalled() => return Ok(()),
        }
        println!("sluice: controller {} is the leader", elector.identity());
        store.start_watching();
        match lead(&args, &store, &mut elector).await {
            Term::Stopped => return Ok(()),
            // The API server was out of reach for longer than the renew deadline, or another
            // replica took over: stop reconciling, stand by, and start afresh (a full pass
            // from a re-listed cache) if this replica leads again.
            Term::Lost => println!(
                "sluice: controller {} lost leadership; standing by",
                elector.identity()
            ),
        }
    }
}

/// How a term as leader ended.
enum Term {
    /// A signal: the Lease was released.
    Stopped,
    /// Leadership was lost.
    Lost,
}

/// One term as leader: the reconcilers on the store, with a fresh runtime and autoscaler,
/// until leadership is lost or a signal arrives.
async fn lead(args: &ControllerArgs, store: &KubeStore, elector: &mut LeaderElector) -> Term {
    let runtime = KubeRuntime::new(
        store.client().clone(),
        PodTemplate {
            image: args.image.clone(),
            image_pull_policy: args.image_pull_policy.clone(),
            service_account: args.replica_service_account.clone(),
        },
    );
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let (stats_tx, stats_rx) = mpsc::channel(1024);
    let (decisions_tx, decisions_rx) = mpsc::channel(256);
    let (autoscaler, autoscaler_task) = sluice_autoscaler::spawn(
        AutoscalerConfig {
            tick: args.autoscaler_tick,
            scale_to_zero_grace: args.scale_to_zero_grace,
        },
        stats_rx,
        decisions_tx,
    );
    // Replicas' queue layers are scraped for the autoscaler (Pod IPs, from EndpointSlices).
    let scraper = args.scrape_stats.then(|| {
        tokio::spawn(Scraper::new(Duration::from_millis(500)).run(
            Duration::from_secs(1),
            snapshot_rx,
            stats_tx.clone(),
        ))
    });
    let controller = Controller::new(
        ControllerConfig {
            domain: args.domain.clone(),
            url_port: args.url_port,
            resync: args.resync,
            revision_history: args.revision_history,
        },
        store.clone(),
        runtime,
        autoscaler,
        snapshot_tx,
    );
    let mut term = Term::Lost;
    let stop = async {
        tokio::select! {
            () = elector.hold() => {}
            () = shutdown::signalled() => {
                elector.release().await;
                term = Term::Stopped;
            }
        }
    };
    controller.run(decisions_rx, stop).await;
    // The autoscaler runs while its stats channel is open: until here.
    drop(stats_tx);
    if let Some(s) = scraper {
        s.abort();
    }
    autoscaler_task.abort();
    term
}

/// The admin API served on loopback over the current kubeconfig's API server, for the
/// `--kube` flag of `sluice apply/get/describe/delete`: the same requests, validation and
/// output as against `sluice up`. Returns its base URL.
pub async fn admin_server() -> anyhow::Result<String> {
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::validating_batches(client, "sluice");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the Kubernetes client")?;
    let addr = listener.local_addr()?;
    let app = sluice_controller::admin::router(store, ClusterConfig::default());
    tokio::spawn(axum::serve(listener, app).into_future());
    Ok(format!("http://{addr}"))
}

/// Flags of `sluice router`.
#[derive(Args, Debug)]
pub struct RouterArgs {
    /// Build routes from the Kubernetes API of the current kubeconfig (or the in-cluster
    /// service account). Required: the router of local mode is part of `sluice up`.
    #[arg(long, env = "SLUICE_KUBE")]
    kube: bool,
    /// Ingress address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Requests the activator buffers per revision before answering 503.
    #[arg(long, env = "SLUICE_ACTIVATOR_QUEUE", default_value_t = 1000)]
    activator_queue: usize,
}

/// `sluice router --kube`: the ingress, with the activator in-process, routing from watched
/// Routes, Services, InferenceServices, Revisions and EndpointSlices.
pub async fn router(args: RouterArgs) -> anyhow::Result<()> {
    use sluice_activator::{Activator, ActivatorConfig, Forwarder};
    use sluice_controller::reconcile::kube_routing;
    use sluice_router::{Router, ServeConfig};

    if !args.kube {
        bail!(
            "sluice router runs in Kubernetes mode only: pass --kube (in local mode the router is part of `sluice up`)"
        );
    }
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::new(client.clone());
    wait_for_crds(&store).await?;
    store.start_watching_kinds(&kube_routing::ROUTER_KINDS);
    let runtime = KubeRuntime::endpoints_only(client);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the router to {}", args.listen))?;
    let addr = listener.local_addr()?;

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let routes = tokio::spawn(kube_routing::run(store, runtime, snapshot_tx, stopped()));
    // The activator's stats are for an autoscaler; the controller's scrapes the replicas
    // itself, so here they are read and let go (the channel never fills).
    let (stats_tx, mut stats_rx) = mpsc::channel(1024);
    tokio::spawn(async move { while stats_rx.recv().await.is_some() {} });
    let activator = Arc::new(Activator::new(
        ActivatorConfig {
            max_queued_per_revision: args.activator_queue,
            ..ActivatorConfig::default()
        },
        snapshot_rx.clone(),
        stats_tx,
        Forwarder::new(),
    ));
    tokio::spawn(activator.clone().run_stats());
    let router = Arc::new(Router::new(snapshot_rx, activator, Forwarder::new()));
    let serve = tokio::spawn(sluice_router::serve(
        listener,
        router,
        ServeConfig::default(),
        stopped(),
    ));
    println!("sluice: router listening on http://{addr}");
    shutdown::signalled().await;
    let _ = stop_tx.send(true);
    let _ = serve.await;
    let _ = routes.await;
    Ok(())
}
