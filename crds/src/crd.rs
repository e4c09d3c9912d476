//! CustomResourceDefinition YAML for every kind, generated from the kind table and checked
//! in under `crds/yaml/` (a test fails when the checked-in files drift; run it with
//! `SLUICE_BLESS_CRDS=1` to rewrite them). Schemas are structural with the spec and status
//! kept as given (`x-kubernetes-preserve-unknown-fields`), as Sluice validates them itself
//! with upstream's rules and messages.

use serde_json::{Value, json};

use crate::Kind;

fn column(name: &str, type_: &str, path: &str) -> Value {
    json!({"name": name, "type": type_, "jsonPath": path})
}

fn printer_columns(kind: Kind) -> Vec<Value> {
    let ready = column(
        "Ready",
        "string",
        ".status.conditions[?(@.type==\"Ready\")].status",
    );
    let reason = column(
        "Reason",
        "string",
        ".status.conditions[?(@.type==\"Ready\")].reason",
    );
    let url = column("URL", "string", ".status.url");
    let age = column("Age", "date", ".metadata.creationTimestamp");
    let predictor = |filter: &str, field: &str| {
        format!(".status.components.predictor.traffic[?(@.{filter})].{field}")
    };
    match kind {
        Kind::InferenceService => vec![
            url,
            ready,
            column("Prev", "integer", &predictor("tag=='prev'", "percent")),
            column(
                "Latest",
                "integer",
                &predictor("latestRevision==true", "percent"),
            ),
            column(
                "PrevRolledoutRevision",
                "string",
                &predictor("tag=='prev'", "revisionName"),
            ),
            column(
                "LatestReadyRevision",
                "string",
                &predictor("latestRevision==true", "revisionName"),
            ),
            age,
        ],
        Kind::Service => vec![
            url,
            column(
                "LatestCreated",
                "string",
                ".status.latestCreatedRevisionName",
            ),
            column("LatestReady", "string", ".status.latestReadyRevisionName"),
            ready,
            reason,
        ],
        Kind::Configuration => vec![
            column(
                "LatestCreated",
                "string",
                ".status.latestCreatedRevisionName",
            ),
            column("LatestReady", "string", ".status.latestReadyRevisionName"),
            ready,
            reason,
        ],
        Kind::Revision => vec![
            column(
                "Config Name",
                "string",
                ".metadata.labels['serving\\.knative\\.dev/configuration']",
            ),
            column(
                "Generation",
                "string",
                ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']",
            ),
            ready,
            reason,
            column("Actual Replicas", "integer", ".status.actualReplicas"),
            column("Desired Replicas", "integer", ".status.desiredReplicas"),
        ],
        Kind::Route => vec![url, ready, reason],
        Kind::ServingRuntime | Kind::ClusterServingRuntime => vec![
            column("Disabled", "boolean", ".spec.disabled"),
            column("ModelType", "string", ".spec.supportedModelFormats[*].name"),
            column("Containers", "string", ".spec.containers[*].name"),
            age,
        ],
    }
}

fn short_names(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::InferenceService => vec!["isvc"],
        Kind::Service => vec!["kservice", "ksvc"],
        Kind::Configuration => vec!["config", "cfg"],
        Kind::Revision => vec!["rev"],
        Kind::Route => vec!["rt"],
        Kind::ServingRuntime | Kind::ClusterServingRuntime => vec![],
    }
}

/// The CRD object for `kind`.
pub fn crd(kind: Kind) -> Value {
    let (group, version) = kind
        .api_version()
        .split_once('/')
        .unwrap_or((kind.api_version(), ""));
    let preserved = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let categories: Vec<&str> = if group == "serving.knative.dev" {
        vec!["all", "knative", "serving"]
    } else {
        vec![]
    };
    let mut names = json!({
        "kind": kind.name(),
        "listKind": format!("{}List", kind.name()),
        "plural": kind.plural(),
        "singular": kind.name().to_ascii_lowercase(),
    });
    if !short_names(kind).is_empty() {
        names["shortNames"] = json!(short_names(kind));
    }
    if !categories.is_empty() {
        names["categories"] = json!(categories);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{group}", kind.plural()),
            "labels": {"app.kubernetes.io/part-of": "sluice"},
        },
        "spec": {
            "group": group,
            "names": names,
            "scope": if kind.cluster_scoped() { "Cluster" } else { "Namespaced" },
            "versions": [{
                "name": version,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": printer_columns(kind),
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": preserved,
                        "status": preserved,
                    },
                }},
            }],
        },
    })
}

/// The checked-in file name of `kind`'s CRD: `<plural>.<group>.yaml`.
pub fn file_name(kind: Kind) -> String {
    let group = kind.api_version().split_once('/').map_or("", |(g, _)| g);
    format!("{}.{group}.yaml", kind.plural())
}

/// The YAML text of `kind`'s CRD, with a generated-file header.
pub fn crd_yaml(kind: Kind) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated by sluice-crds (crds/src/crd.rs); do not edit. Regenerate with\n\
         # SLUICE_BLESS_CRDS=1 cargo test -p sluice-crds crd_yaml_is_checked_in\n{}",
        serde_yaml::to_string(&crd(kind))?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_yaml_is_checked_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
        let bless = std::env::var_os("SLUICE_BLESS_CRDS").is_some();
        for kind in Kind::ALL {
            let want = crd_yaml(kind).unwrap();
            let path = dir.join(file_name(kind));
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &want).unwrap();
            }
            let have = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (regenerate with SLUICE_BLESS_CRDS=1)",
                    path.display()
                )
            });
            assert_eq!(
                have,
                want,
                "{} drifted from the types; regenerate with SLUICE_BLESS_CRDS=1",
                path.display()
            );
        }
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(
            files,
            Kind::ALL.len(),
            "a stale CRD file lies in {}",
            dir.display()
        );
    }

    #[test]
    fn isvc_columns_are_kserves() {
        let c = crd(Kind::InferenceService);
        let names: Vec<&str> = c["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "URL",
                "Ready",
                "Prev",
                "Latest",
                "PrevRolledoutRevision",
                "LatestReadyRevision",
                "Age"
            ]
        );
        assert_eq!(crd(Kind::ClusterServingRuntime)["spec"]["scope"], "Cluster");
    }
}
