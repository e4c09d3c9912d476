//! The REST surface on one port: Open Inference Protocol v2 (health, metadata, infer with
//! JSON or binary tensors, repository), KServe v1 (`instances` → `predictions`), the
//! embedding APIs (OpenAI's and text-embeddings-inference's: [`crate::embeddings`]), Prometheus
//! metrics, the readiness probe and the autoscaler's stats endpoint — an axum `Router`
//! testable without a socket.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use sluice_core::ErrorBody;
use sluice_queue::{PROBE_PATH, QueueLayer, STATS_PATH};
use tokio::time::Instant;

use crate::codec::{
    HEADER_LENGTH, InferRequest, decode_request, decode_v1, encode_response, encode_v1,
    parse_header_length,
};
use crate::embeddings;
use crate::error::InferError;
use crate::grpc::{GrpcService, SERVICE_PREFIX};
pub use crate::service::{AppState, EXTENSIONS, execute};

/// Bodies larger than this are decoded off the reactor.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// Builds the router. Inference routes sit behind the queue layer; probes, metadata and
/// stats do not, so they neither wait in the queue nor count as load.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    // gRPC on the same port: tonic answers every method; ModelInfer goes through the queue
    // layer like REST inference, the other methods do not.
    let grpc = <_ as tower::ServiceExt<http::Request<axum::body::Body>>>::map_response(
        GrpcService::server(state.clone(), max_body_bytes),
        |r: http::Response<tonic::body::Body>| r.map(axum::body::Body::new),
    );
    let queued_grpc = tower::Layer::layer(&QueueLayer::new(state.queue.clone()), grpc.clone());
    let inference = Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
        .route("/v1/models/{model}", post(v1_predict))
        .route("/v1/embeddings", post(embeddings::openai_embeddings))
        .route("/openai/v1/embeddings", post(embeddings::openai_embeddings))
        .route("/embed", post(embeddings::tei_embed))
        // text-embeddings-inference's compatibility route (GET `/` says alive).
        .route("/", post(embeddings::tei_embed))
        .route("/tokenize", post(embeddings::tei_tokenize))
        .layer(QueueLayer::new(state.queue.clone()))
        .layer(DefaultBodyLimit::max(max_body_bytes));
    Router::new()
        .route("/", get(|| async { Json(json!({ "status": "alive" })) }))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models", get(list_models))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{model}", get(v1_model))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
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
        .route("/metrics", get(metrics))
        .route_service(&format!("{SERVICE_PREFIX}ModelInfer"), queued_grpc)
        .route_service(&format!("{SERVICE_PREFIX}{{*method}}"), grpc)
        .route(PROBE_PATH, get(probe))
        .route(STATS_PATH, get(stats))
        .merge(inference)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(ErrorBody::new("no such endpoint")),
            )
        })
        .with_state(state)
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

/// A body that could not be read (too large → 413), as `{"error"}`.
fn body_rejection(rejection: BytesRejection) -> Response {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body is larger than the server's limit (--max-body-bytes)".to_owned()
    } else {
        format!("cannot read request body: {}", rejection.body_text())
    };
    error_response(status, message)
}

async fn server_ready(State(s): State<Arc<AppState>>) -> Response {
    let ready = s.repository.all_ready() && !s.queue.is_draining();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "sluice-model-server",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
        // Not in the protocol (clients ignore unknown fields): the instruction set the CPU
        // kernels run with, so an operator can see that AVX-512 (or only AVX2) is in use.
        "cpu_kernels": sluice_kernels::cpu_kernels().to_string(),
    }))
}

async fn list_models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let names: Vec<String> = s
        .repository
        .ready_models()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    Json(json!({ "models": names }))
}

async fn repository_index(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(s.repository.index()).unwrap_or_default())
}

async fn load(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.repository.load_requested(&model).await {
        Ok(()) => Json(json!({ "name": model, "load": true })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn unload(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.repository.unload_requested(&model) {
        Ok(()) => Json(json!({ "name": model, "unload": true })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_metadata(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.repository.get(&model) {
        Ok(m) => Json(m.model.metadata().clone()).into_response(),
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
    match s.repository.get(&model) {
        Ok(_) => Json(json!({ "name": model, "ready": true })).into_response(),
        Err(InferError::NotReady(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "name": model, "ready": false })),
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

async fn infer(
    State(s): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_response(&s, &model, None, &headers, body).await
}

async fn infer_version(
    State(s): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_response(&s, &model, Some(version), &headers, body).await
}

async fn infer_response(
    s: &AppState,
    model: &str,
    version: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return body_rejection(rejection),
    };
    match run_infer(s, model, version, headers, body).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(model = %model, "inference refused: {e}");
            e.into_response()
        }
    }
}

/// Decodes off the reactor when the body is large.
async fn decode<F>(body: Bytes, f: F) -> Result<InferRequest, InferError>
where
    F: FnOnce(&[u8]) -> Result<InferRequest, InferError> + Send + 'static,
{
    if body.len() <= INLINE_DECODE_BYTES {
        return f(&body);
    }
    tokio::task::spawn_blocking(move || f(&body))
        .await
        .map_err(|e| InferError::Task(e.to_string()))?
}

async fn run_infer(
    s: &AppState,
    name: &str,
    version: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, InferError> {
    let served = s.repository.get(name)?;
    let _request = served.metrics.request();
    let started = Instant::now();
    let header_length = headers
        .get(HEADER_LENGTH)
        .map(|v| parse_header_length(v.as_bytes()))
        .transpose()?;
    let request = decode(body, move |b| decode_request(b, header_length)).await?;
    let version = request.version_for(name, version.as_deref())?;
    let (ignored, count) = &request.ignored_fields;
    if *count > 0 {
        tracing::debug!(
            model = %name,
            fields = ?ignored,
            count,
            "ignoring unknown top-level fields of an inference request"
        );
    }
    served
        .metrics
        .preprocess
        .observe_duration(started.elapsed());
    let response = execute(&served, name, version, request).await?;
    let started = Instant::now();
    let encoded = encode_response(&response);
    let mut resp = encoded.body.into_response();
    let h = resp.headers_mut();
    match encoded.header_length {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    served
        .metrics
        .postprocess
        .observe_duration(started.elapsed());
    Ok(resp)
}

async fn v1_model(State(s): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    match s.repository.get(&model) {
        Ok(_) => Json(json!({ "name": model, "ready": true })).into_response(),
        Err(InferError::NotReady(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "name": model, "ready": false })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn v1_predict(
    State(s): State<Arc<AppState>>,
    Path(target): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return body_rejection(rejection),
    };
    let Some((model, verb)) = target.rsplit_once(':') else {
        return error_response(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: POST /v1/models/{target} (expected {target}:predict)"),
        );
    };
    if verb != "predict" {
        return InferError::NotImplemented(format!("POST /v1/models/{{m}}:{verb}")).into_response();
    }
    let result = async {
        let served = s.repository.get(model)?;
        let _request = served.metrics.request();
        let started = Instant::now();
        let metadata = served.model.metadata().clone();
        let request = decode(body, move |b| decode_v1(b, &metadata)).await?;
        served
            .metrics
            .preprocess
            .observe_duration(started.elapsed());
        let response = execute(&served, model, None, request).await?;
        Ok::<_, InferError>(Json(encode_v1(&response)).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let models = s.repository.ready_models();
    let text = crate::metrics::render(models.iter().map(|(n, m)| (n.as_str(), m.metrics.as_ref())));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn probe(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let (code, body) = s.queue.probe(s.repository.all_ready());
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    // A plain liveness GET without the probe header gets the same answer, minus the body
    // contract, so kubelet-style probes work too.
    let body = if headers.contains_key(sluice_queue::PROBE_HEADER) {
        body
    } else {
        ""
    };
    (status, body).into_response()
}

async fn stats(State(s): State<Arc<AppState>>) -> Json<sluice_queue::PeriodStats> {
    Json(s.queue.recorder().take_period(Instant::now()))
}
