//! The per-revision decider: a pure function of recorded stats, ready replicas and `now`.

use std::time::Duration;

use sluice_core::{RevisionScaling, ScaleMetric, ScaleReason, StatReport};
use tokio::time::Instant;

use crate::window::WindowedSum;

/// What a decider needs to know about its revision.
#[derive(Clone, Debug, PartialEq)]
pub struct DeciderConfig {
    /// The revision's knobs.
    pub scaling: RevisionScaling,
    /// How long the activator must be in path before the last replica goes.
    pub scale_to_zero_grace: Duration,
}

/// One tick's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas wanted.
    pub desired: u32,
    /// Whether requests must go through the activator.
    pub activator_in_path: bool,
    /// Why.
    pub reason: ScaleReason,
}

/// The decider of one revision.
#[derive(Debug)]
pub struct Decider {
    config: DeciderConfig,
    window: WindowedSum,
    created: Instant,
    floor: u32,
    zero_since: Option<Instant>,
    last: Decision,
}

impl Decider {
    /// A decider for a revision first seen at `now`. A new revision (`resumed: None`)
    /// starts at its initial scale; one that already ran (after a restart of the
    /// autoscaler) resumes at the scale it had. Either way that scale is a floor for the
    /// first window, so nothing scales down before there is history.
    pub fn new(config: DeciderConfig, now: Instant, resumed: Option<u32>) -> Self {
        let s = &config.scaling;
        let start = resumed.unwrap_or(s.initial_scale).max(s.min_scale);
        Self {
            window: WindowedSum::new(now, s.stable_window),
            created: now,
            floor: start,
            zero_since: None,
            last: Decision {
                desired: start,
                activator_in_path: true,
                reason: ScaleReason::Bounds,
            },
            config,
        }
    }

    /// Replaces the revision's knobs (e.g. after an annotation change).
    pub fn reconfigure(&mut self, config: DeciderConfig) {
        self.window.set_window(config.scaling.stable_window);
        self.config = config;
    }

    /// Records one stat report.
    pub fn record(&mut self, now: Instant, report: &StatReport) {
        let value = match self.config.scaling.metric {
            ScaleMetric::Concurrency => report.own_concurrency(),
            ScaleMetric::Rps => match report.source {
                sluice_core::StatSource::Activator => report.request_count as f64,
                sluice_core::StatSource::Replica(_) => report
                    .request_count
                    .saturating_sub(report.proxied_request_count)
                    as f64,
            },
        };
        self.window.record(now, report.source.clone(), value);
    }

    /// The last decision made.
    pub fn last(&self) -> Decision {
        self.last
    }

    /// Decides the replica count at `now`, given how many replicas are ready.
    pub fn decide(&mut self, now: Instant, ready_replicas: u32) -> Decision {
        let s = &self.config.scaling;
        let was_zero = self.last.desired == 0;
        let average = self.window.average(now);
        let ready = f64::from(ready_replicas.max(1));
        let mut reason = ScaleReason::Stable;

        // Knative's rate limits: at most 1000× up and 2× down per tick.
        let raw = (average / s.effective_target()).ceil();
        let lower = (ready / 2.0).floor();
        let upper = (1000.0 * ready).ceil();
        let mut desired = raw.clamp(lower, upper) as u32;
        if desired > 0 {
            desired = desired.max(s.activation_scale);
        }
        // A revision keeps its starting scale for its first window.
        if now < self.created + s.stable_window {
            desired = desired.max(self.floor);
        }
        let max = if s.max_scale == 0 {
            u32::MAX
        } else {
            s.max_scale
        };
        let bounded = desired.clamp(s.min_scale, max);
        if bounded != desired {
            reason = ScaleReason::Bounds;
            desired = bounded;
        }

        if desired == 0 {
            // Scale to zero only after a window of zeros, with the activator in path for the
            // grace period; until then keep one replica.
            let since = *self.zero_since.get_or_insert(now);
            if was_zero {
                // Already at zero (the activator is in path): stay there.
                reason = ScaleReason::Zero;
            } else if !self.window.all_zero(now) || now < since + self.config.scale_to_zero_grace {
                desired = s.activation_scale.max(1).min(max);
            } else {
                reason = ScaleReason::Zero;
            }
        } else {
            self.zero_since = None;
        }
        if was_zero && desired > 0 {
            reason = ScaleReason::Activation;
        }

        let activator_in_path = if s.target_burst_capacity < 0.0
            || ready_replicas == 0
            || desired == 0
            || self.zero_since.is_some()
        {
            true
        } else {
            let total = f64::from(ready_replicas) * s.target;
            (total - s.target_burst_capacity - average).floor() < 0.0
        };
        self.last = Decision {
            desired,
            activator_in_path,
            reason,
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::{NamespacedName, StatSource};

    use super::*;

    fn config(min: u32) -> DeciderConfig {
        DeciderConfig {
            scaling: RevisionScaling {
                stable_window: Duration::from_secs(6),
                min_scale: min,
                ..RevisionScaling::default()
            },
            scale_to_zero_grace: Duration::from_secs(2),
        }
    }

    fn report(concurrency: f64) -> StatReport {
        StatReport {
            revision: NamespacedName::new("default", "r"),
            source: StatSource::Replica("a".into()),
            average_concurrency: concurrency,
            average_proxied_concurrency: 0.0,
            request_count: concurrency as u64,
            proxied_request_count: 0,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn idle_revision_goes_to_zero_after_window_and_grace() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(0), t0, None);
        // Within the first window the initial scale holds.
        assert_eq!(d.decide(t0 + secs(2), 1).desired, 1);
        // Window over, no load: activator goes in path, replica kept for the grace period.
        let at6 = d.decide(t0 + secs(6), 1);
        assert_eq!((at6.desired, at6.activator_in_path), (1, true));
        assert_eq!(d.decide(t0 + secs(7), 1).desired, 1);
        let at8 = d.decide(t0 + secs(8), 1);
        assert_eq!((at8.desired, at8.reason), (0, ScaleReason::Zero));
        assert!(at8.activator_in_path);
    }

    #[test]
    fn a_restarted_autoscaler_resumes_instead_of_starting_over() {
        let t0 = Instant::now();
        // At zero before the restart: stays at zero, no replica is started.
        let mut d = Decider::new(config(0), t0, Some(0));
        assert_eq!(d.last().desired, 0);
        let dec = d.decide(t0 + secs(1), 0);
        assert_eq!((dec.desired, dec.activator_in_path), (0, true));
        // At three before the restart: no scale-down before a window of history.
        let mut d = Decider::new(config(0), t0, Some(3));
        assert_eq!(d.decide(t0 + secs(1), 3).desired, 3);
        assert_eq!(
            d.decide(t0 + secs(6), 3).desired,
            1,
            "then at most halved per tick"
        );
    }

    #[test]
    fn stat_at_zero_activates() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(0), t0, None);
        d.decide(t0 + secs(6), 1);
        assert_eq!(d.decide(t0 + secs(8), 1).desired, 0);
        d.record(
            t0 + secs(20),
            &StatReport::poke(NamespacedName::new("default", "r")),
        );
        let up = d.decide(t0 + secs(20), 0);
        assert_eq!(
            (up.desired, up.reason, up.activator_in_path),
            (1, ScaleReason::Activation, true)
        );
    }

    #[test]
    fn load_keeps_replicas_and_scales_by_target() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(0), t0, None);
        for s in 0..10 {
            d.record(t0 + secs(s), &report(140.0));
        }
        // 140 in flight / (100 × 0.7) = 2 replicas.
        assert_eq!(d.decide(t0 + secs(9), 1).desired, 2);
    }

    #[test]
    fn min_scale_holds_and_scale_down_is_rate_limited() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(2), t0, None);
        let dec = d.decide(t0 + secs(30), 2);
        assert_eq!((dec.desired, dec.reason), (2, ScaleReason::Bounds));
        let mut d = Decider::new(config(0), t0, None);
        // With 10 ready and no load, one tick goes no lower than 5.
        assert_eq!(d.decide(t0 + secs(30), 10).desired, 5);
    }

    #[test]
    fn burst_capacity_takes_activator_out_of_path() {
        let t0 = Instant::now();
        let mut c = config(1);
        c.scaling.target_burst_capacity = 0.0;
        let mut d = Decider::new(c, t0, None);
        assert!(!d.decide(t0 + secs(1), 1).activator_in_path);
        assert!(d.decide(t0 + secs(1), 0).activator_in_path);
        let mut c = config(1);
        c.scaling.target_burst_capacity = -1.0;
        let mut d = Decider::new(c, t0, None);
        assert!(d.decide(t0 + secs(1), 5).activator_in_path);
    }
}
