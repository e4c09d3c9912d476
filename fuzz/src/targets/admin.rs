//! The admin API's request bodies, through its real axum router (`controller::admin::router`)
//! over a store that keeps nothing: `POST /v1/apply` (the JSON `ApplyRequest`, then every
//! file's manifests), `PUT /v1/{kind}/{ns}/{name}` (one JSON object, validated and checked
//! against the path), and the other routes' paths and queries. The input is a request line
//! (`METHOD /path?query`), a newline, then the body.
//!
//! Not fuzzed: `GET …?after=` (a long poll that waits for a change by design; the query is
//! dropped), and the guard in front of the API (the `admin-guard` target).

use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Uri, header};
use http_body_util::BodyExt;
use sluice_controller::admin;
use sluice_controller::store::{ApplyOutcome, Change, Event, Store, StoreError};
use sluice_crds::Kind;
use sluice_crds::autoscaling::ClusterConfig;
use tokio::sync::broadcast;
use tower::ServiceExt;

use super::target::Target;

/// Paths, kinds and the bodies' field names.
const DICTIONARY: &[&str] = &[
    "POST /v1/apply\n",
    "PUT /v1/isvc/default/iris\n",
    "PUT /v1/ksvc/default/hello\n",
    "GET /v1/route?namespace=default\n",
    "DELETE /v1/config/default/hello\n",
    "/v1/",
    "inferenceservice",
    "service",
    "configuration",
    "revision",
    "route",
    "servingruntime",
    "clusterservingruntime",
    "/default/",
    "\"files\"",
    "\"source\"",
    "\"base_dir\"",
    "\"text\"",
    "\"apiVersion\"",
    "\"kind\"",
    "\"metadata\"",
    "\"name\"",
    "\"namespace\"",
    "\"resourceVersion\"",
    "\"spec\"",
    "\"serving.knative.dev/v1\"",
    "\"serving.kserve.io/v1beta1\"",
    "\"Service\"",
    "\"InferenceService\"",
    "\\n",
    "apiVersion: serving.knative.dev/v1\\nkind: Service\\n",
    "---\\n",
    "[]",
    "{}",
    "null",
    "%2F",
    "?",
    "&",
];

/// The admin API (`sluice apply`, `sluice promote`/`rollback` edits, `sluice delete`).
pub const ADMIN: Target = Target {
    name: "admin-api",
    about: "admin API requests (request line, newline, JSON body) through \
            controller::admin::router: apply bodies, PUT edits, kind/namespace/name paths",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: || ADMIN_API.with(|api| api.as_ref().map(|_| ()).map_err(Clone::clone)),
    run: |input| {
        let (line, body) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (&input[..i], &input[i + 1..]),
            None => (input, &[][..]),
        };
        let Some(request) = request(line, body) else {
            return "not a request line".to_owned();
        };
        ADMIN_API.with(|api| {
            let Ok((runtime, router)) = api else {
                return super::target::NO_FIXTURE.to_owned();
            };
            runtime.block_on(async {
                let call = router.clone().oneshot(request);
                let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(5), call).await
                else {
                    return "no answer within 5 s".to_owned();
                };
                let status = response.status();
                let body = match response.into_body().collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                    Err(e) => e.to_string(),
                };
                format!("{status} {body}")
            })
        })
    },
};

thread_local! {
    /// A runtime to drive the router in, and the router (on the fuzzing thread).
    static ADMIN_API: Result<(tokio::runtime::Runtime, axum::Router), String> =
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|runtime| (runtime, admin::router(NullStore::default(), ClusterConfig::default())))
            .map_err(|e| format!("a current-thread runtime: {e}"));
}

/// The request a client would send: method and URI from `line` (a line hyper would refuse
/// gives `None`), the JSON content type, `body`.
fn request(line: &[u8], body: &[u8]) -> Option<Request<Body>> {
    let line = std::str::from_utf8(line).ok()?;
    let (method, target) = line.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let mut uri: Uri = target.parse().ok()?;
    if uri.scheme().is_some() || !target.starts_with('/') {
        return None;
    }
    if method == Method::GET && uri.query().is_some_and(|q| q.contains("after")) {
        uri = uri.path().parse().ok()?;
    }
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .ok()
}

/// A store that accepts every write and keeps nothing: the handlers' decoding and
/// validation run as they do over SQLite, without the disk.
#[derive(Clone)]
struct NullStore {
    changes: broadcast::Sender<Change>,
}

impl Default for NullStore {
    fn default() -> Self {
        Self {
            changes: broadcast::channel(1).0,
        }
    }
}

impl Store for NullStore {
    async fn get(
        &self,
        _: Kind,
        _: &str,
        _: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(None)
    }

    async fn list(&self, _: Kind, _: Option<&str>) -> Result<Vec<serde_json::Value>, StoreError> {
        Ok(Vec::new())
    }

    async fn apply(
        &self,
        objects: Vec<(Kind, serde_json::Value)>,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        Ok(vec![ApplyOutcome::Created; objects.len()])
    }

    async fn update(
        &self,
        _: Kind,
        object: serde_json::Value,
    ) -> Result<(ApplyOutcome, serde_json::Value), StoreError> {
        Ok((ApplyOutcome::Configured, object))
    }

    async fn update_status(
        &self,
        _: Kind,
        object: &serde_json::Value,
        _: serde_json::Value,
    ) -> Result<serde_json::Value, StoreError> {
        Ok(object.clone())
    }

    async fn update_statuses(
        &self,
        writes: Vec<(Kind, serde_json::Value, serde_json::Value)>,
        _: Vec<Event>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        Ok(writes.iter().map(|_| Ok(())).collect())
    }

    async fn record_events(&self, _: Vec<Event>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn events(&self, _: Kind, _: &str, _: &str) -> Result<Vec<Event>, StoreError> {
        Ok(Vec::new())
    }

    async fn delete(&self, _: Kind, _: &str, _: &str) -> Result<Vec<Change>, StoreError> {
        Ok(Vec::new())
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
