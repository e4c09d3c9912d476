//! sluice-core: the contracts between Sluice's planes.
//!
//! Owns the types that cross a component boundary: revision and service keys, the routing
//! snapshot the controller publishes for the data plane, the per-second stat reports the
//! data plane sends the autoscaler, and the scale decisions the autoscaler sends back.
//!
//! Not here: any I/O, any HTTP, any manifest type (those live in `sluice-crds`).

mod backoff;
mod error;
mod error_body;
mod key;
pub mod outcomes;
pub mod replica;
mod routing;
mod scale;
mod scaling;
mod stats;

pub use backoff::Backoff;
pub use error::error_chain;
pub use error_body::ErrorBody;
pub use key::{KeyError, NamespacedName};
pub use routing::{
    Endpoint, HostRoute, ResponseTimeouts, RevisionRoute, RoutingSnapshot, WeightedTarget,
};
pub use scale::{ScaleDecision, ScaleReason};
pub use scaling::{RevisionScaling, ScaleMetric, ScalePolicy};
pub use stats::{PeriodStats, StatReport, StatSource};
