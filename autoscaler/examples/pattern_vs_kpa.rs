//! KPA against the pattern policy on traces, through the real simulator (default settings,
//! or `COLD_MS`, `SERVICE_MS` and `CONCURRENCY` from the environment): one markdown row a
//! trace with cold starts and replica-seconds of both, their ratios, and the pattern
//! policy's verdict against the bound (cold starts ≤ KPA's, replica-seconds ≤ 1.05×).
//!
//! `cargo run -p sluice-autoscaler --example pattern_vs_kpa -- SPEC...` where SPEC is a trace
//! file, or `KIND:SEED:HOURS` to generate one (`heavy-bursty:1:24`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use sluice_autoscaler::sim::{SimConfig, generate, parse_trace, simulate};
use sluice_core::ScalePolicy;

fn sim_config(policy: ScalePolicy) -> SimConfig {
    let env = |k: &str| std::env::var(k).ok().map(|v| v.parse::<u64>().unwrap());
    let mut cfg = SimConfig::new(policy, env("CONCURRENCY").unwrap_or(1) as u32);
    if let Some(ms) = env("COLD_MS") {
        cfg.cold_start = Duration::from_millis(ms);
    }
    if let Some(ms) = env("SERVICE_MS") {
        cfg.service_time = Duration::from_millis(ms);
    }
    cfg
}

fn main() {
    println!(
        "| trace | requests | cold KPA | cold pattern | ratio | replica-s KPA | replica-s pattern | ratio | met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for spec in std::env::args().skip(1) {
        let text = match spec.split(':').collect::<Vec<_>>()[..] {
            [k, seed, hours] => generate(
                k.parse().unwrap(),
                seed.parse().unwrap(),
                hours.parse().unwrap(),
            ),
            _ => std::fs::read_to_string(&spec).unwrap(),
        };
        let trace = parse_trace(&text).unwrap();
        let kpa = simulate(&trace, &sim_config(ScalePolicy::Kpa));
        let pattern = simulate(&trace, &sim_config(ScalePolicy::Pattern));
        let met = pattern.cold_starts <= kpa.cold_starts
            && pattern.replica_seconds <= 1.05 * kpa.replica_seconds;
        println!(
            "| {spec} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.3} | {} |",
            kpa.requests,
            kpa.cold_starts,
            pattern.cold_starts,
            pattern.cold_starts as f64 / kpa.cold_starts.max(1) as f64,
            kpa.replica_seconds,
            pattern.replica_seconds,
            pattern.replica_seconds / kpa.replica_seconds,
            if met { "yes" } else { "NO" }
        );
    }
}
