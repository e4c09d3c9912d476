//! Local mode's identities for the `sluice up` process: the CA kept in the state directory
//! (`state_dir/mesh/ca`) and the SVIDs of the router, the activator and the control plane,
//! each renewed at half its life. Replicas get theirs through [`crate::handoff`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::identity::{
    CaConfig, CaError, CertificateAuthority, RotatingSvid, RotationConfig, SpiffeId, SpiffeIdError,
    SvidError, SvidIssuer, files,
};
use crate::outbound::OutboundMesh;
use crate::tls::{MeshTls, TlsConfigError};

/// Namespace of Sluice's own workloads' identities.
pub const SYSTEM_NAMESPACE: &str = "sluice-system";

/// Why the local identities could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalIdentityError {
    /// The mesh directory could not be made private.
    #[error("cannot prepare {dir}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: files::FileError,
    },
    /// The CA settings are invalid, or the CA cannot be loaded or issue.
    #[error("the mesh CA in {dir}")]
    Ca {
        /// The CA's directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: CaError,
    },
    /// A workload name does not make a SPIFFE ID.
    #[error(transparent)]
    Id(#[from] SpiffeIdError),
    /// The trust bundle cannot be built.
    #[error(transparent)]
    Bundle(#[from] SvidError),
    /// The outbound TLS configuration cannot be built.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

/// The mesh material of the `sluice up` process.
pub struct LocalIdentities {
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

impl LocalIdentities {
    /// Loads (or creates) the CA in `state_dir/mesh/ca` and issues the process's SVIDs,
    /// which live `ttl`.
    pub fn start(
        state_dir: &Path,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<Self, LocalIdentityError> {
        let dir = state_dir.join("mesh");
        files::private_dir(&dir).map_err(|source| LocalIdentityError::Dir {
            dir: dir.clone(),
            source,
        })?;
        let mut config = CaConfig::new(trust_domain, dir.join("ca"));
        config.workload_ttl = ttl;
        let ca_error = |source| LocalIdentityError::Ca {
            dir: config.dir.clone(),
            source,
        };
        config.validate().map_err(ca_error)?;
        let ca = Arc::new(CertificateAuthority::load_or_create(&config).map_err(ca_error)?);
        let rotation = RotationConfig::new(ttl);
        let identity = |sa: &str| -> Result<MeshTls, LocalIdentityError> {
            let id = SpiffeId::new(ca.trust_domain(), SYSTEM_NAMESPACE, sa)?;
            let issuer = ca.clone() as Arc<dyn SvidIssuer>;
            let (svid, _renewer) =
                RotatingSvid::start(issuer, id, rotation.clone()).map_err(ca_error)?;
            Ok(MeshTls::new(Arc::new(ca.trust_bundle()?), svid))
        };
        let router = identity("router")?;
        let activator = identity("activator")?;
        let control = identity("controller")?;
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
