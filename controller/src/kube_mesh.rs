//! The controller's part of the mesh in Kubernetes mode: every controller replica (leader
//! or standby) serves the mesh CA. Its root comes from the Secret (created by the first
//! replica) and is published as the root ConfigMap of the controller's namespace (routers
//! mount it); the CA authenticates workloads with TokenReviews and serves them the
//! cluster's AuthorizationPolicies and PeerAuthentications to follow.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use sluice_mesh::handoff::HandoffError;
use sluice_mesh::identity::{
    CaError, RotatingSvid, RotationConfig, SpiffeId, SpiffeIdError, SvidError, SvidIssuer,
};
use sluice_mesh::issuance::{IssueError, RemoteCa, remote_identity};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{MeshConnector, MeshTls, TlsConfigError};

use crate::kube_ca::{self, KubeCaError, TokenReviewAuthenticator};
use crate::kube_policies::PolicyWatch;
use crate::retry::{RetryError, with_retries};
use crate::runtime::kube::PodMesh;

/// Where and as whom the CA serves.
#[derive(Clone, Debug)]
pub struct MeshCaConfig {
    /// Where the CA listens (`--mesh-listen`).
    pub listen: SocketAddr,
    /// The trust domain of every identity.
    pub trust_domain: String,
    /// Life of workload certificates (and of the controller's own).
    pub cert_ttl: Duration,
    /// The controller's namespace (also the mesh's root namespace for policies).
    pub namespace: String,
    /// The controller's ServiceAccount: the identity of the CA's own certificate.
    pub service_account: String,
    /// The router's ServiceAccount: the only identity whose stats the autoscaler takes.
    pub router_service_account: String,
    /// The CA's address revision Pods are given (`sluice-ca.<namespace>.svc:15012` when
    /// absent).
    pub ca_service: Option<String>,
}

/// What serving the CA gives the rest of the controller.
#[derive(Clone, Debug)]
pub struct ControllerMesh {
    /// What revision Pods need to get their certificates.
    pub pods: PodMesh,
    /// The controller's own client identity (its scrapes of replicas' stats).
    pub scrape: MeshConnector,
    /// The controller's own identity and the mesh's trust bundle (the stats endpoint's
    /// server side).
    pub tls: MeshTls,
    /// The router's identity: the only one whose stats the autoscaler takes.
    pub router: SpiffeId,
    /// Where the CA listens.
    pub listening: SocketAddr,
}

/// Why the CA could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MeshCaError {
    /// A setting is out of range.
    #[error("{0}")]
    Config(&'static str),
    /// An identity cannot be formed from the names given.
    #[error("{field}")]
    Id {
        /// The flags that name it.
        field: &'static str,
        /// The cause.
        #[source]
        source: SpiffeIdError,
    },
    /// The listener could not be bound.
    #[error("binding the mesh CA to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The root could not be loaded.
    #[error(transparent)]
    Root(Box<RetryError<KubeCaError>>),
    /// The root could not be published.
    #[error(transparent)]
    Publish(Box<RetryError<kube::Error>>),
    /// The controller's own certificate could not be issued.
    #[error("issuing the controller's own certificate, {id}")]
    Own {
        /// The identity.
        id: SpiffeId,
        /// The cause.
        #[source]
        source: CaError,
    },
    /// The trust bundle cannot be built.
    #[error(transparent)]
    Bundle(#[from] SvidError),
    /// The controller's TLS configuration cannot be built.
    #[error("the controller's mesh TLS")]
    Tls(#[from] TlsConfigError),
}

/// Serves the CA on `config.listen` until `stopped()` resolves (retrying the API server
/// while it is not reachable yet); returns once it serves.
pub async fn serve_mesh_ca<S, Stop>(
    config: &MeshCaConfig,
    client: &Client,
    stopped: S,
) -> Result<ControllerMesh, MeshCaError>
where
    S: Fn() -> Stop,
    Stop: Future<Output = ()> + Send + 'static,
{
    if config.cert_ttl < Duration::from_secs(1) {
        return Err(MeshCaError::Config("--cert-ttl: at least 1s"));
    }
    let ns = config.namespace.as_str();
    let id = |sa: &str, field: &'static str| {
        SpiffeId::new(&config.trust_domain, ns, sa).map_err(|source| (field, source))
    };
    let ids = id(
        &config.service_account,
        "--trust-domain / --lease-namespace / --service-account",
    )
    .and_then(|server| {
        let router = id(&config.router_service_account, "--router-service-account")?;
        Ok((server, router))
    });
    let (server_id, router_id) =
        ids.map_err(|(field, source)| MeshCaError::Id { field, source })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| MeshCaError::Bind {
            addr: config.listen,
            source,
        })?;
    let ca = with_retries(
        &format!(
            "loading the mesh CA root from Secret {ns}/{}",
            kube_ca::CA_SECRET
        ),
        |e| matches!(e, KubeCaError::Api { .. }),
        || kube_ca::load_or_create(client, ns, &config.trust_domain, config.cert_ttl),
        &stopped,
    )
    .await
    .map_err(|e| MeshCaError::Root(Box::new(e)))?;
    let root_pem = ca.root_pem();
    with_retries(
        &format!(
            "publishing the mesh root as ConfigMap {ns}/{}",
            kube_ca::ROOT_CONFIGMAP
        ),
        |_| true,
        || kube_ca::apply_root_config_map(client, ns, &root_pem),
        &stopped,
    )
    .await
    .map_err(|e| MeshCaError::Publish(Box::new(e)))?;
    let local = listener.local_addr().map_err(|source| MeshCaError::Bind {
        addr: config.listen,
        source,
    })?;
    let ca = Arc::new(ca);
    let (own, _renewal) = RotatingSvid::start(
        ca.clone() as Arc<dyn SvidIssuer>,
        server_id.clone(),
        RotationConfig::new(config.cert_ttl),
    )
    .map_err(|source| MeshCaError::Own {
        id: server_id.clone(),
        source,
    })?;
    let tls = MeshTls::new(Arc::new(ca.trust_bundle()?), own);
    let scrape = OutboundMesh::new(tls.clone())?.connector().clone();
    let auth = Arc::new(TokenReviewAuthenticator::new(client.clone()));
    // Istio's security policies, watched cluster-wide and served to workloads by the CA;
    // the controller's namespace is the root namespace (mesh-wide policies).
    let policies = PolicyWatch::start(client.clone(), ns);
    let server = sluice_mesh::issuance::serve_with_policies(
        listener,
        ca,
        server_id,
        auth,
        Some(policies),
        stopped(),
    );
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("the mesh CA stopped: {e}");
        }
    });
    let pods = PodMesh {
        ca_addr: config.ca_service.clone().unwrap_or_else(|| {
            format!("sluice-ca.{ns}.svc:{}", sluice_mesh::issuance::DEFAULT_PORT)
        }),
        trust_domain: config.trust_domain.clone(),
        attesters: vec![router_id.to_string()],
        root_pem,
    };
    Ok(ControllerMesh {
        pods,
        scrape,
        tls,
        router: router_id,
        listening: local,
    })
}

/// Where the router gets its mesh identity on Kubernetes: from the controller's CA, with
/// the Pod's projected ServiceAccount token.
#[derive(Clone, Debug)]
pub struct RouterMeshConfig {
    /// `host:port` of the mesh CA.
    pub ca_addr: String,
    /// The projected ServiceAccount token (audience `sluice-ca`) sent to the CA.
    pub token_file: PathBuf,
    /// The mesh root (PEM; ConfigMap `sluice-mesh-root`).
    pub root_file: PathBuf,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Life of the router's certificate.
    pub cert_ttl: Duration,
}

/// Why the router has no mesh identity.
#[derive(Debug, thiserror::Error)]
pub enum RouterMeshError {
    /// The root file could not be read.
    #[error("reading the mesh root {} (--mesh-root-file)", path.display())]
    ReadRoot {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The root file holds no usable trust bundle.
    #[error("--mesh-root-file")]
    Root(#[source] HandoffError),
    /// The CA refused, or stopped was asked for while it could not be reached.
    #[error(transparent)]
    Issue(#[from] RetryError<IssueError>),
    /// The certificate makes no TLS configuration.
    #[error("the router's mesh TLS")]
    Tls(#[source] TlsConfigError),
}

/// The router's mesh identity: its client to replicas, its ingress's server side for mesh
/// workloads, and its SPIFFE ID.
pub struct RouterIdentity {
    /// Calls to replicas (and the autoscaler) as the router's SVID.
    pub out: OutboundMesh,
    /// Its mTLS material, for the ingress's server side: mesh workloads calling through the
    /// router (a ClientHello without SNI gets the router's SVID and must present one) have
    /// their identity travel with the request, as in local mode.
    pub tls: MeshTls,
    /// The router's SPIFFE ID.
    pub id: SpiffeId,
}

/// The router's mesh identity: its SVID from the CA, renewed in the background. Waits (with backoff) while the CA cannot be reached yet, until `stopped()`
/// resolves; a refusal is final.
pub async fn router_mesh<S, Stop>(
    config: &RouterMeshConfig,
    stopped: S,
) -> Result<RouterIdentity, RouterMeshError>
where
    S: Fn() -> Stop,
    Stop: Future<Output = ()>,
{
    let root = &config.root_file;
    let bytes = std::fs::read(root).map_err(|source| RouterMeshError::ReadRoot {
        path: root.clone(),
        source,
    })?;
    let bundle = Arc::new(
        sluice_mesh::handoff::parse_bundle(root, bytes, &config.trust_domain)
            .map_err(RouterMeshError::Root)?,
    );
    let ca = RemoteCa {
        addr: config.ca_addr.clone(),
        token_file: config.token_file.clone(),
        bundle: bundle.clone(),
    };
    // The CA may not be up yet (controllers start beside routers); a refusal is final.
    let retryable = |e: &IssueError| match e {
        IssueError::Status { status, .. } => *status >= 500,
        IssueError::Response { .. } | IssueError::Key(_) => false,
        _ => true,
    };
    let (svid, _renewal) = with_retries(
        "obtaining the router's certificate from the mesh CA",
        retryable,
        || remote_identity(ca.clone(), RotationConfig::new(config.cert_ttl)),
        stopped,
    )
    .await?;
    let id = svid.current().id().clone();
    let tls = MeshTls::new(bundle, svid);
    let out = OutboundMesh::new(tls.clone()).map_err(RouterMeshError::Tls)?;
    Ok(RouterIdentity { out, tls, id })
}
