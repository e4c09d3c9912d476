//! `sluice up`: the whole of Sluice in one process, on an embedded SQLite store, with
//! replicas as child processes. The flags become a `sluice_server::local::LocalConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use sluice_crds::autoscaling::ClusterConfig;
use sluice_mesh::guard::LOGIN_PATH;
use sluice_server::local::{self, IngressTlsFiles, LocalConfig, MeshSettings};

use crate::client::{print_apply_results, print_policy_results};
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
    let config = LocalConfig {
        cluster: args.cluster_config(),
        apply_dir: args.dir,
        listen: args.listen,
        admin: args.admin,
        state_dir: args.state_dir,
        domain: args.domain,
        revision_history: args.control.revision_history,
        autoscaler: args.control.autoscaler()?,
        activator: args.activator.config(),
        router: args.ingress.router(),
        serve: args.ingress.serve()?,
        mesh: match args.mesh.mode {
            MeshMode::On => Some(MeshSettings {
                trust_domain: args.mesh.trust_domain(),
                cert_ttl: args.mesh.cert_ttl,
            }),
            MeshMode::Off => None,
        },
        ingress_tls: IngressTlsFiles {
            cert: args.tls_cert,
            key: args.tls_key,
            dir: args.tls_dir,
        },
        // Span export: the router's here, the replicas' from the endpoint in their
        // environment.
        spans: args.telemetry.spans()?,
        access_log: args.telemetry.access_log,
        replica_exe: std::env::current_exe().context("finding the sluice binary")?,
    };
    let up = local::start(config).await?;
    print_apply_results(&up.applied.resources);
    print_policy_results(&up.applied.policies);
    for warning in &up.warnings {
        eprintln!("Warning: {warning}");
    }
    // Tools and tests read the first two lines to find the ports.
    println!("sluice: router listening on http://{}", up.router_addr);
    println!("sluice: admin API on http://{}", up.admin_addr);
    println!(
        "sluice: dashboard at http://{}{}?token={}&next=/ui (the link signs a browser in with \
         the admin token in {}; `sluice ui` prints it again)",
        up.admin_addr,
        LOGIN_PATH,
        up.token.secret(),
        up.token_path.display(),
    );
    shutdown::signalled().await;
    up.stop().await;
    Ok(())
}
