//! One start of the user process behind `sluice queue`: its port, its output, its exit and
//! how it is stopped (with everything it forked).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::unistd::Pid;
use sluice_mesh::vars::Vars;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::error::SuperviseError;
use crate::proctree;
use crate::sidecar;

/// Lines of the user process's stderr kept for the exit report.
const TAIL_LINES: usize = 20;
/// Longest line kept from the user process's output.
const MAX_LINE: usize = 4096;
/// How long killing the user process's tree may take before `sluice queue` gives up on it.
pub(crate) const KILL_WITHIN: Duration = Duration::from_secs(5);

/// The last lines of the user process's stderr, across its starts.
pub(crate) type Tail = Arc<Mutex<VecDeque<String>>>;

/// An empty [`Tail`].
pub(crate) fn tail() -> Tail {
    Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)))
}

/// A loopback port for the user process.
///
/// A held port stays bound here (with `SO_REUSEADDR`, never listening) until the user
/// process listens on it: the kernel hands it to no other `bind(…:0)` and to no outgoing
/// connection meanwhile, so no other replica, nor anything else on the machine choosing a
/// free port, can take it; and a server that sets `SO_REUSEADDR` before binding, as nearly
/// all do (Python's `http.server`, uvicorn, Go, Node, Rust's std), binds and listens on it
/// all the same. A port not held is only chosen (bound and let go at once).
pub(crate) struct AppPort {
    pub(crate) port: u16,
    _hold: Option<tokio::net::TcpSocket>,
}

impl AppPort {
    pub(crate) fn choose(hold: bool) -> Result<Self, SuperviseError> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let socket = tokio::net::TcpSocket::new_v4()
            .and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(any)?;
                Ok(s)
            })
            .map_err(SuperviseError::Port)?;
        let port = socket.local_addr().map_err(SuperviseError::Port)?.port();
        Ok(Self {
            port,
            _hold: hold.then_some(socket),
        })
    }

    /// Where the user process listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// One start of the user process.
pub(crate) struct UserProcess {
    pub(crate) child: Child,
    /// Notified when its output says it cannot bind its port.
    pub(crate) cannot_bind: Arc<Notify>,
    /// Its output said so.
    said_cannot_bind: Arc<AtomicBool>,
    /// The tasks copying its stdout and stderr.
    relays: Vec<JoinHandle<()>>,
}

impl UserProcess {
    /// Starts `command` with `PORT=port`, its output relayed to stderr and the end of its
    /// stderr kept in `tail`. `$(VAR)` in the command expands as the kubelet does, from
    /// `vars` and `PORT`; a command of `sluice` means `self_exe`, so the samples'
    /// `command: ["sluice"]` works without `sluice` on PATH.
    pub(crate) fn spawn(
        command: &[String],
        port: u16,
        vars: &Vars,
        self_exe: &Path,
        tail: Tail,
    ) -> Result<Self, SuperviseError> {
        let port_text = port.to_string();
        let lookup = |name: &str| {
            if name == "PORT" {
                Some(port_text.clone())
            } else {
                vars.value(name)
            }
        };
        let command: Vec<String> = command
            .iter()
            .map(|part| sidecar::expand_env_refs(part, lookup))
            .collect();
        let (program, args) = command.split_first().ok_or(SuperviseError::NoCommand)?;
        let program: OsString = if program == "sluice" {
            self_exe.into()
        } else {
            program.into()
        };
        let mut child = Command::new(&program)
            .args(args)
            .env("PORT", &port_text)
            // The user process is ours to stop; it must not exit on its own closed stdin.
            .env_remove("SLUICE_EXIT_ON_STDIN_CLOSE")
            // The replica's private key is the queue layer's, never the user process's.
            .env_remove(sluice_mesh::handoff::DIR_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                program: program.clone(),
                source,
            })?;
        let cannot_bind = Arc::new(Notify::new());
        let said_cannot_bind = Arc::new(AtomicBool::new(false));
        let watch = BindWatch {
            notify: cannot_bind.clone(),
            said: said_cannot_bind.clone(),
        };
        let mut relays = Vec::new();
        if let Some(out) = child.stdout.take() {
            relays.push(tokio::spawn(relay(out, None, watch.clone())));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(tokio::spawn(relay(err, Some(tail), watch)));
        }
        Ok(Self {
            child,
            cannot_bind,
            said_cannot_bind,
            relays,
        })
    }

    /// Waits until its output has been read to the end (bounded: a grandchild holding the
    /// pipes open cannot keep the queue waiting).
    pub(crate) async fn relays_done(&mut self) {
        for relay in self.relays.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
        }
    }

    pub(crate) fn cannot_bind_seen(&self) -> bool {
        self.said_cannot_bind.load(Ordering::Acquire)
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
    }

    /// SIGTERM, then [`UserProcess::stop_now`] if it has not exited within a few seconds;
    /// either way, whatever it forked goes with it.
    pub(crate) async fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            self.stop_now().await;
        }
        proctree::kill_all_below(None, KILL_WITHIN).await;
    }

    /// Kills it and everything it forked, at once.
    pub(crate) async fn stop_now(&mut self) {
        proctree::kill_all_below(self.pid(), KILL_WITHIN).await;
        let _ = self.child.wait().await;
    }
}

/// Whether a line of the user process's output says it cannot bind its port, as the
/// runtimes word it: Python `[Errno 98] Address already in use`, Go `bind: address already
/// in use`, Node `EADDRINUSE`, Java `BindException: Address already in use`.
fn says_cannot_bind(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    line.contains("address already in use") || line.contains("eaddrinuse")
}

/// Where a relay reports that the user process cannot bind its port.
#[derive(Clone)]
struct BindWatch {
    notify: Arc<Notify>,
    said: Arc<AtomicBool>,
}

/// Copies the user process's output, line by line, to our stderr (stdout carries the
/// handshake), keeping the last lines of its stderr and watching for a failed bind.
async fn relay(stream: impl AsyncRead + Unpin, tail: Option<Tail>, bind: BindWatch) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        // Not `eprintln!`, which panics once stderr's reader is gone: the relay goes on
        // reading, so the user process never blocks on a full pipe.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        if says_cannot_bind(&line) && !bind.said.swap(true, Ordering::AcqRel) {
            bind.notify.notify_one();
        }
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

/// The user process has exited: its status with the last lines of its stderr (read to the
/// end by then: see [`UserProcess::relays_done`]).
pub(crate) fn exited(status: std::io::Result<ExitStatus>, tail: &Tail) -> SuperviseError {
    let status = match status {
        Ok(status) => status,
        Err(e) => return SuperviseError::Wait(e),
    };
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    SuperviseError::Exited {
        status,
        last_lines: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_bind_is_recognised_in_each_runtime_s_words() {
        for line in [
            "OSError: [Errno 98] Address already in use",
            "listen tcp 127.0.0.1:8080: bind: address already in use",
            "Error: listen EADDRINUSE: address already in use :::8080",
            "java.net.BindException: Address already in use",
        ] {
            assert!(says_cannot_bind(line), "{line}");
        }
        assert!(!says_cannot_bind("Serving HTTP on 127.0.0.1 port 8080"));
    }
}
