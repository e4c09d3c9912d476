//! Flag groups more than one command takes, declared once (`#[command(flatten)]`) and
//! turned into the owning crate's settings here, so a flag means the same, has the same
//! environment variable and the same default wherever it appears.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use sluice_activator::ActivatorConfig;
use sluice_mesh::identity::DEFAULT_TRUST_DOMAIN;
use sluice_mesh::issuance::DEPRECATED_TRUST_DOMAIN_ENV;
use sluice_mesh::otlp::{self, OtlpConfig, SpanExporter};

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
    /// Whether the mesh is on.
    pub(crate) fn on(&self) -> bool {
        self.mode == MeshMode::On
    }

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
}

impl TelemetryFlags {
    /// The span exporter of this process's hops (and its endpoint, for the shutdown
    /// message) when `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector;
    /// `OTEL_BSP_*` tune it. Replicas get the endpoint in their environment.
    pub(crate) fn spans(&self) -> anyhow::Result<Option<(SpanExporter, String)>> {
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
        Ok(Some((exporter, endpoint)))
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
        assert!(!cli.mesh.on());
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
