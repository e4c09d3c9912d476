//! The security policies as admin API objects (`GET`/`DELETE` under
//! `/v1/authorizationpolicies` and `/v1/peerauthentications`, as `sluice get` and
//! `sluice delete` call them), and the apply-time check that a policy's `spec.selector`
//! matches some workload: one that matches none is stored (the workload may come later, as
//! in Istio) with a warning saying so.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_controller::store::Store;
use sluice_crds::Kind;
use sluice_mesh::policy::{DEFAULT_ROOT_NAMESPACE, Workload, authz, peer_auth};

use super::mesh::{PolicyApplied, PolicyStore};

/// The policy kinds by the plural the admin API names them with.
pub const PLURALS: [(&str, &str); 2] = [
    ("authorizationpolicies", authz::KIND),
    ("peerauthentications", peer_auth::KIND),
];

/// The kind a user names (`authorizationpolicy`, `authorizationpolicies`, `ap`,
/// `peerauthentication`, `pa`, optionally with `.security.istio.io`), as its admin plural.
pub fn plural_of(user: &str) -> Option<&'static str> {
    let name = user.to_ascii_lowercase();
    let name = name.strip_suffix(".security.istio.io").unwrap_or(&name);
    match name {
        "authorizationpolicy" | "authorizationpolicies" | "ap" => Some(PLURALS[0].0),
        "peerauthentication" | "peerauthentications" | "pa" => Some(PLURALS[1].0),
        _ => None,
    }
}

fn not_found(kind: &str, namespace: &str, name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": format!("{kind} {namespace}/{name} not found")})),
    )
        .into_response()
}

fn object(doc: &str) -> Value {
    serde_yaml::from_str::<Value>(doc).unwrap_or_else(|_| Value::String(doc.to_owned()))
}

/// Answers `GET /v1/<plural>[?namespace=]`, `GET` and `DELETE /v1/<plural>/<ns>/<name>` for
/// the policy kinds; `None` for every other request.
pub fn objects_api(
    store: &PolicyStore,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Response> {
    let rest = path.strip_prefix("/v1/")?;
    let mut segments = rest.split('/');
    let plural = segments.next()?;
    let kind = PLURALS.iter().find(|(p, _)| *p == plural)?.1;
    let ns_name: Vec<&str> = segments.collect();
    match (method, ns_name.as_slice()) {
        (&Method::GET, []) => {
            let namespace = query.and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("namespace="))
                    .filter(|ns| !ns.is_empty())
            });
            let items: Vec<Value> = store
                .list(kind, namespace)
                .iter()
                .map(|(_, _, doc)| object(doc))
                .collect();
            Some(axum::Json(json!({ "items": items })).into_response())
        }
        (&Method::GET, [namespace, name]) => Some(
            match store
                .list(kind, Some(namespace))
                .into_iter()
                .find(|(_, n, _)| n == name)
            {
                Some((_, _, doc)) => axum::Json(object(&doc)).into_response(),
                None => not_found(kind, namespace, name),
            },
        ),
        (&Method::DELETE, [namespace, name]) => Some(match store.delete(kind, namespace, name) {
            Ok(true) => axum::Json(json!({
                "deleted": [format!("{}.security.istio.io/{name}", kind.to_ascii_lowercase())]
            }))
            .into_response(),
            Ok(false) => not_found(kind, namespace, name),
            Err(errors) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": "cannot store policies", "errors": errors})),
            )
                .into_response(),
        }),
        _ => Some(
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(json!({"error": format!("{method} {path}: not supported for {kind}")})),
            )
                .into_response(),
        ),
    }
}

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
                    l.insert("serving.kserve.io/inferenceservice".into(), name);
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
        let Some(selector) = p.selector.as_ref().filter(|s| !s.match_labels.is_empty()) else {
            continue;
        };
        let root = p.namespace == DEFAULT_ROOT_NAMESPACE;
        let matched = workloads
            .iter()
            .any(|w| (root || w.namespace == p.namespace) && selector.matches(w));
        if !matched {
            let wanted: Vec<String> = selector
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            p.warnings.push(format!(
                "spec.selector.matchLabels ({}) matches no workload in namespace {:?}; \
                 the policy is stored and applies once such a workload exists",
                wanted.join(", "),
                p.namespace
            ));
        }
    }
}
