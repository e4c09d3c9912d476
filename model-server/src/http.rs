//! The REST surface: Open Inference Protocol v2 routes, the readiness probe and the
//! autoscaler's stats endpoint, as an axum `Router` testable without a socket.

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use sluice_activator::queue::{PROBE_PATH, Queue, QueueLayer, STATS_PATH};
use tokio::time::Instant;

use crate::error::InferError;
use crate::model::Model;
use crate::tensor::parse_request;

/// What the handlers share.
pub struct AppState {
    /// Name the model is served under.
    pub model_name: String,
    /// The model, once loaded.
    pub model: OnceLock<Arc<dyn Model>>,
    /// The in-process queue layer.
    pub queue: Arc<Queue>,
}

impl AppState {
    fn model(&self, name: &str) -> Result<Arc<dyn Model>, InferError> {
        if name != self.model_name {
            return Err(InferError::ModelNotFound(name.to_owned()));
        }
        self.model
            .get()
            .cloned()
            .ok_or_else(|| InferError::NotReady(name.to_owned()))
    }

    fn ready(&self) -> bool {
        self.model.get().is_some()
    }
}

/// Builds the router. Inference routes sit behind the queue layer; probes and stats do not,
/// so they neither wait in the queue nor count as load.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let inference = Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .layer(QueueLayer::new(state.queue.clone()))
        .layer(DefaultBodyLimit::max(max_body_bytes));
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route(PROBE_PATH, get(probe))
        .route(STATS_PATH, get(stats))
        .merge(inference)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "error": "no such endpoint" })),
            )
        })
        .with_state(state)
}

async fn server_ready(State(s): State<Arc<AppState>>) -> Response {
    let ready = s.ready() && !s.queue.is_draining();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": "sluice-model-server",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

async fn model_metadata(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.model(&model) {
        Ok(m) => Json(m.metadata().clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_metadata_version(
    state: State<Arc<AppState>>,
    Path((model, _version)): Path<(String, String)>,
) -> Response {
    model_metadata(state, Path(model)).await
}

async fn model_ready(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.model(&model) {
        Ok(_) => Json(serde_json::json!({ "name": model, "ready": true })).into_response(),
        Err(InferError::NotReady(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "name": model, "ready": false })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_ready_version(
    state: State<Arc<AppState>>,
    Path((model, _version)): Path<(String, String)>,
) -> Response {
    model_ready(state, Path(model)).await
}

async fn infer(State(s): State<Arc<AppState>>, Path(model): Path<String>, body: Bytes) -> Response {
    match run_infer(&s, &model, body).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(model = %model, "inference refused: {e}");
            e.into_response()
        }
    }
}

async fn infer_version(
    state: State<Arc<AppState>>,
    Path((model, _version)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    infer(state, Path(model), body).await
}

async fn run_infer(s: &AppState, name: &str, body: Bytes) -> Result<Response, InferError> {
    let model = s.model(name)?;
    // Parsing and compute are CPU work: keep them off the reactor.
    let response = tokio::task::spawn_blocking(move || {
        let request = parse_request(&body)?;
        model.infer(&request)
    })
    .await
    .map_err(|e| InferError::Task(e.to_string()))??;
    Ok(Json(response).into_response())
}

async fn probe(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (code, body) = s.queue.probe(s.ready());
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    // A plain liveness GET without the probe header gets the same answer, minus the body
    // contract, so kubelet-style probes work too.
    let body = if headers.contains_key(sluice_activator::queue::PROBE_HEADER) {
        body
    } else {
        ""
    };
    (status, body).into_response()
}

async fn stats(State(s): State<Arc<AppState>>) -> Json<sluice_activator::queue::PeriodStats> {
    Json(s.queue.recorder().take_period(Instant::now()))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::mlp::{Mlp, MlpConfig, MlpNet};
    use sluice_activator::queue::QueueConfig;

    fn state(loaded: bool) -> Arc<AppState> {
        let s = Arc::new(AppState {
            model_name: "m".into(),
            model: OnceLock::new(),
            queue: Arc::new(Queue::new(
                QueueConfig {
                    container_concurrency: 0,
                    max_queued: None,
                },
                Instant::now(),
            )),
        });
        if loaded {
            let config = MlpConfig {
                input_name: "input-0".into(),
                features: 2,
                hidden: vec![],
                classes: vec!["a".into(), "b".into()],
                mean: vec![0.0; 2],
                std: vec![1.0; 2],
                max_batch_size: 8,
            };
            let vb =
                candle_nn::VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
            let net = MlpNet::new(&config, vb).unwrap();
            let _ = s.model.set(Arc::new(Mlp::from_parts("m", config, net)));
        }
        s
    }

    async fn call(s: Arc<AppState>, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = router(s, 1024).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn infer_req(model: &str, body: &str) -> Request<Body> {
        Request::post(format!("/v2/models/{model}/infer"))
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn infer_and_errors() {
        let ok = r#"{"id": "a", "inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}"#;
        let (status, body) = call(state(true), infer_req("m", ok)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], "a");
        assert_eq!(body["outputs"][0]["name"], "output-0");

        let (status, body) = call(state(true), infer_req("other", ok)).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (StatusCode::NOT_FOUND, "model \"other\" not found")
        );

        let (status, _) = call(state(false), infer_req("m", ok)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        let (status, body) = call(
            state(true),
            infer_req("m", r#"{"inputs": [{"name": "input-0"}]}"#),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("inputs[0]"),
            "{body}"
        );

        let too_big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2048));
        let resp = router(state(true), 1024)
            .oneshot(infer_req("m", &too_big))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn probe_and_health() {
        let probe = || {
            Request::get(PROBE_PATH)
                .header("k-network-probe", "queue")
                .body(Body::empty())
                .unwrap()
        };
        let resp = router(state(false), 1024).oneshot(probe()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let resp = router(state(true), 1024).oneshot(probe()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "queue"
        );
        let (status, body) = call(
            state(true),
            Request::get("/v2/models/m").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["inputs"][0]["shape"], serde_json::json!([-1, 2]));
        let (status, body) = call(
            state(false),
            Request::get("/v2/health/ready")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["ready"].as_bool()),
            (StatusCode::SERVICE_UNAVAILABLE, Some(false))
        );
    }
}
