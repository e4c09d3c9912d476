//! Scale decisions: what the autoscaler asks the controller's `Runtime` to apply.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::NamespacedName;

/// Why the autoscaler chose a replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleReason {
    /// Average load over the stable window.
    Stable,
    /// Burst detected over the panic window.
    Panic,
    /// The stable window saw no traffic and the grace period has passed.
    Zero,
    /// A request arrived for a revision at zero.
    Activation,
    /// Held by min/max scale bounds.
    Bounds,
    /// The traffic-pattern policy warmed a replica ahead of a predicted arrival.
    Prewarm,
}

impl fmt::Display for ScaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stable => "stable",
            Self::Panic => "panic",
            Self::Zero => "zero",
            Self::Activation => "activation",
            Self::Bounds => "bounds",
            Self::Prewarm => "prewarm",
        })
    }
}

/// The autoscaler's verdict for one revision at one tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleDecision {
    /// The revision to scale.
    pub revision: NamespacedName,
    /// Replicas wanted.
    pub desired_replicas: u32,
    /// Whether the activator must stay in the request path.
    pub activator_in_path: bool,
    /// Why.
    pub reason: ScaleReason,
}
