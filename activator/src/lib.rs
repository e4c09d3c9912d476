//! sluice-activator: the data plane between the router and a revision's replicas.
//!
//! Owns the activator (per-revision throttling to `containerConcurrency × ready replicas`
//! with a bounded FIFO buffer, an immediate poke to the autoscaler on the first request at
//! zero, release as slots free up or replicas become ready), load balancing by
//! `containerConcurrency` ([`balance`]), forwarding to replicas over HTTP/1.1, HTTP/2 and
//! upgrades with safe retries inside a budget, the revision timeouts ([`timeouts`]), the
//! mapping of data-plane failures to status codes, and the per-replica queue layer
//! ([`queue`], also served as the `sluice queue` sidecar).
//!
//! Not here: host routing and traffic splitting (`sluice-router`), scale decisions
//! (`sluice-autoscaler`), starting replicas (`sluice-controller`).

mod activator;
pub mod balance;
mod body;
mod error;
mod h1pool;
mod proxy;
pub mod queue;
mod retry;
pub mod timeouts;

pub use activator::{Activator, ActivatorConfig};
pub use body::{BodyTooLarge, Tunnel, hold, hold_response};
pub use error::{ProxyError, UpstreamError, error_response};
pub use h1pool::H1Error;
pub use proxy::{
    BoxError, Forwarder, Outbound, ProxyBody, UpstreamPeer, full_body, strip_hop_by_hop,
};
pub use retry::{RetryBudget, RetryConfig};
