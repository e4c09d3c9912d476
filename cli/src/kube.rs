//! Kubernetes mode: `sluice controller --kube` (the reconcilers on the Kubernetes API, one
//! active replica by leader election), and the `--kube` backend of `sluice apply/get/
//! describe/delete` (the admin API served in-process on the current kubeconfig).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_controller::admin;
use sluice_controller::kube_mesh::{
    self, ControllerMesh, MeshCaConfig, RouterMeshConfig, serve_mesh_ca as serve_mesh_ca_with,
};
use sluice_controller::kube_stats::serve_stats_endpoint;
use sluice_controller::kube_term::{Advertise, Term, TermConfig, lead};
use sluice_controller::leader::{LeaderElector, LeaseConfig};
use sluice_controller::reconcile::ControllerConfig;
use sluice_controller::runtime::KubeRuntime;
use sluice_controller::runtime::kube::PodTemplate;
use sluice_controller::store::KubeStore;
use sluice_controller::store::kube::infer_client;
use sluice_core::RoutingSnapshot;
use sluice_mesh::guard::ListenerGuard;
use tokio::sync::{mpsc, watch};

use crate::flags::{
    ActivatorFlags, ControlFlags, IngressFlags, MeshFlags, MeshMode, TelemetryFlags,
};
use crate::shutdown;

use sluice_activator::stats_post;
use sluice_autoscaler::endpoint::StatsSink;

/// Flags of `sluice controller`.
#[derive(Args, Debug)]
pub(crate) struct ControllerArgs {
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
    #[command(flatten)]
    control: ControlFlags,
    /// Interval of the safety-net full pass.
    #[arg(long, env = "SLUICE_RESYNC", default_value = "5s", value_parser = humantime::parse_duration)]
    resync: Duration,
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
    /// Address of the autoscaler's stats endpoint (`POST /v1/stats`, the StatReports of the
    /// routers' activators, which scale revisions from zero). Off when absent. Only the
    /// leader accepts; a standby answers 503.
    #[arg(long, env = "SLUICE_STATS_LISTEN")]
    stats_listen: Option<std::net::SocketAddr>,
    /// This replica's Pod IP: the leader points the selector-less Service `--stats-service`
    /// at it (an EndpointSlice it writes), so activators reach the leader only.
    #[arg(long, env = "POD_IP", requires = "stats_listen")]
    advertise_address: Option<std::net::IpAddr>,
    /// The Service (in the Lease's namespace) the leader advertises its stats endpoint on.
    #[arg(
        long,
        env = "SLUICE_STATS_SERVICE",
        default_value = "sluice-autoscaler"
    )]
    stats_service: String,
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
    /// The mesh: every replica of the controller serves the CA (its root in the Secret
    /// `sluice-mesh-ca` of `--lease-namespace`), and revision Pods get a projected token
    /// to request their certificate with.
    #[command(flatten)]
    mesh: MeshFlags,
    /// Where the mesh CA listens (HTTPS, `POST /v1/certificates`); required with `--mesh on`.
    #[arg(long, env = "SLUICE_MESH_LISTEN")]
    mesh_listen: Option<std::net::SocketAddr>,
    /// The CA's address replica Pods are given (`sluice-ca.<--lease-namespace>.svc:15012`
    /// when absent).
    #[arg(long, env = "SLUICE_MESH_CA_SERVICE")]
    mesh_ca_service: Option<String>,
    /// This controller's ServiceAccount (in `--lease-namespace`): the identity of the CA's
    /// own certificate.
    #[arg(
        long,
        env = "SLUICE_SERVICE_ACCOUNT",
        default_value = "sluice-controller"
    )]
    service_account: String,
    /// The router's ServiceAccount (in `--lease-namespace`): replicas trust its identity to
    /// attest the original caller.
    #[arg(
        long,
        env = "SLUICE_ROUTER_SERVICE_ACCOUNT",
        default_value = "sluice-router"
    )]
    router_service_account: String,
}

fn identity(args: &ControllerArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "sluice".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

/// `sluice controller --kube`.
pub(crate) async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
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
    if args.mesh.on() && args.mesh_listen.is_none() {
        bail!(
            "--mesh on needs --mesh-listen (SLUICE_MESH_LISTEN, e.g. 0.0.0.0:15012), or pass --mesh off"
        );
    }
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::new(client.clone());
    // The CA needs no CRD: workloads (and routers) get their certificates meanwhile.
    let mesh = match args.mesh.mode {
        MeshMode::On => Some(serve_mesh_ca(&args, &store).await?),
        MeshMode::Off => None,
    };
    store.wait_for_crds(shutdown::signalled).await?;

    let sink = StatsSink::default();
    let stats_port = match args.stats_listen {
        Some(addr) => Some(serve_stats(addr, &sink, mesh.as_ref()).await?),
        None => None,
    };
    let term_config = TermConfig {
        controller: ControllerConfig {
            domain: args.domain.clone(),
            url_port: args.url_port,
            resync: args.resync,
            revision_history: args.control.revision_history,
        },
        autoscaler: args.control.autoscaler()?,
        pods: PodTemplate {
            image: args.image.clone(),
            image_pull_policy: args.image_pull_policy.clone(),
            service_account: args.replica_service_account.clone(),
            mesh: None,
        },
        scrape_stats: args.scrape_stats,
        advertise: stats_port
            .zip(args.advertise_address)
            .map(|(port, ip)| Advertise {
                ip,
                port,
                namespace: args.lease_namespace.clone(),
                service: args.stats_service.clone(),
            }),
    };
    let mut elector = LeaderElector::new(client.clone(), lease);
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown::signalled() => return Ok(()),
        }
        println!("sluice: controller {} is the leader", elector.identity());
        store.start_watching();
        let term = lead(
            &term_config,
            &store,
            &mut elector,
            &sink,
            mesh.clone(),
            shutdown::signalled(),
        )
        .await;
        match term {
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

/// The autoscaler's stats endpoint on `addr`; returns its port.
async fn serve_stats(
    addr: std::net::SocketAddr,
    sink: &StatsSink,
    mesh: Option<&ControllerMesh>,
) -> anyhow::Result<u16> {
    let local = serve_stats_endpoint(addr, sink, mesh).await?;
    let scheme = if mesh.is_some() { "https" } else { "http" };
    println!("sluice: controller stats endpoint on {scheme}://{local}/v1/stats");
    Ok(local.port())
}

/// The mesh CA of this replica (leader or standby), as `sluice_controller::kube_mesh`
/// serves it with the flags' settings.
async fn serve_mesh_ca(args: &ControllerArgs, store: &KubeStore) -> anyhow::Result<ControllerMesh> {
    let Some(listen) = args.mesh_listen else {
        bail!(
            "--mesh on needs --mesh-listen (SLUICE_MESH_LISTEN, e.g. 0.0.0.0:15012), or pass --mesh off"
        );
    };
    let config = MeshCaConfig {
        listen,
        trust_domain: args.mesh.trust_domain(),
        cert_ttl: args.mesh.cert_ttl,
        namespace: args.lease_namespace.clone(),
        service_account: args.service_account.clone(),
        router_service_account: args.router_service_account.clone(),
        ca_service: args.mesh_ca_service.clone(),
    };
    let mesh = serve_mesh_ca_with(&config, store.client(), shutdown::signalled).await?;
    println!("sluice: controller mesh CA on https://{}", mesh.listening);
    Ok(mesh)
}

/// Flags of `sluice router`.
#[derive(Args, Debug)]
pub(crate) struct RouterArgs {
    /// Build routes from the Kubernetes API of the current kubeconfig (or the in-cluster
    /// service account). Required: the router of local mode is part of `sluice up`.
    #[arg(long, env = "SLUICE_KUBE")]
    kube: bool,
    /// Ingress address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// The controller's autoscaler (base URL of its stats endpoint): the activator posts its
    /// StatReports there, so revisions at zero scale up on the first request. `https://`
    /// with the mesh on (mutual TLS as the router's identity, to the controller's), `http://`
    /// with it off. When absent they are dropped (counted) and revisions at zero stay there.
    #[arg(long, env = "SLUICE_AUTOSCALER")]
    autoscaler: Option<String>,
    /// The controller's ServiceAccount, in the router's own namespace (its SVID's): with the
    /// mesh on, stats go only to a server presenting that identity.
    #[arg(
        long,
        env = "SLUICE_CONTROLLER_SERVICE_ACCOUNT",
        default_value = "sluice-controller"
    )]
    controller_service_account: String,
    /// Where to serve `/metrics` (Prometheus text: the router's and the in-process
    /// activator's Istio request metrics, the activator's `revision_queue_depth`). Off when
    /// absent.
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    telemetry: TelemetryFlags,
    #[command(flatten)]
    activator: ActivatorFlags,
    #[command(flatten)]
    ingress: IngressFlags,
    /// Mutual TLS to replicas as the identity of this Pod's ServiceAccount, from the
    /// controller's mesh CA.
    #[command(flatten)]
    mesh: MeshFlags,
    /// `host:port` of the mesh CA; required with `--mesh on`.
    #[arg(long, env = "SLUICE_MESH_CA_ADDR")]
    mesh_ca_addr: Option<String>,
    /// The projected ServiceAccount token (audience `sluice-ca`) sent to the CA.
    #[arg(long, env = "SLUICE_MESH_TOKEN_FILE", default_value = sluice_mesh::issuance::DEFAULT_TOKEN_FILE)]
    mesh_token_file: std::path::PathBuf,
    /// The mesh root (PEM; ConfigMap `sluice-mesh-root`).
    #[arg(long, env = "SLUICE_MESH_ROOT_FILE", default_value = sluice_mesh::issuance::DEFAULT_ROOT_FILE)]
    mesh_root_file: std::path::PathBuf,
}

/// The router's mesh client, from the CA `--mesh-ca-addr` names.
async fn router_mesh(args: &RouterArgs) -> anyhow::Result<sluice_mesh::outbound::OutboundMesh> {
    let Some(ca_addr) = args.mesh_ca_addr.clone() else {
        bail!(
            "--mesh on needs the CA's address: --mesh-ca-addr or SLUICE_MESH_CA_ADDR (e.g. sluice-ca.sluice-system.svc:15012), or pass --mesh off"
        );
    };
    let config = RouterMeshConfig {
        ca_addr,
        token_file: args.mesh_token_file.clone(),
        root_file: args.mesh_root_file.clone(),
        trust_domain: args.mesh.trust_domain(),
        cert_ttl: args.mesh.cert_ttl,
    };
    let (mesh, id) = kube_mesh::router_mesh(&config, shutdown::signalled).await?;
    println!("sluice: router mesh identity {id}");
    Ok(mesh)
}

/// `sluice router --kube`: the ingress, with the activator in-process, routing from watched
/// Routes, Services, InferenceServices, Revisions and EndpointSlices.
pub(crate) async fn router(args: RouterArgs) -> anyhow::Result<()> {
    use sluice_controller::reconcile::kube_routing;
    use sluice_router::{DataPlane, DataPlaneConfig};

    if !args.kube {
        bail!(
            "sluice router runs in Kubernetes mode only: pass --kube (in local mode the router is part of `sluice up`)"
        );
    }
    let mesh_on = args.mesh.on();
    let stats_target = args
        .autoscaler
        .as_deref()
        .map(|base| stats_post::stats_target(base, mesh_on))
        .transpose()?;
    let mesh = if mesh_on {
        Some(router_mesh(&args).await?)
    } else {
        None
    };
    // The autoscaler is the controller's identity in the router's namespace.
    let stats_mesh = match &mesh {
        Some(m) => {
            let ns = m.tls().identity().current().id().namespace().to_owned();
            let server = sluice_mesh::identity::SpiffeId::new(
                &args.mesh.trust_domain(),
                &ns,
                &args.controller_service_account,
            )
            .context("--controller-service-account")?;
            Some(stats_post::StatsMesh {
                out: m.clone(),
                server,
            })
        }
        None => None,
    };
    // Span export: one span per request and hop, children of the caller's.
    let spans = args.telemetry.spans()?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding the metrics endpoint to {addr} (--metrics-listen)")
        })?),
        None => None,
    };
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::new(client.clone());
    store.wait_for_crds(shutdown::signalled).await?;
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
    // The activator's stats (with the immediate one on a request to a revision at zero) go
    // to the controller's autoscaler.
    let (stats_tx, stats_rx) = mpsc::channel(stats_post::STATS_QUEUE);
    tokio::spawn(stats_post::post_stats(stats_target, stats_mesh, stats_rx));
    // Replicas are called over mTLS as the router's identity (by the router and by the
    // activator in-process), or in plaintext with the mesh off. Each hop has a registry of
    // its own (as in local mode), merged on `/metrics`.
    let data_plane = DataPlane::start(DataPlaneConfig {
        activator: args.activator.config(),
        snapshot: snapshot_rx,
        stats: stats_tx,
        router_mesh: mesh.clone(),
        activator_mesh: mesh,
        spans: spans.as_ref().map(|(exporter, _)| exporter.clone()),
        service: "sluice-router",
        router: args.ingress.router(),
    });
    let serve = tokio::spawn(sluice_router::serve_ingress(
        listener,
        data_plane.router.clone(),
        args.ingress.serve()?,
        data_plane.ingress(),
        stopped(),
    ));
    let metrics = match metrics_listener {
        Some(listener) => {
            let local = listener.local_addr()?;
            let app = admin::guarded(
                sluice_controller::metrics::app(data_plane.registries()),
                ListenerGuard::in_cluster("the router's metrics endpoint", local),
            );
            let task = tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped())
                    .into_future(),
            );
            println!("sluice: router metrics on http://{local}/metrics");
            Some(task)
        }
        None => None,
    };
    println!("sluice: router listening on http://{addr}");
    shutdown::signalled().await;
    let _ = stop_tx.send(true);
    let _ = serve.await;
    let _ = routes.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Some((exporter, endpoint)) = spans
        && tokio::time::timeout(Duration::from_secs(2), exporter.flush())
            .await
            .is_err()
    {
        tracing::warn!(%endpoint, "spans not exported before exit: the collector did not answer in 2 s");
    }
    Ok(())
}
