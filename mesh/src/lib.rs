//! sluice-mesh: what every Sluice process shares to be a mesh citizen.
//!
//! Owns workload identity (SPIFFE X.509-SVIDs from a built-in CA, rotated), mutual-TLS
//! configs and the peer-authentication acceptor, Istio-compatible authorization policy,
//! the signed caller attestation that carries a caller's identity across the activator,
//! metric families and access logs, and trace propagation (W3C `traceparent`, `x-request-id`).
//!
//! Not here: anything that routes or serves requests; those crates call into this one.

pub mod attestation;
pub mod identity;
pub mod policy;
pub mod telemetry;
pub mod tls;
pub mod trace;
