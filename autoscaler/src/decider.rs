//! The per-revision decider: a pure function of recorded stats, ready replicas and `now`.
//!
//! Each tick: window averages → [`Kpa`] (rate limits, panic, scale-down delay) → the
//! pattern policy's advice (opt-in) → activation and initial scale → scale to zero (active
//! for a window, then inactive with the activator in path, then the grace period and the
//! pod-retention period) → min/max scale → whether the activator is in path.

use std::time::Duration;

use sluice_core::{RevisionScaling, ScaleMetric, ScalePolicy, ScaleReason, StatReport, StatSource};
use tokio::time::Instant;

use crate::kpa::{Kpa, panic_window};
use crate::pattern::{Advice, Pattern, PatternConfig};
use crate::window::WindowedSum;

/// How long a revision may stay activating (replicas wanted, none ready) before it is
/// scaled back to zero: Knative's default progress deadline (600 s) plus its 10 s buffer.
pub const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(610);

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

/// Where a revision stands on the way to and from zero (Knative's PA `Active` condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activity {
    /// Replicas wanted since then, none ready yet.
    Activating(Instant),
    /// Serving since then.
    Active(Instant),
    /// Marked idle at that time: the activator is in path, the last replica may go.
    Inactive(Instant),
}

/// The decider of one revision.
#[derive(Debug)]
pub struct Decider {
    config: DeciderConfig,
    window: WindowedSum,
    kpa: Kpa,
    pattern: Option<Pattern>,
    tick: Duration,
    activity: Activity,
    initialized: bool,
    proxy_since: Option<Instant>,
    last: Decision,
}

impl Decider {
    /// A decider for a revision first seen at `now`. A new revision (`resumed: None`)
    /// starts at its initial scale and holds it until that many replicas were ready once;
    /// one that already ran (after a restart of the autoscaler) resumes at the scale it
    /// had, in panic mode when that is more than one, so nothing scales down before there is
    /// history.
    pub fn new(config: DeciderConfig, now: Instant, resumed: Option<u32>) -> Self {
        let s = &config.scaling;
        let start = resumed.unwrap_or(s.initial_scale).max(s.min_scale);
        let mut window = WindowedSum::new(now, s.stable_window);
        window.set_carry(s.metric == ScaleMetric::Concurrency, 2);
        let at_zero = start == 0;
        Self {
            window,
            kpa: Kpa::new(now, resumed.unwrap_or(0)),
            pattern: (s.policy == ScalePolicy::Pattern)
                .then(|| Pattern::new(PatternConfig::default())),
            tick: Duration::from_secs(2),
            activity: if at_zero {
                Activity::Inactive(now)
            } else {
                Activity::Activating(now)
            },
            initialized: resumed.is_some() || s.initial_scale == 0,
            proxy_since: Some(now),
            last: Decision {
                desired: start,
                activator_in_path: true,
                reason: if at_zero {
                    ScaleReason::Zero
                } else {
                    ScaleReason::Bounds
                },
            },
            config,
        }
    }

    /// Replaces the pattern policy's knobs (and forgets what it learned); nothing for a
    /// KPA revision.
    pub fn set_pattern_config(&mut self, config: PatternConfig) {
        if self.pattern.is_some() {
            self.pattern = Some(Pattern::new(config));
        }
    }

    /// Sets the decision interval the pattern policy plans its pre-warm lead with.
    pub fn set_tick(&mut self, tick: Duration) {
        self.tick = tick;
    }

    /// Replaces the revision's knobs (e.g. after an annotation change).
    pub fn reconfigure(&mut self, config: DeciderConfig) {
        let s = &config.scaling;
        self.window.set_window(s.stable_window);
        self.window
            .set_carry(s.metric == ScaleMetric::Concurrency, 2);
        match (s.policy, self.pattern.is_some()) {
            (ScalePolicy::Pattern, false) => {
                self.pattern = Some(Pattern::new(PatternConfig::default()))
            }
            (ScalePolicy::Kpa, true) => self.pattern = None,
            _ => {}
        }
        self.config = config;
    }

    /// Records one stat report. Replica reports count only what did not come through the
    /// activator (the activator reports that itself), so nothing is counted twice.
    pub fn record(&mut self, now: Instant, report: &StatReport) {
        let value = match self.config.scaling.metric {
            ScaleMetric::Concurrency => report.own_concurrency(),
            ScaleMetric::Rps => match report.source {
                StatSource::Activator => report.request_count as f64,
                StatSource::Replica(_) => report
                    .request_count
                    .saturating_sub(report.proxied_request_count)
                    as f64,
            },
        };
        if let Some(p) = &mut self.pattern
            && (report.request_count > 0 || report.average_concurrency > 0.0)
        {
            p.activity(now);
        }
        self.window.record(now, report.source.clone(), value);
    }

    /// The last decision made.
    pub fn last(&self) -> Decision {
        self.last
    }

    /// Whether the KPA is in panic mode.
    pub fn panicking(&self) -> bool {
        self.kpa.panicking()
    }

    /// The traffic-pattern model, when the revision opted in.
    pub fn pattern(&self) -> Option<&Pattern> {
        self.pattern.as_ref()
    }

    /// Decides the replica count at `now`, given how many replicas are ready.
    pub fn decide(&mut self, now: Instant, ready_replicas: u32) -> Decision {
        let s = &self.config.scaling.clone();
        let was_zero = self.last.desired == 0;
        let stable = self.window.average(now);
        let panic = self.window.average_over(now, panic_window(s));
        let kpa = self.kpa.decide(s, now, stable, panic, ready_replicas);
        let mut want = kpa.desired;
        let mut reason = if kpa.panicking {
            ScaleReason::Panic
        } else {
            ScaleReason::Stable
        };

        // The pattern policy: never below the KPA while there is load (panic window).
        let mut pattern_zero = false;
        if let Some(p) = &mut self.pattern {
            // How long the KPA keeps the last replica after the load stops: a stable window
            // (then a tick to mark the revision inactive), and the grace period only when
            // the activator is not already in path.
            let mut kpa_keep_alive = s.stable_window + self.tick;
            if !self.last.activator_in_path {
                kpa_keep_alive += self.config.scale_to_zero_grace;
            }
            match p.advise(now, self.tick, kpa_keep_alive) {
                Advice::Kpa => {}
                Advice::Warm | Advice::Hold if want == 0 => {
                    want = 1;
                    reason = ScaleReason::Prewarm;
                }
                // Nothing in the panic window: one replica is all a predicted arrival
                // needs (the KPA may still hold a panic scale-up from the last activation).
                Advice::Warm | Advice::Hold if panic == 0.0 => want = want.min(1),
                Advice::Warm | Advice::Hold => {}
                Advice::Zero if panic == 0.0 && s.min_scale == 0 => {
                    want = 0;
                    pattern_zero = true;
                }
                Advice::Zero => {}
            }
        }

        if want > 0 {
            want = want.max(s.activation_scale);
        }
        if ready_replicas >= s.initial_scale {
            self.initialized = true;
        }
        let activation_failed = matches!(self.activity, Activity::Activating(since)
            if now.saturating_duration_since(since) >= ACTIVATION_TIMEOUT);
        if !self.initialized && !activation_failed {
            want = want.max(s.initial_scale);
        }

        if matches!(self.activity, Activity::Activating(_)) && ready_replicas > 0 {
            self.activity = Activity::Active(now);
        }
        let mut desired = want;
        if want == 0 && s.min_scale == 0 {
            desired = self.scale_to_zero(now, pattern_zero);
            if desired == 0 {
                reason = ScaleReason::Zero;
            }
        } else if let Activity::Inactive(_) = self.activity {
            self.activity = if ready_replicas > 0 {
                Activity::Active(now)
            } else {
                Activity::Activating(now)
            };
        }
        if was_zero && desired > 0 && reason != ScaleReason::Prewarm {
            reason = ScaleReason::Activation;
        }

        // Validation refuses max < min; should such knobs arrive anyway, min wins.
        let max = if s.max_scale == 0 {
            u32::MAX
        } else {
            s.max_scale.max(s.min_scale)
        };
        let bounded = desired.clamp(s.min_scale, max);
        if bounded != desired {
            reason = ScaleReason::Bounds;
            desired = bounded;
        }

        let activator_in_path = desired == 0
            || ready_replicas == 0
            || kpa.excess_burst_capacity < 0.0
            || matches!(self.activity, Activity::Inactive(_));
        if activator_in_path {
            self.proxy_since.get_or_insert(now);
        } else {
            self.proxy_since = None;
        }
        if let Some(p) = &mut self.pattern {
            p.scaled(now, was_zero, desired, ready_replicas);
        }
        self.last = Decision {
            desired,
            activator_in_path,
            reason,
        };
        self.last
    }

    /// Knative's scale-to-zero: the revision must have been active for a stable window, is
    /// then marked inactive (activator in path, scale unchanged), and its last replica goes
    /// once it has been inactive for the pod-retention period and the activator has been in
    /// path for the grace period. The pattern policy's zero skips the window and the grace
    /// but still puts the activator in path one tick before the last replica goes.
    fn scale_to_zero(&mut self, now: Instant, pattern_zero: bool) -> u32 {
        let s = &self.config.scaling;
        let keep = self.last.desired;
        match self.activity {
            _ if pattern_zero => {
                if self.last.activator_in_path && !matches!(self.activity, Activity::Active(_)) {
                    0
                } else {
                    self.activity = Activity::Inactive(now);
                    keep.min(1)
                }
            }
            // Activating: keep asking for one replica, unless it has not become ready within
            // Knative's activation timeout (a broken revision goes back to zero).
            Activity::Activating(since) => {
                if now.saturating_duration_since(since) >= ACTIVATION_TIMEOUT {
                    0
                } else {
                    1
                }
            }
            Activity::Active(since) => {
                if now.saturating_duration_since(since) >= s.stable_window {
                    self.activity = Activity::Inactive(now);
                    keep
                } else {
                    1
                }
            }
            Activity::Inactive(since) => {
                let inactive_for = now.saturating_duration_since(since);
                let proxy_for = self
                    .proxy_since
                    .map_or(Duration::ZERO, |p| now.saturating_duration_since(p));
                if inactive_for >= s.scale_to_zero_retention
                    && proxy_for >= self.config.scale_to_zero_grace
                {
                    0
                } else {
                    keep
                }
            }
        }
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
        // Not yet active (no ready replica): one replica wanted.
        assert_eq!(d.decide(t0 + secs(1), 0).desired, 1);
        // Ready at t+2: active from then; keeps one replica for a window.
        assert_eq!(d.decide(t0 + secs(2), 1).desired, 1);
        let at6 = d.decide(t0 + secs(6), 1);
        assert_eq!((at6.desired, at6.activator_in_path), (1, true));
        // Active for a full window at t+8: marked inactive, scale unchanged.
        let at8 = d.decide(t0 + secs(8), 1);
        assert_eq!((at8.desired, at8.activator_in_path), (1, true));
        // The activator has been in path (burst capacity 211 > 100) far longer than the
        // 2 s grace: the last replica goes at the next tick.
        let at10 = d.decide(t0 + secs(10), 1);
        assert_eq!((at10.desired, at10.reason), (0, ScaleReason::Zero));
        assert!(at10.activator_in_path);
    }

    #[test]
    fn grace_counts_from_when_the_activator_entered_the_path() {
        let t0 = Instant::now();
        let mut c = config(0);
        c.scaling.target_burst_capacity = 0.0; // activator out of path while serving
        c.scale_to_zero_grace = Duration::from_secs(5);
        let mut d = Decider::new(c, t0, None);
        assert!(
            d.decide(t0 + secs(1), 0).activator_in_path,
            "nothing ready yet"
        );
        assert!(!d.decide(t0 + secs(2), 1).activator_in_path);
        // t+8: inactive → activator in path, replica kept.
        let at8 = d.decide(t0 + secs(8), 1);
        assert_eq!((at8.desired, at8.activator_in_path), (1, true));
        assert_eq!(d.decide(t0 + secs(12), 1).desired, 1, "4 s < 5 s grace");
        assert_eq!(d.decide(t0 + secs(13), 1).desired, 0);
    }

    #[test]
    fn a_revision_that_never_becomes_ready_goes_back_to_zero_after_the_activation_timeout() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(0), t0, None);
        assert_eq!(d.decide(t0 + secs(600), 0).desired, 1);
        let dec = d.decide(t0 + secs(610), 0);
        assert_eq!((dec.desired, dec.reason), (0, ScaleReason::Zero));
        // min-scale keeps trying regardless.
        let mut d = Decider::new(config(1), t0, None);
        assert_eq!(d.decide(t0 + secs(610), 0).desired, 1);
    }

    #[test]
    fn pod_retention_holds_the_last_replica() {
        let t0 = Instant::now();
        let mut c = config(0);
        c.scaling.scale_to_zero_retention = Duration::from_secs(20);
        let mut d = Decider::new(c, t0, None);
        d.decide(t0 + secs(2), 1);
        assert_eq!(d.decide(t0 + secs(8), 1).desired, 1); // inactive from t+8
        assert_eq!(d.decide(t0 + secs(27), 1).desired, 1);
        assert_eq!(d.decide(t0 + secs(28), 1).desired, 0);
    }

    #[test]
    fn a_restarted_autoscaler_resumes_instead_of_starting_over() {
        let t0 = Instant::now();
        // At zero before the restart: stays at zero, no replica is started.
        let mut d = Decider::new(config(0), t0, Some(0));
        assert_eq!(d.last().desired, 0);
        let dec = d.decide(t0 + secs(1), 0);
        assert_eq!((dec.desired, dec.activator_in_path), (0, true));
        // At three before the restart: starts in panic, no scale-down for a window.
        let mut d = Decider::new(config(0), t0, Some(3));
        let dec = d.decide(t0 + secs(1), 3);
        assert_eq!((dec.desired, dec.reason), (3, ScaleReason::Panic));
        assert_eq!(d.decide(t0 + secs(6), 3).desired, 3);
        assert_eq!(
            d.decide(t0 + secs(7), 3).desired,
            1,
            "then at most halved per tick: floor(3/2)"
        );
    }

    #[test]
    fn stat_at_zero_activates() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(0), t0, Some(0));
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
    fn issue_example_through_the_decider() {
        // ready=2, stable=350, panic=400, target 70 → panic, desired 6, activator in path.
        let t0 = Instant::now();
        let mut c = config(0);
        c.scaling.stable_window = Duration::from_secs(60);
        let mut d = Decider::new(c, t0, None);
        // 54 s at 350·60/54 − … : build exact averages: seconds 0..=53 at 344.444…, the
        // panic window (seconds 54..=59) at 400 → stable (54·x + 6·400)/60 = 350.
        let x = (350.0 * 60.0 - 6.0 * 400.0) / 54.0;
        for s in 0..60 {
            d.record(t0 + secs(s), &report(if s < 54 { x } else { 400.0 }));
        }
        let dec = d.decide(t0 + secs(59), 2);
        assert_eq!(
            (dec.desired, dec.reason, dec.activator_in_path),
            (6, ScaleReason::Panic, true)
        );
    }

    #[test]
    fn min_max_activation_and_initial_scale() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(2), t0, None);
        let dec = d.decide(t0 + secs(30), 2);
        assert_eq!((dec.desired, dec.reason), (2, ScaleReason::Bounds));
        let mut d = Decider::new(config(0), t0, None);
        // With 10 ready and no load, one tick goes no lower than 5.
        assert_eq!(d.decide(t0 + secs(30), 10).desired, 5);
        // max-scale caps a burst.
        let mut c = config(0);
        c.scaling.max_scale = 3;
        let mut d = Decider::new(c, t0, None);
        for s in 0..6 {
            d.record(t0 + secs(s), &report(1000.0));
        }
        let dec = d.decide(t0 + secs(5), 1);
        assert_eq!((dec.desired, dec.reason), (3, ScaleReason::Bounds));
        // activation-scale: the smallest non-zero scale.
        let mut c = config(0);
        c.scaling.activation_scale = 3;
        let mut d = Decider::new(c, t0, Some(0));
        d.record(
            t0 + secs(1),
            &StatReport::poke(NamespacedName::new("d", "r")),
        );
        assert_eq!(d.decide(t0 + secs(1), 0).desired, 3);
        // initial-scale holds until that many were ready once.
        let mut c = config(0);
        c.scaling.initial_scale = 4;
        let mut d = Decider::new(c, t0, None);
        assert_eq!(d.decide(t0 + secs(30), 2).desired, 4);
        // Reached once: scales as usual from then on (at most halved per tick).
        assert_eq!(d.decide(t0 + secs(32), 4).desired, 2);
        // Knobs validation would refuse (min 5 > max 2) never panic: min wins.
        let mut c = config(5);
        c.scaling.max_scale = 2;
        let mut d = Decider::new(c, t0, None);
        assert_eq!(d.decide(t0 + secs(1), 5).desired, 5);
        // initial-scale 0: a new revision starts at zero with the activator in path.
        let mut c = config(0);
        c.scaling.initial_scale = 0;
        let d = Decider::new(c, t0, None);
        assert_eq!((d.last().desired, d.last().activator_in_path), (0, true));
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
        // 211 with 3 ready at target 100: floor(300 − 211 − 0) = 89 ≥ 0 → out of path.
        let mut c = config(1);
        c.scaling.target_burst_capacity = 211.0;
        let mut d = Decider::new(c, t0, None);
        assert!(!d.decide(t0 + secs(1), 3).activator_in_path);
    }

    #[test]
    fn activator_and_replica_concurrency_sum_without_double_counting() {
        let t0 = Instant::now();
        let mut d = Decider::new(config(0), t0, None);
        for s in 0..6 {
            let now = t0 + secs(s);
            // The activator holds or proxies 30 requests; the replica runs 50, of which 20
            // came through the activator: 30 + (50 − 20) = 60 in the revision.
            let mut from_activator = StatReport::poke(NamespacedName::new("d", "r"));
            from_activator.average_concurrency = 30.0;
            d.record(now, &from_activator);
            let mut from_replica = report(50.0);
            from_replica.average_proxied_concurrency = 20.0;
            d.record(now, &from_replica);
        }
        // ceil(60 / 70) = 1, where double counting (80) would have said 2.
        assert_eq!(d.decide(t0 + secs(5), 1).desired, 1);
    }

    /// A pattern-policy decider that has seen one request every 120 s, six times; the last
    /// at `t0 + 600 s`. Ticks every 2 s with one ready replica while it wants one.
    fn periodic_pattern_decider(t0: Instant) -> Decider {
        let mut c = config(0);
        c.scaling.stable_window = Duration::from_secs(60);
        c.scaling.policy = ScalePolicy::Pattern;
        let mut d = Decider::new(c, t0, Some(0));
        for i in 0..=5 {
            d.record(t0 + secs(120 * i), &report(1.0));
        }
        d
    }

    #[test]
    fn pattern_scales_to_zero_early_and_prewarms_before_the_next_arrival() {
        let t0 = Instant::now();
        let mut d = periodic_pattern_decider(t0);
        let (lo, _) = d.pattern().unwrap().window().unwrap();
        let last = t0 + secs(600);
        // Right after the request: the KPA still holds a replica (load in the panic window).
        assert_eq!(d.decide(last + secs(2), 1).desired, 1);
        // Quiet for 4 s with the next arrival ~2 minutes away: activator in path first, then
        // zero — long before the KPA's stable window (60 s) would allow it.
        let mut t = last + secs(8);
        let first = d.decide(t, 1);
        assert_eq!((first.desired, first.activator_in_path), (1, true));
        t += secs(2);
        let zero = d.decide(t, 1);
        assert_eq!((zero.desired, zero.reason), (0, ScaleReason::Zero));
        // Then a replica is pre-warmed ahead of the predicted arrival (lead = tick 2 s +
        // cold start 2 s + margin 2 s before the 5th percentile of the idle time).
        let mut prewarmed_at = None;
        while t < last + secs(120) {
            t += secs(2);
            let dec = d.decide(t, 0);
            if dec.desired > 0 {
                assert_eq!(dec.reason, ScaleReason::Prewarm);
                prewarmed_at = Some(t);
                break;
            }
        }
        let at = prewarmed_at.expect("pre-warmed before the arrival");
        assert!(
            at >= last + lo - secs(8) && at <= last + lo,
            "{:?}",
            at - last
        );
    }

    #[test]
    fn pattern_never_goes_below_the_kpa_under_load() {
        let t0 = Instant::now();
        let mut d = periodic_pattern_decider(t0);
        // A burst well outside the pattern: 700 in flight for 10 s.
        let burst = t0 + secs(660);
        for s in 0..10 {
            d.record(burst + secs(s), &report(700.0));
        }
        let dec = d.decide(burst + secs(9), 1);
        let mut kpa = Decider::new(
            DeciderConfig {
                scaling: RevisionScaling {
                    stable_window: Duration::from_secs(60),
                    ..RevisionScaling::default()
                },
                scale_to_zero_grace: Duration::from_secs(2),
            },
            t0,
            Some(0),
        );
        for i in 0..=5 {
            kpa.record(t0 + secs(120 * i), &report(1.0));
        }
        for s in 0..10 {
            kpa.record(burst + secs(s), &report(700.0));
        }
        let baseline = kpa.decide(burst + secs(9), 1);
        assert!(dec.desired >= baseline.desired, "{dec:?} < {baseline:?}");
        assert_eq!(dec.desired, 10, "ceil(700/70) = 10, 10/1 ≥ 200 %: a panic");
        assert!(d.panicking());
    }

    #[test]
    fn a_pattern_hold_never_goes_below_the_kpa_under_load() {
        let t0 = Instant::now();
        let mut c = config(0);
        c.scaling.stable_window = Duration::from_secs(60);
        c.scaling.policy = ScalePolicy::Pattern;
        let mut d = Decider::new(c.clone(), t0, Some(0));
        let mut kpa_config = c;
        kpa_config.scaling.policy = ScalePolicy::Kpa;
        let mut kpa = Decider::new(kpa_config, t0, Some(0));
        // Frequent, irregular single requests: no period, but a rate worth holding for.
        let mut t = t0;
        for gap in [10, 30, 15, 25, 12, 40, 8, 20] {
            t += secs(gap);
            d.record(t, &report(1.0));
            kpa.record(t, &report(1.0));
        }
        let hold = t + secs(20);
        assert_eq!(d.decide(hold, 1).desired, 1);
        assert!(d.pattern().unwrap().arrival_rate(hold).is_some());
        // A burst: 700 in flight for 10 s.
        let burst = t + secs(30);
        for s in 0..10 {
            d.record(burst + secs(s), &report(700.0));
            kpa.record(burst + secs(s), &report(700.0));
        }
        let dec = d.decide(burst + secs(9), 1);
        let baseline = kpa.decide(burst + secs(9), 1);
        assert_eq!(dec.desired, baseline.desired, "{dec:?} vs {baseline:?}");
        assert_eq!(dec.desired, 10);
    }

    #[test]
    fn rps_counts_requests_without_double_counting_proxied_ones() {
        let t0 = Instant::now();
        let mut c = config(0);
        c.scaling.metric = ScaleMetric::Rps;
        c.scaling.target = 10.0;
        c.scaling.target_utilization = 1.0;
        let mut d = Decider::new(c, t0, None);
        for s in 0..6 {
            let now = t0 + secs(s);
            // The activator proxied 20 requests/s to the replica, which saw 50 in all.
            d.record(
                now,
                &StatReport {
                    revision: NamespacedName::new("d", "r"),
                    source: StatSource::Activator,
                    average_concurrency: 2.0,
                    average_proxied_concurrency: 0.0,
                    request_count: 20,
                    proxied_request_count: 0,
                },
            );
            d.record(
                now,
                &StatReport {
                    revision: NamespacedName::new("d", "r"),
                    source: StatSource::Replica("a".into()),
                    average_concurrency: 5.0,
                    average_proxied_concurrency: 2.0,
                    request_count: 50,
                    proxied_request_count: 20,
                },
            );
        }
        // 50 requests/s in all, target 10 → 5 (not 7).
        assert_eq!(d.decide(t0 + secs(5), 5).desired, 5);
    }
}
