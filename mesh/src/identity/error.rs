//! Why the CA could not start or issue (shared by the CA and the CSR checks).

use std::path::PathBuf;
use std::time::Duration;

use super::files::FileError;

/// The CA could not start or issue.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Invalid configuration (the message names the field).
    #[error("CA config: {0}")]
    Config(String),
    /// The persisted root could not be read or written.
    #[error("CA state: {0}")]
    File(#[from] FileError),
    /// The persisted root is unusable.
    #[error("CA root {origin}: {reason}")]
    BadRoot {
        /// Where it came from: the offending file, or e.g. a Secret's name.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of `ca.crt` and `ca.key` exists.
    #[error("CA state in {0}: ca.crt and ca.key must both exist or both be absent")]
    HalfState(PathBuf),
    /// The request names another trust domain.
    #[error("refusing to issue {id}: this CA serves trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested identity.
        id: String,
        /// This CA's trust domain.
        trust_domain: String,
    },
    /// Requested TTL below one second or beyond the root's expiry.
    #[error("refusing to issue with ttl {0:?}: between 1 s and the root's remaining life")]
    Ttl(Duration),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The issued key could not be loaded by rustls.
    #[error("issued key unusable: {0}")]
    Key(#[from] rustls::Error),
}
