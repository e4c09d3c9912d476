//! sluice-activator: the data plane between the router and a revision's replicas.
//!
//! Owns the activator (a bounded per-revision buffer that holds requests for revisions
//! without ready capacity, pokes the autoscaler on the first one, and releases them when a
//! replica becomes ready), HTTP forwarding to replicas, the mapping of data-plane failures
//! to status codes, and the per-replica queue layer (`queue`).
//!
//! Not here: host routing and traffic splitting (`sluice-router`), scale decisions
//! (`sluice-autoscaler`), starting replicas (`sluice-controller`).

mod activator;
mod error;
mod proxy;
pub mod queue;

pub use activator::{Activator, ActivatorConfig};
pub use error::{ProxyError, error_response};
pub use proxy::{Forwarder, ProxyBody, full_body};
