//! `sluice autoscaler`: the trace simulator and trace generator. Flags only; the logic is
//! in `sluice_autoscaler::sim`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use sluice_autoscaler::sim::{SimConfig, TraceKind, generate, parse_trace, simulate};
use sluice_core::ScalePolicy;

/// `sluice autoscaler …`
#[derive(Args, Debug)]
pub(crate) struct AutoscalerArgs {
    #[command(subcommand)]
    command: AutoscalerCommand,
}

#[derive(Subcommand, Debug)]
enum AutoscalerCommand {
    /// Replay a trace (CSV: `timestamp_seconds[,duration_ms]`) through the real decider.
    Simulate(SimulateArgs),
    /// Print a synthetic trace on stdout.
    GenTrace(GenTraceArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Policy {
    Kpa,
    Pattern,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// The trace file.
    #[arg(long)]
    trace: PathBuf,
    /// Scaling policy.
    #[arg(long, value_enum, default_value = "kpa")]
    policy: Policy,
    /// Milliseconds from asking for a replica to it being ready.
    #[arg(long, default_value_t = 2000)]
    cold_start: u64,
    /// Service time (ms) of requests whose trace line gives none.
    #[arg(long, default_value_t = 100)]
    service_time: u64,
    /// Requests one replica serves at once (0 = unlimited); also its containerConcurrency.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Periodic,
    Bursty,
    Diurnal,
    Poisson,
    /// Bursts of 50–500 requests with Pareto (heavy-tailed) gaps.
    HeavyBursty,
}

#[derive(Args, Debug)]
struct GenTraceArgs {
    /// Shape of the traffic.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Random seed (same seed, same trace).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the trace in hours (at most 744).
    #[arg(long, default_value_t = 1.0)]
    hours: f64,
}

/// Runs `sluice autoscaler …`.
pub(crate) fn run(args: AutoscalerArgs) -> anyhow::Result<()> {
    match args.command {
        AutoscalerCommand::Simulate(a) => run_simulate(a),
        AutoscalerCommand::GenTrace(a) => {
            if !(a.hours.is_finite() && a.hours > 0.0 && a.hours <= 744.0) {
                bail!("--hours {} must be in (0, 744]", a.hours);
            }
            let kind = match a.kind {
                Kind::Periodic => TraceKind::Periodic,
                Kind::Bursty => TraceKind::Bursty,
                Kind::Diurnal => TraceKind::Diurnal,
                Kind::Poisson => TraceKind::Poisson,
                Kind::HeavyBursty => TraceKind::HeavyBursty,
            };
            print!("{}", generate(kind, a.seed, a.hours));
            Ok(())
        }
    }
}

fn run_simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.trace)
        .with_context(|| format!("reading {}", a.trace.display()))?;
    let trace = parse_trace(&text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!("{} is malformed:\n{}", a.trace.display(), lines.join("\n"))
    })?;
    let policy = match a.policy {
        Policy::Kpa => ScalePolicy::Kpa,
        Policy::Pattern => ScalePolicy::Pattern,
    };
    let mut cfg = SimConfig::new(policy, a.concurrency);
    cfg.cold_start = Duration::from_millis(a.cold_start);
    cfg.service_time = Duration::from_millis(a.service_time);
    let report = simulate(&trace, &cfg);
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("requests          {}", report.requests);
        println!("cold_starts       {}", report.cold_starts);
        println!("p50_queue_ms      {:.1}", report.p50_queue_ms);
        println!("p99_queue_ms      {:.1}", report.p99_queue_ms);
        println!("max_queue_ms      {:.1}", report.max_queue_ms);
        println!("replica_seconds   {:.1}", report.replica_seconds);
        println!("peak_replicas     {}", report.peak_replicas);
        println!("seconds_at_zero   {:.1}", report.seconds_at_zero);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulate_args(trace: PathBuf) -> SimulateArgs {
        SimulateArgs {
            trace,
            policy: Policy::Pattern,
            cold_start: 2000,
            service_time: 100,
            concurrency: 1,
            json: true,
        }
    }

    #[test]
    fn malformed_traces_name_their_lines() {
        let path = std::env::temp_dir().join(format!(
            "sluice-trace-{}-{}.csv",
            std::process::id(),
            "malformed"
        ));
        std::fs::write(&path, "0.5\nsoon\n1,fast\n").unwrap();
        let err = run_simulate(simulate_args(path.clone()))
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            err.contains("line 2: timestamp \"soon\" is not a number of seconds"),
            "{err}"
        );
        assert!(err.contains("line 3: duration \"fast\""), "{err}");
        let err = run_simulate(simulate_args("/no/such/trace.csv".into())).unwrap_err();
        assert!(format!("{err:#}").contains("reading /no/such/trace.csv"));
    }

    #[test]
    fn gen_trace_refuses_bad_hours() {
        let args = AutoscalerArgs {
            command: AutoscalerCommand::GenTrace(GenTraceArgs {
                kind: Kind::Periodic,
                seed: 1,
                hours: -1.0,
            }),
        };
        assert!(run(args).unwrap_err().to_string().contains("--hours -1"));
    }
}
