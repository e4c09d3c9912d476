//! Kubernetes mode's certificate issuance: the CA's HTTPS service and the workload's client.
//!
//! A workload proves who it is with its projected ServiceAccount token (audience
//! [`TOKEN_AUDIENCE`]) and sends a CSR for a key it generated itself; the key never leaves
//! the workload. The CA ([`serve`]) asks a [`TokenAuthenticator`] (TokenReview against the
//! API server in a cluster) which ServiceAccount the token belongs to, and signs the CSR for
//! `spiffe://<trust domain>/ns/<namespace>/sa/<name>`.
//!
//! Wire protocol (HTTPS, TLS 1.3; the CA presents an SVID it issued to itself; a client
//! certificate is optional, and required only for the policies of [`policies`]): `POST` [`CERTIFICATES_PATH`] with `Authorization: Bearer <token>` and
//! the JSON body [`CertificateRequest`] (at most [`MAX_BODY_BYTES`]); 200 answers
//! [`CertificateResponse`], errors answer [`ErrorBody`] with 400 (bad JSON or CSR), 401
//! (missing or refused token), 403 (a SAN other than the token's identity), 404, 405, 413
//! and 503 (authenticator unavailable).
//!
//! The workload's side is [`remote_identity`]: the first certificate, then renewal at 40–50 %
//! of its life, published to a [`crate::identity::RotatingSvid`].

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::identity::{SpiffeId, SpiffeIdError};

mod client;
pub mod policies;
mod server;

pub use client::{IssueError, RemoteCa, remote_identity, request_certificate};
pub use policies::{
    POLICIES_PATH, PoliciesResponse, PolicyObject, PolicyPublisher, PolicySnapshot, PolicySource,
};
pub use server::{serve, serve_with_policies};

/// The audience the projected ServiceAccount token must be minted for.
pub const TOKEN_AUDIENCE: &str = "sluice-ca";
/// The one path the CA serves.
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// The CA's port in a cluster (Service `sluice-ca`).
pub const DEFAULT_PORT: u16 = 15012;
/// Largest request body the CA reads (larger: 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `host:port` of the CA; when set, a replica gets its identity from the CA (Kubernetes mode).
pub const CA_ADDR_ENV: &str = "SLUICE_MESH_CA_ADDR";
/// The projected token file (audience [`TOKEN_AUDIENCE`]).
pub const TOKEN_FILE_ENV: &str = "SLUICE_MESH_TOKEN_FILE";
/// Default of [`TOKEN_FILE_ENV`].
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/sluice/mesh/token";
/// The trust bundle PEM (ConfigMap `sluice-mesh-root`, key `root-cert.pem`).
pub const ROOT_FILE_ENV: &str = "SLUICE_MESH_ROOT_FILE";
/// Default of [`ROOT_FILE_ENV`].
pub const DEFAULT_ROOT_FILE: &str = "/var/run/secrets/sluice/mesh/root-cert.pem";
/// The trust domain (default [`crate::identity::DEFAULT_TRUST_DOMAIN`]).
pub const TRUST_DOMAIN_ENV: &str = "SLUICE_TRUST_DOMAIN";
/// The former name of [`TRUST_DOMAIN_ENV`], still read (with a warning) when it is unset.
pub const DEPRECATED_TRUST_DOMAIN_ENV: &str = "SLUICE_MESH_TRUST_DOMAIN";
/// Comma-separated SPIFFE IDs trusted to attest callers (the router's).
pub const ATTESTERS_ENV: &str = "SLUICE_MESH_ATTESTERS";
/// The Pod's namespace (downward API).
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// The Pod's name (downward API).
pub const POD_NAME_ENV: &str = "POD_NAME";
/// The Knative Service of the revision.
pub const K_SERVICE_ENV: &str = "K_SERVICE";
/// The Knative Configuration of the revision.
pub const K_CONFIGURATION_ENV: &str = "K_CONFIGURATION";
/// The revision.
pub const K_REVISION_ENV: &str = "K_REVISION";

/// The ServiceAccount a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccountRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ServiceAccountRef {
    /// The SPIFFE ID of this ServiceAccount in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(trust_domain, &self.namespace, &self.name)
    }
}

/// Why a token did not authenticate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is not valid (expired, wrong audience, unknown, not a ServiceAccount's):
    /// answered 401 with this reason.
    #[error("token refused: {0}")]
    Rejected(String),
    /// The authenticator could not decide (API server unreachable): answered 503.
    #[error("token authenticator unavailable: {0}")]
    Unavailable(String),
}

/// Decides which ServiceAccount a bearer token belongs to (TokenReview in a cluster; a fixed
/// table in tests).
pub trait TokenAuthenticator: Send + Sync + 'static {
    /// Authenticates `token` (audience [`TOKEN_AUDIENCE`]).
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<ServiceAccountRef, AuthError>> + Send + 'a>>;
}

/// The request body of `POST /v1/certificates`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// One PEM `CERTIFICATE REQUEST` block.
    pub csr: String,
    /// Requested life in seconds; the CA's workload TTL when absent or higher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// The answer to a successful request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// The leaf certificate, PEM (the root is not repeated here).
    pub certificate_chain: Vec<String>,
    /// The CA's root certificates, PEM.
    pub trust_bundle: Vec<String>,
}

/// The body of every error answer (`{"error": "..."}`, naming the field or header).
pub use sluice_core::ErrorBody;
