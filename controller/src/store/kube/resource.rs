//! How Sluice's kinds map onto the Kubernetes API: group, version, plural, scope, the CRD
//! that serves each, and the errors of talking to that API.

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;
use sluice_crds::Kind;

/// The field manager of every server-side apply by the controller.
pub const FIELD_MANAGER: &str = "sluice-controller";

/// The API resource of a kind (for `Api<DynamicObject>`).
pub fn api_resource(kind: Kind) -> ApiResource {
    let (group, version) = kind
        .api_version()
        .split_once('/')
        .unwrap_or(("", kind.api_version()));
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind.name()),
        kind.plural(),
    )
}

/// The API group of a kind.
pub fn group(kind: Kind) -> &'static str {
    kind.api_version().split_once('/').map_or("", |(g, _)| g)
}

/// The name of the CustomResourceDefinition that serves a kind (`plural.group`).
pub fn crd_name(kind: Kind) -> String {
    format!("{}.{}", kind.plural(), group(kind))
}

/// Whether objects of a kind live in a namespace.
pub fn namespaced(kind: Kind) -> bool {
    kind != Kind::ClusterServingRuntime
}

/// Why a Kubernetes API request failed, said so that an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kind's CustomResourceDefinition is not installed.
    #[error("CRD {crd} is not installed (apply crds/yaml: kubectl apply -f crds/yaml)")]
    MissingCrd {
        /// `plural.group`.
        crd: String,
    },
    /// RBAC refused the request.
    #[error("forbidden: cannot {verb} {resource}: {message}")]
    Forbidden {
        /// The API verb (`get`, `list`, `watch`, `patch`, `update`, `create`, `delete`).
        verb: &'static str,
        /// `plural.group`, with `/status` for the status subresource.
        resource: String,
        /// The API server's message.
        message: String,
    },
    /// Any other failure of a request.
    #[error("cannot {verb} {resource}")]
    Api {
        /// The API verb.
        verb: &'static str,
        /// The resource.
        resource: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// No kubeconfig or in-cluster configuration could be found or used.
    #[error("cannot configure a Kubernetes client")]
    Config(#[source] Box<kube::Error>),
    /// No kubeconfig or in-cluster configuration could be found.
    #[error("cannot find a Kubernetes configuration (kubeconfig or in-cluster)")]
    Infer(#[source] Box<kube::config::InferConfigError>),
}

/// Whether an API error says the resource type does not exist (no CRD), rather than
/// that one object does not.
pub(crate) fn is_missing_type(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 404
                && (s.message.contains("could not find the requested resource")
                    || s.message.starts_with("404 page not found")
                    || s.details.as_ref().is_none_or(|d| d.name.is_empty()) && s.message.is_empty())
        }
        _ => false,
    }
}

/// The HTTP status of an API error, if it is one.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Classifies a failed request on `resource` (a missing CRD, RBAC, or other).
pub(crate) fn classify(
    verb: &'static str,
    resource: String,
    crd: Option<String>,
    e: kube::Error,
) -> KubeError {
    if let (Some(crd), true) = (crd, is_missing_type(&e)) {
        return KubeError::MissingCrd { crd };
    }
    if let kube::Error::Api(s) = &e
        && s.code == 403
    {
        return KubeError::Forbidden {
            verb,
            resource,
            message: s.message.clone(),
        };
    }
    KubeError::Api {
        verb,
        resource,
        source: Box::new(e),
    }
}

/// A stored object from the API's: `managedFields` dropped (large, and the controller
/// never reads them).
pub(crate) fn to_value(o: DynamicObject) -> Option<Value> {
    let mut v = serde_json::to_value(o).ok()?;
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_group_version_and_crd() {
        let r = api_resource(Kind::InferenceService);
        assert_eq!(
            (
                r.group.as_str(),
                r.version.as_str(),
                r.plural.as_str(),
                r.kind.as_str()
            ),
            (
                "serving.kserve.io",
                "v1beta1",
                "inferenceservices",
                "InferenceService"
            )
        );
        assert_eq!(crd_name(Kind::Revision), "revisions.serving.knative.dev");
        assert_eq!(
            crd_name(Kind::ClusterServingRuntime),
            "clusterservingruntimes.serving.kserve.io"
        );
        assert_eq!(api_resource(Kind::ServingRuntime).version, "v1alpha1");
        assert!(!namespaced(Kind::ClusterServingRuntime));
        for kind in Kind::ALL {
            let file = format!(
                "{}/../crds/yaml/{}.yaml",
                env!("CARGO_MANIFEST_DIR"),
                crd_name(kind)
            );
            assert!(std::path::Path::new(&file).exists(), "{file} missing");
        }
    }

    #[test]
    fn missing_type_forbidden_and_other_errors_are_told_apart() {
        let status = |code: u16, message: &str, reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let e = classify(
            "list",
            "inferenceservices.serving.kserve.io".into(),
            Some("inferenceservices.serving.kserve.io".into()),
            status(
                404,
                "the server could not find the requested resource",
                "NotFound",
            ),
        );
        assert_eq!(
            e.to_string(),
            "CRD inferenceservices.serving.kserve.io is not installed (apply crds/yaml: kubectl apply -f crds/yaml)"
        );
        let e = classify(
            "patch",
            "deployments.apps".into(),
            None,
            status(
                403,
                "deployments.apps \"x\" is forbidden: User \"u\" cannot patch",
                "Forbidden",
            ),
        );
        assert!(
            e.to_string()
                .starts_with("forbidden: cannot patch deployments.apps:"),
            "{e}"
        );
        let e = classify(
            "get",
            "revisions.serving.knative.dev".into(),
            None,
            status(500, "boom", "InternalError"),
        );
        assert!(matches!(e, KubeError::Api { verb: "get", .. }));
    }
}
