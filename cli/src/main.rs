//! `sluice`: one binary for every Sluice component and the user's commands.
//!
//! This file only parses flags and dispatches; each subcommand's wiring lives in its own
//! module.

mod autoscaler;
mod canary;
mod client;
mod describe;
mod flags;
mod guard;
mod hello;
mod kube;
mod kube_policy;
mod model_server;
mod queue;
mod rollout;
mod shutdown;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sluice: serverless and AI-inference serving (Knative Serving + KServe, in Rust).
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run Sluice locally: store, controller, autoscaler, router and activator in one process.
    Up(up::UpArgs),
    /// Apply manifests (files or folders of *.yaml) to a running `sluice up`.
    Apply(client::ApplyArgs),
    /// Show objects: isvc, ksvc, configuration, revision, route, servingruntime, clusterservingruntime.
    Get(client::GetArgs),
    /// Show one object's conditions, traffic, model status and what it owns.
    Describe(describe::DescribeArgs),
    /// Delete an object and everything it owns.
    Delete(client::DeleteArgs),
    /// Promote an InferenceService's canary: the latest revision takes all traffic.
    Promote(canary::CanaryArgs),
    /// Roll an InferenceService back: all traffic to its last rolled-out revision.
    Rollback(canary::CanaryArgs),
    /// Print the link that opens the dashboard (live topology, golden signals, rollouts).
    Ui(client::UiArgs),
    /// SLO-gated rollouts: `sluice rollout status NAME [--watch]`.
    Rollout(rollout::RolloutArgs),
    /// Serve one model over the Open Inference Protocol (a revision's replica).
    ModelServer(model_server::ModelServerArgs),
    /// Autoscaler tools: a trace simulator and a trace generator.
    Autoscaler(autoscaler::AutoscalerArgs),
    /// Run the controller on Kubernetes (`--kube`): the reconcilers on the Kubernetes API,
    /// revisions as Deployments, one active replica by leader election.
    Controller(kube::ControllerArgs),
    /// Run the ingress on Kubernetes (`--kube`), with the activator in-process: routes from
    /// watched Routes, Revisions and EndpointSlices.
    Router(kube::RouterArgs),
    /// Run the queue layer in front of a user process (a Service revision's replica):
    /// `sluice queue [flags] -- command args...`.
    Queue(queue::QueueArgs),
    /// A sample user process: answers `Hello <TARGET>!` on $PORT and echoes the request (a
    /// gRPC call gets its own message back).
    Hello(hello::HelloArgs),
    /// How `sluice up` runs each replica: ends the replica's whole process tree when
    /// `sluice up` is gone.
    #[command(hide = true)]
    ReplicaGuard(guard::GuardArgs),
}

/// mimalloc for small blocks, the C library for large ones (see `sluice-alloc`).
#[global_allocator]
static ALLOCATOR: sluice_alloc::SplitAlloc = sluice_alloc::SplitAlloc;

fn main() -> ExitCode {
    sluice_alloc::init();
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Apply(args) => client::apply(args).await,
            Command::Get(args) => client::get(args).await,
            Command::Describe(args) => describe::run(args).await,
            Command::Delete(args) => client::delete(args).await,
            Command::Promote(args) => canary::run(args, canary::Edit::Promote).await,
            Command::Rollback(args) => canary::run(args, canary::Edit::Rollback).await,
            Command::Rollout(args) => rollout::run(args).await,
            Command::Ui(args) => client::ui(args),
            Command::ModelServer(args) => model_server::run(args).await,
            Command::Autoscaler(args) => autoscaler::run(args),
            Command::Controller(args) => kube::controller(args).await,
            Command::Router(args) => kube::router(args).await,
            Command::Queue(args) => queue::run(args).await,
            Command::Hello(args) => hello::run(args).await,
            Command::ReplicaGuard(args) => guard::run(args).await,
        }
    });
    // Give blocking work (store writes) a moment to finish, never forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr's reader is gone, as a replica's is
        // when `sluice up` dies) is dropped: reporting it would panic on the same stderr.
        .log_internal_errors(false)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command's flags are well formed: no flag or environment variable declared
    /// twice (as two flattened groups could), defaults that parse, and so on.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
