//! Local mode's security policies on the admin API: served as objects (`GET`/`DELETE`
//! under `/v1/authorizationpolicies` and `/v1/peerauthentications`, as `sluice get` and
//! `sluice delete` call them), and taken out of `POST /v1/apply` bodies to be stored in the
//! [`PolicyStore`] while the rest goes on to the controller's apply.

use std::sync::Arc;

use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_core::ErrorBody;
use sluice_mesh::policy::{authz, peer_auth};

use super::local::{PolicyStore, results_json, split_policies};
use super::workloads::{known_workloads, warn_unselected};
use crate::admin::ApplyRequest;
use crate::store::Store;

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
        axum::Json(ErrorBody::new(format!(
            "{kind} {namespace}/{name} not found"
        ))),
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
                axum::Json(ErrorBody::new("cannot store policies").with_errors(errors)),
            )
                .into_response(),
        }),
        _ => Some(
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(ErrorBody::new(format!(
                    "{method} {path}: not supported for {kind}"
                ))),
            )
                .into_response(),
        ),
    }
}

/// Admin middleware: `POST /v1/apply` bodies have their security policies taken out,
/// stored and published here (with a warning for a selector matching no workload of
/// `store`); the rest goes on to the controller's apply. The policies are also served as
/// objects (`GET`, `DELETE`, see [`super::policies::objects_api`]).
pub async fn apply_policies<S: Store>(
    policies: Arc<PolicyStore>,
    store: S,
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    if let Some(resp) = objects_api(&policies, req.method(), req.uri().path(), req.uri().query()) {
        return resp;
    }
    if req.method() != axum::http::Method::POST || req.uri().path() != "/v1/apply" {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "apply body too large").into_response();
    };
    let Ok(mut request) = serde_json::from_slice::<ApplyRequest>(&bytes) else {
        // Not ours to judge: the controller names what is wrong.
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    };
    let (rest, policy_text) = split_policies(&request.files);
    if policy_text.is_empty() {
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    }
    let mut applied = match policies.apply(&policy_text) {
        Ok(a) => a,
        Err(errors) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(ErrorBody::new("invalid security policy").with_errors(errors)),
            )
                .into_response();
        }
    };
    let mut results = Vec::new();
    if !rest.is_empty() {
        request.files = rest;
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let resp = next
            .run(Request::from_parts(parts, axum::body::Body::from(body)))
            .await;
        let (p, b) = resp.into_parts();
        let Ok(b) = axum::body::to_bytes(b, 64 * 1024 * 1024).await else {
            return (StatusCode::BAD_GATEWAY, "apply answer too large").into_response();
        };
        if !p.status.is_success() {
            return Response::from_parts(p, axum::body::Body::from(b));
        }
        let mut json: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        if let Some(list) = json["results"].as_array_mut() {
            results = std::mem::take(list);
        }
    }
    // After the rest is stored, so workloads applied together with the policy count.
    warn_unselected(&mut applied, &known_workloads(&store).await);
    results.extend(results_json(&applied));
    axum::Json(serde_json::json!({ "results": results })).into_response()
}
