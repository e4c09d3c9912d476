//! The pattern policy's per-time-of-day table on one trace, through the real simulator
//! (default settings: cold start 2 s, service time 100 ms, concurrency 1): the KPA, the
//! policy before the table (online estimate only), the policy with it, and, for memoryless
//! kinds (diurnal, poisson), the oracle that plans on the generator's true rates
//! (1-minute slots), unguarded (the forecast alone, without the books against the KPA).
//! Optional fixed exchange rates `c` (warm while rate × c ≥ 1) sweep the cold-start /
//! replica-second trade-off for the learned table and the oracle.
//!
//! `cargo run -p sluice-autoscaler --example diurnal_sweep -- SPEC [C_SECONDS,...|-]`
//! where SPEC is a trace file, or `KIND:SEED:HOURS` to generate one. When the trace is
//! longer than a day the last columns give each policy's totals after the first day (the
//! run minus a run of the first 24 h alone), which is where a learned daily table acts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use sluice_autoscaler::pattern::PatternConfig;
use sluice_autoscaler::sim::{
    Arrival, SimConfig, SimReport, TraceKind, generate, parse_trace, simulate, true_daily_rates,
};
use sluice_core::ScalePolicy;

/// The simulator's settings: the defaults, or `COLD_MS`, `SERVICE_MS` and `CONCURRENCY`
/// from the environment.
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

fn run(trace: &[Arrival], pattern: Option<PatternConfig>) -> SimReport {
    match pattern {
        None => simulate(trace, &sim_config(ScalePolicy::Kpa)),
        Some(p) => {
            let mut cfg = sim_config(ScalePolicy::Pattern);
            cfg.pattern = p;
            simulate(trace, &cfg)
        }
    }
}

/// The default knobs, with `SLOTS`, `SMOOTH`, `DECAY`, `BUDGET` and `QUIET` (the quiet
/// limit; `-1` never uses the table: the policy before the table) from the environment.
fn base() -> PatternConfig {
    let env = |k: &str| std::env::var(k).ok();
    let d = PatternConfig::default();
    PatternConfig {
        daily_slots: env("SLOTS").map_or(d.daily_slots, |v| v.parse().unwrap()),
        daily_smooth: env("SMOOTH").map_or(d.daily_smooth, |v| v.parse().unwrap()),
        daily_day_decay: env("DECAY").map_or(d.daily_day_decay, |v| v.parse().unwrap()),
        daily_budget: env("BUDGET").map_or(d.daily_budget, |v| v.parse().unwrap()),
        daily_quiet_limit: env("QUIET").map_or(d.daily_quiet_limit, |v| v.parse().unwrap()),
        ..d
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = args.first().expect("SPEC");
    let exchanges: Vec<u64> = args
        .get(1)
        .map(|s| {
            s.split(',')
                .filter(|x| *x != "-")
                .map(|x| x.parse().unwrap())
                .collect()
        })
        .unwrap_or_else(|| vec![62]);
    let (text, kind) = match spec.split(':').collect::<Vec<_>>()[..] {
        [k, seed, hours] => {
            let kind: TraceKind = k.parse().unwrap();
            (
                generate(kind, seed.parse().unwrap(), hours.parse().unwrap()),
                Some(kind),
            )
        }
        _ => {
            let text = std::fs::read_to_string(spec).unwrap();
            let kind = ["diurnal", "poisson", "bursty", "periodic"]
                .into_iter()
                .find(|k| text.lines().next().unwrap_or("").contains(k))
                .map(|k| k.parse().unwrap());
            (text, kind)
        }
    };
    let trace = parse_trace(&text).unwrap();
    let first_day: Vec<Arrival> = trace
        .iter()
        .copied()
        .filter(|a| a.at_ms < 86_400_000)
        .collect();
    let multi_day = trace.len() > first_day.len();
    let oracle = kind.and_then(|k| true_daily_rates(k, 1440));

    let mut rows: Vec<(String, Option<PatternConfig>)> = vec![
        ("kpa".into(), None),
        (
            "pattern before (no table)".into(),
            Some(PatternConfig {
                daily_quiet_limit: -1.0,
                ..base()
            }),
        ),
        ("pattern (daily table)".into(), Some(base())),
    ];
    if std::env::var_os("ZERO_TABLE").is_some() {
        rows.push((
            "given all-quiet table".into(),
            Some(PatternConfig {
                daily_rates: Some(vec![0.0; 96]),
                ..base()
            }),
        ));
    }
    if let Some(rates) = &oracle {
        rows.push((
            "oracle (true rates, planned)".into(),
            Some(PatternConfig {
                daily_rates: Some(rates.clone()),
                guarded: false,
                ..base()
            }),
        ));
    }
    for c in &exchanges {
        let daily_exchange = Some(Duration::from_secs(*c));
        rows.push((
            format!("learned c={c}"),
            Some(PatternConfig {
                daily_exchange,
                ..base()
            }),
        ));
        if let Some(rates) = &oracle {
            rows.push((
                format!("oracle c={c}"),
                Some(PatternConfig {
                    daily_exchange,
                    daily_rates: Some(rates.clone()),
                    guarded: false,
                    ..base()
                }),
            ));
        }
    }
    let kpa = run(&trace, None);
    let kpa_day1 = multi_day.then(|| run(&first_day, None));
    println!("{spec}: {} requests", trace.len());
    println!(
        "| policy | cold | ratio | replica-s | ratio | after day 1: cold | ratio | replica-s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, cfg) in rows {
        let r = if cfg.is_none() {
            kpa.clone()
        } else {
            run(&trace, cfg.clone())
        };
        let mut line = format!(
            "| {name} | {} | {:.3} | {:.0} | {:.4} |",
            r.cold_starts,
            r.cold_starts as f64 / kpa.cold_starts.max(1) as f64,
            r.replica_seconds,
            r.replica_seconds / kpa.replica_seconds
        );
        if let Some(k1) = &kpa_day1 {
            let r1 = run(&first_day, cfg);
            let (kc, kr) = (
                kpa.cold_starts - k1.cold_starts,
                kpa.replica_seconds - k1.replica_seconds,
            );
            let (c, rs) = (
                r.cold_starts as f64 - r1.cold_starts as f64,
                r.replica_seconds - r1.replica_seconds,
            );
            line += &format!(
                " {c} | {:.3} | {rs:.0} | {:.4} |",
                c / kc.max(1) as f64,
                rs / kr
            );
        }
        println!("{line}");
    }
}
