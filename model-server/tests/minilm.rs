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
use sluice_model_server::bert::{Bert, BertKernels};
use sluice_model_server::http::{AppState, router};
use sluice_model_server::model::TextEmbedder;
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

/// Sluice's CPU encoder (unpadded batches, fused kernels) against candle-transformers'
/// `BertModel` (padded and masked) on the same weights: a mixed batch of a one-word query,
/// the reference sentences and a passage past the 256-token limit (truncated), batched and
/// alone, unnormalized so a scale error would show too.
#[test]
fn cpu_encoder_matches_candle_transformers_on_mixed_lengths() {
    let dir = model_dir();
    let ours = Bert::load("minilm", &dir).unwrap();
    let candle = Bert::load_with("minilm", &dir, BertKernels::Candle).unwrap();
    let r = reference();
    let passage = "river bank erosion and the lending rates of the bank ".repeat(40);
    let mut texts: Vec<&str> = vec!["hi"];
    texts.extend(r.sentences.iter().map(String::as_str));
    texts.push(&passage);
    let cases: Vec<Vec<&str>> = std::iter::once(texts.clone())
        .chain(texts.iter().map(|t| vec![*t]))
        .collect();
    for batch in cases {
        let a = ours.embed_texts(&batch, false).unwrap();
        let b = candle.embed_texts(&batch, false).unwrap();
        assert_eq!(a.len(), batch.len() * 384);
        for (i, (x, y)) in a.chunks(384).zip(b.chunks(384)).enumerate() {
            let c = cosine(x, y);
            assert!(
                c >= 0.99999,
                "row {i} of a batch of {}: cosine {c}",
                batch.len()
            );
            let (lx, ly): (f32, f32) = (
                x.iter().map(|v| v * v).sum::<f32>().sqrt(),
                y.iter().map(|v| v * v).sum::<f32>().sqrt(),
            );
            assert!(
                ly > 0.0 && (lx - ly).abs() <= 1e-3 * ly,
                "row {i}: length {lx} vs {ly}"
            );
        }
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
                ..BatchConfig::default()
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

fn floats(v: &Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// OpenAI's `/v1/embeddings` (and KServe's `/openai/v1/embeddings`): a string or a list,
/// float or base64, usage counted, the model echoed; the vectors are the model's own.
#[tokio::test]
async fn openai_embeddings_match_the_model_in_openai_s_shape() {
    let s = state().await;
    let r = reference();
    let body = json!({"model": "minilm", "input": [r.sentences[0], r.sentences[1]]});
    let (status, v) = call(&s, "/v1/embeddings", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    for i in 0..2 {
        assert_eq!(v["data"][i]["object"], "embedding");
        assert_eq!(v["data"][i]["index"], i);
        let row = floats(&v["data"][i]["embedding"]);
        assert!(cosine(&row, &r.embeddings[i]) >= 0.999, "row {i}");
    }
    // The tokens counted are the tokenizer's, special ones included.
    let (_, tokens) = call(
        &s,
        "/tokenize",
        json!({"inputs": [r.sentences[0], r.sentences[1]]}).to_string(),
    )
    .await;
    let counted = tokens[0].as_array().unwrap().len() + tokens[1].as_array().unwrap().len();
    assert_eq!(v["usage"]["prompt_tokens"], counted);
    assert_eq!(v["usage"]["total_tokens"], counted);

    // base64: the same floats, little-endian.
    let body = json!({"model": "minilm", "input": r.sentences[2], "encoding_format": "base64"});
    let (status, v) = call(&s, "/openai/v1/embeddings", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let row: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(row.len(), 384);
    assert!(cosine(&row, &r.embeddings[2]) >= 0.999);
}

/// Bad input is a 400 in OpenAI's error shape naming the field; an unknown model a 404.
#[tokio::test]
async fn openai_embeddings_refuse_bad_input_naming_the_field() {
    let s = state().await;
    let long = "word ".repeat(400);
    let many: Vec<&str> = vec!["a"; 2049];
    let cases = [
        (json!({"model": "minilm", "input": ""}), 400, "input"),
        (json!({"model": "minilm", "input": []}), 400, "input"),
        (
            json!({"model": "minilm", "input": ["a", ""]}),
            400,
            "input[1]",
        ),
        (json!({"model": "minilm", "input": many}), 400, "input"),
        (
            json!({"model": "minilm", "input": [[1, 2, 3]]}),
            400,
            "input[0]",
        ),
        (json!({"model": "minilm", "input": long}), 400, "input"),
        (
            json!({"model": "minilm", "input": "a", "encoding_format": "hex"}),
            400,
            "encoding_format",
        ),
        (
            json!({"model": "minilm", "input": "a", "dimensions": 128}),
            400,
            "dimensions",
        ),
        (
            json!({"model": "minilm", "input": "a", "colour": 1}),
            400,
            "colour",
        ),
        (json!({"model": "nope", "input": "a"}), 404, "model"),
    ];
    for (body, want, param) in cases {
        let (status, v) = call(&s, "/v1/embeddings", body.to_string()).await;
        assert_eq!(status.as_u16(), want, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty(), "{v}");
    }
    let (_, v) = call(
        &s,
        "/v1/embeddings",
        json!({"model": "nope", "input": "a"}).to_string(),
    )
    .await;
    assert_eq!(v["error"]["code"], "model_not_found");
    let (status, v) = call(&s, "/v1/embeddings", "not json".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "body", "{v}");
}

/// text-embeddings-inference's `/embed` (and `POST /`): `[[f32]]`; `normalize: false`
/// gives the raw mean, `truncate` decides whether a long input is cut or refused.
#[tokio::test]
async fn tei_embed_and_tokenize() {
    let s = state().await;
    let r = reference();
    for path in ["/embed", "/"] {
        let (status, v) = call(&s, path, json!({"inputs": r.sentences[0]}).to_string()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert!(cosine(&floats(&v[0]), &r.embeddings[0]) >= 0.999, "{path}");
    }
    let (status, v) = call(
        &s,
        "/embed",
        json!({"inputs": [r.sentences[1]], "normalize": false}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let raw = floats(&v[0]);
    let norm: f32 = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "not normalized: norm {norm}");
    assert!(cosine(&raw, &r.embeddings[1]) >= 0.999);

    let long = "word ".repeat(400);
    let (status, v) = call(&s, "/embed", json!({"inputs": long}).to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error_type"], "Validation");
    assert!(v["error"].as_str().unwrap().starts_with("inputs: "), "{v}");
    let (status, v) = call(
        &s,
        "/embed",
        json!({"inputs": long, "truncate": true}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(floats(&v[0]).len(), 384);
    let (status, v) = call(&s, "/embed", json!({"inputs": []}).to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    let (status, v) = call(
        &s,
        "/tokenize",
        json!({"inputs": "Hello world"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let tokens = v[0].as_array().unwrap();
    let texts: Vec<&str> = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["[CLS]", "Hello", "world", "[SEP]"], "{v}");
    assert_eq!(tokens[0]["special"], true);
    assert_eq!(tokens[0]["start"], Value::Null);
    assert_eq!(
        (&tokens[2]["start"], &tokens[2]["stop"]),
        (&json!(6), &json!(11))
    );
    let (_, v) = call(
        &s,
        "/tokenize",
        json!({"inputs": "Hello world", "add_special_tokens": false}).to_string(),
    )
    .await;
    assert_eq!(v[0].as_array().unwrap().len(), 2, "{v}");
}
