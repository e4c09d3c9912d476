//! sluice-activator: the hop that buffers and throttles requests in front of a revision.
//!
//! Owns the activator: per-revision throttling to `containerConcurrency × ready replicas`
//! with a bounded FIFO buffer, an immediate poke to the autoscaler on the first request at
//! zero, release as slots free up or replicas become ready, and the stats it reports for
//! the requests it holds. Forwarding, retries, balancing and timeouts come from
//! `sluice-proxy`; the per-replica queue layer is `sluice-queue`.
//!
//! Not here: host routing and traffic splitting (`sluice-router`), scale decisions
//! (`sluice-autoscaler`), starting replicas (`sluice-controller`).

mod activator;
pub mod stats_post;

pub use activator::{Activator, ActivatorConfig};
