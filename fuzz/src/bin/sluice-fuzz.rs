//! `sluice-fuzz`: runs the fuzz targets for a while each and prints what they tried
//! (`bench/fuzz/run` builds and runs it), replays one input, or lists the targets.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use prost::Message;
use sluice_fuzz::runner::{hex, load_corpus, unhex};
use sluice_fuzz::{ALL, Budget, Options, Target, by_name};

#[derive(Parser)]
#[command(about = "Mutation fuzzing of Sluice's decoders on stable Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs targets over their corpus, then mutated inputs until the time is up.
    Run {
        /// Seconds per target (mutated inputs; the corpus always runs whole).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Mutated inputs per target instead of a time (a replayable run).
        #[arg(long)]
        inputs: Option<u64>,
        /// Seed of the mutation stream; random (and printed) when absent.
        #[arg(long)]
        seed: Option<u64>,
        /// Only these targets (repeatable); all when absent.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// The corpus folder (one subfolder per target).
        #[arg(long, default_value = default_corpus())]
        corpus: PathBuf,
        /// Where failing inputs are written.
        #[arg(long, default_value = default_crashes())]
        crashes: PathBuf,
    },
    /// Runs one input (a file of raw bytes, or `--hex`) through one target.
    Reproduce {
        /// The target.
        #[arg(long)]
        target: String,
        /// The input file.
        #[arg(required_unless_present = "hex")]
        file: Option<PathBuf>,
        /// The input as hex, as a failing run prints it.
        #[arg(long)]
        hex: Option<String>,
    },
    /// Lists the targets and what each calls.
    List,
    /// Writes the gRPC seed requests into DIR (how `corpus/grpc-infer` was made).
    WriteGrpcSeeds {
        /// The folder.
        dir: PathBuf,
    },
}

fn default_corpus() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/corpus")
}

fn default_crashes() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/crashes")
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run {
            seconds,
            inputs,
            seed,
            targets,
            corpus,
            crashes,
        } => {
            let targets: Vec<&Target> = if targets.is_empty() {
                ALL.iter().collect()
            } else {
                targets
                    .iter()
                    .map(|name| by_name(name).with_context(|| format!("no target {name:?}")))
                    .collect::<anyhow::Result<_>>()?
            };
            let seed = seed.unwrap_or_else(random_seed);
            let budget = match inputs {
                Some(n) => Budget::Inputs(n),
                None => Budget::Time(Duration::from_secs(seconds)),
            };
            let what = match budget {
                Budget::Inputs(n) => format!("{n} mutated inputs"),
                Budget::Time(t) => format!("{} s", t.as_secs()),
            };
            println!(
                "seed {seed}, {what} per target, corpus {}",
                corpus.display()
            );
            let options = Options {
                seed,
                budget,
                crash_dir: Some(crashes),
                pool_limit: 4096,
            };
            run(&targets, &corpus, &options)
        }
        Command::Reproduce { target, file, hex } => {
            let target = by_name(&target).with_context(|| format!("no target {target:?}"))?;
            let input = match (hex, file) {
                (Some(h), _) => unhex(&h).context("--hex is not hex")?,
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
                }
                (None, None) => bail!("give a file or --hex"),
            };
            (target.prepare)().map_err(anyhow::Error::msg)?;
            let (result, largest) = sluice_fuzz::run_one(target, &input);
            println!("largest allocation: {largest} bytes");
            match result {
                Ok(outcome) => {
                    println!("no failure; outcome: {outcome}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    println!("{failure}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::List => {
            for t in ALL {
                println!("{:<16} {}", t.name, t.about);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::WriteGrpcSeeds { dir } => {
            std::fs::create_dir_all(&dir)?;
            for (name, request) in sluice_fuzz::targets::grpc_seed_requests() {
                let path = dir.join(format!("{name}.bin"));
                std::fs::write(&path, request.encode_to_vec())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(targets: &[&Target], corpus: &Path, options: &Options) -> anyhow::Result<ExitCode> {
    println!(
        "| target | corpus | inputs tried | inputs/s | outcomes | new inputs | largest allocation | failures |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    for target in targets {
        let dir = corpus.join(target.name);
        let entries =
            load_corpus(&dir).with_context(|| format!("reading the corpus {}", dir.display()))?;
        let report = sluice_fuzz::run(target, &entries, options).map_err(anyhow::Error::msg)?;
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            report.target,
            report.corpus,
            report.inputs,
            report.rate(),
            report.outcomes,
            report.new_inputs,
            bytes(report.largest_allocation.0),
            report.failures,
        );
        for f in &report.findings {
            failed = true;
            eprintln!("{}: {}", report.target, f.failure);
            eprintln!("  input ({} bytes): {}", f.input.len(), hex(&f.input));
            if let Some(path) = &f.saved {
                eprintln!(
                    "  saved: {} (replay: sluice-fuzz reproduce --target {} {})",
                    path.display(),
                    report.target,
                    path.display()
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

/// A seed from the clock (printed, so the run can be replayed).
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}
