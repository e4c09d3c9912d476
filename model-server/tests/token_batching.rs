//! Token-budget batching of the real MiniLM, through the server's router: the metrics an
//! endpoint picker or autoscaler reads after real requests (parsed from the Prometheus text),
//! a request whose client went away dropped and counted, a full queue refused with 429 in
//! each protocol's shape (gRPC: RESOURCE_EXHAUSTED), and budget settings checked.
//!
//! No sleeps: the tests run on one thread, and a request polled once (without yielding to
//! the model's instance task) is left waiting in the queue, which the queue gauge confirms.
//! Needs the MiniLM weights, as tests/minilm.rs does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use prost::Message;
use serde_json::{Value, json};
use sluice_model_server::grpc::inference::ModelInferRequest;
use sluice_model_server::grpc::inference::model_infer_request::InferInputTensor;
use sluice_model_server::http::{AppState, router};
use sluice_model_server::{BatchConfig, ModelSource, Repository};
use sluice_queue::{Queue, QueueConfig};
use tokio::time::Instant;
use tower::ServiceExt;

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SLUICE_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/sluice/models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "MiniLM weights are missing in {}: run scripts/fetch-minilm (scripts/test does)",
        dir.display()
    );
    dir
}

fn minilm(batching: BatchConfig) -> ModelSource {
    ModelSource {
        format: "bert".into(),
        storage_uri: model_dir().to_string_lossy().into_owned(),
        batching,
    }
}

async fn state(max_queue: usize) -> Arc<AppState> {
    let repository = Arc::new(Repository::new(
        None,
        std::env::temp_dir(),
        BatchConfig::default(),
    ));
    repository.add(
        "minilm",
        minilm(BatchConfig {
            max_queue,
            ..BatchConfig::default()
        }),
    );
    repository.load("minilm").await.unwrap();
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

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn send(s: &Arc<AppState>, req: Request<Body>) -> impl Future<Output = Response> + use<> {
    let app = router(s.clone(), 1 << 20);
    async move { app.oneshot(req).await.unwrap() }
}

async fn json_of(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn call(s: &Arc<AppState>, path: &str, body: Value) -> (StatusCode, Value) {
    json_of(send(s, post(path, body)).await).await
}

/// Polls `f` once without yielding to other tasks: its output if it finished.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

fn queued(s: &AppState) -> i64 {
    let served = s.repository.get("minilm").unwrap();
    served.metrics.queue_depth.load(Ordering::Relaxed)
}

/// Polls a request once, leaving it in the model's queue (checked with the queue gauge).
async fn leave_queued<F: Future + Unpin>(s: &AppState, f: &mut F) {
    let before = queued(s);
    assert!(poll_once(f).await.is_none(), "the request finished at once");
    assert_eq!(
        queued(s),
        before + 1,
        "the request is not waiting in the queue"
    );
}

/// The Prometheus text as `name{labels}` → value, checking every line's syntax, that each
/// sample belongs to a declared family, and that histograms are cumulative with
/// `+Inf` = `_count`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE for {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} without _total");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let prefix = format!("{family}_bucket{{");
        let mut last = 0.0;
        for (series, &v) in samples.range(prefix.clone()..) {
            if !series.starts_with(&prefix) {
                break;
            }
            if !series.contains("+Inf") {
                last = f64::max(last, v);
            }
        }
        let labels = "{model_name=\"minilm\"}";
        let count = samples[&format!("{family}_count{labels}")];
        let inf = samples[&format!("{family}_bucket{{model_name=\"minilm\",le=\"+Inf\"}}")];
        assert_eq!(inf, count, "{family}: +Inf bucket is not the count");
        assert!(
            last <= count,
            "{family}: a bucket holds more than the count"
        );
    }
    samples
}

async fn metrics(s: &Arc<AppState>) -> BTreeMap<String, f64> {
    let resp = send(s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    parse_metrics(std::str::from_utf8(&bytes).unwrap())
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    let key = format!("{name}{{model_name=\"minilm\"}}");
    *m.get(&key).unwrap_or_else(|| panic!("{key} is missing"))
}

/// Tokens of `texts` as the server counts them (special tokens included).
async fn tokens(s: &Arc<AppState>, texts: &[&str]) -> f64 {
    let (status, v) = call(s, "/tokenize", json!({ "inputs": texts })).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().len() as f64)
        .sum()
}

#[tokio::test]
async fn metrics_after_real_requests_count_batches_tokens_and_latencies() {
    let s = state(64).await;
    let query = "how do I reset my password";
    let passage = "The river valley was settled by farmers who built terraces along the \
                   southern slopes, and a market town grew at the ford across the river.";
    let (status, openai) = call(&s, "/v1/embeddings", json!({"input": [query, passage]})).await;
    assert_eq!(status, StatusCode::OK, "{openai}");
    let (status, v) = call(&s, "/embed", json!({"inputs": query, "normalize": false})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let oip = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
        "data": [passage]}]});
    let (status, v) = call(&s, "/v2/models/minilm/infer", oip).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let expected_tokens = tokens(&s, &[query, passage, query, passage]).await;
    assert_eq!(
        openai["usage"]["prompt_tokens"].as_f64().unwrap(),
        tokens(&s, &[query, passage]).await
    );

    let m = metrics(&s).await;
    assert_eq!(metric(&m, "sluice_tokens_total"), expected_tokens);
    // Four texts in three requests, each request computed once.
    assert_eq!(metric(&m, "sluice_batch_size_sum"), 4.0);
    assert_eq!(metric(&m, "sluice_queue_wait_seconds_count"), 3.0);
    let batches = metric(&m, "sluice_batch_tokens_count");
    assert_eq!(batches, metric(&m, "sluice_batch_size_count"));
    assert!((1.0..=3.0).contains(&batches), "{batches} batches");
    // Padded cost: at least the real tokens.
    assert!(metric(&m, "sluice_batch_tokens_sum") >= expected_tokens);
    for phase in [
        "sluice_request_duration_seconds",
        "request_preprocess_seconds",
        "request_predict_seconds",
        "request_postprocess_seconds",
    ] {
        assert_eq!(metric(&m, &format!("{phase}_count")), 3.0, "{phase}");
    }
    assert_eq!(metric(&m, "sluice_requests_dropped_client_gone_total"), 0.0);
    assert_eq!(metric(&m, "sluice_queue_depth"), 0.0);
    assert_eq!(metric(&m, "sluice_queue_tokens"), 0.0);
    assert_eq!(metric(&m, "sluice_queue_capacity"), 64.0);
    assert_eq!(metric(&m, "sluice_inflight_requests"), 0.0);
}

#[tokio::test]
async fn a_request_whose_client_went_away_is_dropped_before_computing() {
    let s = state(8).await;
    let mut gone = Box::pin(send(
        &s,
        post("/embed", json!({"inputs": "a client that left"})),
    ));
    leave_queued(&s, &mut gone).await;
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "sluice_queue_depth"), 1.0);
    assert_eq!(
        metric(&m, "sluice_queue_tokens"),
        tokens(&s, &["a client that left"]).await
    );
    drop(gone);

    let (status, v) = call(&s, "/embed", json!({"inputs": "one who stayed"})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "sluice_requests_dropped_client_gone_total"), 1.0);
    // Only the request that stayed was computed.
    assert_eq!(metric(&m, "sluice_batch_size_sum"), 1.0);
    assert_eq!(
        metric(&m, "sluice_tokens_total"),
        tokens(&s, &["one who stayed"]).await
    );
    assert_eq!(metric(&m, "sluice_queue_depth"), 0.0);
}

fn grpc_request(text: &str) -> Request<Body> {
    let message = ModelInferRequest {
        model_name: "minilm".into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![
            [(text.len() as u32).to_le_bytes().to_vec(), text.into()].concat(),
        ],
        ..Default::default()
    };
    let encoded = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend((encoded.len() as u32).to_be_bytes());
    framed.extend(encoded);
    Request::post("/inference.GRPCInferenceService/ModelInfer")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::from(framed))
        .unwrap()
}

#[tokio::test]
async fn a_full_queue_answers_429_in_each_protocol_s_shape() {
    let s = state(1).await;
    let mut first = Box::pin(send(&s, post("/embed", json!({"inputs": "first in line"}))));
    leave_queued(&s, &mut first).await;

    let refused = |req| {
        let s = s.clone();
        async move {
            let mut f = Box::pin(send(&s, req));
            let resp = poll_once(&mut f)
                .await
                .expect("a full queue answers at once");
            assert_eq!(resp.headers()["retry-after"], "1");
            json_of(resp).await
        }
    };
    let text = "second in line";
    let oip =
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]});
    let (status, v) = refused(post("/v2/models/minilm/infer", oip)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        v["error"],
        "model \"minilm\" is overloaded: its request queue is full; retry later"
    );
    let (status, v) = refused(post(
        "/v1/models/minilm:predict",
        json!({"instances": [text]}),
    ))
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        v["error"].as_str().unwrap().contains("queue is full"),
        "{v}"
    );
    let (status, v) = refused(post("/v1/embeddings", json!({"input": text}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue is full"),
        "{v}"
    );
    let (status, v) = refused(post("/embed", json!({"inputs": text}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["error_type"], "Overloaded");
    assert!(
        v["error"].as_str().unwrap().contains("queue is full"),
        "{v}"
    );

    let mut grpc = Box::pin(send(&s, grpc_request(text)));
    let resp = poll_once(&mut grpc)
        .await
        .expect("a full queue answers at once");
    let code = resp.headers()["grpc-status"].to_str().unwrap().to_owned();
    assert_eq!(code, (tonic::Code::ResourceExhausted as i32).to_string());
    let message = resp.headers()["grpc-message"].to_str().unwrap().to_owned();
    assert!(message.contains("queue%20is%20full"), "{message}");

    // The request that waited is computed; the queue empties.
    let (status, v) = json_of(first.await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap()[0].as_array().unwrap().len(), 384);
    assert_eq!(queued(&s), 0);
}

#[tokio::test]
async fn a_budget_below_the_model_s_longest_input_is_refused_at_load() {
    let repository = Repository::new(None, std::env::temp_dir(), BatchConfig::default());
    repository.add(
        "minilm",
        minilm(BatchConfig {
            max_batch_tokens: 100,
            ..BatchConfig::default()
        }),
    );
    let err = repository.load("minilm").await.unwrap_err().to_string();
    assert!(
        err.contains("max_batch_tokens: 100 is less than the model's longest input (256 tokens)"),
        "{err}"
    );
}

#[test]
fn repository_settings_name_an_out_of_range_budget() {
    let repo = std::env::temp_dir().join(format!("sluice-token-budget-{}", std::process::id()));
    let folder = repo.join("iris");
    std::fs::create_dir_all(&folder).unwrap();
    let iris = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
    for entry in std::fs::read_dir(iris).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        folder.join("sluice-model.json"),
        r#"{"format": "sluice-mlp", "max_batch_tokens": 99999999}"#,
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let repository = Repository::new(
        Some(repo.clone()),
        repo.join(".cache"),
        BatchConfig::default(),
    );
    let err = runtime
        .block_on(repository.load("iris"))
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&repo).unwrap();
    assert!(err.contains("sluice-model.json"), "{err}");
    assert!(
        err.contains("max_batch_tokens: 99999999 is more than 4194304"),
        "{err}"
    );
}
