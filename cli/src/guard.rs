//! `sluice replica-guard --parent PID -- command...`: how `sluice up` starts each replica
//! (see [`sluice_controller::runtime::guard`]); exits as the replica did.

use clap::Args;
use nix::sys::signal::Signal;
use sluice_controller::runtime::guard;

/// Flags of `sluice replica-guard`.
#[derive(Args, Debug)]
pub(crate) struct GuardArgs {
    /// PID of the process that started this one (`sluice up`); when it is gone, so is the
    /// replica.
    #[arg(long)]
    parent: i32,
    /// The replica's command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// Runs the replica under the guard and exits with its status.
pub(crate) async fn run(args: GuardArgs) -> anyhow::Result<()> {
    let status = guard::run(args.parent, args.command).await?;
    exit_like(status)
}

/// Exits as the replica did: with its code, or killed by its signal where this process
/// still has that signal's default action (else 128 + the signal, as a shell reports it).
fn exit_like(status: std::process::ExitStatus) -> anyhow::Result<()> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        if code == 0 {
            return Ok(());
        }
        std::process::exit(code);
    }
    let sig = status.signal().unwrap_or(0);
    if let Ok(signal) = Signal::try_from(sig)
        && !guard::HANDLED.contains(&signal)
    {
        let _ = nix::sys::signal::raise(signal);
    }
    std::process::exit(128 + sig)
}
