//! sluice-router: the ingress.
//!
//! Owns accepting client connections (HTTP/1.1 and HTTP/2 cleartext), finding the service
//! for a request's Host in the current routing snapshot, picking a revision by traffic
//! weight, and sending the request straight to a ready replica or, when the revision lacks
//! burst capacity, through the activator.
//!
//! Not here: buffering and scale-from-zero (`sluice-activator`), building routes
//! (`sluice-controller`).

mod router;
mod serve;

pub use router::Router;
pub use serve::{ServeConfig, serve};
