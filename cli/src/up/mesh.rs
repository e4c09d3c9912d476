//! The mesh in `sluice up`: the CA in the state directory, the SVIDs of the router, the
//! activator and the control plane, the security policies (`AuthorizationPolicy`,
//! `PeerAuthentication`) stored beside the state and handed to replicas, and the admin
//! `/metrics` that merges every hop's metrics, the replicas' included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_core::RoutingSnapshot;
use sluice_mesh::identity::files;
use sluice_mesh::identity::{
    CaConfig, CertificateAuthority, RotatingSvid, RotationConfig, SpiffeId, SvidIssuer,
};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::telemetry::Registry;
use sluice_mesh::tls::{MeshHttpConnector, MeshTls};
use tokio::sync::watch;

/// Namespace of Sluice's own workloads' identities.
pub const SYSTEM_NAMESPACE: &str = "sluice-system";
/// Largest metrics text read from one replica.
const MAX_REPLICA_METRICS: usize = 4 * 1024 * 1024;
/// Replicas scraped for one admin `/metrics` answer, at most.
const MAX_SCRAPED: usize = 256;

/// The mesh material of the `sluice up` process.
pub struct UpMesh {
    /// The CA.
    pub ca: Arc<CertificateAuthority>,
    /// The router's identity.
    pub router: MeshTls,
    /// The activator's client.
    pub activator: OutboundMesh,
    /// The router's client.
    pub router_out: OutboundMesh,
    /// The control plane's client (probes, scrapes).
    pub control: OutboundMesh,
    /// Workloads replicas trust to attest callers.
    pub attesters: Vec<SpiffeId>,
}

fn identity(
    ca: &Arc<CertificateAuthority>,
    sa: &str,
    rotation: &RotationConfig,
) -> anyhow::Result<MeshTls> {
    let id = SpiffeId::new(ca.trust_domain(), SYSTEM_NAMESPACE, sa)?;
    let (svid, _renewer) = RotatingSvid::start(
        ca.clone() as Arc<dyn SvidIssuer>,
        id.clone(),
        rotation.clone(),
    )
    .with_context(|| format!("issuing {id}"))?;
    Ok(MeshTls::new(Arc::new(ca.trust_bundle()?), svid))
}

impl UpMesh {
    /// Loads (or creates) the CA in `state_dir/mesh/ca` and issues the process's SVIDs.
    pub fn start(state_dir: &Path, trust_domain: &str, ttl: Duration) -> anyhow::Result<Self> {
        let dir = state_dir.join("mesh");
        files::private_dir(&dir)?;
        let mut config = CaConfig::new(trust_domain, dir.join("ca"));
        config.workload_ttl = ttl;
        config.validate()?;
        let ca = Arc::new(
            CertificateAuthority::load_or_create(&config)
                .with_context(|| format!("loading the mesh CA in {}", config.dir.display()))?,
        );
        let rotation = RotationConfig::new(ttl);
        let router = identity(&ca, "router", &rotation)?;
        let activator = identity(&ca, "activator", &rotation)?;
        let control = identity(&ca, "controller", &rotation)?;
        let attesters = vec![
            router.identity().current().id().clone(),
            activator.identity().current().id().clone(),
        ];
        Ok(Self {
            router_out: OutboundMesh::new(router.clone())?,
            activator: OutboundMesh::new(activator)?,
            control: OutboundMesh::new(control)?,
            router,
            ca,
            attesters,
        })
    }

    /// Where replicas' private directories go.
    pub fn replicas_dir(state_dir: &Path) -> PathBuf {
        state_dir.join("mesh").join("replicas")
    }
}

/// Prints policy results as `sluice apply` prints others.
pub fn print_policy_results(results: &[sluice_controller::policies::PolicyApplied]) {
    for r in results {
        println!(
            "{}.security.istio.io/{} {}",
            r.kind.to_ascii_lowercase(),
            r.name,
            r.outcome
        );
        for w in &r.warnings {
            eprintln!("Warning: {}/{}: {w}", r.kind, r.name);
        }
    }
}

/// Merges Prometheus text expositions: one `# HELP`/`# TYPE` per family, then every
/// source's samples of it.
pub fn merge_expositions(texts: &[String]) -> String {
    struct Family {
        header: Vec<String>,
        samples: Vec<String>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for text in texts {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                current = name.clone();
                let fam = families.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    Family {
                        header: Vec::new(),
                        samples: Vec::new(),
                    }
                });
                if fam.header.len() < 2 && !fam.header.iter().any(|h| h == line) {
                    fam.header.push(line.to_owned());
                }
            } else if !line.trim().is_empty() && !line.starts_with('#') {
                let fam = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    Family {
                        header: Vec::new(),
                        samples: Vec::new(),
                    }
                });
                fam.samples.push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some(f) = families.get(&name) {
            for l in f.header.iter().chain(&f.samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// The admin `/metrics`: this process's registries (the router's, the activator's) plus
/// every ready replica's `/sluice/metrics`, fetched over mTLS when the mesh is on (1 s
/// each, at most [`MAX_SCRAPED`] replicas, [`MAX_REPLICA_METRICS`] bytes each).
pub async fn all_metrics(
    registries: Vec<Registry>,
    snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    client: Option<OutboundMesh>,
) -> Response {
    let connector = MeshHttpConnector::new(client.map(|c| c.connector().clone()));
    let http: Client<MeshHttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let addrs: Vec<SocketAddr> = snapshot
        .borrow()
        .revisions
        .values()
        .flat_map(|r| r.endpoints.iter().map(|e| e.addr))
        .take(MAX_SCRAPED)
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for addr in addrs {
        let http = http.clone();
        set.spawn(async move {
            let uri: axum::http::Uri = format!("http://{addr}{}", sluice_queue::mesh::METRICS_PATH)
                .parse()
                .ok()?;
            let fetch = async {
                let resp = http.get(uri).await.ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let body = Limited::new(resp.into_body(), MAX_REPLICA_METRICS)
                    .collect()
                    .await
                    .ok()?
                    .to_bytes();
                String::from_utf8(body.to_vec()).ok()
            };
            let got = tokio::time::timeout(Duration::from_secs(1), fetch)
                .await
                .ok()
                .flatten();
            if got.is_none() {
                tracing::debug!(%addr, "replica metrics not scraped");
            }
            got
        });
    }
    let mut texts: Vec<String> = registries.iter().map(Registry::encode).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok(Some(text)) = joined {
            texts.push(text);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            sluice_mesh::telemetry::CONTENT_TYPE,
        )],
        merge_expositions(&texts),
    )
        .into_response()
}

/// Ingress TLS from `--tls-cert/--tls-key` (served to every host) and `--tls-dir` (one
/// `<host>.crt` + `<host>.key` pair per host, chosen by SNI).
pub fn ingress_tls(
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: Option<&Path>,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use sluice_mesh::tls::IngressCertificate;
    let mut certs = Vec::new();
    let mut default = None;
    match (cert, key) {
        (Some(c), Some(k)) => {
            default = Some(0);
            certs.push(IngressCertificate {
                hosts: Vec::new(),
                cert_path: c.to_owned(),
                key_path: k.to_owned(),
            });
        }
        (None, None) => {}
        _ => bail!("--tls-cert and --tls-key go together"),
    }
    if let Some(dir) = dir {
        let mut found = false;
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "crt")
                && let Some(host) = path.file_stem().and_then(|s| s.to_str())
            {
                let key = path.with_extension("key");
                if !key.exists() {
                    bail!("{}: no matching {}", path.display(), key.display());
                }
                certs.push(IngressCertificate {
                    hosts: vec![host.to_owned()],
                    cert_path: path.clone(),
                    key_path: key,
                });
                found = true;
            }
        }
        if !found {
            bail!("{} holds no <host>.crt files", dir.display());
        }
    }
    if certs.is_empty() {
        return Ok(None);
    }
    Ok(Some(sluice_mesh::tls::ingress_server_config(
        &certs, default,
    )?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn merged_metrics_keep_one_header_per_family() {
        let one = "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"1\"} 1\n".to_owned();
        let two = "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"2\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 3\n".to_owned();
        assert_eq!(
            merge_expositions(&[one, two]),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"1\"} 1\nx_total{pod=\"2\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 3\n"
        );
    }
}
