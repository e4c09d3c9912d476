//! Istio's security policies (`AuthorizationPolicy`, `PeerAuthentication`) on the API server,
//! for the `--kube` backend of `sluice apply/get/delete`: validated with the mesh's parser
//! (every problem with its field path, nothing applied when any document is invalid), then
//! server-side applied, listed and deleted like any other kind. The controller enforces
//! them through its mesh CA ([`crate::kube_policies`]).

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_mesh::policy::documents::split_documents;
use sluice_mesh::policy::{Workload, WorkloadSelector};

use crate::kube_policies::{GROUP, PolicyKind, validate_with_warnings};
use crate::policies::{known_workloads, unselected_warning};
use crate::store::KubeStore;

/// The field manager of `sluice apply --kube` for policies.
const FIELD_MANAGER: &str = "sluice";
/// The controller's namespace in the shipped deploy/: Istio's root namespace here (policies
/// there apply mesh-wide).
pub const ROOT_NAMESPACE: &str = "sluice-system";
/// Where the CRDs come from when Istio is not installed.
pub const OPTIONAL_CRDS: &str = "deploy/optional/istio-security-crds.yaml";

/// Why a policy could not be applied, read or deleted.
#[derive(Debug, thiserror::Error)]
pub enum KubePolicyError {
    /// Some documents are invalid: each problem with its document number and field path.
    #[error("nothing applied: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The plural names no security policy kind.
    #[error("{0}: not a security policy kind")]
    NotAPolicyKind(String),
    /// The kind's CRD is not installed.
    #[error(
        "the CRD {crd} is not installed in this cluster: install Istio, or (where Istio is not installed) `kubectl apply -f {OPTIONAL_CRDS}`"
    )]
    MissingCrd {
        /// The CRD's name.
        crd: String,
    },
    /// No such object.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The API server failed or refused.
    #[error("{what}")]
    Api {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// An answer does not serialize.
    #[error("{what}")]
    Json {
        /// What was being read.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// One validated document, ready to apply.
#[derive(Clone, Debug)]
pub struct Validated {
    /// Its kind.
    pub kind: PolicyKind,
    resource: ApiResource,
    /// Its namespace (`default` when the document names none).
    pub namespace: String,
    /// Its name.
    pub name: String,
    body: Value,
    /// Fields kept but not acted on.
    pub warnings: Vec<String>,
    /// `spec.selector.matchLabels`, when it names any.
    selector: Option<WorkloadSelector>,
}

/// What applying one document did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its kind.
    pub kind: PolicyKind,
    /// Its name.
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub outcome: &'static str,
    /// Fields kept but not acted on, and a selector matching no workload.
    pub warnings: Vec<String>,
}

/// The kind of an admin plural (`authorizationpolicies`, `peerauthentications`).
pub fn kind_of_plural(plural: &str) -> Result<PolicyKind, KubePolicyError> {
    PolicyKind::ALL
        .into_iter()
        .find(|k| k.plural() == plural)
        .ok_or_else(|| KubePolicyError::NotAPolicyKind(plural.to_owned()))
}

fn missing_crd(kind: PolicyKind) -> KubePolicyError {
    KubePolicyError::MissingCrd {
        crd: kind.crd_name(),
    }
}

/// Whether `e` is the API server's 404 for a resource it does not serve (no CRD), as
/// opposed to an object that does not exist.
async fn crd_missing(client: &Client, kind: PolicyKind, e: &kube::Error) -> bool {
    if !matches!(e, kube::Error::Api(s) if s.code == 404) {
        return false;
    }
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
    matches!(
        api.list(&ListParams::default().limit(1)).await,
        Err(kube::Error::Api(s)) if s.code == 404
    )
}

/// Validates every policy document of `text`; all or nothing (the error lists every problem
/// with its document number and field path).
pub fn validate_all(text: &str) -> Result<Vec<Validated>, KubePolicyError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        let n = i + 1;
        let value: Value = match serde_yaml::from_str(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("policy document {n}: not YAML: {e}"));
                continue;
            }
        };
        let Some(kind) = value["kind"].as_str().and_then(PolicyKind::from_kind) else {
            errors.push(format!("policy document {n}: kind: not a security policy"));
            continue;
        };
        match validate_with_warnings(kind, &value) {
            Ok((policy, warnings)) => {
                let api_version = value["apiVersion"].as_str().unwrap_or_default();
                let version = api_version
                    .strip_prefix(&format!("{GROUP}/"))
                    .unwrap_or(kind.version());
                let resource = ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk(GROUP, version, kind.name()),
                    kind.plural(),
                );
                let mut body = value.clone();
                body["metadata"]["namespace"] = json!(policy.namespace);
                let selector =
                    serde_json::from_value::<WorkloadSelector>(value["spec"]["selector"].clone())
                        .ok()
                        .filter(|s| !s.match_labels.is_empty());
                out.push(Validated {
                    kind,
                    resource,
                    namespace: policy.namespace,
                    name: policy.name,
                    body,
                    warnings,
                    selector,
                });
            }
            Err(e) => errors.push(format!("policy document {n}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(KubePolicyError::Invalid(errors))
    }
}

/// A warning when the policy's selector matches none of `workloads` (in its namespace, or
/// anywhere for the root namespace): stored anyway, it applies once such a workload exists.
pub fn unselected(doc: &Validated, workloads: &[Workload]) -> Option<String> {
    let root = doc.namespace == ROOT_NAMESPACE;
    unselected_warning(doc.selector.as_ref()?, &doc.namespace, root, workloads)
}

/// Server-side applies validated policies ([`validate_all`]), one after the other.
pub async fn apply(client: &Client, docs: Vec<Validated>) -> Result<Vec<Applied>, KubePolicyError> {
    let workloads = if docs.iter().any(|d| d.selector.is_some()) {
        known_workloads(&KubeStore::new(client.clone())).await
    } else {
        Vec::new()
    };
    let mut results = Vec::with_capacity(docs.len());
    for doc in docs {
        let what =
            |verb: &str| format!("{verb} {} {}/{}", doc.kind.name(), doc.namespace, doc.name);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &doc.namespace, &doc.resource);
        let before = match api.get_opt(&doc.name).await {
            Ok(o) => o.and_then(|o| o.metadata.resource_version),
            Err(e) if crd_missing(client, doc.kind, &e).await => return Err(missing_crd(doc.kind)),
            Err(source) => {
                return Err(KubePolicyError::Api {
                    what: what("reading"),
                    source,
                });
            }
        };
        let after = api
            .patch(
                &doc.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&doc.body),
            )
            .await
            .map_err(|source| KubePolicyError::Api {
                what: what("applying"),
                source,
            })?
            .metadata
            .resource_version;
        let outcome = match before {
            None => "created",
            Some(rv) if Some(&rv) == after.as_ref() => "unchanged",
            Some(_) => "configured",
        };
        let mut warnings = doc.warnings.clone();
        warnings.extend(unselected(&doc, &workloads));
        results.push(Applied {
            kind: doc.kind,
            name: doc.name,
            outcome,
            warnings,
        });
    }
    Ok(results)
}

/// `GET` of the admin API's shape: one object, or `{"items": [...]}` (one namespace or all).
pub async fn get(
    client: &Client,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<Value, KubePolicyError> {
    let kind = kind_of_plural(plural)?;
    let ar = kind.api_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let result = match name {
        Some(name) => api.get(name).await.map(serde_json::to_value),
        None => api
            .list(&ListParams::default())
            .await
            .map(|list| serde_json::to_value(&list.items).map(|items| json!({ "items": items }))),
    };
    match result {
        Ok(value) => value.map_err(|source| KubePolicyError::Json {
            what: format!("reading {plural}"),
            source,
        }),
        Err(e) if crd_missing(client, kind, &e).await => Err(missing_crd(kind)),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(KubePolicyError::NotFound {
            kind: kind.name(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: name.unwrap_or_default().to_owned(),
        }),
        Err(source) => Err(KubePolicyError::Api {
            what: format!("reading {plural}"),
            source,
        }),
    }
}

/// Deletes one policy; returns its kind.
pub async fn delete(
    client: &Client,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<PolicyKind, KubePolicyError> {
    let kind = kind_of_plural(plural)?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(kind),
        Err(e) if crd_missing(client, kind, &e).await => Err(missing_crd(kind)),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(KubePolicyError::NotFound {
            kind: kind.name(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        Err(source) => Err(KubePolicyError::Api {
            what: format!("deleting {} {namespace}/{name}", kind.name()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_validated_with_field_paths_before_anything_is_applied() {
        let ok = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: AUDIT, selector: {matchLabels: {app: web}}}\n";
        let docs = validate_all(ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].warnings.len(), 1, "{:?}", docs[0].warnings);
        assert!(
            docs[0].warnings[0].contains("AUDIT"),
            "{:?}",
            docs[0].warnings
        );
        // Its selector matches no workload of `default`: a warning; one that matches: none.
        let web = Workload::new("default", [("app", "web")]);
        let elsewhere = Workload::new("team-a", [("app", "web")]);
        let warning = unselected(&docs[0], std::slice::from_ref(&elsewhere));
        assert!(warning.is_some_and(|w| w.contains("app=web")));
        assert_eq!(unselected(&docs[0], &[web]), None);
        assert_eq!(docs[0].namespace, "default");
        assert_eq!(docs[0].resource.version, "v1beta1");
        assert_eq!(docs[0].body["metadata"]["namespace"], "default");
        let bad = format!(
            "{ok}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: b}}\nspec: {{action: MAYBE}}\n"
        );
        let error = validate_all(&bad).err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.starts_with("nothing applied: policy document 2:")
                && error.contains("spec.action"),
            "{error}"
        );
    }
}
