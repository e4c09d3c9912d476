//! all-MiniLM-L6-v2 on candle matches sentence-transformers' own embeddings (committed
//! fixture computed once by `scripts/minilm-reference`), alone and dynamically batched, and
//! serves over OIP v2 (BYTES in, FP32 [n, 384] out) and KServe v1.
//!
//! Needs the weights: `scripts/fetch-minilm` (run by `scripts/test` before the tests) puts
//! them in `$HOME/.cache/sluice/models/all-MiniLM-L6-v2` or `$SLUICE_MINILM_DIR`. Without
//! them this test fails, on purpose, rather than skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_model_server::bert::Bert;
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

struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    Reference {
        sentences: serde_json::from_value(v["sentences"].clone()).unwrap(),
        embeddings: serde_json::from_value(v["embeddings"].clone()).unwrap(),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_sentence_transformers() {
    let started = Instant::now();
    let model = Bert::load("minilm", &model_dir()).unwrap();
    eprintln!("MiniLM loaded in {:?}", started.elapsed());
    assert_eq!(model.hidden_size(), 384);
    let r = reference();
    let sentences: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    // All at once (padded to the longest) and one by one must both match.
    let batched = model.embed(&sentences).unwrap();
    for (i, (sentence, want)) in sentences.iter().zip(&r.embeddings).enumerate() {
        let got = &batched[i * 384..(i + 1) * 384];
        let c = cosine(got, want);
        assert!(
            c >= 0.999,
            "sentence {i} {sentence:?}: cosine {c} < 0.999 (batched)"
        );
        let alone = model.embed(&[sentence]).unwrap();
        let c = cosine(&alone, want);
        assert!(
            c >= 0.999,
            "sentence {i} {sentence:?}: cosine {c} < 0.999 (alone)"
        );
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i}: norm {norm}");
    }
}

async fn state() -> Arc<AppState> {
    let repository = Arc::new(Repository::new(
        None,
        std::env::temp_dir(),
        BatchConfig::default(),
    ));
    repository.add(
        "minilm",
        ModelSource {
            format: "bert".into(),
            storage_uri: model_dir().to_string_lossy().into_owned(),
            batching: BatchConfig {
                max_batch_size: 8,
                max_queue_delay: Duration::from_millis(5),
                max_queue: 64,
                instances: 1,
            },
        },
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

async fn call(s: &Arc<AppState>, path: &str, body: String) -> (StatusCode, Value) {
    let resp = router(s.clone(), 1 << 20)
        .oneshot(Request::post(path).body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn serves_embeddings_over_oip_and_v1_with_batching() {
    let s = state().await;
    let r = reference();
    let body = json!({"id": "e", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
        "data": [r.sentences[0], r.sentences[1]]}]});
    let (status, v) = call(&s, "/v2/models/minilm/infer", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["id"], "e");
    assert_eq!(v["outputs"][0]["name"], "embedding");
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 384]));
    let data: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    assert!(cosine(&data[384..], &r.embeddings[1]) >= 0.999);

    // Concurrent single-sentence requests are batched together and each gets its own row.
    let calls = r.sentences.iter().take(6).map(|sentence| {
        let s = s.clone();
        let body = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [sentence]}]});
        async move { call(&s, "/v2/models/minilm/infer", body.to_string()).await }
    });
    let results = futures_join_all(calls).await;
    for (i, (status, v)) in results.into_iter().enumerate() {
        assert_eq!(status, StatusCode::OK);
        let data: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
        assert!(cosine(&data, &r.embeddings[i]) >= 0.999, "row {i}");
    }

    let (status, v) = call(
        &s,
        "/v1/models/minilm:predict",
        json!({"instances": [r.sentences[2]]}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let row: Vec<f32> = serde_json::from_value(v["predictions"][0].clone()).unwrap();
    assert!(cosine(&row, &r.embeddings[2]) >= 0.999);

    let (status, v) = call(
        &s,
        "/v2/models/minilm/infer",
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
            .to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error"],
        "input \"text\": datatype is FP32, the model expects BYTES"
    );
}

/// Runs futures concurrently on this task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
