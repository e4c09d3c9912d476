//! Kubernetes mode: `sluice controller --kube` (the reconcilers on the Kubernetes API, one
//! active replica by leader election) and `sluice router --kube` (its flags become a
//! `sluice_server::kube_router::KubeRouterConfig`).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_activator::stats_post;
use sluice_controller::kube_mesh::{MeshCaConfig, RouterMeshConfig};
use sluice_controller::kube_term::TermConfig;
use sluice_controller::leader::LeaseConfig;
use sluice_controller::reconcile::ControllerConfig;
use sluice_controller::runtime::kube::PodTemplate;
use sluice_server::kube_controller::{self, Event, KubeControllerConfig};
use sluice_server::kube_router::{self, KubeRouterConfig, RouterMesh};

use crate::flags::{
    ActivatorFlags, ControlFlags, IngressFlags, MeshFlags, MeshMode, TelemetryFlags,
};
use crate::shutdown;

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
    let mesh_ca = match args.mesh.mode {
        MeshMode::On => Some(MeshCaConfig {
            listen: args.mesh_listen.context(
                "--mesh on needs --mesh-listen (SLUICE_MESH_LISTEN, e.g. 0.0.0.0:15012), or pass --mesh off",
            )?,
            trust_domain: args.mesh.trust_domain(),
            cert_ttl: args.mesh.cert_ttl,
            namespace: args.lease_namespace.clone(),
            service_account: args.service_account.clone(),
            router_service_account: args.router_service_account.clone(),
            ca_service: args.mesh_ca_service.clone(),
        }),
        MeshMode::Off => None,
    };
    let config = KubeControllerConfig {
        lease,
        mesh_ca,
        stats_listen: args.stats_listen,
        advertise: args
            .advertise_address
            .map(|ip| (ip, args.stats_service.clone())),
        term: TermConfig {
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
            advertise: None,
        },
    };
    kube_controller::run(config, shutdown::signalled, |event| match event {
        Event::MeshCa(addr) => println!("sluice: controller mesh CA on https://{addr}"),
        Event::Stats(url) => println!("sluice: controller stats endpoint on {url}"),
        Event::Leading(id) => println!("sluice: controller {id} is the leader"),
        Event::Lost(id) => println!("sluice: controller {id} lost leadership; standing by"),
    })
    .await
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

/// `sluice router --kube`: the ingress, with the activator in-process, routing from watched
/// Routes, Services, InferenceServices, Revisions and EndpointSlices.
pub(crate) async fn router(args: RouterArgs) -> anyhow::Result<()> {
    if !args.kube {
        bail!(
            "sluice router runs in Kubernetes mode only: pass --kube (in local mode the router is part of `sluice up`)"
        );
    }
    let autoscaler = args
        .autoscaler
        .as_deref()
        .map(|base| stats_post::stats_target(base, args.mesh.mode == MeshMode::On))
        .transpose()?;
    let mesh = match args.mesh.mode {
        MeshMode::On => Some(RouterMesh {
            ca: RouterMeshConfig {
                ca_addr: args.mesh_ca_addr.clone().context(
                    "--mesh on needs the CA's address: --mesh-ca-addr or SLUICE_MESH_CA_ADDR (e.g. sluice-ca.sluice-system.svc:15012), or pass --mesh off",
                )?,
                token_file: args.mesh_token_file.clone(),
                root_file: args.mesh_root_file.clone(),
                trust_domain: args.mesh.trust_domain(),
                cert_ttl: args.mesh.cert_ttl,
            },
            controller_service_account: args.controller_service_account.clone(),
        }),
        MeshMode::Off => None,
    };
    let config = KubeRouterConfig {
        listen: args.listen,
        autoscaler,
        mesh,
        metrics_listen: args.metrics_listen,
        activator: args.activator.config(),
        router: args.ingress.router(),
        serve: args.ingress.serve()?,
        // Span export: one span per request and hop, children of the caller's.
        spans: args.telemetry.spans()?,
        access_log: args.telemetry.access_log,
    };
    let router = kube_router::start(config, shutdown::signalled).await?;
    if let Some(id) = &router.identity {
        println!("sluice: router mesh identity {id}");
    }
    if let Some(addr) = router.metrics_addr {
        println!("sluice: router metrics on http://{addr}/metrics");
    }
    println!("sluice: router listening on http://{}", router.addr);
    shutdown::signalled().await;
    router.stop().await;
    Ok(())
}
