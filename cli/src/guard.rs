//! `sluice replica-guard --parent PID -- command...`: how `sluice up` starts each replica,
//! so that no process of the replica outlives `sluice up`, however it ends.
//!
//! The guard runs the replica's command as its child and stays as a small supervisor:
//!
//! * it asks the kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`, checked
//!   against `--parent` to close the race with a parent that died before), so `sluice up`
//!   killed with SIGKILL, or crashing, still ends its replicas;
//! * it is a subreaper (`PR_SET_CHILD_SUBREAPER`), so whatever the replica forks stays below
//!   it even when a process in the middle exits, and "kill everything below me" reaches it;
//! * SIGTERM (or SIGINT) is passed on to the replica, which drains; `STOP_NOW` (SIGUSR1)
//!   from `sluice up` at the end of the drain grace kills the whole tree at once (a SIGKILL
//!   of the guard alone would leave the tree behind);
//! * when the replica's main process exits, whatever it left running is killed, and the
//!   guard exits with its status.
//!
//! `sluice up` starts the guard in a process group of its own, so a Ctrl-C at the terminal
//! reaches `sluice up` alone, which then stops its replicas in order.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getppid};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use crate::proctree;

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

/// The signal the kernel sends the guard when its parent dies. Also sent by a hung-up
/// terminal, or (spuriously) when only the parent's thread that started the guard exits:
/// the guard acts on it only once its parent process is really gone.
const PARENT_GONE: Signal = Signal::SIGHUP;

/// How long killing the tree may take before the guard gives up on it.
const KILL_WITHIN: Duration = Duration::from_secs(5);

/// Runs the replica until it exits, its parent dies, or `sluice up` says stop now; exits
/// with the replica's status.
pub(crate) async fn run(args: GuardArgs) -> anyhow::Result<()> {
    let parent = Pid::from_raw(args.parent);
    proctree::become_subreaper();
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(PARENT_GONE)
        .context("asking for a signal when sluice up exits")?;
    if getppid() != parent {
        bail!(
            "the process that started this replica (PID {parent}) is gone: not starting {:?}",
            args.command
        );
    }
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut parent_gone = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let mut stop_now = signal(SignalKind::from_raw(
        sluice_controller::runtime::STOP_NOW as i32,
    ))
    .context("watching SIGUSR1")?;
    let mut child_exited = signal(SignalKind::child()).context("watching SIGCHLD")?;

    let (program, rest) = args
        .command
        .split_first()
        .context("no replica command given after --")?;
    let mut child = Command::new(program)
        .args(rest)
        .spawn()
        .with_context(|| format!("starting the replica {program:?}"))?;
    let main = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);

    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the replica")?,
            _ = term.recv() => pass_on(main),
            _ = int.recv() => pass_on(main),
            _ = stop_now.recv() => proctree::kill_all_below(main, KILL_WITHIN).await,
            _ = parent_gone.recv() => {
                // Nothing is logged here: whoever read this process's stderr is gone.
                if getppid() != parent {
                    proctree::kill_all_below(main, KILL_WITHIN).await;
                }
            }
            // Orphans handed to this subreaper: reap them as they exit.
            _ = child_exited.recv() => proctree::reap_orphans(main),
        }
    };
    // The main process is gone: so is everything it left running.
    proctree::kill_all_below(None, KILL_WITHIN).await;
    exit_like(status)
}

/// Passes a stop request on to the replica's main process, which drains.
fn pass_on(main: Option<Pid>) {
    if let Some(pid) = main {
        let _ = kill(pid, Signal::SIGTERM);
    }
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
    let handled = [
        Signal::SIGTERM,
        Signal::SIGINT,
        PARENT_GONE,
        sluice_controller::runtime::STOP_NOW,
        Signal::SIGCHLD,
    ];
    if let Ok(signal) = Signal::try_from(sig)
        && !handled.contains(&signal)
    {
        let _ = nix::sys::signal::raise(signal);
    }
    std::process::exit(128 + sig)
}
