//! `sluice up`: the whole of Sluice in one process, on an embedded SQLite store, with
//! replicas as child processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_autoscaler::Scraper;
use sluice_controller::admin;
use sluice_controller::policies::{
    PolicyStore, apply_policies, known_workloads, split_policies, warn_unselected,
};
use sluice_controller::reconcile::{Controller, ControllerConfig};
use sluice_controller::runtime::mesh::LocalMesh;
use sluice_controller::runtime::{LocalRuntime, LocalRuntimeConfig};
use sluice_controller::store::SqliteStore;
use sluice_core::RoutingSnapshot;
use sluice_crds::autoscaling::ClusterConfig;
use sluice_mesh::guard::{self, AdminToken, ListenerGuard};
use sluice_mesh::identity::RotationConfig;
use sluice_mesh::local::LocalIdentities;
use sluice_mesh::otlp::{self, SpanExporter};
use sluice_router::ingress::Ingress;
use sluice_router::{DataPlane, DataPlaneConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::flags::{
    ActivatorFlags, ControlFlags, IngressFlags, MeshFlags, MeshMode, TelemetryFlags,
};
use crate::shutdown;

/// Flags of `sluice up`.
#[derive(Args, Debug)]
pub(crate) struct UpArgs {
    /// Folder of manifests (*.yaml, *.yml) to apply at start.
    dir: Option<PathBuf>,
    /// Router (ingress) address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin API address (for `sluice apply/get/delete`).
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:8081")]
    admin: SocketAddr,
    /// Where the state database lives.
    #[arg(long, env = "SLUICE_STATE_DIR", default_value = "./.sluice")]
    state_dir: PathBuf,
    /// Domain of service hosts: {name}.{namespace}.{domain}.
    #[arg(long, env = "SLUICE_DOMAIN", default_value = "localhost")]
    domain: String,
    #[command(flatten)]
    control: ControlFlags,
    #[command(flatten)]
    activator: ActivatorFlags,
    #[command(flatten)]
    ingress: IngressFlags,
    /// Accept `autoscaling.knative.dev/initial-scale: "0"` (Knative's
    /// `allow-zero-initial-scale`): such a revision is Ready at zero and starts a replica on
    /// its first request. Off, as upstream, such manifests are refused.
    #[arg(long, env = "SLUICE_ALLOW_ZERO_INITIAL_SCALE")]
    allow_zero_initial_scale: bool,
    #[command(flatten)]
    mesh: MeshFlags,
    /// Ingress TLS certificate chain (PEM) served to every host (with --tls-key).
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Folder of per-host ingress certificates: `<host>.crt` and `<host>.key`, chosen by SNI.
    #[arg(long, env = "SLUICE_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    #[command(flatten)]
    telemetry: TelemetryFlags,
}

impl UpArgs {
    /// The cluster settings apply-time validation uses.
    fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            allow_zero_initial_scale: self.allow_zero_initial_scale,
        }
    }
}

/// Runs until SIGINT/SIGTERM, then stops every replica.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    // First, so the state directory is made private (0700) before anything is written there.
    let token = AdminToken::load_or_create(&args.state_dir)
        .context("the admin API's token (--state-dir)")?;
    let token_path = args.state_dir.join(guard::TOKEN_FILE);
    let store = SqliteStore::open(&args.state_dir)
        .with_context(|| format!("opening the store in {}", args.state_dir.display()))?;
    tracing::info!(db = %store.path().display(), "store open");
    let cluster = args.cluster_config();
    let policies = PolicyStore::open(&args.state_dir)?;
    if let Some(dir) = &args.dir {
        apply_at_start(dir, &store, &policies, &cluster).await?;
    }
    let up_mesh = identities(&args, &policies)?;
    let ingress_tls = sluice_mesh::tls::ingress_tls_from_files(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_dir.as_deref(),
    )?;

    // Span export: the router's here, the replicas' from the endpoint in their environment.
    let spans = args.telemetry.spans()?;

    let router_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the router to {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding the admin API to {}", args.admin))?;
    let router_addr = router_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let (stats_tx, stats_rx) = mpsc::channel(1024);
    let (decisions_tx, decisions_rx) = mpsc::channel(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let (autoscaler, _autoscaler_task) =
        sluice_autoscaler::spawn(args.control.autoscaler()?, stats_rx, decisions_tx);
    // The router and the activator (in front of revisions at zero or under a burst), each
    // hop with a registry of its own, merged into the admin `/metrics` with the replicas'.
    let data_plane = DataPlane::start(DataPlaneConfig {
        activator: args.activator.config(),
        snapshot: snapshot_rx.clone(),
        stats: stats_tx.clone(),
        router_mesh: up_mesh.as_ref().map(|m| m.router_out.clone()),
        activator_mesh: up_mesh.as_ref().map(|m| m.activator.clone()),
        spans: spans.as_ref().map(|(exporter, _)| exporter.clone()),
        service: "sluice-up",
        router: args.ingress.router(),
    });
    let scrape_tls = up_mesh.as_ref().map(|m| m.control.connector().clone());
    tokio::spawn(
        Scraper::with_mesh(Duration::from_millis(500), scrape_tls).run(
            Duration::from_secs(1),
            snapshot_rx.clone(),
            stats_tx,
        ),
    );

    let runtime = local_runtime(&args, up_mesh.as_ref(), &policies, spans.as_ref())?;
    let mut controller = Controller::new(
        ControllerConfig {
            domain: args.domain.clone(),
            url_port: Some(router_addr.port()),
            resync: Duration::from_secs(1),
            revision_history: args.control.revision_history,
        },
        store.clone(),
        runtime,
        autoscaler,
        snapshot_tx,
    );
    // Publish routes for what the store holds before the router takes its first request.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    controller.notify_first_pass(first_tx);
    let controller_task = tokio::spawn(controller.run(decisions_rx, stopped()));
    if first_rx.await.is_err() {
        tracing::warn!("the controller stopped before its first pass");
    }

    let ingress = Ingress {
        tls: ingress_tls,
        mesh: match &up_mesh {
            Some(m) => Some(m.router.server_config()?),
            None => None,
        },
        ..data_plane.ingress()
    };
    let router_task = tokio::spawn(sluice_router::serve_ingress(
        router_listener,
        data_plane.router.clone(),
        args.ingress.serve()?,
        ingress,
        stopped(),
    ));
    let admin_guard = ListenerGuard::new("the admin API", admin_addr, Some(token.clone()))
        .with_token_hint(format!(
            "the sluice CLI reads it from {} by itself; else pass --token or SLUICE_TOKEN",
            token_path.display()
        ));
    let admin_app = admin_app(
        store,
        cluster,
        policies,
        &data_plane,
        snapshot_rx,
        up_mesh.as_ref(),
        admin_guard,
    );
    let admin_task = tokio::spawn(
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(stopped())
            .into_future(),
    );
    announce(router_addr, admin_addr, &token, &token_path);
    tracing::info!(%router_addr, %admin_addr, domain = %args.domain, mesh = %args.mesh.mode, "sluice is up");

    shutdown::signalled().await;
    tracing::info!("shutting down: stopping replicas");
    let _ = stop_tx.send(true);
    let _ = controller_task.await;
    let _ = router_task.await;
    let _ = admin_task.await;
    if let Some((exporter, endpoint)) = spans
        && tokio::time::timeout(Duration::from_secs(2), exporter.flush())
            .await
            .is_err()
    {
        tracing::warn!(%endpoint, "spans not exported before exit: the collector did not answer in 2 s");
    }
    Ok(())
}

/// The mesh CA and this process's identities (mesh on); with the mesh off, a warning that
/// stored policies are not enforced.
fn identities(args: &UpArgs, policies: &PolicyStore) -> anyhow::Result<Option<LocalIdentities>> {
    match args.mesh.mode {
        MeshMode::On => Ok(Some(LocalIdentities::start(
            &args.state_dir,
            &args.mesh.trust_domain(),
            args.mesh.cert_ttl,
        )?)),
        MeshMode::Off => {
            if !policies.is_empty() {
                eprintln!(
                    "Warning: --mesh=off: {} stored security policies are not enforced",
                    policies.len()
                );
            }
            Ok(None)
        }
    }
}

/// Prints where the router and the admin API listen, and where the admin token is.
fn announce(
    router_addr: SocketAddr,
    admin_addr: SocketAddr,
    token: &AdminToken,
    token_path: &Path,
) {
    // Tools and tests read these two lines to find the ports.
    println!("sluice: router listening on http://{router_addr}");
    println!("sluice: admin API on http://{admin_addr}");
    println!(
        "sluice: admin token in {} (a browser logs in at http://{admin_addr}{}?token={})",
        token_path.display(),
        guard::LOGIN_PATH,
        token.secret()
    );
}

/// The admin API: the controller's routes, the merged `/metrics` (every hop of this
/// process and every ready replica), and the security policies, behind `guard` (the bearer
/// token and the browser checks).
fn admin_app(
    store: SqliteStore,
    cluster: ClusterConfig,
    policies: Arc<PolicyStore>,
    data_plane: &DataPlane,
    snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    up_mesh: Option<&LocalIdentities>,
    guard: ListenerGuard,
) -> axum::Router {
    let (registries, client) = (data_plane.registries(), up_mesh.map(|m| m.control.clone()));
    let app = admin::router(store.clone(), cluster)
        .route(
            "/metrics",
            axum::routing::get(move || {
                sluice_controller::metrics::with_replicas(
                    registries.clone(),
                    snapshot.clone(),
                    client.clone(),
                )
            }),
        )
        .layer(axum::middleware::from_fn(move |req, next| {
            apply_policies(policies.clone(), store.clone(), req, next)
        }));
    admin::guarded(app, guard)
}

/// Applies the manifests of `sluice up <dir>`: security policies to `policies`, the rest
/// to `store`, all validated before anything is stored.
async fn apply_at_start(
    dir: &Path,
    store: &SqliteStore,
    policies: &PolicyStore,
    cluster: &ClusterConfig,
) -> anyhow::Result<()> {
    let files = crate::manifests::manifest_files(dir)?;
    let (files, policy_text) = split_policies(&files);
    let mut applied = Vec::new();
    if !policy_text.is_empty() {
        match policies.apply(&policy_text) {
            Ok(a) => applied = a,
            Err(errors) => bail!("nothing applied:\n{}", errors.join("\n")),
        }
    }
    if !files.is_empty() {
        match admin::apply_files_with(store, &files, cluster).await {
            Ok(results) => crate::client::print_apply_results(&results),
            Err(e) => bail!("nothing applied:\n{}", sluice_core::error_chain(&e)),
        }
    }
    warn_unselected(&mut applied, &known_workloads(store).await);
    crate::client::print_policy_results(&applied);
    Ok(())
}

/// Replicas as child processes of this one (`sluice replica-guard`), with their identities
/// and policies handed over in private directories when the mesh is on.
fn local_runtime(
    args: &UpArgs,
    up_mesh: Option<&LocalIdentities>,
    policies: &PolicyStore,
    spans: Option<&(SpanExporter, String)>,
) -> anyhow::Result<LocalRuntime> {
    let self_exe = std::env::current_exe().context("finding the sluice binary")?;
    let mut config = LocalRuntimeConfig::new(self_exe);
    if let Some(m) = up_mesh {
        let dir = LocalIdentities::replicas_dir(&args.state_dir);
        // Directories of replicas of an earlier run are stale (their keys too).
        let _ = std::fs::remove_dir_all(&dir);
        config.mesh = Some(LocalMesh::new(
            m.ca.clone(),
            dir,
            RotationConfig::new(args.mesh.cert_ttl),
            m.attesters.clone(),
            policies.subscribe(),
            m.control.clone(),
        ));
    }
    if let Some((_, endpoint)) = spans {
        config
            .env
            .push((otlp::ENDPOINT_ENV.to_owned(), endpoint.clone()));
    }
    Ok(LocalRuntime::new(config))
}
