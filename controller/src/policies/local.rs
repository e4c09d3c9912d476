//! Local mode's security policies (`AuthorizationPolicy`, `PeerAuthentication`): validated
//! all or nothing, persisted in `state_dir/mesh/policies.yaml` (0600), and published to
//! replicas as one YAML text. Kubernetes mode keeps them as `security.istio.io` objects
//! instead (`crate::kube_policies`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_mesh::identity::files;
use sluice_mesh::policy::documents::{kind_of, split_documents};
use sluice_mesh::policy::{
    AuthorizationPolicy, PeerAuthentication, PolicyDocuments, WorkloadSelector, authz,
};
use tokio::sync::watch;

use crate::admin::ManifestFile;

/// Why the stored policies cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    /// The file cannot be read (or is not private).
    #[error("cannot read {path}")]
    Read {
        /// The policies file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: files::FileError,
    },
    /// The file is not UTF-8.
    #[error("{path} is not UTF-8")]
    NotUtf8 {
        /// The policies file.
        path: PathBuf,
    },
    /// A stored document no longer validates.
    #[error("{path}: stored policy: {message}")]
    Invalid {
        /// The policies file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
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
    pub fn open(state_dir: &Path) -> Result<Arc<Self>, PolicyStoreError> {
        let path = state_dir.join("mesh").join("policies.yaml");
        let mut docs = BTreeMap::new();
        if path.exists() {
            let bytes = files::read_private(&path).map_err(|source| PolicyStoreError::Read {
                path: path.clone(),
                source,
            })?;
            let text = String::from_utf8(bytes)
                .map_err(|_| PolicyStoreError::NotUtf8 { path: path.clone() })?;
            for doc in split_documents(&text) {
                let parsed = key_of(doc).map_err(|message| PolicyStoreError::Invalid {
                    path: path.clone(),
                    message,
                })?;
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

    /// Whether no policy is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// The results as the admin API answers them (beside the other objects' results).
pub fn results_json(results: &[PolicyApplied]) -> Vec<serde_json::Value> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: default}\nspec: {action: ALLOW}\n";

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
