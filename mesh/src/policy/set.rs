//! The policies in force at one replica: its authorization engine and peer-authentication
//! set, parsed from the policy text local mode hands over or the CA serves.

use std::sync::Arc;

use super::documents::{DocumentError, PolicyDocuments};
use super::evaluate::AuthorizationEngine;
use super::peer_auth::PeerAuthenticationSet;

/// The policies in force at one replica.
#[derive(Clone, Debug)]
pub struct Policies {
    /// Authorization policies.
    pub authorization: Arc<AuthorizationEngine>,
    /// Peer authentication.
    pub peer: Arc<PeerAuthenticationSet>,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            authorization: Arc::new(AuthorizationEngine::default()),
            peer: Arc::new(PeerAuthenticationSet::new(Vec::new())),
        }
    }
}

impl Policies {
    /// Parses a policy file's text (mesh-wide policies in Istio's `istio-system`).
    pub fn parse(text: &str) -> Result<Self, Vec<DocumentError>> {
        Self::parse_in(text, super::DEFAULT_ROOT_NAMESPACE)
    }

    /// Parses policies whose mesh-wide ones live in `root_namespace` (Kubernetes mode: the
    /// controller's namespace).
    pub fn parse_in(text: &str, root_namespace: &str) -> Result<Self, Vec<DocumentError>> {
        let docs = PolicyDocuments::parse(text)?;
        Ok(Self {
            authorization: Arc::new(
                AuthorizationEngine::new(docs.authorization).with_root_namespace(root_namespace),
            ),
            peer: Arc::new(
                PeerAuthenticationSet::new(docs.peer_authentication)
                    .with_root_namespace(root_namespace),
            ),
        })
    }
}
