//! The replica guard: how the local runtime starts each replica (`sluice replica-guard
//! --parent PID -- command...`), so that no process of the replica outlives `sluice up`,
//! however it ends.
//!
//! The guard runs the replica's command as its child and stays as a small supervisor:
//!
//! * it asks the kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`, checked
//!   against the parent's PID to close the race with a parent that died before), so
//!   `sluice up` killed with SIGKILL, or crashing, still ends its replicas;
//! * it is a subreaper (`PR_SET_CHILD_SUBREAPER`), so whatever the replica forks stays below
//!   it even when a process in the middle exits, and "kill everything below me" reaches it
//!   ([`sluice_queue::proctree`]);
//! * SIGTERM (or SIGINT) is passed on to the replica, which drains; [`STOP_NOW`] (SIGUSR1)
//!   from the runtime at the end of the drain grace kills the whole tree at once (a SIGKILL
//!   of the guard alone would leave the tree behind);
//! * when the replica's main process exits, whatever it left running is killed, and the
//!   guard exits with its status.
//!
//! The runtime starts the guard in a process group of its own, so a Ctrl-C at the terminal
//! reaches `sluice up` alone, which then stops its replicas in order.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getppid};
use sluice_queue::proctree;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use super::local::STOP_NOW;

/// The signal the kernel sends the guard when its parent dies. Also sent by a hung-up
/// terminal, or (spuriously) when only the parent's thread that started the guard exits:
/// the guard acts on it only once its parent process is really gone.
pub const PARENT_GONE: Signal = Signal::SIGHUP;

/// The signals the guard handles itself: a replica killed by one of them is reported as a
/// plain exit code, as the guard cannot die of it.
pub const HANDLED: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    PARENT_GONE,
    STOP_NOW,
    Signal::SIGCHLD,
];

/// How long killing the tree may take before the guard gives up on it.
const KILL_WITHIN: Duration = Duration::from_secs(5);

/// Why the guard could not run the replica.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The process that started the guard exited before the guard could watch it.
    #[error(
        "the process that started this replica (PID {parent}) is gone: not starting {command:?}"
    )]
    ParentGone {
        /// The parent's PID.
        parent: i32,
        /// The replica's command.
        command: Vec<String>,
    },
    /// A signal could not be watched.
    #[error("watching {what}")]
    Watch {
        /// What was to be watched.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No command was given.
    #[error("no replica command given after --")]
    NoCommand,
    /// The replica could not be started.
    #[error("starting the replica {program:?}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The replica could not be waited for.
    #[error("waiting for the replica")]
    Wait(#[source] std::io::Error),
}

/// Runs `command` until it exits, the process `parent` dies, or the runtime says stop now;
/// returns the replica's exit status once everything below the guard is gone.
pub async fn run(parent: i32, command: Vec<String>) -> Result<ExitStatus, GuardError> {
    let parent_pid = Pid::from_raw(parent);
    proctree::become_subreaper();
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(PARENT_GONE).map_err(|e| GuardError::Watch {
        what: "for a signal when sluice up exits",
        source: e.into(),
    })?;
    if getppid() != parent_pid {
        return Err(GuardError::ParentGone { parent, command });
    }
    let watch = |kind: SignalKind, what: &'static str| {
        signal(kind).map_err(|source| GuardError::Watch { what, source })
    };
    let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
    let mut int = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut parent_gone = watch(SignalKind::hangup(), "SIGHUP")?;
    let mut stop_now = watch(SignalKind::from_raw(STOP_NOW as i32), "SIGUSR1")?;
    let mut child_exited = watch(SignalKind::child(), "SIGCHLD")?;

    let (program, rest) = command.split_first().ok_or(GuardError::NoCommand)?;
    let mut child =
        Command::new(program)
            .args(rest)
            .spawn()
            .map_err(|source| GuardError::Spawn {
                program: program.clone(),
                source,
            })?;
    let main = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);

    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(GuardError::Wait)?,
            _ = term.recv() => pass_on(main),
            _ = int.recv() => pass_on(main),
            _ = stop_now.recv() => proctree::kill_all_below(main, KILL_WITHIN).await,
            _ = parent_gone.recv() => {
                // Nothing is logged here: whoever read this process's stderr is gone.
                if getppid() != parent_pid {
                    proctree::kill_all_below(main, KILL_WITHIN).await;
                }
            }
            // Orphans handed to this subreaper: reap them as they exit.
            _ = child_exited.recv() => proctree::reap_orphans(main),
        }
    };
    // The main process is gone: so is everything it left running.
    proctree::kill_all_below(None, KILL_WITHIN).await;
    Ok(status)
}

/// Passes a stop request on to the replica's main process, which drains.
fn pass_on(main: Option<Pid>) {
    if let Some(pid) = main {
        let _ = kill(pid, Signal::SIGTERM);
    }
}
