//! Local mode's identity handoff: each replica gets an SVID for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccountName or default>`, the trust
//! bundle, a description of itself and the security policies in force, as 0600 files in a
//! private 0700 directory named by `$SLUICE_MESH_DIR` (never on a command line). A task per
//! replica renews the certificate at 50 % of its life (with jitter) and rewrites the file
//! atomically, and rewrites the policy file when policies change; the replica re-reads both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_mesh::handoff::{Handoff, HandoffError, WorkloadInfo};
use sluice_mesh::identity::{
    CaError, CertificateAuthority, RotatingSvid, RotationConfig, SpiffeId, SpiffeIdError,
};
use sluice_mesh::outbound::OutboundMesh;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ReplicaSpec;

/// Labels Knative puts on a revision's pods (policies select on them).
const REVISION_LABEL: &str = "serving.knative.dev/revision";

/// Why a replica could not be given its identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The namespace or service account does not make a SPIFFE ID.
    #[error("identity: {0}")]
    Id(#[from] SpiffeIdError),
    /// The CA refused.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The files could not be written.
    #[error(transparent)]
    Files(#[from] HandoffError),
}

/// The mesh settings of the local runtime.
#[derive(Clone, Debug)]
pub struct LocalMesh {
    ca: Arc<CertificateAuthority>,
    dir: PathBuf,
    rotation: RotationConfig,
    attesters: Vec<SpiffeId>,
    policies: watch::Receiver<Arc<String>>,
    client: OutboundMesh,
}

impl LocalMesh {
    /// Hands out certificates of `ca` living `rotation.ttl`, in private directories under
    /// `dir`, trusting `attesters` to speak for callers, with the policy text `policies`;
    /// probes replicas as `client`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        dir: PathBuf,
        rotation: RotationConfig,
        attesters: Vec<SpiffeId>,
        policies: watch::Receiver<Arc<String>>,
        client: OutboundMesh,
    ) -> Self {
        Self {
            ca,
            dir,
            rotation,
            attesters,
            policies,
            client,
        }
    }

    /// The runtime's own mTLS client (readiness probes).
    pub fn client(&self) -> &OutboundMesh {
        &self.client
    }

    /// Writes replica `id`'s private directory and starts renewing its certificate.
    pub fn hand_off(&self, spec: &ReplicaSpec, id: u64) -> Result<ReplicaHandoff, IdentityError> {
        let env = |k: &str| {
            spec.env
                .iter()
                .rev()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        };
        let namespace = &spec.revision.namespace;
        let sa = env("SLUICE_SERVICE_ACCOUNT").unwrap_or_else(|| "default".into());
        let spiffe = SpiffeId::new(self.ca.trust_domain(), namespace, &sa)?;
        let mut labels: BTreeMap<String, String> = env("SLUICE_POD_LABELS")
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        labels.insert(REVISION_LABEL.into(), spec.revision.name.clone());
        let info = WorkloadInfo {
            trust_domain: self.ca.trust_domain().to_owned(),
            namespace: namespace.clone(),
            service: env("K_SERVICE").unwrap_or_default(),
            configuration: env("K_CONFIGURATION").unwrap_or_default(),
            revision: spec.revision.name.clone(),
            pod: format!("{}-{id}", spec.revision.name),
            labels,
            attesters: self.attesters.iter().map(ToString::to_string).collect(),
        };
        let dir = self
            .dir
            .join(format!("{namespace}.{}.{id}", spec.revision.name));
        let handoff = Handoff::create(&dir)?;
        handoff.write_bundle(&self.ca.root_pem())?;
        handoff.write_workload(&info)?;
        let mut policies = self.policies.clone();
        handoff.write_policies(&policies.borrow_and_update())?;
        let (mut svid, renewer) = RotatingSvid::start(
            self.ca.clone() as Arc<dyn sluice_mesh::identity::SvidIssuer>,
            spiffe,
            self.rotation.clone(),
        )?;
        handoff.write_svid(&svid.current())?;
        let writer = handoff.clone();
        let task = tokio::spawn(async move {
            let mut policies_open = true;
            loop {
                tokio::select! {
                    renewed = svid.changed() => {
                        if !renewed {
                            return;
                        }
                        if let Err(e) = writer.write_svid(&svid.current()) {
                            tracing::warn!("cannot hand over a renewed certificate: {e}");
                        }
                    }
                    changed = policies.changed(), if policies_open => {
                        if changed.is_err() {
                            // Policies are fixed from now on; keep renewing.
                            policies_open = false;
                            continue;
                        }
                        let text = policies.borrow_and_update().clone();
                        if let Err(e) = writer.write_policies(&text) {
                            tracing::warn!("cannot hand over new policies: {e}");
                        }
                    }
                }
            }
        });
        Ok(ReplicaHandoff { dir, task, renewer })
    }
}

/// One replica's handoff: renewal runs while it lives; dropping it stops renewal and
/// removes the private directory.
#[derive(Debug)]
pub struct ReplicaHandoff {
    dir: PathBuf,
    task: JoinHandle<()>,
    renewer: JoinHandle<()>,
}

impl ReplicaHandoff {
    /// The directory to name in `$SLUICE_MESH_DIR`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ReplicaHandoff {
    fn drop(&mut self) {
        self.task.abort();
        self.renewer.abort();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), "cannot remove a replica's identity: {e}");
        }
    }
}
