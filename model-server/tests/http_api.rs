//! The REST surface end to end through the router, with the shipped Iris model: OIP v2
//! (JSON and binary tensors), KServe v1, the repository API, metrics, and every error path
//! with its status code and message. One test also serves over a real socket with h2c.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_model_server::http::{AppState, router};
use sluice_model_server::{BatchConfig, ModelControl, ModelSource, Repository};
use sluice_queue::{Queue, QueueConfig};
use tokio::time::Instant;
use tower::ServiceExt;

const LIMIT: usize = 64 * 1024;

fn iris_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/iris/model")
        .to_string_lossy()
        .into_owned()
}

async fn state() -> Arc<AppState> {
    // Model control on: these tests drive the repository API's load and unload.
    let repository = Arc::new(
        Repository::new(None, std::env::temp_dir(), BatchConfig::default())
            .with_control(ModelControl::Explicit),
    );
    repository.add(
        "iris",
        ModelSource {
            format: "sluice-mlp".into(),
            storage_uri: iris_dir(),
            batching: BatchConfig {
                max_batch_size: 16,
                max_queue_delay: Duration::from_millis(1),
                max_queue: 64,
                instances: 1,
                ..BatchConfig::default()
            },
        },
    );
    repository.add(
        "broken",
        ModelSource {
            format: "sluice-mlp".into(),
            storage_uri: "/nonexistent/model".into(),
            batching: BatchConfig::default(),
        },
    );
    repository.load("iris").await.unwrap();
    Arc::new(AppState {
        repository,
        queue: Arc::new(Queue::new(
            QueueConfig {
                container_concurrency: 0,
                max_queued: None,
            },
            Instant::now(),
        )),
    })
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

async fn call(s: &Arc<AppState>, req: Request<Body>) -> Reply {
    let resp = router(s.clone(), LIMIT).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).body(body.into()).unwrap()
}

const ROWS: &str = "[[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]";

#[tokio::test]
async fn oip_health_metadata_and_json_infer() {
    let s = state().await;
    assert_eq!(
        call(&s, get("/v2/health/live")).await.json(),
        json!({"live": true})
    );
    // "broken" is registered but never loaded: the server is not ready until it is.
    let r = call(&s, get("/v2/health/ready")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    s.repository.unload("broken").unwrap();
    let r = call(&s, get("/v2/health/ready")).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"ready": true}))
    );

    let meta = call(&s, get("/v2")).await.json();
    assert_eq!(meta["name"], "sluice-model-server");
    assert!(
        meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );
    // The instruction set the CPU kernels run with on this machine, as detected.
    assert_eq!(
        meta["cpu_kernels"],
        json!(sluice_kernels::cpu_kernels().to_string())
    );
    assert!(
        ["x86-64-v4", "x86-64-v3", "scalar"]
            .iter()
            .any(|level| meta["cpu_kernels"].as_str().unwrap().starts_with(level)),
        "{}",
        meta["cpu_kernels"]
    );
    assert_eq!(
        call(&s, get("/v2/models")).await.json(),
        json!({"models": ["iris"]})
    );

    for path in ["/v2/models/iris", "/v2/models/iris/versions/1"] {
        let m = call(&s, get(path)).await.json();
        assert_eq!(m["name"], "iris");
        assert_eq!(
            m["inputs"],
            json!([{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}])
        );
    }
    for path in ["/v2/models/iris/ready", "/v2/models/iris/versions/1/ready"] {
        let r = call(&s, get(path)).await;
        assert_eq!(
            (r.status, r.json()["ready"].clone()),
            (StatusCode::OK, json!(true))
        );
    }

    let body = format!(
        r#"{{"id": "req-1", "parameters": {{"trace": {{"a": [1, 2]}}}},
             "inputs": [{{"name": "input-0", "shape": [3, 4], "datatype": "FP32", "data": {ROWS}}}]}}"#
    );
    let r = call(&s, post("/v2/models/iris/infer", body.clone())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["id"], "req-1");
    assert_eq!(v["model_name"], "iris");
    assert_eq!(v["parameters"], json!({"trace": {"a": [1, 2]}}));
    assert_eq!(
        v["outputs"][0],
        json!({"name": "output-0", "datatype": "INT64", "shape": [3], "data": [0, 1, 2]})
    );
    assert_eq!(v["outputs"][1]["shape"], json!([3, 3]));

    let r = call(&s, post("/v2/models/iris/versions/7/infer", body)).await;
    assert_eq!(r.json()["model_version"], "7");

    // Flat data and a chosen output.
    let r = call(
        &s,
        post(
            "/v2/models/iris/infer",
            r#"{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}],
                "outputs": [{"name": "probabilities"}]}"#,
        ),
    )
    .await;
    let v = r.json();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["name"], "probabilities");
}

/// Collects the debug events emitted while it is the thread's default subscriber.
struct DebugEvents(Arc<std::sync::Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl tracing::Subscriber for DebugEvents {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::DEBUG {
            let mut line = String::new();
            event.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The kserve SDK's REST body names the model (`"model_name"` next to `id` and `inputs`);
/// KServe's server ignores top-level fields it does not know. The URL decides: a body naming
/// another model or version is a 400 naming both, and tensors stay strictly checked.
#[tokio::test]
async fn body_may_name_the_model_and_carry_unknown_fields() {
    let s = state().await;
    let inputs = format!(
        r#""inputs": [{{"name": "input-0", "shape": [3, 4], "datatype": "FP32", "data": {ROWS}}}]"#
    );
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _log = tracing::subscriber::set_default(DebugEvents(events.clone()));

    // Exactly what kserve 0.21's InferRequest.to_rest() sends.
    let body = format!(r#"{{"id": "6f1c", "model_name": "iris", {inputs}}}"#);
    let r = call(&s, post("/v2/models/iris/infer", body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    let v = r.json();
    assert_eq!(v["id"], "6f1c");
    assert_eq!(v["model_name"], "iris");
    assert!(v.get("model_version").is_none());
    assert_eq!(v["outputs"][0]["data"], json!([0, 1, 2]));

    // A version in the body alone is the version asked for; with the URL's, they agree.
    let body = format!(r#"{{"model_name": "iris", "model_version": "4", {inputs}}}"#);
    let r = call(&s, post("/v2/models/iris/infer", body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["model_version"], "4");
    let r = call(&s, post("/v2/models/iris/versions/4/infer", body.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["model_version"], "4");

    // Unknown top-level fields are ignored, and said at debug.
    let body = format!(r#"{{"trace_ctx": {{"a": [1, 2]}}, "priority": 3, {inputs}}}"#);
    let r = call(&s, post("/v2/models/iris/infer", body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.error());
    assert_eq!(r.json()["outputs"][0]["data"], json!([0, 1, 2]));
    let logged = events.lock().unwrap().join("\n");
    assert!(
        logged.contains("ignoring unknown top-level fields")
            && logged.contains(r#"fields=["trace_ctx", "priority"]"#)
            && logged.contains("model=iris"),
        "{logged}"
    );

    let refused: Vec<(String, String, &str)> = vec![
        (
            "/v2/models/iris/infer".into(),
            format!(r#"{{"model_name": "setosa", {inputs}}}"#),
            r#"invalid request body at model_name: "setosa" contradicts the model "iris" of the URL"#,
        ),
        (
            "/v2/models/iris/versions/1/infer".into(),
            format!(r#"{{"model_name": "iris", "model_version": "2", {inputs}}}"#),
            r#"invalid request body at model_version: "2" contradicts the version "1" of the URL"#,
        ),
        (
            "/v2/models/iris/infer".into(),
            r#"{"model_name": "iris", "extra": 1, "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#.into(),
            r#"input "input-0": shape needs 8 elements, data has 4 (shape [2, 4])"#,
        ),
        (
            "/v2/models/iris/infer".into(),
            r#"{"model_name": "iris", "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP8", "data": [1, 2, 3, 4]}]}"#.into(),
            r#"input "input-0": datatype "FP8" is not one of"#,
        ),
        (
            "/v2/models/iris/infer".into(),
            r#"{"model_name": "iris", "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], "dtype": "x"}]}"#.into(),
            "invalid request body at inputs[0].dtype: unknown field `dtype`",
        ),
        (
            "/v2/models/iris/infer".into(),
            r#"{"model_name": "iris", "model_version": 2, "inputs": []}"#.into(),
            "invalid request body at model_version: invalid type: integer `2`, expected a string",
        ),
    ];
    for (path, body, want) in refused {
        let r = call(&s, post(&path, body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.error());
        assert!(
            r.error().starts_with(want),
            "{:?} should start with {want:?}",
            r.error()
        );
    }
}

#[tokio::test]
async fn binary_tensor_extension_in_and_out() {
    let s = state().await;
    let rows: Vec<f32> = vec![5.1, 3.5, 1.4, 0.2, 6.3, 3.3, 6.0, 2.5];
    let raw: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "output-0", "parameters": {"binary_data": true}},
                    {"name": "probabilities", "parameters": {"binary_data": false}}],
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_len = body.len();
    body.extend_from_slice(&raw);
    let req = Request::post("/v2/models/iris/infer")
        .header("Inference-Header-Content-Length", json_len.to_string())
        .body(Body::from(body))
        .unwrap();
    let r = call(&s, req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    let n: usize = r.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..n]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert!(head["outputs"][0].get("data").is_none());
    assert_eq!(head["outputs"][1]["data"].as_array().unwrap().len(), 6);
    let classes: Vec<i64> = r.body[n..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(classes, vec![0, 2]);

    // binary_data_output makes every output binary.
    let body = r#"{"parameters": {"binary_data_output": true},
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}"#;
    let r = call(&s, post("/v2/models/iris/infer", body)).await;
    let n: usize = r.headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.body.len(), n + 8 + 12);
}

#[tokio::test]
async fn kserve_v1_surface() {
    let s = state().await;
    assert_eq!(call(&s, get("/")).await.json(), json!({"status": "alive"}));
    assert_eq!(
        call(&s, get("/v1/models")).await.json(),
        json!({"models": ["iris"]})
    );
    assert_eq!(
        call(&s, get("/v1/models/iris")).await.json(),
        json!({"name": "iris", "ready": true})
    );
    let r = call(
        &s,
        post(
            "/v1/models/iris:predict",
            format!(r#"{{"instances": {ROWS}}}"#),
        ),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({"predictions": [0, 1, 2]}))
    );
    let r = call(&s, post("/v1/models/iris:explain", "{}")).await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(r.error(), "POST /v1/models/{m}:explain is not implemented");
    let r = call(&s, post("/v1/models/nope:predict", r#"{"instances": []}"#)).await;
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::NOT_FOUND, "model \"nope\" not found".into())
    );
    let r = call(
        &s,
        post("/v1/models/iris:predict", r#"{"instances": [[1, 2, 3]]}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.error(),
        "input \"input-0\": shape [1, 3] does not match the model's [-1, 4]"
    );
    // No rows is the caller's mistake (a 400 naming the tensor), not a failed computation.
    for body in
        [r#"{"inputs": [{"name": "input-0", "shape": [0, 4], "datatype": "FP32", "data": []}]}"#]
    {
        let r = call(&s, post("/v2/models/iris/infer", body)).await;
        assert_eq!(
            (r.status, r.error()),
            (
                StatusCode::BAD_REQUEST,
                "input \"input-0\": shape [0, 4] holds no elements: send at least one row".into()
            )
        );
    }
    let r = call(&s, post("/v1/models/iris:predict", r#"{"instances": []}"#)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.error());
    let r = call(
        &s,
        post(
            "/v1/models/iris:predict",
            r#"{"instances": [["a", 1, 2, 3]]}"#,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error()
            .starts_with("invalid request body at instances[0]: data holds \"a\""),
        "{}",
        r.error()
    );
}

#[tokio::test]
async fn repository_load_unload_and_index() {
    let s = state().await;
    let r = call(&s, post("/v2/repository/models/iris/unload", "")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(&s, get("/v2/models/iris/ready")).await;
    assert_eq!(
        (r.status, r.json()["ready"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(false))
    );
    let r = call(&s, post("/v2/models/iris/infer", "{}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error(), "model \"iris\" is not ready");
    assert_eq!(
        call(&s, get("/v2/models")).await.json(),
        json!({"models": []})
    );
    let r = call(&s, post("/v2/repository/models/iris/load", "")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        call(&s, get("/v2/models/iris/ready")).await.status,
        StatusCode::OK
    );

    let r = call(&s, post("/v2/repository/models/nope/load", "")).await;
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::NOT_FOUND, "model \"nope\" not found".into())
    );
    let r = call(&s, post("/v2/repository/models/nope/unload", "")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&s, post("/v2/repository/models/broken/load", "")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        r.error().starts_with(
            "model \"broken\" failed to load: cannot read /nonexistent/model/config.json"
        ),
        "{}",
        r.error()
    );
    let index = call(&s, post("/v2/repository/index", "")).await.json();
    assert_eq!(index[0]["name"], "broken");
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    assert_eq!(index[1], json!({"name": "iris", "state": "READY"}));
}

#[tokio::test]
async fn metrics_count_requests_and_batches() {
    let s = state().await;
    let body = format!(
        r#"{{"inputs": [{{"name": "input-0", "shape": [3, 4], "datatype": "FP32", "data": {ROWS}}}]}}"#
    );
    assert_eq!(
        call(&s, post("/v2/models/iris/infer", body)).await.status,
        StatusCode::OK
    );
    let r = call(&s, get("/metrics")).await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        text.contains("request_predict_seconds_count{model_name=\"iris\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("request_preprocess_seconds_count{model_name=\"iris\"} 1\n"));
    assert!(text.contains("request_postprocess_seconds_count{model_name=\"iris\"} 1\n"));
    assert!(text.contains("sluice_batch_size_sum{model_name=\"iris\"} 3\n"));
    assert!(text.contains("sluice_queue_depth{model_name=\"iris\"} 0\n"));
    assert!(text.contains("sluice_inflight_requests{model_name=\"iris\"} 0\n"));
}

#[tokio::test]
async fn every_error_has_its_status_and_names_the_problem() {
    let s = state().await;
    let infer = |body: &str| post("/v2/models/iris/infer", body.to_owned());
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            get("/v2/models/nope"),
            StatusCode::NOT_FOUND,
            "model \"nope\" not found",
        ),
        (
            get("/v2/models/nope/ready"),
            StatusCode::NOT_FOUND,
            "model \"nope\" not found",
        ),
        (
            post("/v2/models/nope/infer", "{}"),
            StatusCode::NOT_FOUND,
            "model \"nope\" not found",
        ),
        (
            get("/v2/nothing/here"),
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
        (
            infer(
                r#"{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "input \"input-0\": shape [1, 3] does not match the model's [-1, 4]",
        ),
        (
            infer(
                r#"{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "input \"input-0\": datatype is FP64, the model expects FP32",
        ),
        (
            infer(
                r#"{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "input \"input-0\": shape needs 8 elements, data has 4 (shape [2, 4])",
        ),
        (
            infer(
                r#"{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP16", "data": [1, 2, 3, 4]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "input \"input-0\": FP16 cannot be sent as JSON numbers",
        ),
        (
            infer(
                r#"{"inputs": [{"name": "other", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "input \"other\": unknown input; the model's inputs are [\"input-0\"]",
        ),
        (
            infer(r#"{"inputs": []}"#),
            StatusCode::BAD_REQUEST,
            "input \"input-0\": required input is missing",
        ),
        (
            infer(
                r#"{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "outputs": [{"name": "nope"}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "output \"nope\" is not an output of this model",
        ),
        (
            infer(r#"{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32"}]}"#),
            StatusCode::BAD_REQUEST,
            "input \"input-0\": has neither data nor parameters.binary_data_size",
        ),
        (
            infer("{"),
            StatusCode::BAD_REQUEST,
            "invalid request body at body: EOF",
        ),
        (
            Request::post("/v2/models/iris/infer")
                .header("Inference-Header-Content-Length", "1000")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "header Inference-Header-Content-Length: 1000 exceeds the body length 2",
        ),
        (
            Request::post("/v2/models/iris/infer")
                .header("Inference-Header-Content-Length", "ten")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "header Inference-Header-Content-Length: \"ten\" is not a byte count",
        ),
        (
            infer(&format!("{{\"pad\": \"{}\"}}", "x".repeat(LIMIT))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is larger than the server's limit (--max-body-bytes)",
        ),
        (
            post("/v1/models/iris:predict", "x".repeat(LIMIT + 1)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is larger than the server's limit (--max-body-bytes)",
        ),
    ];
    for (req, status, message) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let r = call(&s, req).await;
        assert_eq!(r.status, status, "{what}: {}", r.error());
        assert!(
            r.error().starts_with(message),
            "{what}: {:?} should start with {message:?}",
            r.error()
        );
    }
}

#[tokio::test]
async fn http1_and_h2c_share_one_port() {
    let s = state().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, router(s, LIMIT))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let body = r#"{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}"#;
    for http2 in [false, true] {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(http2)
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = Request::post(format!("http://{addr}/v2/models/iris/infer"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let version = resp.version();
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([0]));
        let want = if http2 {
            axum::http::Version::HTTP_2
        } else {
            axum::http::Version::HTTP_11
        };
        assert_eq!(version, want);
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
