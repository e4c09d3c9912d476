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
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_controller::admin::{ApplyRequest, ManifestFile};
use sluice_controller::store::Store;
use sluice_core::RoutingSnapshot;
use sluice_mesh::identity::files;
use sluice_mesh::identity::{
    CaConfig, CertificateAuthority, RotatingSvid, RotationConfig, SpiffeId, SvidIssuer,
};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::policy::documents::{kind_of, split_documents};
use sluice_mesh::policy::{
    AuthorizationPolicy, PeerAuthentication, PolicyDocuments, WorkloadSelector, authz,
};
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

/// The security policies in force, persisted in `state_dir/mesh/policies.yaml` and
/// published to replicas.
pub struct PolicyStore {
    path: PathBuf,
    docs: std::sync::Mutex<BTreeMap<String, String>>,
    tx: watch::Sender<Arc<String>>,
}

/// What one policy document did on apply.
#[derive(Debug)]
pub struct PolicyApplied {
    /// `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub outcome: &'static str,
    /// Fields kept but not acted on, and a selector matching no workload.
    pub warnings: Vec<String>,
    /// `spec.selector`, if any.
    pub selector: Option<WorkloadSelector>,
}

/// One validated policy document.
struct Parsed {
    key: String,
    kind: String,
    namespace: String,
    name: String,
    warnings: Vec<String>,
    selector: Option<WorkloadSelector>,
}

fn key_of(doc: &str) -> Result<Parsed, String> {
    match kind_of(doc).as_deref() {
        Some(authz::KIND) => AuthorizationPolicy::from_yaml(doc)
            .map(|(p, warnings)| Parsed {
                key: p.key(),
                kind: authz::KIND.to_owned(),
                namespace: p.metadata.namespace().to_owned(),
                name: p.metadata.name.clone(),
                warnings,
                selector: p.spec.selector.clone(),
            })
            .map_err(|e| e.to_string()),
        Some(sluice_mesh::policy::peer_auth::KIND) => PeerAuthentication::from_yaml(doc)
            .map(|(p, warnings)| Parsed {
                key: p.key(),
                kind: sluice_mesh::policy::peer_auth::KIND.to_owned(),
                namespace: p.metadata.namespace().to_owned(),
                name: p.metadata.name.clone(),
                warnings,
                selector: p.spec.selector.clone(),
            })
            .map_err(|e| e.to_string()),
        other => Err(format!("not a security policy (kind {other:?})")),
    }
}

impl PolicyStore {
    /// Loads the stored policies of `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let path = state_dir.join("mesh").join("policies.yaml");
        let mut docs = BTreeMap::new();
        if path.exists() {
            let text = String::from_utf8(files::read_private(&path)?)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            for doc in split_documents(&text) {
                let parsed = key_of(doc)
                    .map_err(|e| anyhow::anyhow!("{}: stored policy: {e}", path.display()))?;
                docs.insert(parsed.key, doc.trim_end().to_owned());
            }
        }
        let text = Arc::new(join(&docs));
        let (tx, _) = watch::channel(text);
        Ok(Arc::new(Self {
            path,
            docs: std::sync::Mutex::new(docs),
            tx,
        }))
    }

    /// How many policies are stored.
    pub fn len(&self) -> usize {
        self.docs.lock().map_or(0, |d| d.len())
    }

    /// Follows the policy text in force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<String>> {
        self.tx.subscribe()
    }

    /// Validates every policy document of `text` (all or nothing), then stores and
    /// publishes them.
    pub fn apply(&self, text: &str) -> Result<Vec<PolicyApplied>, Vec<String>> {
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            match key_of(doc) {
                Ok(k) => parsed.push((k, doc.trim_end().to_owned())),
                Err(e) => errors.push(format!("policy document {}: {e}", i + 1)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        let mut results = Vec::new();
        for (p, doc) in parsed {
            let outcome = match docs.insert(p.key, doc.clone()) {
                None => "created",
                Some(old) if old == doc => "unchanged",
                Some(_) => "configured",
            };
            results.push(PolicyApplied {
                kind: p.kind,
                namespace: p.namespace,
                name: p.name,
                outcome,
                warnings: p.warnings,
                selector: p.selector,
            });
        }
        self.publish(&docs)?;
        Ok(results)
    }

    /// The stored policies of `kind`, in `namespace` or all, as (namespace, name, YAML).
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Vec<(String, String, String)> {
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        docs.iter()
            .filter_map(|(key, doc)| {
                let mut parts = key.splitn(3, '/');
                let (k, ns, name) = (parts.next()?, parts.next()?, parts.next()?);
                (k == kind && namespace.is_none_or(|want| want == ns))
                    .then(|| (ns.to_owned(), name.to_owned(), doc.clone()))
            })
            .collect()
    }

    /// Deletes one policy and publishes the rest; `Ok(false)` when there was none.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<bool, Vec<String>> {
        let mut docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        if docs.remove(&format!("{kind}/{namespace}/{name}")).is_none() {
            return Ok(false);
        }
        self.publish(&docs)?;
        Ok(true)
    }

    /// Persists and publishes `docs` (called with the lock held, so writes are ordered).
    fn publish(&self, docs: &BTreeMap<String, String>) -> Result<(), Vec<String>> {
        let text = join(docs);
        // The joined set must still parse as one (it always does: each part did).
        if let Err(e) = PolicyDocuments::parse(&text) {
            return Err(e.iter().map(ToString::to_string).collect());
        }
        if let Err(e) = files::write_private(&self.path, text.as_bytes()) {
            return Err(vec![format!("storing policies: {e}")]);
        }
        self.tx.send_replace(Arc::new(text));
        Ok(())
    }
}

fn join(docs: &BTreeMap<String, String>) -> String {
    docs.values().cloned().collect::<Vec<_>>().join("\n---\n")
}

/// Splits the security policies off manifest files: returns the files without them and the
/// policy documents' text.
pub fn split_policies(files: &[ManifestFile]) -> (Vec<ManifestFile>, String) {
    let mut policies = Vec::new();
    let mut rest = Vec::new();
    for file in files {
        let (p, others) = sluice_mesh::policy::partition(&file.text);
        if !p.is_empty() {
            policies.push(p);
        }
        if !others.trim().is_empty() {
            rest.push(ManifestFile {
                text: others,
                ..file.clone()
            });
        }
    }
    (rest, policies.join("\n---\n"))
}

/// Prints policy results as `sluice apply` prints others.
pub fn print_policy_results(results: &[PolicyApplied]) {
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

fn results_json(results: &[PolicyApplied]) -> Vec<serde_json::Value> {
    results
        .iter()
        .map(|r| {
            serde_json::json!({
                "kind": r.kind, "namespace": r.namespace, "name": r.name,
                "outcome": r.outcome, "warnings": r.warnings,
            })
        })
        .collect()
}

/// Admin middleware: `POST /v1/apply` bodies have their security policies taken out,
/// stored and published here (with a warning for a selector matching no workload of
/// `store`); the rest goes on to the controller's apply. The policies are also served as
/// objects (`GET`, `DELETE`, see [`super::policies::objects_api`]).
pub async fn apply_policies<S: Store>(
    policies: Arc<PolicyStore>,
    store: S,
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    if let Some(resp) =
        super::policies::objects_api(&policies, req.method(), req.uri().path(), req.uri().query())
    {
        return resp;
    }
    if req.method() != axum::http::Method::POST || req.uri().path() != "/v1/apply" {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "apply body too large").into_response();
    };
    let Ok(mut request) = serde_json::from_slice::<ApplyRequest>(&bytes) else {
        // Not ours to judge: the controller names what is wrong.
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    };
    let (rest, policy_text) = split_policies(&request.files);
    if policy_text.is_empty() {
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    }
    let mut applied = match policies.apply(&policy_text) {
        Ok(a) => a,
        Err(errors) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(serde_json::json!({
                    "error": "invalid security policy",
                    "errors": errors,
                })),
            )
                .into_response();
        }
    };
    let mut results = Vec::new();
    if !rest.is_empty() {
        request.files = rest;
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let resp = next
            .run(Request::from_parts(parts, axum::body::Body::from(body)))
            .await;
        let (p, b) = resp.into_parts();
        let Ok(b) = axum::body::to_bytes(b, 64 * 1024 * 1024).await else {
            return (StatusCode::BAD_GATEWAY, "apply answer too large").into_response();
        };
        if !p.status.is_success() {
            return Response::from_parts(p, axum::body::Body::from(b));
        }
        let mut json: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        if let Some(list) = json["results"].as_array_mut() {
            results = std::mem::take(list);
        }
    }
    // After the rest is stored, so workloads applied together with the policy count.
    super::policies::warn_unselected(
        &mut applied,
        &super::policies::known_workloads(&store).await,
    );
    results.extend(results_json(&applied));
    axum::Json(serde_json::json!({ "results": results })).into_response()
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
            let uri: axum::http::Uri = format!(
                "http://{addr}{}",
                sluice_activator::queue::mesh::METRICS_PATH
            )
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

    const ALLOW: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: default}\nspec: {action: ALLOW}\n";

    #[test]
    fn merged_metrics_keep_one_header_per_family() {
        let one = "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"1\"} 1\n".to_owned();
        let two = "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"2\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 3\n".to_owned();
        assert_eq!(
            merge_expositions(&[one, two]),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"1\"} 1\nx_total{pod=\"2\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 3\n"
        );
    }

    #[test]
    fn policies_are_stored_published_and_refused_with_field_paths() {
        let dir = std::env::temp_dir().join(format!("sluice-up-policies-{}", std::process::id()));
        let store = PolicyStore::open(&dir).unwrap();
        let mut rx = store.subscribe();
        let outcome = |r: Vec<PolicyApplied>| r.iter().map(|p| p.outcome).collect::<Vec<_>>();
        assert_eq!(outcome(store.apply(ALLOW).unwrap()), ["created"]);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().contains("name: a"));
        assert_eq!(outcome(store.apply(ALLOW).unwrap()), ["unchanged"]);
        let bad = ALLOW.replace("ALLOW", "MAYBE");
        let errors = store.apply(&bad).unwrap_err();
        assert!(errors[0].contains("spec.action"), "{errors:?}");
        // Persisted (0600) and read back by the next `sluice up`.
        let path = dir.join("mesh").join("policies.yaml");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(PolicyStore::open(&dir).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
