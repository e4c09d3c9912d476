//! Istio security policy: `PeerAuthentication` (who must use mTLS) and
//! `AuthorizationPolicy` (who may call what), parsed from the upstream manifests unchanged,
//! validated with field paths, and evaluated as SEMANTICS.md §6 describes.

pub mod authz;
pub mod documents;
pub mod evaluate;
mod manifest;
pub mod matching;
pub mod peer_auth;
mod set;

use std::collections::BTreeMap;

pub use authz::{Action, AuthorizationPolicy};
pub use documents::{DocumentError, PolicyDocuments, partition};
pub use evaluate::{AuthorizationEngine, Decision, RequestAttributes};
pub use manifest::{FieldError, ObjectMeta, ValidationError, WorkloadSelector};
pub use peer_auth::{PeerAuthentication, PeerAuthenticationSet};
pub use set::Policies;

/// Istio's root namespace: policies there apply to the whole mesh.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The status code of an authorization denial.
pub const DENIED_STATUS: http::StatusCode = http::StatusCode::FORBIDDEN;
/// The body of an authorization denial, as Istio's proxies send it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The response for a denied request: 403 `RBAC: access denied`.
pub fn denied_response() -> http::Response<String> {
    let mut response = http::Response::new(DENIED_BODY.to_owned());
    *response.status_mut() = DENIED_STATUS;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// A workload a policy may select: its namespace and pod labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Labels (Knative adds `serving.knative.dev/service`, `…/revision`, …).
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// A workload in `namespace` with `labels`.
    pub fn new<'a>(namespace: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}
