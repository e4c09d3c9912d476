//! The `--kube` backend of `sluice apply/get/delete` for Istio's security policies
//! (`AuthorizationPolicy`, `PeerAuthentication`): validated here with the mesh's parser
//! (every problem with its field path, nothing applied when any document is invalid), then
//! server-side applied, listed and deleted on the API server like any other kind. The
//! controller enforces them through its mesh CA.

use ::kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use ::kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use ::kube::{Api, Client};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use sluice_controller::kube_policies::{GROUP, PolicyKind, validate_with_warnings};
use sluice_controller::store::KubeStore;
use sluice_controller::store::kube::infer_client;
use sluice_mesh::policy::documents::split_documents;
use sluice_mesh::policy::{Workload, WorkloadSelector};

/// The field manager of `sluice apply --kube` for policies.
const FIELD_MANAGER: &str = "sluice";
/// The controller's namespace in the shipped deploy/: Istio's root namespace here (policies
/// there apply mesh-wide).
const ROOT_NAMESPACE: &str = "sluice-system";
/// Where the CRDs come from when Istio is not installed.
const OPTIONAL_CRDS: &str = "deploy/optional/istio-security-crds.yaml";

/// The kind of an admin plural (`authorizationpolicies`, `peerauthentications`).
fn kind_of_plural(plural: &str) -> anyhow::Result<PolicyKind> {
    PolicyKind::ALL
        .into_iter()
        .find(|k| k.plural() == plural)
        .with_context(|| format!("{plural}: not a security policy kind"))
}

fn missing_crd(kind: PolicyKind) -> anyhow::Error {
    anyhow::anyhow!(
        "the CRD {} is not installed in this cluster: install Istio, or (where Istio is not \
         installed) `kubectl apply -f {OPTIONAL_CRDS}`",
        kind.crd_name()
    )
}

/// Whether `e` is the API server's 404 for a resource it does not serve (no CRD), as
/// opposed to an object that does not exist.
async fn crd_missing(client: &Client, kind: PolicyKind, e: &::kube::Error) -> bool {
    if !matches!(e, ::kube::Error::Api(s) if s.code == 404) {
        return false;
    }
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
    matches!(
        api.list(&ListParams::default().limit(1)).await,
        Err(::kube::Error::Api(s)) if s.code == 404
    )
}

/// One validated document, ready to apply.
pub struct Validated {
    kind: PolicyKind,
    resource: ApiResource,
    namespace: String,
    name: String,
    body: Value,
    /// Fields kept but not acted on.
    warnings: Vec<String>,
    /// `spec.selector.matchLabels`, when it names any.
    selector: Option<WorkloadSelector>,
}

/// Validates every policy document of `text`; all or nothing (the error lists every problem
/// with its document number and field path).
pub fn validate_all(text: &str) -> anyhow::Result<Vec<Validated>> {
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
        bail!("nothing applied: {}", errors.join("; "))
    }
}

/// Server-side applies validated policies ([`validate_all`]); prints one line per object,
/// kubectl style (`created`, `configured`, `unchanged`).
pub async fn apply(docs: Vec<Validated>) -> anyhow::Result<()> {
    if docs.is_empty() {
        return Ok(());
    }
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let workloads = if docs.iter().any(|d| d.selector.is_some()) {
        sluice_controller::policies::known_workloads(&KubeStore::new(client.clone())).await
    } else {
        Vec::new()
    };
    for doc in docs {
        for w in doc
            .warnings
            .iter()
            .chain(unselected(&doc, &workloads).iter())
        {
            eprintln!("Warning: {}/{}: {w}", doc.kind.name(), doc.name);
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &doc.namespace, &doc.resource);
        let before = match api.get_opt(&doc.name).await {
            Ok(o) => o.and_then(|o| o.metadata.resource_version),
            Err(e) if crd_missing(&client, doc.kind, &e).await => {
                return Err(missing_crd(doc.kind));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading {} {}/{}",
                    doc.kind.name(),
                    doc.namespace,
                    doc.name
                )));
            }
        };
        let after = api
            .patch(
                &doc.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&doc.body),
            )
            .await
            .with_context(|| {
                format!(
                    "applying {} {}/{}",
                    doc.kind.name(),
                    doc.namespace,
                    doc.name
                )
            })?
            .metadata
            .resource_version;
        let outcome = match before {
            None => "created",
            Some(rv) if Some(&rv) == after.as_ref() => "unchanged",
            Some(_) => "configured",
        };
        println!(
            "{}.{GROUP}/{} {outcome}",
            doc.kind.name().to_ascii_lowercase(),
            doc.name
        );
    }
    Ok(())
}

/// A warning when the policy's selector matches none of `workloads` (in its namespace, or
/// anywhere for the root namespace): stored anyway, it applies once such a workload exists.
fn unselected(doc: &Validated, workloads: &[Workload]) -> Option<String> {
    let root = doc.namespace == ROOT_NAMESPACE;
    sluice_controller::policies::unselected_warning(
        doc.selector.as_ref()?,
        &doc.namespace,
        root,
        workloads,
    )
}

/// `GET` of the admin API's shape: one object, or `{"items": [...]}` (one namespace or all).
pub async fn get(
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<Value> {
    let kind = kind_of_plural(plural)?;
    let client = infer_client().await.context("connecting to Kubernetes")?;
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
        Ok(value) => Ok(value?),
        Err(e) if crd_missing(&client, kind, &e).await => Err(missing_crd(kind)),
        Err(::kube::Error::Api(s)) if s.code == 404 => bail!(
            "{} {}/{} not found",
            kind.name(),
            namespace.unwrap_or_default(),
            name.unwrap_or_default()
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {plural}"))),
    }
}

/// Deletes one policy; prints what was deleted.
pub async fn delete(plural: &str, namespace: &str, name: &str) -> anyhow::Result<()> {
    let kind = kind_of_plural(plural)?;
    let client = infer_client().await.context("connecting to Kubernetes")?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &kind.api_resource());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            println!(
                "deleted {}.{GROUP}/{name}",
                kind.name().to_ascii_lowercase()
            );
            Ok(())
        }
        Err(e) if crd_missing(&client, kind, &e).await => Err(missing_crd(kind)),
        Err(::kube::Error::Api(s)) if s.code == 404 => {
            bail!("{} {namespace}/{name} not found", kind.name())
        }
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("deleting {} {namespace}/{name}", kind.name())))
        }
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
