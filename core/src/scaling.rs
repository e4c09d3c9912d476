//! Per-revision autoscaling parameters: what the controller tells the autoscaler about a
//! revision, parsed from its annotations and component fields by `sluice-crds`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The metric a revision scales on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleMetric {
    /// In-flight requests per replica.
    Concurrency,
    /// Requests per second per replica.
    Rps,
}

/// Which policy decides a revision's scale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalePolicy {
    /// Knative's KPA, exactly.
    #[default]
    Kpa,
    /// KPA plus Sluice's traffic-pattern policy (pre-warm before predicted arrivals,
    /// scale to zero sooner after them); opt-in with `autoscaling.sluice.dev/policy: pattern`.
    Pattern,
}

/// How one revision scales (Knative KPA knobs, already defaulted and validated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevisionScaling {
    /// Metric scaled on.
    pub metric: ScaleMetric,
    /// Target value of the metric per replica, before utilization.
    pub target: f64,
    /// Fraction of `target` aimed at (0.7 = 70 %).
    pub target_utilization: f64,
    /// Stable window length.
    pub stable_window: Duration,
    /// Panic window as a percentage of the stable window.
    pub panic_window_percentage: f64,
    /// Panic threshold as a percentage of current capacity.
    pub panic_threshold_percentage: f64,
    /// Lowest replica count; 0 allows scale to zero.
    pub min_scale: u32,
    /// Highest replica count; 0 = unlimited.
    pub max_scale: u32,
    /// Replicas a new revision starts with.
    pub initial_scale: u32,
    /// Smallest non-zero replica count.
    pub activation_scale: u32,
    /// Spare capacity (in requests) below which the activator stays in path; -1 = always.
    pub target_burst_capacity: f64,
    /// Maximum concurrent requests per replica; 0 = unlimited.
    pub container_concurrency: u32,
    /// Scale-down delay: the desired scale is the maximum seen over this window.
    #[serde(default)]
    pub scale_down_delay: Duration,
    /// How long the last replica is kept after the revision went inactive.
    #[serde(default)]
    pub scale_to_zero_retention: Duration,
    /// The policy deciding this revision's scale.
    #[serde(default)]
    pub policy: ScalePolicy,
}

impl Default for RevisionScaling {
    fn default() -> Self {
        Self {
            metric: ScaleMetric::Concurrency,
            target: 100.0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            min_scale: 0,
            max_scale: 0,
            initial_scale: 1,
            activation_scale: 1,
            target_burst_capacity: 211.0,
            container_concurrency: 0,
            scale_down_delay: Duration::ZERO,
            scale_to_zero_retention: Duration::ZERO,
            policy: ScalePolicy::Kpa,
        }
    }
}

impl RevisionScaling {
    /// The per-replica target actually aimed at: `max(0.01, target × utilization)`.
    pub fn effective_target(&self) -> f64 {
        (self.target * self.target_utilization).max(0.01)
    }
}
