//! The admin API that `sluice apply`, `sluice get` and `sluice delete` talk to, and the
//! apply path `sluice up DIR` uses at start.
//!
//! `POST /v1/apply` takes manifest files (text plus the folder relative paths resolve
//! against) and applies all their documents in one transaction, or none when any is
//! invalid. `GET /v1/{kind}[/{namespace}/{name}]` reads (`?after=RV` waits for a change
//! of one object, as a long poll); `PUT` edits one object under optimistic concurrency;
//! `GET …/events` lists what happened to it; `DELETE` deletes with cascade.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sluice_core::ErrorBody;
use sluice_crds::autoscaling::ClusterConfig;
use sluice_crds::{Kind, ManifestError, parse_manifests, parse_object};
use sluice_mesh::guard::ListenerGuard;

use crate::store::{ApplyOutcome, Store, StoreError};

/// Largest apply request accepted.
pub const MAX_APPLY_BYTES: usize = 8 * 1024 * 1024;

/// One manifest file to apply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Shown in errors (usually the path as the user typed it).
    pub source: String,
    /// Absolute folder relative `storageUri`s resolve against.
    pub base_dir: PathBuf,
    /// The YAML text.
    pub text: String,
}

/// `POST /v1/apply` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// Files, applied together.
    pub files: Vec<ManifestFile>,
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// Kind name.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Created, configured or unchanged.
    pub outcome: ApplyOutcome,
    /// What the manifest asks for that is kept but not acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl std::fmt::Display for ApplyResult {
    /// kubectl's form: `inferenceservice.serving.kserve.io/iris created`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = Kind::ALL
            .into_iter()
            .find(|k| k.name() == self.kind)
            .and_then(|k| k.api_version().split_once('/'))
            .map(|(group, _)| group);
        let outcome = match self.outcome {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
            ApplyOutcome::OwnerGone => "skipped (its owner is deleted)",
        };
        match group {
            Some(group) => write!(
                f,
                "{}.{group}/{} {outcome}",
                self.kind.to_ascii_lowercase(),
                self.name
            ),
            None => write!(
                f,
                "{}/{} {outcome}",
                self.kind.to_ascii_lowercase(),
                self.name
            ),
        }
    }
}

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Some documents are invalid; nothing was applied.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ManifestError>),
    /// The store failed; nothing was applied.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// [`apply_files_with`] under upstream's default cluster settings.
pub async fn apply_files(
    store: &impl Store,
    files: &[ManifestFile],
) -> Result<Vec<ApplyResult>, ApplyError> {
    apply_files_with(store, files, &ClusterConfig::default()).await
}

/// Parses and validates every file (under the cluster's autoscaler settings `config`), then
/// applies all objects in one transaction.
pub async fn apply_files_with(
    store: &impl Store,
    files: &[ManifestFile],
    config: &ClusterConfig,
) -> Result<Vec<ApplyResult>, ApplyError> {
    let mut objects = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match parse_manifests(&file.text, &file.source, &file.base_dir, config) {
            Ok(manifests) => {
                for m in manifests {
                    objects.push((m.kind, m.object));
                    warnings.push(m.warnings);
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Invalid(errors));
    }
    let keys: Vec<(Kind, String, String)> = objects
        .iter()
        .map(|(kind, o)| {
            let meta = &o["metadata"];
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (*kind, s(&meta["namespace"]), s(&meta["name"]))
        })
        .collect();
    let outcomes = store.apply(objects).await?;
    Ok(keys
        .into_iter()
        .zip(outcomes)
        .zip(warnings)
        .map(
            |(((kind, namespace, name), outcome), warnings)| ApplyResult {
                kind: kind.name().to_owned(),
                namespace,
                name,
                outcome,
                warnings,
            },
        )
        .collect())
}

/// What the admin handlers share: the store, and the cluster settings validation uses.
struct Admin<S> {
    store: Arc<S>,
    config: ClusterConfig,
}

impl<S> Clone for Admin<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            config: self.config,
        }
    }
}

impl<S> FromRef<Admin<S>> for Arc<S> {
    fn from_ref(admin: &Admin<S>) -> Self {
        Arc::clone(&admin.store)
    }
}

/// The admin API over `store`; applies and edits are validated under `config`.
pub fn router<S: Store + Clone>(store: S, config: ClusterConfig) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/apply", post(apply::<S>))
        .route("/v1/{kind}", get(list::<S>))
        .route(
            "/v1/{kind}/{namespace}/{name}",
            get(get_one::<S>).put(update::<S>).delete(delete::<S>),
        )
        .route("/v1/{kind}/{namespace}/{name}/events", get(events::<S>))
        .layer(DefaultBodyLimit::max(MAX_APPLY_BYTES))
        .with_state(Admin {
            store: Arc::new(store),
            config,
        })
}

/// `app` behind `guard`: every request passes [`ListenerGuard::check`] (token, `Host`,
/// `Origin`, `Content-Type`) before any handler sees it.
pub fn guarded(app: Router, guard: ListenerGuard) -> Router {
    let guard = Arc::new(guard);
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let guard = Arc::clone(&guard);
            async move {
                match guard.check(req.method(), req.uri(), req.headers()) {
                    Some(refusal) => refusal.map(axum::body::Body::from),
                    None => next.run(req).await,
                }
            }
        },
    ))
}

/// `GET /`: what the API serves (where `GET /login?token=…` leads a browser).
async fn index() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": "Sluice admin API",
        "paths": [
            "POST /v1/apply",
            "GET /v1/{kind}[?namespace=NS]",
            "GET|PUT|DELETE /v1/{kind}/{namespace}/{name}",
            "GET /v1/{kind}/{namespace}/{name}/events",
            "GET /metrics",
            "GET /ui (the dashboard; a browser signs in with GET /login?token=…&next=/ui)",
        ],
    }))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

fn store_error(e: StoreError) -> Response {
    let status = match e {
        StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
        StoreError::Conflict { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, sluice_core::error_chain(&e))
}

fn unknown_kind(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "unknown kind {name:?} (known: inferenceservice/isvc, service/ksvc, configuration/config, revision/rev, route/rt, servingruntime, clusterservingruntime)"
        ),
    )
}

async fn apply<S: Store>(State(admin): State<Admin<S>>, body: axum::body::Bytes) -> Response {
    let request: ApplyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid apply request: {e}"),
            );
        }
    };
    match apply_files_with(admin.store.as_ref(), &request.files, &admin.config).await {
        Ok(results) => Json(serde_json::json!({ "results": results })).into_response(),
        Err(ApplyError::Invalid(errors)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": "invalid manifests; nothing was applied",
                "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        Err(ApplyError::Store(e)) => store_error(e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    namespace: Option<String>,
}

async fn list<S: Store>(
    State(store): State<Arc<S>>,
    Path(k): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(kind) = Kind::from_user_name(&k) else {
        return unknown_kind(&k);
    };
    match store.list(kind, q.namespace.as_deref()).await {
        Ok(items) => Json(serde_json::json!({ "items": items })).into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct GetQuery {
    /// Wait until the object's resourceVersion differs from this one (long poll).
    after: Option<String>,
    /// Longest wait in seconds (default 30, at most 60).
    timeout: Option<u64>,
}

/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(60);

async fn get_one<S: Store>(
    State(store): State<Arc<S>>,
    Path((k, ns, name)): Path<(String, String, String)>,
    Query(q): Query<GetQuery>,
) -> Response {
    let Some(kind) = Kind::from_user_name(&k) else {
        return unknown_kind(&k);
    };
    if let Some(after) = &q.after {
        let wait = q
            .timeout
            .map_or(Duration::from_secs(30), Duration::from_secs)
            .min(MAX_WAIT);
        // Subscribe before reading, so no change slips between the read and the wait.
        let mut changes = store.watch();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = match store.get(kind, &ns, &name).await {
                Ok(obj) => obj,
                Err(e) => return store_error(e),
            };
            // A missing object has the empty version: `after=` waits for it to appear.
            let version = current
                .as_ref()
                .and_then(|o| o["metadata"]["resourceVersion"].as_str())
                .unwrap_or_default();
            if version != after.as_str() {
                break;
            }
            let ours =
                |c: &crate::store::Change| c.kind == kind && c.namespace == ns && c.name == name;
            let next = tokio::time::timeout_at(deadline, async {
                loop {
                    match changes.recv().await {
                        Ok(c) if ours(&c) => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            if next.await.is_err() {
                break;
            }
        }
    }
    match store.get(kind, &ns, &name).await {
        Ok(Some(obj)) => Json(obj).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("{} {ns}/{name} not found", kind.plural()),
        ),
        Err(e) => store_error(e),
    }
}

/// `GET …/events`: what happened to one object, oldest first.
async fn events<S: Store>(
    State(store): State<Arc<S>>,
    Path((k, ns, name)): Path<(String, String, String)>,
) -> Response {
    let Some(kind) = Kind::from_user_name(&k) else {
        return unknown_kind(&k);
    };
    match store.events(kind, &ns, &name).await {
        Ok(items) => Json(serde_json::json!({ "items": items })).into_response(),
        Err(e) => store_error(e),
    }
}

/// `PUT`: replaces an object's spec, labels and annotations; the body's
/// `metadata.resourceVersion` must still be the stored one (409 otherwise).
async fn update<S: Store>(
    State(Admin { store, config }): State<Admin<S>>,
    Path((k, ns, name)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(kind) = Kind::from_user_name(&k) else {
        return unknown_kind(&k);
    };
    let object: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid object: {e}")),
    };
    let source = format!("{}/{ns}/{name}", kind.plural());
    let manifest = match parse_object(object, &source, std::path::Path::new("/"), &config) {
        Ok(m) => m,
        Err(errors) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({
                    "error": "invalid object; nothing was changed",
                    "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
            )
                .into_response();
        }
    };
    let meta = &manifest.object["metadata"];
    if manifest.kind != kind || meta["name"] != name.as_str() || meta["namespace"] != ns.as_str() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the body is not {} {ns}/{name}", kind.name()),
        );
    }
    match store.update(kind, manifest.object).await {
        Ok((outcome, _)) => Json(serde_json::json!({ "result": ApplyResult {
            kind: kind.name().to_owned(),
            namespace: ns,
            name,
            outcome,
            warnings: manifest.warnings,
        }}))
        .into_response(),
        Err(e) => store_error(e),
    }
}

async fn delete<S: Store>(
    State(store): State<Arc<S>>,
    Path((k, ns, name)): Path<(String, String, String)>,
) -> Response {
    let Some(kind) = Kind::from_user_name(&k) else {
        return unknown_kind(&k);
    };
    match store.delete(kind, &ns, &name).await {
        Ok(deleted) => Json(serde_json::json!({
            "deleted": deleted.iter().map(|c| format!("{} {}/{}", c.kind, c.namespace, c.name)).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::store::SqliteStore;

    const IRIS: &str = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
        metadata: {name: iris}\nspec:\n  predictor:\n    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: ./model\n";

    async fn call(app: Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn apply_req(files: &[(&str, &str)]) -> Request<Body> {
        let req = ApplyRequest {
            files: files
                .iter()
                .map(|(source, text)| ManifestFile {
                    source: (*source).into(),
                    base_dir: "/srv".into(),
                    text: (*text).into(),
                })
                .collect(),
        };
        Request::post("/v1/apply")
            .body(Body::from(serde_json::to_vec(&req).unwrap()))
            .unwrap()
    }

    #[tokio::test]
    async fn apply_get_and_refuse_invalid_atomically() {
        let dir = std::env::temp_dir().join(format!("sluice-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let app = router(store.clone(), ClusterConfig::default());

        let bad = IRIS
            .replace("name: iris}", "name: other}")
            .replace("modelFormat: {name: sluice-mlp}", "modelFormat: {}");
        let (status, body) = call(
            app.clone(),
            apply_req(&[("good.yaml", IRIS), ("bad.yaml", &bad)]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["errors"][0],
            "bad.yaml: document 1: spec.predictor.model.modelFormat: missing field `name`"
        );
        assert!(
            store
                .list(Kind::InferenceService, None)
                .await
                .unwrap()
                .is_empty(),
            "nothing applied"
        );

        let (status, body) = call(app.clone(), apply_req(&[("good.yaml", IRIS)])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["results"][0]["outcome"], "created");

        let (status, body) = call(
            app.clone(),
            Request::get("/v1/isvc").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["items"][0]["spec"]["predictor"]["model"]["storageUri"],
            "/srv/model"
        );

        let (status, _) = call(
            app.clone(),
            Request::get("/v1/inferenceservices/default/iris")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(
            app.clone(),
            Request::get("/v1/isvc/default/nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (
                StatusCode::NOT_FOUND,
                "inferenceservices default/nope not found"
            )
        );
        let (status, _) = call(
            app.clone(),
            Request::get("/v1/pods").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // A long poll returns once the object changes.
        let (_, obj) = call(
            app.clone(),
            Request::get("/v1/isvc/default/iris")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let waiter = tokio::spawn(call(
            app.clone(),
            Request::get(format!("/v1/isvc/default/iris?after={rv}"))
                .body(Body::empty())
                .unwrap(),
        ));
        let newer = IRIS.replace("  predictor:\n", "  predictor:\n    minReplicas: 0\n");
        let (status, _) = call(app.clone(), apply_req(&[("good.yaml", &newer)])).await;
        assert_eq!(status, StatusCode::OK);
        let (status, changed) = waiter.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_ne!(changed["metadata"]["resourceVersion"].as_str().unwrap(), rv);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn put_edits_with_optimistic_concurrency_and_validation() {
        let dir = std::env::temp_dir().join(format!("sluice-admin-put-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let app = router(store.clone(), ClusterConfig::default());
        call(app.clone(), apply_req(&[("good.yaml", IRIS)])).await;
        let (_, read) = call(
            app.clone(),
            Request::get("/v1/isvc/default/iris")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let put = |obj: &serde_json::Value| {
            Request::put("/v1/isvc/default/iris")
                .body(Body::from(obj.to_string()))
                .unwrap()
        };
        let mut edit = read.clone();
        edit["spec"]["predictor"]["canaryTrafficPercent"] = serde_json::json!(10);
        let (status, body) = call(app.clone(), put(&edit)).await;
        assert_eq!(
            (status, &body["result"]["outcome"]),
            (StatusCode::OK, &serde_json::json!("configured"))
        );
        // The same stale read again: refused.
        let (status, body) = call(app.clone(), put(&edit)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("conflict: InferenceService default/iris was modified")
        );
        // An invalid edit names its field and changes nothing.
        let (_, fresh) = call(
            app.clone(),
            Request::get("/v1/isvc/default/iris")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let mut bad = fresh.clone();
        bad["spec"]["predictor"]["canaryTrafficPercent"] = serde_json::json!(120);
        let (status, body) = call(app.clone(), put(&bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["errors"][0],
            "inferenceservices/default/iris: spec.predictor.canaryTrafficPercent: expected 0 <= 120 <= 100"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn zero_initial_scale_is_applied_only_when_the_cluster_allows_it() {
        let dir = std::env::temp_dir().join(format!("sluice-admin-zero-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let at_zero = IRIS.replace(
            "metadata: {name: iris}",
            "metadata: {name: iris, annotations: {autoscaling.knative.dev/initial-scale: \"0\"}}",
        );

        // Upstream's default: refused with Knative's message, nothing stored.
        let upstream = router(store.clone(), ClusterConfig::default());
        let (status, body) = call(upstream.clone(), apply_req(&[("z.yaml", &at_zero)])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            body["errors"][0],
            "z.yaml: document 1: metadata.annotations.autoscaling.knative.dev/initial-scale=0 \
             not allowed by cluster: invalid value: 0"
        );
        assert!(
            store
                .list(Kind::InferenceService, None)
                .await
                .unwrap()
                .is_empty()
        );

        // Allowed: applied; an edit keeping it is accepted under the same setting.
        let allowed = router(
            store.clone(),
            ClusterConfig {
                allow_zero_initial_scale: true,
            },
        );
        let (status, body) = call(allowed.clone(), apply_req(&[("z.yaml", &at_zero)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["outcome"], "created");
        let (_, read) = call(
            allowed.clone(),
            Request::get("/v1/isvc/default/iris")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            read["metadata"]["annotations"]["autoscaling.knative.dev/initial-scale"],
            "0"
        );
        let mut edit = read.clone();
        edit["metadata"]["labels"] = serde_json::json!({"team": "a"});
        let put = |obj: &serde_json::Value| {
            Request::put("/v1/isvc/default/iris")
                .body(Body::from(obj.to_string()))
                .unwrap()
        };
        let (status, body) = call(allowed.clone(), put(&edit)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // The same edit through an admin API without the setting is refused.
        let (_, read) = call(
            upstream.clone(),
            Request::get("/v1/isvc/default/iris")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let (status, body) = call(upstream.clone(), put(&read)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .ends_with("initial-scale=0 not allowed by cluster: invalid value: 0"),
            "{body}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
