//! sluice-mesh: what every Sluice process shares to be a mesh citizen.
//!
//! Owns request identity and trace propagation across hops (W3C `traceparent` and
//! `x-request-id`) today; workload identity (SPIFFE certificates from a built-in CA),
//! mutual-TLS configs, authorization policy and metric families arrive with the mesh issue.
//!
//! Not here: anything that routes or serves requests; those crates call into this one.

pub mod trace;
