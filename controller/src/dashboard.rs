//! The dashboard on the admin port (`/ui`): the topology (Routes → revisions → replicas,
//! with traffic percentages and tags), each revision coloured by its golden signals as the
//! router saw them over the last seconds (request rate, success rate, p50/p99), the
//! autoscaler's state per revision (desired/actual replicas, panic mode, activator in the
//! path), SLO-gated rollouts with their gates and verdicts, and recent events.
//!
//! The page, its script and its style are embedded in the binary (`dashboard/`); the page
//! polls `GET /ui/api/state`. Everything is behind the admin API's guard: a browser signs in
//! once with `GET /login?token=…&next=/ui` (`sluice ui` prints that link), which sets the
//! `HttpOnly`, `SameSite=Strict` cookie the guard accepts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use sluice_core::outcomes::{Counts, LATENCY_BOUNDS_MS};
use sluice_core::{NamespacedName, RoutingSnapshot, ScaleDecision, ScaleReason};
use sluice_crds::Kind;
use sluice_mesh::telemetry::Registry;
use sluice_mesh::telemetry::outcomes::outcomes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reconcile::slo_rollout::quantile;
use crate::store::Store;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The golden signals are over this much of the recent past.
pub const SIGNAL_WINDOW: Duration = Duration::from_secs(10);
/// Samples of the router's counters kept (one a second at most).
const SAMPLES: usize = 60;
/// Routes shown at most.
const MAX_ROUTES: usize = 200;
/// Events shown per Route (and its Service), newest first.
const EVENTS_PER_ROUTE: usize = 5;

/// The autoscaler's latest decision per revision, shared by the controller that applies
/// them (`Controller::decisions`).
#[derive(Clone, Default)]
pub struct DecisionBoard(Arc<Mutex<HashMap<NamespacedName, ScaleDecision>>>);

impl DecisionBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NamespacedName, ScaleDecision>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a decision.
    pub fn put(&self, d: &ScaleDecision) {
        self.lock().insert(d.revision.clone(), d.clone());
    }

    /// Forgets a revision.
    pub fn remove(&self, key: &NamespacedName) {
        self.lock().remove(key);
    }

    fn get(&self, key: &NamespacedName) -> Option<ScaleDecision> {
        self.lock().get(key).cloned()
    }
}

/// What the dashboard reads.
pub struct Sources<S> {
    /// The store.
    pub store: S,
    /// The routing snapshot (replicas, the activator in the path).
    pub snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    /// The router hop's registry (the golden signals).
    pub router: Registry,
    /// The autoscaler's decisions.
    pub decisions: DecisionBoard,
}

/// Request counters by (namespace, revision).
type ByRevision = HashMap<(String, String), Counts>;

struct Dashboard<S> {
    sources: Sources<S>,
    samples: Mutex<VecDeque<(Instant, ByRevision)>>,
}

/// `/ui`, its assets and `/ui/api/state`.
pub fn app<S: Store + Clone>(sources: Sources<S>) -> axum::Router {
    let state = Arc::new(Dashboard {
        sources,
        samples: Mutex::new(VecDeque::new()),
    });
    let asset = |body: &'static str, kind: &'static str| {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-store"),
                    (
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'self'; frame-ancestors 'none'",
                    ),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                body,
            )
        })
    };
    axum::Router::new()
        .route("/ui", asset(PAGE, "text/html; charset=utf-8"))
        .route(
            "/ui/app.js",
            asset(SCRIPT, "text/javascript; charset=utf-8"),
        )
        .route("/ui/style.css", asset(STYLE, "text/css; charset=utf-8"))
        .route("/ui/api/state", get(state_json::<S>))
        .with_state(state)
}

async fn state_json<S: Store + Clone>(State(d): State<Arc<Dashboard<S>>>) -> impl IntoResponse {
    match d.state().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": format!("reading the store: {e}")})),
        )
            .into_response(),
    }
}

/// The gates of the Route's SLO-gated rollout, as the controller reads its annotations
/// (defaults filled in), for the page to show; `null` without one.
fn gates(annotations: &Value) -> Value {
    let annotations = serde_json::from_value(annotations.clone()).unwrap_or_default();
    let Ok(Some(r)) = sluice_crds::slo_rollout::slo_rollout(&annotations) else {
        return Value::Null;
    };
    let g = &r.gates;
    json!({
        "intervalSeconds": r.interval.as_secs_f64(),
        "minRequests": g.min_requests,
        "minSuccessRate": g.min_success_rate,
        "maxSuccessRateDrop": g.max_success_rate_drop,
        "maxP99Ms": g.max_p99.map(|d| d.as_secs_f64() * 1000.0),
        "maxP99Increase": g.max_p99_increase,
        "maxModelErrorRate": g.max_model_error_rate,
        "maxSurge": r.max_surge,
    })
}

/// One revision's golden signals over a window.
fn signals(now: &Counts, then: Option<&Counts>, seconds: f64) -> Value {
    let window = then
        .and_then(|then| now.since(then))
        .unwrap_or_else(|| now.clone());
    let requests = window.requests;
    let q = |q| quantile(q, &window.latency_buckets, &LATENCY_BOUNDS_MS, requests);
    json!({
        "requests": requests,
        "rps": if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
        "successRate": (requests > 0).then(|| 1.0 - window.errors as f64 / requests as f64),
        "p50Ms": q(0.5),
        "p99Ms": q(0.99),
    })
}

impl<S: Store + Clone> Dashboard<S> {
    /// Samples the router's counters (once a second at most) and returns the newest and
    /// the one closest to [`SIGNAL_WINDOW`] ago, with the seconds between them.
    fn window(&self) -> (ByRevision, Option<ByRevision>, f64) {
        let now = Instant::now();
        let current = outcomes(&self.sources.router.encode());
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples
            .back()
            .is_none_or(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            samples.push_back((now, current.clone()));
            while samples.len() > SAMPLES {
                samples.pop_front();
            }
        }
        let base = samples
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= SIGNAL_WINDOW)
            .or_else(|| samples.front())
            .filter(|(at, _)| *at < now);
        match base {
            Some((at, counts)) => (
                current,
                Some(counts.clone()),
                now.duration_since(*at).as_secs_f64(),
            ),
            None => (current, None, 0.0),
        }
    }

    async fn state(&self) -> Result<Value, crate::store::StoreError> {
        let store = &self.sources.store;
        let (current, base, seconds) = self.window();
        let snapshot = self.sources.snapshot.borrow().clone();
        let mut routes = store.list(Kind::Route, None).await?;
        routes.truncate(MAX_ROUTES);
        let mut out = Vec::with_capacity(routes.len());
        for route in &routes {
            let ns = route["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = route["metadata"]["name"].as_str().unwrap_or_default();
            let labels = &route["metadata"]["labels"];
            let isvc = labels[sluice_crds::inference_service::INFERENCE_SERVICE_LABEL].as_str();
            let mut revisions: Vec<Value> = Vec::new();
            let mut seen = Vec::new();
            let traffic = route["status"]["traffic"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let analysis = &route["status"]["rolloutAnalysis"];
            let mut names: Vec<String> = traffic
                .iter()
                .filter_map(|t| t["revisionName"].as_str().map(str::to_owned))
                .collect();
            if let Some(c) = analysis["canary"].as_str() {
                names.push(c.to_owned());
            }
            for rev in names {
                if seen.contains(&rev) {
                    continue;
                }
                seen.push(rev.clone());
                let key = NamespacedName::new(ns, rev.clone());
                let routed = snapshot.revisions.get(&key);
                let decision = self.sources.decisions.get(&key);
                let status = store
                    .get(Kind::Revision, ns, &rev)
                    .await?
                    .map(|r| r["status"].clone())
                    .unwrap_or(Value::Null);
                let ready = status["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let shares: Vec<Value> = traffic
                    .iter()
                    .filter(|t| t["revisionName"] == rev.as_str())
                    .map(|t| json!({"percent": t["percent"], "tag": t["tag"]}))
                    .collect();
                let key_pair = (ns.to_owned(), rev.clone());
                revisions.push(json!({
                    "name": rev,
                    "ready": ready,
                    "traffic": shares,
                    "desired": status["desiredReplicas"],
                    "actual": routed.map_or(0, |r| r.endpoints.len()),
                    "replicas": routed.map(|r| r.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                    "activatorInPath": routed.is_none_or(|r| r.activator_in_path || r.endpoints.is_empty()),
                    "panic": decision.as_ref().is_some_and(|d| d.reason == ScaleReason::Panic),
                    "scaleReason": decision.map(|d| d.reason.to_string()),
                    "signals": current.get(&key_pair).map(|c| signals(c, base.as_ref().and_then(|b| b.get(&key_pair)), seconds)),
                }));
            }
            let mut events = Vec::new();
            for (kind, object) in [(Kind::Route, name), (Kind::Service, name)] {
                for e in store.events(kind, ns, object).await.unwrap_or_default() {
                    events.push(serde_json::to_value(e).unwrap_or(Value::Null));
                }
            }
            events.sort_by(|a, b| b["time"].as_str().cmp(&a["time"].as_str()));
            events.truncate(EVENTS_PER_ROUTE);
            out.push(json!({
                "namespace": ns,
                "name": name,
                "owner": isvc.map_or_else(
                    || json!({"kind": "Service", "name": name}),
                    |i| json!({"kind": "InferenceService", "name": i}),
                ),
                "url": route["status"]["url"],
                "conditions": route["status"]["conditions"],
                "rollout": analysis,
                "gates": gates(&route["metadata"]["annotations"]),
                "revisions": revisions,
                "events": events,
            }));
        }
        Ok(json!({
            "windowSeconds": seconds,
            "routes": out,
        }))
    }
}
