//! sluice-activator: the data plane between the router and a revision's replicas.
//!
//! Owns the activator (a bounded per-revision buffer that holds requests for revisions
//! without ready capacity, pokes the autoscaler on the first one, and releases them when a
//! replica becomes ready), HTTP/1.1, HTTP/2 and upgrade forwarding to replicas
//! with safe retries, load balancing by `containerConcurrency`, the revision timeouts, the mapping of data-plane failures
//! to status codes, and the per-replica queue layer (`queue`).
//!
//! Not here: host routing and traffic splitting (`sluice-router`), scale decisions
//! (`sluice-autoscaler`), starting replicas (`sluice-controller`).

mod activator;
pub mod balance;
mod body;
mod error;
mod proxy;
pub mod queue;
mod retry;
pub mod timeouts;

pub use activator::{Activator, ActivatorConfig};
pub use body::{BodyTooLarge, hold};
pub use error::{ProxyError, error_response};
pub use proxy::{BoxError, Forwarder, Outbound, ProxyBody, full_body, strip_hop_by_hop};
pub use retry::{RetryBudget, RetryConfig};
