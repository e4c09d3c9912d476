//! Flag groups more than one command takes, declared once (`#[command(flatten)]`) and
//! turned into the owning crate's settings here, so a flag means the same, has the same
//! environment variable and the same default wherever it appears.

use std::time::Duration;

use anyhow::{Context, ensure};
use clap::{Args, ValueEnum};
use sluice_activator::ActivatorConfig;
use sluice_autoscaler::AutoscalerConfig;
use sluice_mesh::identity::DEFAULT_TRUST_DOMAIN;
use sluice_mesh::issuance::DEPRECATED_TRUST_DOMAIN_ENV;
use sluice_mesh::otlp::{self, OtlpConfig, SpanExporter};
use sluice_router::{RouterConfig, ServeConfig};
use sluice_server::Spans;

/// Whether the mesh is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum MeshMode {
    /// Mutual TLS on every hop, SPIFFE identities, policies enforced.
    On,
    /// Plaintext, no identities, no policies.
    Off,
}

impl std::fmt::Display for MeshMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshMode::On => "on",
            MeshMode::Off => "off",
        })
    }
}

/// The mesh flags of `sluice up`, `sluice controller --kube` and `sluice router --kube`.
#[derive(Args, Clone, Debug)]
pub(crate) struct MeshFlags {
    /// Mutual TLS between the router, the activator and replicas, with SPIFFE workload
    /// identities from Sluice's CA (kept in the state directory by `sluice up`, served by
    /// the controller on Kubernetes); `off`: plaintext, no identities, no policies.
    #[arg(long = "mesh", env = "SLUICE_MESH", value_enum, default_value_t = MeshMode::On)]
    pub(crate) mode: MeshMode,
    /// Trust domain of the mesh's SPIFFE IDs [default: cluster.local]
    /// (`SLUICE_MESH_TRUST_DOMAIN`, its former name, is still read, with a warning).
    #[arg(long, env = "SLUICE_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Life of workload certificates (the CA caps what a workload asks for); each is renewed
    /// at 40–50 % of it.
    #[arg(long, env = "SLUICE_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) cert_ttl: Duration,
}

impl MeshFlags {
    /// The trust domain: the flag or `SLUICE_TRUST_DOMAIN`, else the former variable's
    /// value (with a warning), else the default.
    pub(crate) fn trust_domain(&self) -> String {
        resolve_trust_domain(
            self.trust_domain.as_deref(),
            std::env::var(DEPRECATED_TRUST_DOMAIN_ENV).ok().as_deref(),
        )
    }
}

fn resolve_trust_domain(given: Option<&str>, deprecated: Option<&str>) -> String {
    if let Some(domain) = given {
        return domain.to_owned();
    }
    match deprecated.map(str::trim).filter(|d| !d.is_empty()) {
        Some(domain) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "{DEPRECATED_TRUST_DOMAIN_ENV} is deprecated: set SLUICE_TRUST_DOMAIN (or --trust-domain) instead"
                );
            });
            domain.to_owned()
        }
        None => DEFAULT_TRUST_DOMAIN.to_owned(),
    }
}

/// Span export, for every command that serves requests.
#[derive(Args, Clone, Debug)]
pub(crate) struct TelemetryFlags {
    /// OTLP/HTTP collector (`http://host:port`) every hop exports one span per request to
    /// (batched; `OTEL_BSP_*` tune it). Unset: no span export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<String>,
    /// One JSON access-log line per request and hop on stderr (replicas' too). Off by
    /// default, as Istio's and Knative's are: at full load a line per hop costs a fifth of
    /// the throughput (bench/RESULTS.md).
    #[arg(long, env = "SLUICE_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) access_log: bool,
}

impl TelemetryFlags {
    /// The span exporter of this process's hops (and its endpoint, for the shutdown
    /// message) when `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector;
    /// `OTEL_BSP_*` tune it. Replicas get the endpoint in their environment.
    pub(crate) fn spans(&self) -> anyhow::Result<Option<Spans>> {
        let config = OtlpConfig::from_lookup("sluice-router", |k| {
            if k == otlp::ENDPOINT_ENV {
                self.otlp_endpoint.clone()
            } else {
                std::env::var(k).ok()
            }
        })
        .context("span export settings (--otlp-endpoint, OTEL_*)")?;
        let Some(config) = config else {
            return Ok(None);
        };
        let endpoint = config.endpoint.clone();
        let (exporter, _task) = SpanExporter::spawn(config)
            .context("span export settings (--otlp-endpoint, OTEL_*)")?;
        Ok(Some(Spans { exporter, endpoint }))
    }
}

/// The activator's flags, for the commands that run one (`sluice up`, `sluice router`).
#[derive(Args, Clone, Debug)]
pub(crate) struct ActivatorFlags {
    /// Requests the activator buffers per revision before answering 503.
    #[arg(long, env = "SLUICE_ACTIVATOR_QUEUE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) activator_queue: u64,
}

impl ActivatorFlags {
    /// The activator's settings.
    pub(crate) fn config(&self) -> ActivatorConfig {
        ActivatorConfig {
            max_queued_per_revision: usize::try_from(self.activator_queue).unwrap_or(usize::MAX),
            ..ActivatorConfig::default()
        }
    }
}

/// The ingress's limits, for the commands that serve it (`sluice up`, `sluice router`).
/// Unset, each is [`ServeConfig::default`]'s (and [`RouterConfig::default`]'s).
#[derive(Args, Clone, Debug)]
pub(crate) struct IngressFlags {
    /// Client connections served at once; further ones wait in the kernel's accept queue.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = ServeConfig::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    max_connections: usize,
    /// Largest request head in bytes (HTTP/1.1 buffer, HTTP/2 header list); larger → 431.
    #[arg(long, env = "SLUICE_MAX_HEADER_BYTES", default_value_t = ServeConfig::default().max_header_bytes, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(8192..=16 * 1024 * 1024))]
    max_header_bytes: usize,
    /// How long a client may take to send a request head before it is cut off.
    #[arg(long, env = "SLUICE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// HTTP/2 streams a client may open at once on one connection.
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_STREAMS", default_value_t = ServeConfig::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// Threads serving the ingress, each with its own runtime (0: one per CPU).
    #[arg(long, env = "SLUICE_INGRESS_SHARDS", default_value_t = ServeConfig::default().shards, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    ingress_shards: usize,
    /// Largest request body forwarded, in bytes (413 beyond). Unset: no limit, as Knative.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    max_body_bytes: Option<u64>,
}

impl IngressFlags {
    /// The listener's settings.
    pub(crate) fn serve(&self) -> anyhow::Result<ServeConfig> {
        ensure!(
            !self.header_read_timeout.is_zero(),
            "--header-read-timeout must be more than 0"
        );
        Ok(ServeConfig {
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: self.header_read_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            shards: self.ingress_shards,
        })
    }

    /// The router's settings.
    pub(crate) fn router(&self) -> RouterConfig {
        RouterConfig {
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// The control plane's flags both `sluice up` and `sluice controller --kube` take: how the
/// store's revisions are kept and how the autoscaler decides.
#[derive(Args, Clone, Debug)]
pub(crate) struct ControlFlags {
    /// Old revisions kept per configuration beyond those routed, latest created and latest
    /// ready; older ones are deleted.
    #[arg(long, env = "SLUICE_REVISION_HISTORY", default_value_t = 20)]
    pub(crate) revision_history: usize,
    /// How long the activator is in path before a revision's last replica stops.
    #[arg(long, env = "SLUICE_SCALE_TO_ZERO_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    scale_to_zero_grace: Duration,
    /// Autoscaler decision interval.
    #[arg(long, env = "SLUICE_AUTOSCALER_TICK", default_value = "2s", value_parser = humantime::parse_duration)]
    autoscaler_tick: Duration,
}

impl ControlFlags {
    /// The autoscaler's settings.
    pub(crate) fn autoscaler(&self) -> anyhow::Result<AutoscalerConfig> {
        ensure!(
            self.autoscaler_tick >= Duration::from_millis(100),
            "--autoscaler-tick must be at least 100ms, got {:?}",
            self.autoscaler_tick
        );
        Ok(AutoscalerConfig {
            tick: self.autoscaler_tick,
            scale_to_zero_grace: self.scale_to_zero_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        mesh: MeshFlags,
        #[command(flatten)]
        activator: ActivatorFlags,
        #[command(flatten)]
        ingress: IngressFlags,
        #[command(flatten)]
        control: ControlFlags,
    }

    #[test]
    fn unset_ingress_and_control_flags_are_the_libraries_defaults() {
        let cli = Cli::try_parse_from(["sluice"]).unwrap();
        assert_eq!(cli.ingress.serve().unwrap(), ServeConfig::default());
        assert_eq!(cli.ingress.router(), RouterConfig::default());
        let autoscaler = cli.control.autoscaler().unwrap();
        assert_eq!(autoscaler.tick, Duration::from_secs(2));
        assert_eq!(autoscaler.scale_to_zero_grace, Duration::from_secs(30));
    }

    #[test]
    fn ingress_flags_reach_the_router_and_bad_ones_are_refused_by_name() {
        let cli = Cli::try_parse_from([
            "sluice",
            "--max-connections",
            "64",
            "--max-body-bytes",
            "1024",
            "--ingress-shards",
            "1",
        ])
        .unwrap();
        let serve = cli.ingress.serve().unwrap();
        assert_eq!((serve.max_connections, serve.shards), (64, 1));
        assert_eq!(cli.ingress.router().max_body_bytes, Some(1024));
        for (flag, value) in [
            ("--max-connections", "0"),
            ("--max-header-bytes", "10"),
            ("--max-concurrent-streams", "0"),
            ("--max-body-bytes", "0"),
        ] {
            let err = Cli::try_parse_from(["sluice", flag, value]).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
        let cli = Cli::try_parse_from(["sluice", "--header-read-timeout", "0s"]).unwrap();
        let err = cli.ingress.serve().unwrap_err();
        assert!(err.to_string().contains("--header-read-timeout"), "{err}");
        let cli = Cli::try_parse_from(["sluice", "--autoscaler-tick", "1ms"]).unwrap();
        let err = cli.control.autoscaler().unwrap_err();
        assert!(err.to_string().contains("--autoscaler-tick"), "{err}");
    }

    #[test]
    fn the_trust_domain_prefers_the_flag_then_the_former_variable_then_the_default() {
        assert_eq!(
            resolve_trust_domain(Some("a.test"), Some("b.test")),
            "a.test"
        );
        assert_eq!(resolve_trust_domain(None, Some(" b.test ")), "b.test");
        assert_eq!(resolve_trust_domain(None, Some("")), DEFAULT_TRUST_DOMAIN);
        assert_eq!(resolve_trust_domain(None, None), DEFAULT_TRUST_DOMAIN);
    }

    #[test]
    fn mesh_mode_is_an_enum_and_a_bad_value_is_refused_naming_the_choices() {
        let cli = Cli::try_parse_from(["sluice", "--mesh", "off"]).unwrap();
        assert_eq!(cli.mesh.mode, MeshMode::Off);
        assert_eq!(cli.mesh.mode, MeshMode::Off);
        let err = Cli::try_parse_from(["sluice", "--mesh", "maybe"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--mesh") && text.contains("on") && text.contains("off"),
            "{text}"
        );
        let err = Cli::try_parse_from(["sluice", "--activator-queue", "0"]).unwrap_err();
        assert!(err.to_string().contains("--activator-queue"), "{err}");
    }
}
