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
use sluice_controller::runtime::kube::{PodMesh, PodTemplate};
use sluice_controller::store::KubeStore;
use sluice_controller::store::kube::{KubeError, infer_client};
use sluice_core::{RoutingSnapshot, StatReport};
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
    /// to request their certificate with (`off`: plaintext replicas, no CA).
    #[arg(long, env = "SLUICE_MESH", default_value = "on", value_parser = ["on", "off"])]
    mesh: String,
    /// Trust domain of the mesh's SPIFFE IDs.
    #[arg(long, env = "SLUICE_TRUST_DOMAIN", default_value = sluice_mesh::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Life of workload certificates; each is renewed at 40–50 % of it.
    #[arg(long, env = "SLUICE_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    cert_ttl: Duration,
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
    if args.mesh == "on" && args.mesh_listen.is_none() {
        bail!(
            "--mesh on needs --mesh-listen (SLUICE_MESH_LISTEN, e.g. 0.0.0.0:15012), or pass --mesh off"
        );
    }
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let store = KubeStore::new(client.clone());
    // The CA needs no CRD: workloads (and routers) get their certificates meanwhile.
    let mesh = match args.mesh.as_str() {
        "on" => Some(serve_mesh_ca(&args, &store).await?),
        _ => None,
    };
    wait_for_crds(&store).await?;

    let sink = StatsSink::default();
    let stats_port = match args.stats_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the stats endpoint to {addr}"))?;
            let local = listener.local_addr()?;
            tokio::spawn(axum::serve(listener, stats_app(sink.clone())).into_future());
            println!("sluice: controller stats endpoint on http://{local}/v1/stats");
            Some(local.port())
        }
        None => None,
    };
    let mut elector = LeaderElector::new(client.clone(), lease);
    loop {
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown::signalled() => return Ok(()),
        }
        println!("sluice: controller {} is the leader", elector.identity());
        store.start_watching();
        match lead(&args, &store, &mut elector, &sink, stats_port, mesh.clone()).await {
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

/// Retries `what` with backoff (500 ms doubling to 30 s) while it fails with an error that
/// `retry` says is worth retrying; stops on a signal.
async fn with_retries<T, E, F, Fut>(
    what: &str,
    retry: fn(&E) -> bool,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if retry(&e) => {
                tracing::warn!("{what} failed, retrying: {}", sluice_core::error_chain(&e));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what.to_owned())),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown::signalled() => bail!("stopped while {what}"),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The controller's part of the mesh.
#[derive(Clone)]
struct ControllerMesh {
    /// What revision Pods need to get their certificates.
    pods: PodMesh,
    /// The controller's own client identity (its scrapes of replicas' stats).
    scrape: sluice_mesh::tls::MeshConnector,
}

/// The mesh CA of this replica (leader or standby): its root from the Secret (created by
/// the first replica), published as the root ConfigMap of the controller's namespace (the
/// router mounts it), served on `--mesh-listen` with TokenReviews until a signal, with the
/// cluster's AuthorizationPolicies and PeerAuthentications for workloads to follow. Returns
/// what revision Pods need, and the controller's own client identity, issued in-process.
async fn serve_mesh_ca(args: &ControllerArgs, store: &KubeStore) -> anyhow::Result<ControllerMesh> {
    use sluice_controller::kube_ca::{self, KubeCaError, TokenReviewAuthenticator};
    use sluice_mesh::identity::{RotatingSvid, RotationConfig, SpiffeId, SvidIssuer};
    use sluice_mesh::outbound::OutboundMesh;
    use sluice_mesh::tls::MeshTls;

    let Some(listen) = args.mesh_listen else {
        bail!(
            "--mesh on needs --mesh-listen (SLUICE_MESH_LISTEN, e.g. 0.0.0.0:15012), or pass --mesh off"
        );
    };
    if args.cert_ttl < Duration::from_secs(1) {
        bail!("--cert-ttl: at least 1s");
    }
    let client = store.client();
    let ns = args.lease_namespace.as_str();
    let server_id = SpiffeId::new(&args.trust_domain, ns, &args.service_account)
        .context("--trust-domain / --lease-namespace / --service-account")?;
    let router_id = SpiffeId::new(&args.trust_domain, ns, &args.router_service_account)
        .context("--router-service-account")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the mesh CA to {listen}"))?;
    let ca = with_retries(
        &format!(
            "loading the mesh CA root from Secret {ns}/{}",
            kube_ca::CA_SECRET
        ),
        |e| matches!(e, KubeCaError::Api { .. }),
        || kube_ca::load_or_create(client, ns, &args.trust_domain, args.cert_ttl),
    )
    .await?;
    let root_pem = ca.root_pem();
    with_retries(
        &format!(
            "publishing the mesh root as ConfigMap {ns}/{}",
            kube_ca::ROOT_CONFIGMAP
        ),
        |_| true,
        || kube_ca::apply_root_config_map(client, ns, &root_pem),
    )
    .await?;
    let local = listener.local_addr()?;
    let ca = Arc::new(ca);
    let (own, _renewal) = RotatingSvid::start(
        ca.clone() as Arc<dyn SvidIssuer>,
        server_id.clone(),
        RotationConfig::new(args.cert_ttl),
    )
    .with_context(|| format!("issuing the controller's own certificate, {server_id}"))?;
    let scrape = OutboundMesh::new(MeshTls::new(Arc::new(ca.trust_bundle()?), own))
        .context("the controller's mesh TLS")?
        .connector()
        .clone();
    let auth = Arc::new(TokenReviewAuthenticator::new(client.clone()));
    // Istio's security policies, watched cluster-wide and served to workloads by the CA;
    // the controller's namespace is the root namespace (mesh-wide policies).
    let policies = sluice_controller::kube_policies::PolicyWatch::start(client.clone(), ns);
    let server = sluice_mesh::issuance::serve_with_policies(
        listener,
        ca,
        server_id,
        auth,
        Some(policies),
        shutdown::signalled(),
    );
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("the mesh CA stopped: {e}");
        }
    });
    println!("sluice: controller mesh CA on https://{local}");
    let pods = PodMesh {
        ca_addr: args.mesh_ca_service.clone().unwrap_or_else(|| {
            format!("sluice-ca.{ns}.svc:{}", sluice_mesh::issuance::DEFAULT_PORT)
        }),
        trust_domain: args.trust_domain.clone(),
        attesters: vec![router_id.to_string()],
        root_pem,
    };
    Ok(ControllerMesh { pods, scrape })
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
async fn lead(
    args: &ControllerArgs,
    store: &KubeStore,
    elector: &mut LeaderElector,
    sink: &StatsSink,
    stats_port: Option<u16>,
    mesh: Option<ControllerMesh>,
) -> Term {
    let (pod_mesh, scrape_tls) = match mesh {
        Some(m) => (Some(m.pods), Some(m.scrape)),
        None => (None, None),
    };
    let runtime = KubeRuntime::new(
        store.client().clone(),
        PodTemplate {
            image: args.image.clone(),
            image_pull_policy: args.image_pull_policy.clone(),
            service_account: args.replica_service_account.clone(),
            mesh: pod_mesh,
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
    // Replicas' queue layers are scraped for the autoscaler (Pod IPs, from EndpointSlices),
    // over mTLS as the controller with the mesh on.
    let scraper = args.scrape_stats.then(|| {
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
    let advertised = stats_port.zip(args.advertise_address).map(|(port, ip)| {
        let (client, ns, service) = (
            store.client().clone(),
            args.lease_namespace.clone(),
            args.stats_service.clone(),
        );
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                match sluice_controller::leader::advertise(client.clone(), &ns, &service, ip, port)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(%ip, port, %service, "stats endpoint advertised");
                        return;
                    }
                    Err(e) => tracing::warn!(
                        "advertising the stats endpoint failed, retrying: {}",
                        sluice_core::error_chain(&e)
                    ),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        })
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

/// The stats channel of the current term's autoscaler: `None` on a standby.
#[derive(Clone, Default)]
struct StatsSink {
    tx: Arc<std::sync::Mutex<Option<mpsc::Sender<StatReport>>>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl StatsSink {
    fn set(&self, tx: Option<mpsc::Sender<StatReport>>) {
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    fn sender(&self) -> Option<mpsc::Sender<StatReport>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Most StatReports one `POST /v1/stats` may carry.
const MAX_STATS_PER_POST: usize = 4096;
/// Largest `POST /v1/stats` body.
const MAX_STATS_BODY: usize = 1024 * 1024;

/// The stats endpoint: `POST /v1/stats` with a JSON array of StatReports.
fn stats_app(sink: StatsSink) -> axum::Router {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::http::StatusCode;
    use axum::routing::post;

    async fn accept(
        State(sink): State<StatsSink>,
        body: Result<axum::Json<Vec<StatReport>>, axum::extract::rejection::JsonRejection>,
    ) -> (StatusCode, String) {
        let reports = match body {
            Ok(axum::Json(r)) => r,
            Err(e) => {
                return (
                    e.status(),
                    format!(
                        "the body must be a JSON array of StatReports: {}",
                        e.body_text()
                    ),
                );
            }
        };
        if reports.len() > MAX_STATS_PER_POST {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} StatReports in one post; at most {MAX_STATS_PER_POST}",
                    reports.len()
                ),
            );
        }
        let Some(tx) = sink.sender() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "this controller is a standby: stats go to the leader".into(),
            );
        };
        let mut accepted = 0usize;
        let mut dropped = 0u64;
        for r in reports {
            match tx.try_send(r) {
                Ok(()) => accepted += 1,
                Err(_) => dropped += 1,
            }
        }
        if dropped > 0 {
            let total = sink
                .dropped
                .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed)
                + dropped;
            tracing::warn!(
                dropped,
                total,
                "the autoscaler's stats queue is full: StatReports dropped"
            );
        }
        (
            StatusCode::ACCEPTED,
            serde_json::json!({ "accepted": accepted, "dropped": dropped }).to_string(),
        )
    }

    axum::Router::new()
        .route("/v1/stats", post(accept))
        .layer(DefaultBodyLimit::max(MAX_STATS_BODY))
        .with_state(sink)
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
    /// The controller's autoscaler (base URL of its stats endpoint, `http://` only): the
    /// activator posts its StatReports there, so revisions at zero scale up on the first
    /// request. When absent they are dropped (counted) and revisions at zero stay there.
    #[arg(long, env = "SLUICE_AUTOSCALER")]
    autoscaler: Option<String>,
    /// Requests the activator buffers per revision before answering 503.
    #[arg(long, env = "SLUICE_ACTIVATOR_QUEUE", default_value_t = 1000)]
    activator_queue: usize,
    /// Mutual TLS to replicas, as the identity of this Pod's ServiceAccount from the
    /// controller's mesh CA (`off`: plaintext).
    #[arg(long, env = "SLUICE_MESH", default_value = "on", value_parser = ["on", "off"])]
    mesh: String,
    /// `host:port` of the mesh CA; required with `--mesh on`.
    #[arg(long, env = "SLUICE_MESH_CA_ADDR")]
    mesh_ca_addr: Option<String>,
    /// The projected ServiceAccount token (audience `sluice-ca`) sent to the CA.
    #[arg(long, env = "SLUICE_MESH_TOKEN_FILE", default_value = sluice_mesh::issuance::DEFAULT_TOKEN_FILE)]
    mesh_token_file: std::path::PathBuf,
    /// The mesh root (PEM; ConfigMap `sluice-mesh-root`).
    #[arg(long, env = "SLUICE_MESH_ROOT_FILE", default_value = sluice_mesh::issuance::DEFAULT_ROOT_FILE)]
    mesh_root_file: std::path::PathBuf,
    /// Trust domain of the mesh's SPIFFE IDs.
    #[arg(long, env = "SLUICE_MESH_TRUST_DOMAIN", default_value = sluice_mesh::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Life asked for the router's certificate (the CA caps it); renewed at 40–50 % of it.
    #[arg(long, env = "SLUICE_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    cert_ttl: Duration,
}

/// The router's mesh client: its SVID from the CA (the projected token authenticates it),
/// renewed in the background. Waits (with backoff) while the CA cannot be reached yet.
async fn router_mesh(args: &RouterArgs) -> anyhow::Result<sluice_mesh::outbound::OutboundMesh> {
    use sluice_mesh::identity::RotationConfig;
    use sluice_mesh::issuance::{IssueError, RemoteCa, remote_identity};
    use sluice_mesh::outbound::OutboundMesh;
    use sluice_mesh::tls::MeshTls;

    let Some(addr) = args.mesh_ca_addr.clone() else {
        bail!(
            "--mesh on needs the CA's address: --mesh-ca-addr or SLUICE_MESH_CA_ADDR (e.g. sluice-ca.sluice-system.svc:15012), or pass --mesh off"
        );
    };
    let root = &args.mesh_root_file;
    let bytes = std::fs::read(root).with_context(|| {
        format!(
            "reading the mesh root {} (--mesh-root-file)",
            root.display()
        )
    })?;
    let bundle = Arc::new(
        sluice_mesh::handoff::parse_bundle(root, bytes, &args.trust_domain)
            .context("--mesh-root-file")?,
    );
    let ca = RemoteCa {
        addr,
        token_file: args.mesh_token_file.clone(),
        bundle: bundle.clone(),
    };
    // The CA may not be up yet (controllers start beside routers); a refusal is final.
    let retryable = |e: &IssueError| match e {
        IssueError::Status { status, .. } => *status >= 500,
        IssueError::Response { .. } | IssueError::Key(_) => false,
        _ => true,
    };
    let (svid, _renewal) = with_retries(
        "obtaining the router's certificate from the mesh CA",
        retryable,
        || remote_identity(ca.clone(), RotationConfig::new(args.cert_ttl)),
    )
    .await?;
    println!("sluice: router mesh identity {}", svid.current().id());
    OutboundMesh::new(MeshTls::new(bundle, svid)).context("the router's mesh TLS")
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
    let stats_url = args
        .autoscaler
        .as_deref()
        .map(stats_url)
        .transpose()
        .context("--autoscaler")?;
    let mesh = match args.mesh.as_str() {
        "on" => Some(router_mesh(&args).await?),
        _ => None,
    };
    // Replicas are called over mTLS as the router's identity (by the router and by the
    // activator in-process), or in plaintext with the mesh off.
    let forwarder = || match &mesh {
        Some(m) => Forwarder::new().with_mesh(m.clone()),
        None => Forwarder::new(),
    };
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
    // The activator's stats (with the immediate one on a request to a revision at zero) go
    // to the controller's autoscaler.
    let (stats_tx, stats_rx) = mpsc::channel(STATS_QUEUE);
    tokio::spawn(post_stats(stats_url, stats_rx));
    let activator = Arc::new(Activator::new(
        ActivatorConfig {
            max_queued_per_revision: args.activator_queue,
            ..ActivatorConfig::default()
        },
        snapshot_rx.clone(),
        stats_tx,
        forwarder(),
    ));
    tokio::spawn(activator.clone().run_stats());
    let router = Arc::new(Router::new(snapshot_rx, activator, forwarder()));
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

/// StatReports the router holds for the autoscaler before the activator's are dropped.
const STATS_QUEUE: usize = 1024;
/// Most StatReports the router sends in one post.
const STATS_BATCH: usize = 512;
/// How long one post to the autoscaler may take.
const STATS_POST_TIMEOUT: Duration = Duration::from_secs(2);

/// `BASE` → `BASE/v1/stats`, `http://` only.
fn stats_url(base: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = format!("{}/v1/stats", base.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("{base:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        bail!("{base:?}: the autoscaler's URL must be http://HOST[:PORT]");
    }
    Ok(uri)
}

/// Posts the activator's StatReports to the autoscaler as they come (whatever is queued in
/// one post), until the activator stops. Reports that cannot be delivered are dropped and
/// counted: stats are a stream, the next second's replace them.
async fn post_stats(url: Option<http::Uri>, mut rx: mpsc::Receiver<StatReport>) {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let Some(url) = url else {
        tracing::warn!(
            "no --autoscaler: the activator's stats are dropped, and revisions at zero stay at zero"
        );
        while rx.recv().await.is_some() {}
        return;
    };
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut dropped = 0u64;
    let mut failing = false;
    let mut batch = Vec::with_capacity(STATS_BATCH);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < STATS_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let result = async {
            let body = serde_json::to_vec(&batch)?;
            let request = http::Request::post(url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(bytes::Bytes::from(body)))?;
            let response = tokio::time::timeout(STATS_POST_TIMEOUT, client.request(request))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {STATS_POST_TIMEOUT:?}"))??;
            let status = response.status();
            if !status.is_success() {
                bail!("answered {status}");
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(%url, dropped, "the autoscaler takes stats again");
                    failing = false;
                }
                tracing::debug!(%url, reports = batch.len(), "stats posted");
            }
            Err(e) => {
                dropped += batch.len() as u64;
                if !failing {
                    tracing::warn!(%url, dropped, "posting stats to the autoscaler failed, dropping them: {e:#}");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_autoscaler_url_is_http_with_a_host() {
        assert_eq!(
            stats_url("http://sluice-autoscaler.sluice-system.svc:8080/")
                .unwrap()
                .to_string(),
            "http://sluice-autoscaler.sluice-system.svc:8080/v1/stats"
        );
        assert!(stats_url("https://a:1").is_err());
        assert!(stats_url("a b").is_err());
    }

    /// Serves `app` on a loopback port and posts `body` to it.
    async fn post(app: axum::Router, body: &str) -> (u16, String) {
        use http_body_util::Full;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, app).into_future());
        let client: Client<_, Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let response = client
            .request(
                http::Request::post(format!("http://{addr}/v1/stats"))
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from(body.to_owned())))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        server.abort();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn only_the_leader_takes_stats_and_a_full_queue_drops_counted() {
        let report = serde_json::to_string(&vec![StatReport::poke(sluice_core::NamespacedName {
            namespace: "default".into(),
            name: "hello-00001".into(),
        })])
        .unwrap();
        let sink = StatsSink::default();
        let (status, body) = post(stats_app(sink.clone()), &report).await;
        assert_eq!((status, body.contains("standby")), (503, true), "{body}");

        let (tx, mut rx) = mpsc::channel(1);
        sink.set(Some(tx));
        let (status, body) = post(stats_app(sink.clone()), &report).await;
        assert_eq!(status, 202, "{body}");
        let got = rx.recv().await.unwrap();
        assert_eq!(got.revision.name, "hello-00001");
        assert_eq!(got.request_count, 1);

        // The queue holds one: of two, one is dropped, and counted.
        let two = format!("[{0},{0}]", &report[1..report.len() - 1]);
        let (status, body) = post(stats_app(sink.clone()), &two).await;
        assert_eq!(status, 202, "{body}");
        assert!(body.contains(r#""dropped":1"#), "{body}");
        assert_eq!(sink.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);

        let (status, body) = post(stats_app(sink.clone()), r#"{"revision": 1}"#).await;
        assert!((400..500).contains(&status), "{status} {body}");
        assert!(body.contains("JSON array of StatReports"), "{body}");
    }
}
