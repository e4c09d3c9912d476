//! Why `sluice queue` ended other than by being told to stop.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitStatus;

use crate::mesh::ReplicaMeshError;

/// Why the sidecar ended other than by being told to stop.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// No command was given.
    #[error("no user command given after --")]
    NoCommand,
    /// No loopback port could be found for the user process.
    #[error("finding a free port for the user process")]
    Port(#[source] std::io::Error),
    /// The user process could not be started.
    #[error("starting the user process {program:?}")]
    Spawn {
        /// The program.
        program: OsString,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The queue layer's address could not be bound.
    #[error("binding the queue layer to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The mesh material handed over could not be used.
    #[error("setting up the replica's mesh identity")]
    Mesh(#[source] ReplicaMeshError),
    /// The handshake line could not be written on stdout.
    #[error("writing the replica handshake on stdout")]
    Handshake(#[source] std::io::Error),
    /// The user process could not be waited for.
    #[error("waiting for the user process")]
    Wait(#[source] std::io::Error),
    /// The user process exited on its own.
    #[error("user process exited with {status}{}", after_colon(.last_lines))]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its stderr.
        last_lines: String,
    },
}

/// `": text"`, or nothing for no text.
fn after_colon(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
