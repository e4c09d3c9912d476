//! In-process MiniLM embedding speed, without HTTP: loads a `bert` model folder and embeds
//! the benchmark's sentence (the one bench/model-server/bench.py sends) at batch 1 and
//! batch 32, in back-to-back one-second rounds for `SECONDS` seconds per batch size, and
//! prints the median, minimum and maximum round in sentences/s. For comparing CPU kernels
//! (e.g. gemm's AVX-512 path) on a noisy machine: alternate builds and compare medians.
//!
//! ```text
//! embed_speed MODEL_DIR [SECONDS]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use sluice_model_server::bert::Bert;
use tokio::time::Instant;

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog near the bank.";

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: embed_speed MODEL_DIR [SECONDS]"));
    let seconds: u64 = args.next().map_or(10, |s| s.parse().expect("SECONDS"));
    let bert = Bert::load("minilm", &dir).expect("load MiniLM");
    for batch in [1usize, 32] {
        let sentences = vec![SENTENCE; batch];
        // Warm-up: first calls allocate and page in the weights.
        for _ in 0..3 {
            bert.embed(&sentences).expect("embed");
        }
        let mut rounds = Vec::new();
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            let start = Instant::now();
            let mut done = 0usize;
            while start.elapsed() < Duration::from_secs(1) {
                bert.embed(&sentences).expect("embed");
                done += batch;
            }
            rounds.push(done as f64 / start.elapsed().as_secs_f64());
        }
        rounds.sort_by(f64::total_cmp);
        let median = rounds[rounds.len() / 2];
        println!(
            "batch {batch:>2}: median {median:8.1} sentences/s (min {:.1}, max {:.1}, {} rounds)",
            rounds[0],
            rounds[rounds.len() - 1],
            rounds.len()
        );
    }
}
