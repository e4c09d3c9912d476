//! KPA against the pattern policy on traces, through the real simulator (default settings,
//! or `COLD_MS`, `SERVICE_MS` and `CONCURRENCY` from the environment): one markdown row a
//! trace with cold starts and replica-seconds of both, their ratios, and the pattern
//! policy's verdict against the bound (cold starts ≤ KPA's, replica-seconds ≤ 1.05×).
//!
//! `cargo run -p sluice-autoscaler --example pattern_vs_kpa -- SPEC...` where SPEC is a trace
//! file, or `KIND:SEED:HOURS` to generate one (`heavy-bursty:1:24`).
#![allow(missing_docs)]

use std::time::Duration;

use sluice_autoscaler::sim::{SimConfig, generate, parse_trace, simulate};
use sluice_core::ScalePolicy;

fn sim_config(policy: ScalePolicy) -> Result<SimConfig, String> {
    let env = |k: &str| -> Result<Option<u64>, String> {
        match std::env::var(k) {
            Ok(v) => v
                .parse()
                .map(Some)
                .map_err(|e| format!("{k}={v:?}: not a whole number: {e}")),
            Err(_) => Ok(None),
        }
    };
    let concurrency = u32::try_from(env("CONCURRENCY")?.unwrap_or(1))
        .map_err(|_| "CONCURRENCY: too large".to_owned())?;
    let mut cfg = SimConfig::new(policy, concurrency);
    if let Some(ms) = env("COLD_MS")? {
        cfg.cold_start = Duration::from_millis(ms);
    }
    if let Some(ms) = env("SERVICE_MS")? {
        cfg.service_time = Duration::from_millis(ms);
    }
    Ok(cfg)
}

/// The trace a SPEC names: `KIND:SEED:HOURS` generated, or a trace file.
fn trace_text(spec: &str) -> Result<String, String> {
    match spec.split(':').collect::<Vec<_>>()[..] {
        [kind, seed, hours] => Ok(generate(
            kind.parse()
                .map_err(|e| format!("{spec}: trace kind: {e}"))?,
            seed.parse().map_err(|e| format!("{spec}: seed: {e}"))?,
            hours.parse().map_err(|e| format!("{spec}: hours: {e}"))?,
        )),
        _ => std::fs::read_to_string(spec).map_err(|e| format!("reading {spec}: {e}")),
    }
}

fn main() -> Result<(), String> {
    println!(
        "| trace | requests | cold KPA | cold pattern | ratio | replica-s KPA | replica-s pattern | ratio | met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for spec in std::env::args().skip(1) {
        let trace = parse_trace(&trace_text(&spec)?).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("{spec}: {}", lines.join("; "))
        })?;
        let kpa = simulate(&trace, &sim_config(ScalePolicy::Kpa)?);
        let pattern = simulate(&trace, &sim_config(ScalePolicy::Pattern)?);
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
    Ok(())
}
