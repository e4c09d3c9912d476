//! A `safetensors` dense model end to end: written by the test into a model repository
//! folder (`sluice-model.json` names the format), loaded by the repository, and served over
//! a real socket through OIP v2 REST, KServe v1 and gRPC, with concurrent requests of all
//! three merged into one batch; outputs are checked against values computed by hand.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde_json::{Value, json};
use sluice_model_server::grpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_model_server::grpc::inference::model_infer_request::InferInputTensor;
use sluice_model_server::grpc::inference::*;
use sluice_model_server::http::{AppState, router};
use sluice_model_server::{BatchConfig, Repository};
use sluice_queue::{Queue, QueueConfig};
use tokio::time::Instant;

/// A model repository holding `tiny`: 2 → 3 (bias, relu) → 2 (no bias) → sigmoid.
/// Batches wait up to a minute for 4 rows, so concurrent requests holding 4 rows form exactly
/// one batch (the batch fills; nothing depends on timing).
struct RepoDir(PathBuf);

impl RepoDir {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("sluice-dense-api-{}", std::process::id()));
        let dir = root.join("tiny");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("sluice-model.json"),
            json!({"format": "safetensors", "max_batch_size": 4, "max_queue_delay_us": 60_000_000u64})
                .to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("config.json"),
            json!({
                "input": {"name": "features", "datatype": "FP32", "shape": [-1, 2]},
                "layers": [
                    {"type": "dense", "weight": "net.0.weight", "bias": "net.0.bias"},
                    {"type": "relu"},
                    {"type": "dense", "weight": "net.2.weight"},
                    {"type": "sigmoid"}
                ],
                "output": {"name": "score"}
            })
            .to_string(),
        )
        .unwrap();
        let d = &Device::Cpu;
        let tensors: HashMap<String, Tensor> = [
            (
                "net.0.weight",
                Tensor::new(&[[1f32, 2.0], [-1.0, 1.0], [0.5, 0.0]], d).unwrap(),
            ),
            ("net.0.bias", Tensor::new(&[0f32, 1.0, -1.0], d).unwrap()),
            (
                "net.2.weight",
                Tensor::new(&[[1f32, 0.0, 1.0], [0.0, 1.0, -1.0]], d).unwrap(),
            ),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t))
        .collect();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        Self(root)
    }
}

impl Drop for RepoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Row [1, 1]: layer 0 = [3, 1, -0.5] → relu [3, 1, 0] → layer 2 [3, 1] → sigmoid.
/// Row [-2, 0]: layer 0 = [-2, 3, -2] → relu [0, 3, 0] → layer 2 [0, 3] → sigmoid.
fn expected() -> [[f32; 2]; 2] {
    [[sigmoid(3.0), sigmoid(1.0)], [0.5, sigmoid(3.0)]]
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

fn floats(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => items.iter().for_each(|i| out.extend(floats(i))),
        other => out.push(other.as_f64().unwrap() as f32),
    }
    out
}

#[tokio::test]
async fn dense_model_serves_rest_v1_grpc_and_batches() {
    let repo_dir = RepoDir::new();
    let repository = Arc::new(Repository::new(
        Some(repo_dir.0.clone()),
        std::env::temp_dir(),
        BatchConfig::default(),
    ));
    assert_eq!(repository.scan().unwrap(), ["tiny"]);
    repository.load("tiny").await.unwrap();
    let state = Arc::new(AppState {
        repository,
        queue: Arc::new(Queue::new(
            QueueConfig {
                container_concurrency: 0,
                max_queued: None,
            },
            Instant::now(),
        )),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, router(state, 1 << 20))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = GrpcInferenceServiceClient::new(channel.clone());
    let [row0, row1] = expected();

    // Metadata from the config.
    let meta = grpc
        .model_metadata(ModelMetadataRequest {
            name: "tiny".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].name, "features");
    assert_eq!(meta.inputs[0].shape, [-1, 2]);
    assert_eq!(meta.outputs[0].name, "score");
    assert_eq!(meta.outputs[0].datatype, "FP32");
    assert_eq!(meta.outputs[0].shape, [-1, 2]);

    // Three concurrent requests over the socket fill one batch of 4 rows: gRPC with raw
    // contents (two rows), OIP v2 REST JSON (one row) and KServe v1 (one row).
    let grpc_request = ModelInferRequest {
        model_name: "tiny".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![2, 2],
            ..Default::default()
        }],
        raw_input_contents: vec![
            [1f32, 1.0, -2.0, 0.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ],
        ..Default::default()
    };
    let base = format!("http://{addr}");
    let (g, v2, v1) = tokio::join!(
        grpc.model_infer(grpc_request),
        post_json(
            format!("{base}/v2/models/tiny/infer"),
            json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 1.0]}]}),
        ),
        post_json(
            format!("{base}/v1/models/tiny:predict"),
            json!({"instances": [[-2.0, 0.0]]}),
        )
    );
    let resp = g.unwrap().into_inner();
    assert_eq!(resp.outputs[0].name, "score");
    assert_eq!(resp.outputs[0].shape, [2, 2]);
    let got: Vec<f32> = resp.raw_output_contents[0]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_close(&got, &[row0, row1].concat());
    assert_eq!(v2["outputs"][0]["name"], "score", "{v2}");
    assert_eq!(v2["outputs"][0]["shape"], json!([1, 2]), "{v2}");
    assert_close(&floats(&v2["outputs"][0]["data"]), &row0);
    assert_close(&floats(&v1["predictions"]), &row1);
    let metrics = get_text(format!("{base}/metrics")).await;
    assert!(
        metrics.contains("sluice_batch_size_count{model_name=\"tiny\"} 1\n")
            && metrics.contains("sluice_batch_size_sum{model_name=\"tiny\"} 4\n"),
        "expected one batch of 4 rows:\n{metrics}"
    );

    // A request that does not fit the config is refused, naming the tensor.
    let bad = post_json(
        format!("{base}/v2/models/tiny/infer"),
        json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}),
    )
    .await;
    assert_eq!(
        bad["error"],
        "input \"features\": shape [1, 3] does not match the model's [-1, 2]"
    );

    drop(grpc);
    drop(channel);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

async fn post_json(url: String, body: Value) -> Value {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let body = client().request(req).await.unwrap().into_body();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn get_text(url: String) -> String {
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let body = client().request(req).await.unwrap().into_body();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}
