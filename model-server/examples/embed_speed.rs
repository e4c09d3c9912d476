//! In-process MiniLM embedding speed, without HTTP: loads a `bert` model folder twice, on
//! Sluice's CPU encoder and on candle-transformers' `BertModel`, and embeds bench.py's
//! sentence (the one bench/model-server/bench.py sends) at batch 1 and batch 32, in
//! one-second rounds that alternate between the two, for `SECONDS` seconds per batch size
//! and encoder. Prints each encoder's median, minimum and maximum round in sentences/s and
//! the ratio of the medians, so a noisy machine compares them within one run.
//!
//! ```text
//! embed_speed MODEL_DIR [SECONDS] [sluice|candle]
//! ```
//!
//! With an encoder named last, only that one runs (for profiling it alone). The last line
//! is JSON for the first encoder, in bench/model-server/inprocess.py's shape (batch-1
//! req/s and p50/p99 per call, batch-32 sentences/s and p50 per call), which
//! bench/model-server/bench.py reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use sluice_model_server::bert::{Bert, BertKernels};

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog near the bank.";

/// One one-second round: sentences/s, and each call's latency in milliseconds.
fn round(bert: &Bert, sentences: &[&str]) -> (f64, Vec<f64>) {
    let start = Instant::now();
    let mut done = 0usize;
    let mut latencies = Vec::new();
    while start.elapsed() < Duration::from_secs(1) {
        let call = Instant::now();
        bert.embed(sentences).expect("embed");
        latencies.push(call.elapsed().as_secs_f64() * 1e3);
        done += sentences.len();
    }
    (done as f64 / start.elapsed().as_secs_f64(), latencies)
}

fn summary(rounds: &mut [f64]) -> (f64, f64, f64) {
    rounds.sort_by(f64::total_cmp);
    (
        rounds[rounds.len() / 2],
        rounds[0],
        rounds[rounds.len() - 1],
    )
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: embed_speed MODEL_DIR [SECONDS]"));
    let seconds: u64 = args.next().map_or(10, |s| s.parse().expect("SECONDS"));
    println!("kernels: {}", sluice_kernels::cpu_kernels());
    let only = args.next();
    let encoders: Vec<(&str, Bert)> = [
        ("sluice", BertKernels::Auto),
        ("candle", BertKernels::Candle),
    ]
    .into_iter()
    .filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name))
    .map(|(name, kernels)| {
        (
            name,
            Bert::load_with("minilm", &dir, kernels).expect("load"),
        )
    })
    .collect();
    let mut json = serde_json::Map::new();
    for batch in [1usize, 32] {
        let sentences = vec![SENTENCE; batch];
        // Warm-up: first calls allocate and page in the weights.
        for (_, bert) in &encoders {
            for _ in 0..3 {
                bert.embed(&sentences).expect("embed");
            }
        }
        let mut rounds = vec![Vec::new(); encoders.len()];
        let mut latencies = vec![Vec::new(); encoders.len()];
        for _ in 0..seconds.max(1) {
            for (((_, bert), rounds), latencies) in
                encoders.iter().zip(&mut rounds).zip(&mut latencies)
            {
                let (rate, calls) = round(bert, &sentences);
                rounds.push(rate);
                latencies.extend(calls);
            }
        }
        let medians: Vec<f64> = encoders
            .iter()
            .zip(&mut rounds)
            .map(|((name, _), rounds)| {
                let (median, min, max) = summary(rounds);
                println!(
                    "batch {batch:>2} {name}: median {median:8.1} sentences/s \
                     (min {min:.1}, max {max:.1}, {} rounds)",
                    rounds.len()
                );
                median
            })
            .collect();
        if let [ours, candle] = medians[..] {
            println!("batch {batch:>2} sluice/candle: {:.2}x", ours / candle);
        }
        let first = &mut latencies[0];
        first.sort_by(f64::total_cmp);
        let (p50, p99) = (quantile(first, 0.5), quantile(first, 0.99));
        if batch == 1 {
            json.insert("b1_rps".into(), medians[0].into());
            json.insert("b1_p50_ms".into(), p50.into());
            json.insert("b1_p99_ms".into(), p99.into());
        } else {
            json.insert("b32_sentences_per_s".into(), medians[0].into());
            json.insert("b32_p50_ms".into(), p50.into());
        }
    }
    println!("{}", serde_json::Value::Object(json));
}
