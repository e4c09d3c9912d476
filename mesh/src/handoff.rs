//! Local mode's private channel from the supervisor (`sluice up`) to a replica: a 0700
//! directory named by [`DIR_ENV`] holding 0600 files, never anything on a command line.
//!
//! * [`SVID_FILE`]: the replica's certificate and key (rewritten atomically on rotation),
//! * [`BUNDLE_FILE`]: the trust bundle (the CA root),
//! * [`WORKLOAD_FILE`]: who the replica is (namespace, labels, revision) and which workloads
//!   may attest callers to it,
//! * [`POLICY_FILE`]: the `AuthorizationPolicy` and `PeerAuthentication` manifests in force.
//!
//! The writer is [`Handoff`]; the replica's side is [`WorkloadMesh::load`], which watches the
//! files (a `stat` every tenth of the certificate's life, at most one second apart) and
//! publishes new certificates and policies as they appear. New connections pick them up;
//! open ones keep what they were established with.
//!
//! In Kubernetes mode there is no directory: [`WorkloadMesh::from_vars`] sees
//! [`crate::issuance::CA_ADDR_ENV`] and [`WorkloadMesh::remote`] obtains the identity from the
//! CA with the Pod's projected token (see [`crate::issuance`] for the environment), and the
//! security policies from the CA too (fetched before the replica serves, then followed with
//! long polls; see [`crate::issuance::policies`]). The Pod's labels, which policies select
//! on, come from [`crate::issuance::policies::LABELS_ENV`].

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::identity::ca::DEFAULT_WORKLOAD_TTL;
use crate::identity::files::{self, FileError};
use crate::identity::svid::{SvidFileError, parse_pem};
use crate::identity::{
    DEFAULT_TRUST_DOMAIN, RotatingSvid, RotationConfig, SpiffeId, Svid, SvidError, TrustBundle,
};
use crate::issuance::policies::{FollowConfig, first_policies, follow_policies};
use crate::issuance::{self, RemoteCa, remote_identity};
use crate::policy::documents::split_documents;
use crate::policy::{DocumentError, Workload};
use crate::tls::MeshTls;
use crate::vars::Vars;

pub use crate::policy::Policies;

/// Environment variable naming the private directory.
pub const DIR_ENV: &str = "SLUICE_MESH_DIR";
/// The replica's SVID (certificate + key, PEM).
pub const SVID_FILE: &str = "svid.pem";
/// The trust bundle (PEM).
pub const BUNDLE_FILE: &str = "bundle.pem";
/// The workload description (JSON).
pub const WORKLOAD_FILE: &str = "workload.json";
/// The security policies (multi-document YAML).
pub const POLICY_FILE: &str = "policies.yaml";

/// Who a replica is, as its supervisor knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// Trust domain of the mesh.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Knative Service (`serving.knative.dev/service`).
    pub service: String,
    /// Configuration.
    pub configuration: String,
    /// Revision.
    pub revision: String,
    /// Replica name (for `pod_name` labels and access logs).
    pub pod: String,
    /// Pod labels policies select on.
    pub labels: BTreeMap<String, String>,
    /// SPIFFE IDs whose attestation of the original caller the replica accepts.
    pub attesters: Vec<String>,
}

impl WorkloadInfo {
    /// The policy-selection view.
    pub fn workload(&self) -> Workload {
        Workload {
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// Handing off or loading the files failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// A private file could not be written or read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The SVID file is unusable.
    #[error(transparent)]
    Svid(#[from] SvidFileError),
    /// The bundle is unusable.
    #[error("{path}: {message}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The workload file is not valid JSON of the expected shape.
    #[error("{path}: {source}")]
    Workload {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A policy document is invalid.
    #[error("{path}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Policy {
        /// The file.
        path: PathBuf,
        /// Every invalid document.
        errors: Vec<DocumentError>,
    },
    /// An attester is not a SPIFFE ID.
    #[error("{path}: attesters: {value:?} is not a SPIFFE ID")]
    Attester {
        /// The file (or `$SLUICE_MESH_ATTESTERS`).
        path: PathBuf,
        /// The value.
        value: String,
    },
    /// An environment variable is unusable (Kubernetes mode).
    #[error("${name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The CA did not issue an identity (Kubernetes mode).
    #[error(transparent)]
    Remote(#[from] crate::issuance::IssueError),
    /// The CA did not serve this workload's policies (Kubernetes mode): it must not serve
    /// without them.
    #[error("the security policies: {0}")]
    Policies(#[from] crate::issuance::policies::PolicyFetchError),
}

/// The supervisor's side: writes one replica's private directory.
#[derive(Clone, Debug)]
pub struct Handoff {
    dir: PathBuf,
}

impl Handoff {
    /// Creates `dir` with mode 0700.
    pub fn create(dir: &Path) -> Result<Self, HandoffError> {
        files::private_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory (the value of [`DIR_ENV`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the trust bundle (PEM root certificates).
    pub fn write_bundle(&self, roots_pem: &str) -> Result<(), HandoffError> {
        Ok(files::write_private(
            &self.dir.join(BUNDLE_FILE),
            roots_pem.as_bytes(),
        )?)
    }

    /// Writes (or replaces, atomically) the replica's SVID.
    pub fn write_svid(&self, svid: &Svid) -> Result<(), HandoffError> {
        Ok(svid.write_private(&self.dir.join(SVID_FILE))?)
    }

    /// Writes the workload description.
    pub fn write_workload(&self, info: &WorkloadInfo) -> Result<(), HandoffError> {
        let json = serde_json::to_vec_pretty(info).map_err(|source| HandoffError::Workload {
            path: self.dir.join(WORKLOAD_FILE),
            source,
        })?;
        Ok(files::write_private(&self.dir.join(WORKLOAD_FILE), &json)?)
    }

    /// Writes (or replaces, atomically) the policies in force.
    pub fn write_policies(&self, yaml: &str) -> Result<(), HandoffError> {
        Ok(files::write_private(
            &self.dir.join(POLICY_FILE),
            yaml.as_bytes(),
        )?)
    }
}

/// Everything a replica needs to be a mesh citizen, loaded from its private directory.
#[derive(Clone, Debug)]
pub struct WorkloadMesh {
    /// Who it is.
    pub info: WorkloadInfo,
    /// Its mTLS material (identity follows rotations).
    pub tls: MeshTls,
    /// Workloads trusted to attest callers.
    pub attesters: Vec<SpiffeId>,
    /// The policies in force (follows the policy file).
    pub policies: watch::Receiver<Arc<Policies>>,
}

/// A file's identity and version as `stat` sees them; a rename-over changes the inode.
fn stamp(path: &Path) -> Option<(u64, i64, i64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

fn read_bundle(path: &Path, trust_domain: &str) -> Result<TrustBundle, HandoffError> {
    parse_bundle(path, files::read_private(path)?, trust_domain)
}

/// The trust bundle in PEM `bytes` read from `path` (named in errors).
pub fn parse_bundle(
    path: &Path,
    bytes: Vec<u8>,
    trust_domain: &str,
) -> Result<TrustBundle, HandoffError> {
    let bad = |message: String| HandoffError::Bundle {
        path: path.to_owned(),
        message,
    };
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 PEM".into()))?;
    let roots: Vec<CertificateDer<'static>> = parse_pem(&text)
        .map_err(bad)?
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    TrustBundle::new(trust_domain, roots).map_err(|e: SvidError| bad(e.to_string()))
}

fn read_policies(path: &Path) -> Result<Policies, HandoffError> {
    if !path.exists() {
        return Ok(Policies::default());
    }
    let text = String::from_utf8_lossy(&files::read_private(path)?).into_owned();
    Policies::parse(&text).map_err(|errors| HandoffError::Policy {
        path: path.to_owned(),
        errors,
    })
}

impl WorkloadMesh {
    /// Loads the directory and spawns the task that follows its changes (it ends when every
    /// holder of the identity and the policies is gone).
    pub fn load(dir: &Path) -> Result<(Self, JoinHandle<()>), HandoffError> {
        let workload_path = dir.join(WORKLOAD_FILE);
        let info: WorkloadInfo = serde_json::from_slice(&files::read_private(&workload_path)?)
            .map_err(|source| HandoffError::Workload {
                path: workload_path.clone(),
                source,
            })?;
        let attesters = info
            .attesters
            .iter()
            .map(|a| {
                a.parse::<SpiffeId>().map_err(|_| HandoffError::Attester {
                    path: workload_path.clone(),
                    value: a.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bundle = Arc::new(read_bundle(&dir.join(BUNDLE_FILE), &info.trust_domain)?);
        let svid_path = dir.join(SVID_FILE);
        let policy_path = dir.join(POLICY_FILE);
        let svid = Svid::read_private(&svid_path, &bundle)?;
        let policies = read_policies(&policy_path)?;
        let (svid_tx, svid_rx) = watch::channel(Arc::new(svid));
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policies));
        let task = tokio::spawn(follow(
            svid_path,
            policy_path,
            bundle.clone(),
            svid_tx,
            policy_tx,
        ));
        let tls = MeshTls::new(bundle, RotatingSvid::from_receiver(svid_rx));
        Ok((
            Self {
                info,
                tls,
                attesters,
                policies: policy_rx,
            },
            task,
        ))
    }

    /// Local mode: loads from the directory [`DIR_ENV`] names. Kubernetes mode (no
    /// [`DIR_ENV`], [`issuance::CA_ADDR_ENV`] set): obtains the identity from the CA with the
    /// projected token, trusting the bundle in [`issuance::ROOT_FILE_ENV`], as the workload the
    /// Pod's environment describes (see [`WorkloadMesh::remote`]). `None` when neither is set
    /// (mesh off). `vars` are the process's environment variables, as the command read them.
    pub async fn from_vars(vars: &Vars) -> Option<Result<(Self, JoinHandle<()>), HandoffError>> {
        let var = |name: &'static str| -> Result<Option<String>, HandoffError> {
            match vars.get(name) {
                Ok(Some(value)) if value.trim().is_empty() => Ok(None),
                Ok(Some(value)) => Ok(Some(value.trim().to_owned())),
                Ok(None) => Ok(None),
                Err(_) => Err(HandoffError::Env {
                    name,
                    message: "not UTF-8".into(),
                }),
            }
        };
        if let Some(dir) = vars.value(DIR_ENV) {
            return Some(Self::load(Path::new(&dir)));
        }
        let addr = vars.value(issuance::CA_ADDR_ENV)?;
        Some(Self::remote_from_vars(addr, var).await)
    }

    async fn remote_from_vars(
        addr: String,
        var: impl Fn(&'static str) -> Result<Option<String>, HandoffError>,
    ) -> Result<(Self, JoinHandle<()>), HandoffError> {
        let trust_domain = match var(issuance::TRUST_DOMAIN_ENV)? {
            Some(domain) => domain,
            None => match var(issuance::DEPRECATED_TRUST_DOMAIN_ENV)? {
                Some(domain) => {
                    tracing::warn!(
                        "{} is deprecated: set {} instead",
                        issuance::DEPRECATED_TRUST_DOMAIN_ENV,
                        issuance::TRUST_DOMAIN_ENV
                    );
                    domain
                }
                None => DEFAULT_TRUST_DOMAIN.to_owned(),
            },
        };
        let root_file = PathBuf::from(
            var(issuance::ROOT_FILE_ENV)?.unwrap_or_else(|| issuance::DEFAULT_ROOT_FILE.into()),
        );
        let token_file = PathBuf::from(
            var(issuance::TOKEN_FILE_ENV)?.unwrap_or_else(|| issuance::DEFAULT_TOKEN_FILE.into()),
        );
        // A ConfigMap volume: readable by the Pod, not private (the root is public).
        let bytes = std::fs::read(&root_file).map_err(|source| {
            HandoffError::File(FileError::Io {
                path: root_file.clone(),
                source,
            })
        })?;
        let bundle = Arc::new(parse_bundle(&root_file, bytes, &trust_domain)?);
        let service = var(issuance::K_SERVICE_ENV)?.unwrap_or_default();
        let configuration = var(issuance::K_CONFIGURATION_ENV)?.unwrap_or_default();
        let revision = var(issuance::K_REVISION_ENV)?.unwrap_or_default();
        // The Pod's labels as the runtime set them; the revision's own names fill gaps.
        let mut labels: BTreeMap<String, String> = match var(issuance::policies::LABELS_ENV)? {
            Some(json) => serde_json::from_str(&json).map_err(|e| HandoffError::Env {
                name: issuance::policies::LABELS_ENV,
                message: format!("not a JSON object of string labels: {e}"),
            })?,
            None => BTreeMap::new(),
        };
        for (key, value) in [
            ("serving.knative.dev/service", &service),
            ("serving.knative.dev/configuration", &configuration),
            ("serving.knative.dev/revision", &revision),
        ] {
            if !value.is_empty() {
                labels
                    .entry(key.to_owned())
                    .or_insert_with(|| value.clone());
            }
        }
        let info = WorkloadInfo {
            trust_domain,
            namespace: var(issuance::POD_NAMESPACE_ENV)?.unwrap_or_default(),
            service,
            configuration,
            revision,
            pod: var(issuance::POD_NAME_ENV)?.unwrap_or_default(),
            labels,
            attesters: var(issuance::ATTESTERS_ENV)?
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        let ca = RemoteCa {
            addr,
            token_file,
            bundle,
        };
        Self::remote(ca, info, RotationConfig::new(DEFAULT_WORKLOAD_TTL)).await
    }

    /// Kubernetes mode: the identity from the CA `ca` (renewed at 40–50 % of its life; `rotation.ttl`
    /// is requested, the CA caps it at its workload TTL), the workload `info` (an empty
    /// namespace becomes the SVID's), and the security policies the CA serves for its
    /// namespace (fetched before this returns, with bounded retries: a replica does not serve
    /// without them; then followed with long polls, the current set kept on errors). The task
    /// ends when every holder of the identity and the policies is gone.
    pub async fn remote(
        ca: RemoteCa,
        info: WorkloadInfo,
        rotation: RotationConfig,
    ) -> Result<(Self, JoinHandle<()>), HandoffError> {
        Self::remote_with(ca, info, rotation, FollowConfig::default()).await
    }

    /// [`WorkloadMesh::remote`] with the policy follower's retries and long-poll wait.
    pub async fn remote_with(
        ca: RemoteCa,
        mut info: WorkloadInfo,
        rotation: RotationConfig,
        follow: FollowConfig,
    ) -> Result<(Self, JoinHandle<()>), HandoffError> {
        let attesters = info
            .attesters
            .iter()
            .map(|a| {
                a.parse::<SpiffeId>().map_err(|_| HandoffError::Attester {
                    path: PathBuf::from(format!("${}", issuance::ATTESTERS_ENV)),
                    value: a.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bundle = ca.bundle.clone();
        let addr = ca.addr.clone();
        let (identity, renewal) = remote_identity(ca, rotation).await?;
        if info.namespace.is_empty() {
            info.namespace = identity.current().id().namespace().to_owned();
        }
        let tls = MeshTls::new(bundle, identity);
        let fetched = first_policies(&addr, &tls, &follow).await;
        let (answer, policies) = match fetched {
            Ok(got) => got,
            Err(e) => {
                renewal.abort();
                return Err(e.into());
            }
        };
        tracing::info!(
            version = %answer.version,
            documents = split_documents(&answer.policies).len(),
            "security policies obtained from the mesh CA"
        );
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policies));
        let follower = tokio::spawn(follow_policies(
            addr,
            tls.clone(),
            answer.version,
            follow,
            policy_tx,
        ));
        let task = tokio::spawn(async move {
            let _ = tokio::join!(renewal, follower);
        });
        Ok((
            Self {
                info,
                tls,
                attesters,
                policies: policy_rx,
            },
            task,
        ))
    }
}

/// How often to look for new files: a tenth of the certificate's life, within 50 ms – 1 s.
fn poll_interval(svid: &Svid) -> Duration {
    (svid.lifetime() / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

async fn follow(
    svid_path: PathBuf,
    policy_path: PathBuf,
    bundle: Arc<TrustBundle>,
    svid_tx: watch::Sender<Arc<Svid>>,
    policy_tx: watch::Sender<Arc<Policies>>,
) {
    let mut svid_stamp = stamp(&svid_path);
    let mut policy_stamp = stamp(&policy_path);
    loop {
        let interval = poll_interval(&svid_tx.borrow());
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = async { tokio::join!(svid_tx.closed(), policy_tx.closed()); } => return,
        }
        let now = stamp(&svid_path);
        if now != svid_stamp {
            match Svid::read_private(&svid_path, &bundle) {
                Ok(svid) => {
                    svid_stamp = now;
                    tracing::debug!(not_after = ?svid.not_after(), "certificate reloaded");
                    svid_tx.send_replace(Arc::new(svid));
                }
                Err(e) => tracing::warn!("keeping the current certificate: {e}"),
            }
        }
        let now = stamp(&policy_path);
        if now != policy_stamp {
            match read_policies(&policy_path) {
                Ok(p) => {
                    policy_stamp = now;
                    tracing::info!("security policies reloaded");
                    policy_tx.send_replace(Arc::new(p));
                }
                Err(e) => tracing::warn!("keeping the current policies: {e}"),
            }
        }
    }
}
