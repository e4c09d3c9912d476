//! The apply-time check that a policy's `spec.selector` matches some workload: one that
//! matches none is stored (the workload may come later, as in Istio) with a warning saying
//! so. Used by both modes' `apply`.

use std::collections::BTreeMap;

use serde_json::Value;
use sluice_crds::Kind;
use sluice_mesh::policy::{DEFAULT_ROOT_NAMESPACE, Workload, WorkloadSelector};

use super::local::PolicyApplied;
use crate::store::Store;

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The workloads policies may select, now or once their revisions run: each Revision's
/// labels, and the labels the next revision of each Service, Configuration and
/// InferenceService component will carry.
pub async fn known_workloads<S: Store>(store: &S) -> Vec<Workload> {
    let mut out = Vec::new();
    for kind in [
        Kind::Revision,
        Kind::Service,
        Kind::Configuration,
        Kind::InferenceService,
    ] {
        let objects = match store.list(kind, None).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("cannot list {} for policy selection: {e}", kind.name());
                continue;
            }
        };
        for o in objects {
            let meta = &o["metadata"];
            let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
            let name = meta["name"].as_str().unwrap_or_default().to_owned();
            let mut l = labels(&meta["labels"]);
            match kind {
                Kind::Revision => {
                    l.insert("serving.knative.dev/revision".into(), name);
                }
                Kind::Service | Kind::Configuration => {
                    let service = l.get("serving.knative.dev/service").cloned();
                    let mut t = labels(&o["spec"]["template"]["metadata"]["labels"]);
                    if kind == Kind::Service {
                        t.insert("serving.knative.dev/service".into(), name.clone());
                        t.insert("serving.knative.dev/configuration".into(), name);
                    } else {
                        if let Some(s) = service {
                            t.insert("serving.knative.dev/service".into(), s);
                        }
                        t.insert("serving.knative.dev/configuration".into(), name);
                    }
                    l = t;
                }
                _ => {
                    l.insert(
                        sluice_crds::inference_service::INFERENCE_SERVICE_LABEL.into(),
                        name,
                    );
                    for component in ["predictor", "transformer"] {
                        let mut c = l.clone();
                        c.insert("component".into(), component.into());
                        out.push(Workload {
                            namespace: namespace.clone(),
                            labels: c,
                        });
                    }
                    continue;
                }
            }
            out.push(Workload {
                namespace,
                labels: l,
            });
        }
    }
    out
}

/// Adds a warning to each applied policy whose `spec.selector` matches none of
/// `workloads` (in its namespace, or anywhere for the root namespace).
pub fn warn_unselected(applied: &mut [PolicyApplied], workloads: &[Workload]) {
    for p in applied {
        let root = p.namespace == DEFAULT_ROOT_NAMESPACE;
        if let Some(warning) = p
            .selector
            .as_ref()
            .and_then(|s| unselected_warning(s, &p.namespace, root, workloads))
        {
            p.warnings.push(warning);
        }
    }
}

/// The warning for a policy in `namespace` whose `selector` matches none of `workloads`
/// (in its namespace, or anywhere when `namespace` is the root namespace): it is stored
/// anyway and applies once such a workload exists. `None` when it matches one, or selects
/// nothing in particular. Both modes' `apply` use it.
pub fn unselected_warning(
    selector: &WorkloadSelector,
    namespace: &str,
    root: bool,
    workloads: &[Workload],
) -> Option<String> {
    if selector.match_labels.is_empty()
        || workloads
            .iter()
            .any(|w| (root || w.namespace == namespace) && selector.matches(w))
    {
        return None;
    }
    let wanted: Vec<String> = selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Some(format!(
        "spec.selector.matchLabels ({}) matches no workload in namespace {namespace:?}; \
         the policy is stored and applies once such a workload exists",
        wanted.join(", "),
    ))
}
