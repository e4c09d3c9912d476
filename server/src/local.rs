//! Local mode (`sluice up`): the whole of Sluice in one process, on an embedded SQLite
//! store, with replicas as child processes. [`start`] binds, applies the manifests of the
//! start folder and serves; [`Local::stop`] stops every replica and flushes the spans.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_activator::ActivatorConfig;
use sluice_autoscaler::{AutoscalerConfig, Scraper};
use sluice_controller::admin::{self, ApplyResult};
use sluice_controller::policies::{
    PolicyApplied, PolicyStore, apply_policies, known_workloads, split_policies, warn_unselected,
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
use sluice_mesh::otlp;
use sluice_mesh::telemetry::ACCESS_LOG_ENV;
use sluice_router::ingress::Ingress;
use sluice_router::{DataPlane, DataPlaneConfig, RouterConfig, ServeConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Spans, Stop};

/// Everything `sluice up` is told.
pub struct LocalConfig {
    /// A folder of manifests (*.yaml, *.yml) applied before anything serves.
    pub apply_dir: Option<PathBuf>,
    /// The router's (ingress) address.
    pub listen: SocketAddr,
    /// The admin API's address.
    pub admin: SocketAddr,
    /// Where the store, the admin token, the mesh CA and the policies live.
    pub state_dir: PathBuf,
    /// Domain of service hosts: `{name}.{namespace}.{domain}`.
    pub domain: String,
    /// Apply-time settings (`allow-zero-initial-scale`).
    pub cluster: ClusterConfig,
    /// Old revisions kept per configuration beyond those routed.
    pub revision_history: usize,
    /// How the autoscaler decides.
    pub autoscaler: AutoscalerConfig,
    /// The activator's settings.
    pub activator: ActivatorConfig,
    /// The router's settings.
    pub router: RouterConfig,
    /// How the ingress serves connections.
    pub serve: ServeConfig,
    /// Mutual TLS on every hop (`Some`, the default) or plaintext (`None`).
    pub mesh: Option<MeshSettings>,
    /// Ingress TLS with the user's certificates, when configured.
    pub ingress_tls: IngressTlsFiles,
    /// Span export of the router's hops; replicas get the endpoint in their environment.
    pub spans: Option<Spans>,
    /// One access-log line per request and hop (replicas' too, in local mode).
    pub access_log: bool,
    /// The `sluice` binary replicas run as (`sluice replica-guard`).
    pub replica_exe: PathBuf,
}

/// The mesh's settings in local mode.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// How long each SVID lives.
    pub cert_ttl: Duration,
}

/// Where the ingress's own certificates are (none set: the ingress serves plaintext only).
#[derive(Clone, Debug, Default)]
pub struct IngressTlsFiles {
    /// A certificate chain (PEM) served to every host, with `key`.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// A folder of per-host certificates, `<host>.crt` and `<host>.key`, chosen by SNI.
    pub dir: Option<PathBuf>,
}

/// What the start folder's manifests did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Serving resources, in file order.
    pub resources: Vec<ApplyResult>,
    /// Security policies, with their warnings (a selector no workload matches).
    pub policies: Vec<PolicyApplied>,
}

/// `sluice up`, serving.
pub struct Local {
    /// Where the router listens.
    pub router_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The admin API's bearer token.
    pub token: AdminToken,
    /// The file the token is in (the CLI reads it from there).
    pub token_path: PathBuf,
    /// What the start folder's manifests did.
    pub applied: Applied,
    /// Things the user should know (stored policies not enforced with the mesh off).
    pub warnings: Vec<String>,
    stop: Stop,
    tasks: Vec<JoinHandle<()>>,
    spans: Option<Spans>,
}

/// Opens the store, applies the start folder, starts the controller, the autoscaler and
/// the data plane, and serves the router and the admin API. Routes for what the store
/// holds are published before the router takes its first request.
pub async fn start(config: LocalConfig) -> anyhow::Result<Local> {
    // First, so the state directory is made private (0700) before anything is written there.
    let token = AdminToken::load_or_create(&config.state_dir)
        .context("the admin API's token (--state-dir)")?;
    let token_path = config.state_dir.join(guard::TOKEN_FILE);
    let store = SqliteStore::open(&config.state_dir)
        .with_context(|| format!("opening the store in {}", config.state_dir.display()))?;
    tracing::info!(db = %store.path().display(), "store open");
    let policies = PolicyStore::open(&config.state_dir)?;
    let applied = match &config.apply_dir {
        Some(dir) => apply_at_start(dir, &store, &policies, &config.cluster).await?,
        None => Applied::default(),
    };
    let mut warnings = Vec::new();
    let up_mesh = identities(&config, &policies, &mut warnings)?;
    let files = &config.ingress_tls;
    let ingress_tls = sluice_mesh::tls::ingress_tls_from_files(
        files.cert.as_deref(),
        files.key.as_deref(),
        files.dir.as_deref(),
    )?;

    let router_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the router to {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("binding the admin API to {}", config.admin))?;
    let router_addr = router_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let (stats_tx, stats_rx) = mpsc::channel(1024);
    let (decisions_tx, decisions_rx) = mpsc::channel(256);
    let stop = Stop::new();

    let (autoscaler, _autoscaler_task) =
        sluice_autoscaler::spawn(config.autoscaler.clone(), stats_rx, decisions_tx);
    // The router and the activator (in front of revisions at zero or under a burst), each
    // hop with a registry of its own, merged into the admin `/metrics` with the replicas'.
    let data_plane = DataPlane::start(DataPlaneConfig {
        activator: config.activator.clone(),
        snapshot: snapshot_rx.clone(),
        stats: stats_tx.clone(),
        router_mesh: up_mesh.as_ref().map(|m| m.router_out.clone()),
        activator_mesh: up_mesh.as_ref().map(|m| m.activator.clone()),
        spans: config.spans.as_ref().map(|s| s.exporter.clone()),
        access_log: config.access_log,
        service: "sluice-up",
        router: config.router.clone(),
    });
    let scrape_tls = up_mesh.as_ref().map(|m| m.control.connector().clone());
    tokio::spawn(
        Scraper::with_mesh(Duration::from_millis(500), scrape_tls).run(
            Duration::from_secs(1),
            snapshot_rx.clone(),
            stats_tx,
        ),
    );

    let runtime = local_runtime(&config, up_mesh.as_ref(), &policies);
    let mut controller = Controller::new(
        ControllerConfig {
            domain: config.domain.clone(),
            url_port: Some(router_addr.port()),
            resync: Duration::from_secs(1),
            revision_history: config.revision_history,
        },
        store.clone(),
        runtime,
        autoscaler,
        snapshot_tx,
    );
    // Publish routes for what the store holds before the router takes its first request.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    controller.set_signals(Arc::new(
        sluice_controller::rollout_signals::RegistrySignals::new(
            data_plane.router_registry.clone(),
        ),
    ));
    let decisions = controller.decisions();
    controller.notify_first_pass(first_tx);
    let controller_task = tokio::spawn(controller.run(decisions_rx, stop.stopped()));
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
        config.serve.clone(),
        ingress,
        stop.stopped(),
    ));
    let admin_guard = ListenerGuard::new("the admin API", admin_addr, Some(token.clone()))
        .with_token_hint(format!(
            "the sluice CLI reads it from {} by itself; else pass --token or SLUICE_TOKEN",
            token_path.display()
        ));
    let admin = AdminApi {
        store,
        cluster: config.cluster,
        policies,
    };
    let app = admin.app(
        &data_plane,
        snapshot_rx,
        up_mesh.as_ref(),
        (admin_guard, decisions),
    );
    let admin_task = tokio::spawn(
        axum::serve(admin_listener, app)
            .with_graceful_shutdown(stop.stopped())
            .into_future(),
    );
    tracing::info!(%router_addr, %admin_addr, domain = %config.domain, mesh = config.mesh.is_some(), "sluice is up");
    Ok(Local {
        router_addr,
        admin_addr,
        token,
        token_path,
        applied,
        warnings,
        stop,
        tasks: vec![
            controller_task,
            router_task,
            tokio::spawn(async move {
                let _ = admin_task.await;
            }),
        ],
        spans: config.spans,
    })
}

impl Local {
    /// Stops serving, stops every replica (the controller's last act) and flushes the spans.
    pub async fn stop(self) {
        tracing::info!("shutting down: stopping replicas");
        self.stop.stop();
        for task in self.tasks {
            let _ = task.await;
        }
        crate::flush(self.spans).await;
    }
}

/// The mesh CA and this process's identities (mesh on); with the mesh off, a warning that
/// stored policies are not enforced.
fn identities(
    config: &LocalConfig,
    policies: &PolicyStore,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Option<LocalIdentities>> {
    match &config.mesh {
        Some(mesh) => Ok(Some(LocalIdentities::start(
            &config.state_dir,
            &mesh.trust_domain,
            mesh.cert_ttl,
        )?)),
        None => {
            if !policies.is_empty() {
                warnings.push(format!(
                    "--mesh=off: {} stored security policies are not enforced",
                    policies.len()
                ));
            }
            Ok(None)
        }
    }
}

/// What the admin API serves from.
struct AdminApi {
    store: SqliteStore,
    cluster: ClusterConfig,
    policies: Arc<PolicyStore>,
}

impl AdminApi {
    /// The admin API: the controller's routes, the merged `/metrics` (every hop of this
    /// process and every ready replica), and the security policies, behind `guard` (the
    /// bearer token and the browser checks).
    fn app(
        self,
        data_plane: &DataPlane,
        snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
        up_mesh: Option<&LocalIdentities>,
        (guard, decisions): (ListenerGuard, sluice_controller::dashboard::DecisionBoard),
    ) -> axum::Router {
        let (registries, client) = (data_plane.registries(), up_mesh.map(|m| m.control.clone()));
        let Self {
            store,
            cluster,
            policies,
        } = self;
        let dashboard = sluice_controller::dashboard::app(sluice_controller::dashboard::Sources {
            store: store.clone(),
            snapshot: snapshot.clone(),
            router: data_plane.router_registry.clone(),
            decisions,
        });
        let app = admin::router(store.clone(), cluster)
            .merge(dashboard)
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
}

/// Applies the manifests of `sluice up <dir>`: security policies to `policies`, the rest
/// to `store`, all validated before anything is stored.
async fn apply_at_start(
    dir: &Path,
    store: &SqliteStore,
    policies: &PolicyStore,
    cluster: &ClusterConfig,
) -> anyhow::Result<Applied> {
    let files = crate::manifests::manifest_files(dir)?;
    let (files, policy_text) = split_policies(&files);
    let mut applied = Applied::default();
    if !policy_text.is_empty() {
        match policies.apply(&policy_text) {
            Ok(a) => applied.policies = a,
            Err(errors) => bail!("nothing applied:\n{}", errors.join("\n")),
        }
    }
    if !files.is_empty() {
        match admin::apply_files_with(store, &files, cluster).await {
            Ok(results) => applied.resources = results,
            Err(e) => bail!("nothing applied:\n{}", sluice_core::error_chain(&e)),
        }
    }
    warn_unselected(&mut applied.policies, &known_workloads(store).await);
    Ok(applied)
}

/// Replicas as child processes of this one (`sluice replica-guard`), with their identities
/// and policies handed over in private directories when the mesh is on.
fn local_runtime(
    config: &LocalConfig,
    up_mesh: Option<&LocalIdentities>,
    policies: &PolicyStore,
) -> LocalRuntime {
    let mut runtime = LocalRuntimeConfig::new(config.replica_exe.clone());
    if let (Some(m), Some(settings)) = (up_mesh, &config.mesh) {
        let dir = LocalIdentities::replicas_dir(&config.state_dir);
        // Directories of replicas of an earlier run are stale (their keys too).
        let _ = std::fs::remove_dir_all(&dir);
        runtime.mesh = Some(LocalMesh::new(
            m.ca.clone(),
            dir,
            RotationConfig::new(settings.cert_ttl),
            m.attesters.clone(),
            policies.subscribe(),
            m.control.clone(),
        ));
    }
    if let Some(spans) = &config.spans {
        runtime
            .env
            .push((otlp::ENDPOINT_ENV.to_owned(), spans.endpoint.clone()));
    }
    if config.access_log {
        runtime
            .env
            .push((ACCESS_LOG_ENV.to_owned(), "1".to_owned()));
    }
    LocalRuntime::new(runtime)
}
