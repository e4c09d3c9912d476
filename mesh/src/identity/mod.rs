//! Workload identity: SPIFFE IDs, the built-in CA, SVID verification and rotation.

pub mod ca;
pub mod csr;
mod error;
pub mod files;
pub mod rotate;
pub mod spiffe;
pub mod svid;
pub mod verify;

pub use ca::{CaConfig, CertificateAuthority, RootPem, SvidIssuer};
pub use csr::CsrError;
pub use error::CaError;
pub use rotate::{RotatingSvid, RotationConfig};
pub use spiffe::{DEFAULT_TRUST_DOMAIN, SpiffeId, SpiffeIdError};
pub use svid::Svid;
pub use verify::{CLOCK_SKEW, SvidError, TrustBundle, Usage};
