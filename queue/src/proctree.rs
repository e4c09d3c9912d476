//! The processes below this one, read from `/proc`: finding, killing and reaping a whole
//! tree, so that nothing a replica forks outlives it.
//!
//! A process that calls [`become_subreaper`] inherits the orphans of its descendants, so the
//! tree stays rooted here even when a process in the middle exits: killing "everything
//! below me" then reaches a user program's forked children too, whatever their process
//! group or session.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, getpid};
use tokio::time::Instant;

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    /// Exited, waiting to be reaped: cannot be killed and holds nothing but its PID.
    zombie: bool,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ...`, where `comm` may hold spaces and
/// parentheses, so the fields are read after the last `)`.
fn parse_stat(pid: i32, stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        zombie: matches!(state, "Z" | "X"),
    })
}

fn all_procs() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// Every process below `root` (children, their children, ...), zombies included.
fn below(root: i32, procs: &[Proc]) -> Vec<Proc> {
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(*p);
    }
    let mut out = Vec::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            // PID 0/1 loops cannot occur below a real process, but never walk back up.
            if child.pid != root {
                out.push(*child);
                next.push(child.pid);
            }
        }
    }
    out
}

/// Makes orphans of this process's descendants its children instead of init's
/// (`PR_SET_CHILD_SUBREAPER`), so the whole tree stays below it.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(
            "cannot become a subreaper ({e}): forks of a process that exits may be left running"
        );
    }
}

/// Reaps this process's exited children other than `keep` (a child whose owner waits for
/// it), so orphans handed to a subreaper do not pile up as zombies.
pub fn reap_orphans(keep: Option<Pid>) {
    let me = getpid().as_raw();
    for p in all_procs() {
        if p.ppid == me && p.zombie && Some(p.pid) != keep.map(Pid::as_raw) {
            let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Live processes below this one.
pub fn live_below_me() -> Vec<Pid> {
    below(getpid().as_raw(), &all_procs())
        .into_iter()
        .filter(|p| !p.zombie)
        .map(|p| Pid::from_raw(p.pid))
        .collect()
}

/// SIGKILLs every process below this one, again and again until none is alive (a process
/// forking while it dies leaves an orphan that comes to this subreaper), reaping the
/// orphans on the way; `keep` is a direct child whose owner (a tokio `Child`) reaps it.
/// Gives up after `within`, with a warning naming what is left.
pub async fn kill_all_below(keep: Option<Pid>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        reap_orphans(keep);
        let live = live_below_me();
        if live.is_empty() {
            return;
        }
        for pid in &live {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        if Instant::now() >= deadline {
            tracing::warn!(?live, "processes still alive after SIGKILL");
            return;
        }
        // Death after SIGKILL is asynchronous: look again shortly.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let p = parse_stat(42, "42 (a (weird) name) S 7 42 42 0 -1").unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 42,
                ppid: 7,
                zombie: false
            }
        );
        assert!(parse_stat(9, "9 (x) Z 1 9").unwrap().zombie);
        assert_eq!(parse_stat(9, "garbage"), None);
    }

    #[test]
    fn the_tree_below_a_process_includes_grandchildren_only_of_it() {
        let p = |pid, ppid| Proc {
            pid,
            ppid,
            zombie: false,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(21, 20)];
        let mut pids: Vec<i32> = below(10, &procs).iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        assert_eq!(pids, [11, 12]);
    }
}
