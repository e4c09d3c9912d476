//! Timer batcher against token-budget batcher on a mixed-length embedding workload, in one
//! process and one session (bench/model-server/mixed runs it).
//!
//! Loads MiniLM twice: once with the timer batcher (`max_batch_tokens` 0,
//! `max_batch_size` 32, `max_queue_delay` 2 ms, the server's defaults) and once with the
//! token-budget batcher (`max_batch_tokens` 16384, `max_batch_size` 32). `CONCURRENCY`
//! closed-loop clients post TEI `/embed` requests of one text each through the server's
//! router (no socket): half short queries (~10 tokens), half passages (~200 tokens),
//! interleaved. Each round runs both batchers for `SECONDS` (after a 1 s warm-up), the
//! order alternating between rounds; prints every round, then the medians, as a table and
//! one JSON line.
//!
//! ```text
//! mixed_batching MODEL_DIR [SECONDS] [ROUNDS] [CONCURRENCY]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use sluice_model_server::http::{AppState, router};
use sluice_model_server::{BatchConfig, ModelSource, Repository};
use sluice_queue::{Queue, QueueConfig};
use tokio::time::Instant;
use tower::ServiceExt;

const QUERIES: &[&str] = &[
    "how do I reset my password",
    "best hiking trails near the lake",
    "what is the capital of Australia",
    "symptoms of vitamin D deficiency",
    "cheap flights to Lisbon in May",
    "how long to boil an egg",
];

const PASSAGE_SENTENCES: &[&str] = &[
    "The river valley was settled by farmers who built terraces along the southern slopes.",
    "Over the following centuries the terraces were extended, and a market town grew at the ford.",
    "Merchants brought salt, cloth and iron from the coast, and carried grain and wool back.",
    "A stone bridge replaced the ford in the fourteenth century, paid for by a toll on carts.",
    "The town's charter granted it a weekly market and an annual fair lasting eight days.",
    "When the railway arrived, the fair declined, but the town became a junction for two lines.",
    "Factories for textiles and machine parts opened near the station and drew workers inland.",
    "Today the terraces are mostly vineyards, and the old mills have become homes and studios.",
    "Visitors walk the towpath along the canal, which was restored by volunteers in the 1990s.",
    "The museum in the former toll house tells the story of the bridge and the families who kept it.",
];

/// A passage of about 200 MiniLM tokens, starting at sentence `i`.
fn passage(i: usize) -> String {
    (0..10)
        .map(|k| PASSAGE_SENTENCES[(i + k) % PASSAGE_SENTENCES.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

async fn state(dir: &Path, max_batch_tokens: usize) -> Arc<AppState> {
    let repository = Arc::new(Repository::new(
        None,
        std::env::temp_dir(),
        BatchConfig::default(),
    ));
    repository.add(
        "minilm",
        ModelSource {
            format: "bert".into(),
            storage_uri: dir.to_string_lossy().into_owned(),
            batching: BatchConfig {
                max_batch_tokens,
                ..BatchConfig::default()
            },
        },
    );
    repository.load("minilm").await.expect("load MiniLM");
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

struct Round {
    requests: usize,
    errors: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `concurrency` closed-loop clients for `seconds` after a 1 s warm-up.
async fn drive(
    s: &Arc<AppState>,
    bodies: &Arc<Vec<String>>,
    concurrency: usize,
    seconds: f64,
) -> Round {
    let app = router(s.clone(), 16 << 20);
    let measure_from = Instant::now() + Duration::from_secs(1);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (app, bodies) = (app.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut k) = (Vec::new(), 0usize, worker);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let body = bodies[k % bodies.len()].clone();
                k += 1;
                let req = Request::post("/embed")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                let ok = resp.status().is_success();
                let ok = ok && resp.into_body().collect().await.is_ok();
                if t0 >= measure_from {
                    if ok {
                        lat.push(t0.elapsed().as_secs_f64());
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |s| s * 1e3)
    };
    Round {
        requests: all.len(),
        errors,
        rps: all.len() as f64 / seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Mean rows and padded tokens per batch so far, from the model's metrics.
fn batch_means(s: &AppState) -> (f64, f64) {
    let served = s.repository.get("minilm").unwrap();
    let m = &served.metrics;
    let per = |h: &sluice_model_server::metrics::Histogram| h.sum() / h.count() as f64;
    (per(&m.batch_size), per(&m.batch_tokens))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: mixed_batching MODEL_DIR [SECONDS] [ROUNDS] [CONCURRENCY]";
    let dir = std::path::PathBuf::from(args.next().expect(usage));
    let seconds: f64 = args.next().map_or(10.0, |s| s.parse().expect(usage));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect(usage));
    let concurrency: usize = args.next().map_or(32, |s| s.parse().expect(usage));
    let bodies: Vec<String> = (0..12)
        .map(|i| {
            let text = if i % 2 == 0 {
                QUERIES[(i / 2) % QUERIES.len()].to_owned()
            } else {
                passage(i)
            };
            serde_json::json!({ "inputs": text }).to_string()
        })
        .collect();
    let texts: Vec<String> = bodies
        .iter()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["inputs"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let modes = [
        ("timer", state(&dir, 0).await),
        ("tokens", state(&dir, 16384).await),
    ];
    {
        let served = modes[0].1.repository.get("minilm").unwrap();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = served
            .model
            .text_embedder()
            .unwrap()
            .count_tokens(&refs)
            .unwrap();
        println!("tokens per text (one text per request, cycled): {tokens:?}\n");
    }
    let mut rps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut p50: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut p99: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    println!("| round | batcher | requests | errors | req/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for m in order {
            let (name, s) = &modes[m];
            let r = drive(s, &bodies, concurrency, seconds).await;
            println!(
                "| {round} | {name} | {} | {} | {:.1} | {:.0} | {:.0} |",
                r.requests, r.errors, r.rps, r.p50_ms, r.p99_ms
            );
            rps[m].push(r.rps);
            p50[m].push(r.p50_ms);
            p99[m].push(r.p99_ms);
        }
    }
    let mut summary = serde_json::Map::new();
    println!(
        "\n| batcher | median req/s | median p50 ms | median p99 ms | rows/batch | padded tokens/batch |"
    );
    println!("|---|---|---|---|---|---|");
    for (m, (name, s)) in modes.iter().enumerate() {
        let (rows, tokens) = batch_means(s);
        let (r, a, b) = (
            median(rps[m].clone()),
            median(p50[m].clone()),
            median(p99[m].clone()),
        );
        let tokens_cell = if tokens.is_nan() {
            "not counted".to_owned()
        } else {
            format!("{tokens:.0}")
        };
        println!("| {name} | {r:.1} | {a:.0} | {b:.0} | {rows:.1} | {tokens_cell} |");
        summary.insert(
            (*name).to_owned(),
            serde_json::json!({"rps": r, "p50_ms": a, "p99_ms": b, "rows_per_batch": rows,
                "padded_tokens_per_batch": if tokens.is_nan() { serde_json::Value::Null } else { tokens.into() }}),
        );
    }
    println!("{}", serde_json::Value::Object(summary));
}
