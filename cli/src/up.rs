//! `sluice up`: the whole of Sluice in one process, on an embedded SQLite store, with
//! replicas as child processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_activator::Activator;
use sluice_autoscaler::{AutoscalerConfig, Scraper};
use sluice_controller::admin::{self, ManifestFile};
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
use sluice_mesh::otlp::{self, OtlpConfig, SpanExporter};
use sluice_mesh::telemetry::{AccessLog, HopTelemetry, Registry};
use sluice_proxy::Forwarder;
use sluice_router::ingress::Ingress;
use sluice_router::{Router, ServeConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::flags::{ActivatorFlags, MeshFlags, MeshMode, TelemetryFlags};
use crate::{absolute, shutdown};

pub(crate) mod mesh;

/// Flags of `sluice up`.
#[derive(Args, Debug)]
pub struct UpArgs {
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
    /// How long the activator is in path before a revision's last replica stops.
    #[arg(long, env = "SLUICE_SCALE_TO_ZERO_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    scale_to_zero_grace: Duration,
    /// Autoscaler decision interval.
    #[arg(long, env = "SLUICE_AUTOSCALER_TICK", default_value = "2s", value_parser = humantime::parse_duration)]
    autoscaler_tick: Duration,
    /// Old revisions kept per configuration beyond those routed, latest created and latest
    /// ready; older ones are deleted.
    #[arg(long, env = "SLUICE_REVISION_HISTORY", default_value_t = 20)]
    revision_history: usize,
    #[command(flatten)]
    activator: ActivatorFlags,
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

/// Reads every `*.yaml`/`*.yml` file of `path` (a file or a folder, not recursive).
pub fn manifest_files(path: &Path) -> anyhow::Result<Vec<ManifestFile>> {
    let mut paths = Vec::new();
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let p = entry?.path();
            let is_yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
            // kustomize's own file is not an API object (kubectl applies it with -k).
            let is_kustomization = p
                .file_stem()
                .is_some_and(|s| s.eq_ignore_ascii_case("kustomization"));
            if is_kustomization {
                eprintln!(
                    "Warning: skipping {}: a kustomize file, not an API object",
                    p.display()
                );
                continue;
            }
            if is_yaml && p.is_file() {
                paths.push(p);
            }
        }
        paths.sort();
        if paths.is_empty() {
            bail!("{} holds no *.yaml or *.yml files", path.display());
        }
    } else {
        paths.push(path.to_owned());
    }
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let dir = p.parent().unwrap_or(Path::new("."));
            Ok(ManifestFile {
                source: p.display().to_string(),
                base_dir: absolute(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })?,
                text,
            })
        })
        .collect()
}

/// Runs until SIGINT/SIGTERM, then stops every replica.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
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
        let files = manifest_files(dir)?;
        let (files, policy_text) = split_policies(&files);
        let mut applied = Vec::new();
        if !policy_text.is_empty() {
            match policies.apply(&policy_text) {
                Ok(a) => applied = a,
                Err(errors) => bail!("nothing applied:\n{}", errors.join("\n")),
            }
        }
        if !files.is_empty() {
            match admin::apply_files_with(&store, &files, &cluster).await {
                Ok(results) => crate::client::print_apply_results(&results),
                Err(e) => bail!("nothing applied:\n{}", sluice_core::error_chain(&e)),
            }
        }
        warn_unselected(&mut applied, &known_workloads(&store).await);
        mesh::print_policy_results(&applied);
    }
    let up_mesh = match args.mesh.mode {
        MeshMode::On => Some(LocalIdentities::start(
            &args.state_dir,
            &args.mesh.trust_domain(),
            args.mesh.cert_ttl,
        )?),
        MeshMode::Off => {
            if !policies.is_empty() {
                eprintln!(
                    "Warning: --mesh=off: {} stored security policies are not enforced",
                    policies.len()
                );
            }
            None
        }
    };
    let ingress_tls = sluice_mesh::tls::ingress_tls_from_files(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_dir.as_deref(),
    )?;

    // Span export: the router's here, the replicas' from the endpoint in their environment.
    let spans = router_spans(args.telemetry.otlp_endpoint.clone())?;

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

    let (autoscaler, _autoscaler_task) = sluice_autoscaler::spawn(
        AutoscalerConfig {
            tick: args.autoscaler_tick,
            scale_to_zero_grace: args.scale_to_zero_grace,
        },
        stats_rx,
        decisions_tx,
    );
    let activator = Activator::new(
        args.activator.config(),
        snapshot_rx.clone(),
        stats_tx.clone(),
        match &up_mesh {
            Some(m) => Forwarder::new().with_mesh(m.activator.clone()),
            None => Forwarder::new(),
        },
    );
    // The activator's hop (in front of revisions at zero or under a burst) in a registry of
    // its own, merged into the admin `/metrics` with the router's and the replicas'.
    let activator_registry = Registry::new();
    let activator = Arc::new(activator.with_telemetry({
        let t = HopTelemetry::new(activator_registry.clone(), "activator", AccessLog::Tracing);
        match &spans {
            Some((exporter, _)) => t.with_spans(exporter.clone()),
            None => t,
        }
    }));
    tokio::spawn(activator.clone().run_stats());
    let scrape_tls = up_mesh.as_ref().map(|m| m.control.connector().clone());
    tokio::spawn(
        Scraper::with_mesh(Duration::from_millis(500), scrape_tls).run(
            Duration::from_secs(1),
            snapshot_rx.clone(),
            stats_tx,
        ),
    );

    let self_exe = std::env::current_exe().context("finding the sluice binary")?;
    let mut runtime_config = LocalRuntimeConfig::new(self_exe);
    if let Some(m) = &up_mesh {
        let dir = LocalIdentities::replicas_dir(&args.state_dir);
        // Directories of replicas of an earlier run are stale (their keys too).
        let _ = std::fs::remove_dir_all(&dir);
        runtime_config.mesh = Some(LocalMesh::new(
            m.ca.clone(),
            dir,
            RotationConfig::new(args.mesh.cert_ttl),
            m.attesters.clone(),
            policies.subscribe(),
            m.control.clone(),
        ));
    }
    if let Some((_, endpoint)) = &spans {
        runtime_config
            .env
            .push((otlp::ENDPOINT_ENV.to_owned(), endpoint.clone()));
    }
    let runtime = LocalRuntime::new(runtime_config);
    let controller = Controller::new(
        ControllerConfig {
            domain: args.domain.clone(),
            url_port: Some(router_addr.port()),
            resync: Duration::from_secs(1),
            revision_history: args.revision_history,
        },
        store.clone(),
        runtime,
        autoscaler,
        snapshot_tx,
    );
    // Publish routes for what the store holds before the router takes its first request.
    let mut controller = controller;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    controller.notify_first_pass(first_tx);
    let controller_task = tokio::spawn(controller.run(decisions_rx, stopped()));
    if first_rx.await.is_err() {
        tracing::warn!("the controller stopped before its first pass");
    }

    let registry = Registry::new();
    let router_forwarder = match &up_mesh {
        Some(m) => Forwarder::new().with_mesh(m.router_out.clone()),
        None => Forwarder::new(),
    };
    let router = Arc::new(Router::new(
        snapshot_rx.clone(),
        activator,
        router_forwarder,
    ));
    let ingress = Ingress {
        tls: ingress_tls,
        mesh: match &up_mesh {
            Some(m) => Some(m.router.server_config()?),
            None => None,
        },
        telemetry: Some({
            let t = HopTelemetry::new(registry.clone(), "router", AccessLog::Tracing);
            match &spans {
                Some((exporter, _)) => {
                    exporter.register_metrics(&registry, "sluice-up");
                    t.with_spans(exporter.clone())
                }
                None => t,
            }
        }),
        ..Ingress::default()
    };
    let router_task = tokio::spawn(sluice_router::serve_ingress(
        router_listener,
        router,
        ServeConfig::default(),
        ingress,
        stopped(),
    ));
    let metrics_client = up_mesh.as_ref().map(|m| m.control.clone());
    let policy_store = store.clone();
    let admin_app = admin::router(store, cluster)
        .route(
            "/metrics",
            axum::routing::get(move || {
                mesh::all_metrics(
                    vec![registry.clone(), activator_registry.clone()],
                    snapshot_rx.clone(),
                    metrics_client.clone(),
                )
            }),
        )
        .layer(axum::middleware::from_fn(move |req, next| {
            apply_policies(policies.clone(), policy_store.clone(), req, next)
        }));
    let admin_guard = ListenerGuard::new("the admin API", admin_addr, Some(token.clone()))
        .with_token_hint(format!(
            "the sluice CLI reads it from {} by itself; else pass --token or SLUICE_TOKEN",
            token_path.display()
        ));
    let admin_app = admin::guarded(admin_app, admin_guard);
    let admin_task = tokio::spawn(
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(stopped())
            .into_future(),
    );
    // Tools and tests read these two lines to find the ports.
    println!("sluice: router listening on http://{router_addr}");
    println!("sluice: admin API on http://{admin_addr}");
    println!(
        "sluice: admin token in {} (a browser logs in at http://{admin_addr}{}?token={})",
        token_path.display(),
        guard::LOGIN_PATH,
        token.secret()
    );
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

/// The router's span exporter (and its endpoint, for the shutdown message) when
/// `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector; `OTEL_BSP_*` tune it.
pub(crate) fn router_spans(
    endpoint: Option<String>,
) -> anyhow::Result<Option<(SpanExporter, String)>> {
    let config = OtlpConfig::from_lookup("sluice-router", |k| {
        if k == otlp::ENDPOINT_ENV {
            endpoint.clone()
        } else {
            std::env::var(k).ok()
        }
    })
    .context("span export settings (--otlp-endpoint, OTEL_*)")?;
    let Some(config) = config else {
        return Ok(None);
    };
    let endpoint = config.endpoint.clone();
    let (exporter, _task) =
        SpanExporter::spawn(config).context("span export settings (--otlp-endpoint, OTEL_*)")?;
    Ok(Some((exporter, endpoint)))
}
