//! The per-revision decider: a pure function of recorded stats, ready replicas and `now`.
//!
//! Each tick: window averages → [`Kpa`] (rate limits, panic, scale-down delay) →
//! activation and initial scale → scale to zero (active for a window, then inactive with the
//! activator in path, then the grace period and the pod-retention period) → min/max scale →
//! whether the activator is in path. That is the KPA's decision.
//!
//! A revision that opted into the pattern policy takes the KPA's decision as its floor and
//! departs from it only where its [`Ledger`] says the forecast has paid: the KPA above is
//! ticked as a shadow (as if it had been obeyed), and the policy may give a replica back
//! before it only with a saved cold start in hand, and keep one it would not only within the
//! replica-second budget. Otherwise the decision is the KPA's.

use std::time::Duration;

use sluice_core::{RevisionScaling, ScaleMetric, ScalePolicy, ScaleReason, StatReport, StatSource};
use tokio::time::Instant;

use crate::kpa::{Kpa, panic_window};
use crate::ledger::Ledger;
use crate::pattern::{Advice, Pattern, PatternConfig};
use crate::window::WindowedSum;

/// How long a revision may stay activating (replicas wanted, none ready) before it is
/// scaled back to zero: Knative's default progress deadline (600 s) plus its 10 s buffer.
pub const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(610);

/// The share of the KPA's replica-seconds the pattern policy may spend beyond them (the
/// issue's bound is 5 %; the rest is margin for the shadow KPA being an estimate).
pub const PATTERN_ALLOWANCE: f64 = 0.03;

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
    core: Core,
    pattern: Option<PatternState>,
    tick: Duration,
    last: Decision,
}

/// Knative's decider: the KPA and the scale to zero.
#[derive(Debug)]
struct Core {
    config: DeciderConfig,
    window: WindowedSum,
    kpa: Kpa,
    activity: Activity,
    initialized: bool,
    proxy_since: Option<Instant>,
    /// The panic-window average at the last decision.
    panic: f64,
    last: Decision,
}

/// The pattern policy of one revision: its forecast and its books against the KPA.
#[derive(Debug)]
struct PatternState {
    model: Pattern,
    ledger: Ledger,
    /// When the shadow KPA's replicas are (or will be) ready; `None` while it wants none.
    shadow_ready_at: Option<Instant>,
    /// Whether the policy kept a replica the KPA would not at the last decision.
    spending: bool,
}

impl PatternState {
    fn new(config: PatternConfig, now: Instant, kpa_desired: u32) -> Self {
        Self {
            model: Pattern::new(config),
            ledger: Ledger::new(PATTERN_ALLOWANCE),
            shadow_ready_at: (kpa_desired > 0).then_some(now),
            spending: false,
        }
    }
}

impl Decider {
    /// A decider for a revision first seen at `now`. A new revision (`resumed: None`)
    /// starts at its initial scale and holds it until that many replicas were ready once;
    /// one that already ran (after a restart of the autoscaler) resumes at the scale it
    /// had, in panic mode when that is more than one, so nothing scales down before there is
    /// history.
    pub fn new(config: DeciderConfig, now: Instant, resumed: Option<u32>) -> Self {
        let core = Core::new(config, now, resumed);
        let last = core.last;
        let pattern = (core.config.scaling.policy == ScalePolicy::Pattern)
            .then(|| PatternState::new(PatternConfig::default(), now, last.desired));
        Self {
            core,
            pattern,
            tick: Duration::from_secs(2),
            last,
        }
    }

    /// Replaces the pattern policy's knobs (and forgets what it learned); nothing for a
    /// KPA revision.
    pub fn set_pattern_config(&mut self, config: PatternConfig) {
        if let Some(p) = &mut self.pattern {
            p.model = Pattern::new(config);
        }
    }

    /// Sets the decision interval the pattern policy plans its pre-warm lead with.
    pub fn set_tick(&mut self, tick: Duration) {
        self.tick = tick;
    }

    /// Replaces the revision's knobs (e.g. after an annotation change).
    pub fn reconfigure(&mut self, config: DeciderConfig) {
        match (config.scaling.policy, self.pattern.is_some()) {
            (ScalePolicy::Pattern, false) => {
                self.pattern = Some(PatternState::new(
                    PatternConfig::default(),
                    Instant::now(),
                    self.core.last.desired,
                ))
            }
            (ScalePolicy::Kpa, true) => self.pattern = None,
            _ => {}
        }
        self.core.reconfigure(config);
    }

    /// Records one stat report. Replica reports count only what did not come through the
    /// activator (the activator reports that itself), so nothing is counted twice.
    pub fn record(&mut self, now: Instant, report: &StatReport) {
        if let Some(p) = &mut self.pattern
            && (report.request_count > 0 || report.average_concurrency > 0.0)
        {
            p.model.activity(now);
            let (started, arrived) = match report.source {
                StatSource::Activator => (0, report.request_count),
                StatSource::Replica(_) => (
                    report.request_count,
                    report
                        .request_count
                        .saturating_sub(report.proxied_request_count),
                ),
            };
            p.ledger
                .activity(now, started, arrived, p.model.cold_start());
        }
        self.core.record(now, report);
    }

    /// The last decision made.
    pub fn last(&self) -> Decision {
        self.last
    }

    /// Whether the KPA is in panic mode.
    pub fn panicking(&self) -> bool {
        self.core.kpa.panicking()
    }

    /// The traffic-pattern model, when the revision opted in.
    pub fn pattern(&self) -> Option<&Pattern> {
        self.pattern.as_ref().map(|p| &p.model)
    }

    /// The pattern policy's books against the KPA, when the revision opted in.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.pattern.as_ref().map(|p| &p.ledger)
    }

    /// Decides the replica count at `now`, given how many replicas are ready.
    pub fn decide(&mut self, now: Instant, ready_replicas: u32) -> Decision {
        let Some(p) = &mut self.pattern else {
            self.last = self.core.decide(now, ready_replicas);
            return self.last;
        };
        let s = self.core.config.scaling.clone();
        let own_last = self.last;
        let cold_start = p.model.cold_start();

        // The shadow KPA is ticked as if it had been obeyed: its replicas are ready a cold
        // start after it first asked for them, and then it has what it asked for, or what
        // is ready when the policy has as many.
        let shadow_last = self.core.last.desired;
        let shadow_up = p.shadow_ready_at.is_some_and(|t| now >= t);
        let shadow_ready = if shadow_last == 0 || !shadow_up {
            0
        } else if own_last.desired >= shadow_last {
            ready_replicas.min(shadow_last)
        } else {
            shadow_last
        };
        let kpa = self.core.decide(now, shadow_ready);
        p.shadow_ready_at = match (kpa.desired, p.shadow_ready_at) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(now + cold_start),
        };

        // How long the KPA keeps the last replica after the load stops: a stable window
        // (then a tick to mark the revision inactive), and the grace period only when the
        // activator is not already in path.
        let mut kpa_keep_alive = s.stable_window + self.tick;
        if !own_last.activator_in_path {
            kpa_keep_alive += self.core.config.scale_to_zero_grace;
        }
        let advice = p.model.advise(now, self.tick, kpa_keep_alive);
        let quiet = self.core.panic == 0.0;
        let max = s.max_bound();
        let mut desired = kpa.desired;
        let mut reason = kpa.reason;
        let mut activator_in_path = kpa.activator_in_path;
        let mut spending = false;
        let guarded = p.model.config().guarded;
        match advice {
            Advice::Kpa => {}
            // A replica the KPA would not keep: only while the budget covers it.
            Advice::Warm | Advice::Hold if kpa.desired == 0 => {
                let cost = p.model.warm_cost(now, self.tick, kpa_keep_alive);
                if !guarded || p.ledger.may_spend(!p.spending, self.tick, cost) {
                    desired = 1.max(s.activation_scale).clamp(s.min_scale, max);
                    reason = ScaleReason::Prewarm;
                    spending = true;
                } else {
                    p.model.overruled();
                }
            }
            // The KPA keeps replicas anyway: its count is the floor (fewer, even with nothing
            // in the panic window, would queue the next burst behind one replica).
            Advice::Warm | Advice::Hold => {}
            // Giving the last replica back before the KPA would: only with a saved cold
            // start in hand, and the activator in path one tick before it goes.
            Advice::Zero if quiet && s.min_scale == 0 && (!guarded || p.ledger.may_risk()) => {
                activator_in_path = true;
                if own_last.activator_in_path {
                    desired = 0;
                    reason = ScaleReason::Zero;
                } else {
                    desired = desired.min(1);
                }
            }
            Advice::Zero if kpa.desired > 0 => p.model.overruled(),
            Advice::Zero => {}
        }
        if own_last.desired == 0 && desired > 0 && reason != ScaleReason::Prewarm {
            reason = ScaleReason::Activation;
        }
        activator_in_path |= desired == 0 || ready_replicas == 0;
        p.spending = spending;
        // Ready after this decision: a replica that is ready but no longer wanted is gone.
        p.ledger.tick(
            now,
            desired,
            kpa.desired,
            ready_replicas.min(desired) > 0,
            shadow_ready.min(kpa.desired) > 0,
        );
        p.model
            .scaled(now, own_last.desired == 0, desired, ready_replicas);
        self.last = Decision {
            desired,
            activator_in_path,
            reason,
        };
        self.last
    }
}

impl Core {
    fn new(config: DeciderConfig, now: Instant, resumed: Option<u32>) -> Self {
        let s = &config.scaling;
        let start = resumed.unwrap_or(s.initial_scale).max(s.min_scale);
        let mut window = WindowedSum::new(now, s.stable_window);
        window.set_carry(s.metric == ScaleMetric::Concurrency, 2);
        let at_zero = start == 0;
        Self {
            window,
            kpa: Kpa::new(now, resumed.unwrap_or(0)),
            activity: if at_zero {
                Activity::Inactive(now)
            } else {
                Activity::Activating(now)
            },
            initialized: resumed.is_some() || s.initial_scale == 0,
            proxy_since: Some(now),
            panic: 0.0,
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

    fn reconfigure(&mut self, config: DeciderConfig) {
        let s = &config.scaling;
        self.window.set_window(s.stable_window);
        self.window
            .set_carry(s.metric == ScaleMetric::Concurrency, 2);
        self.config = config;
    }

    fn record(&mut self, now: Instant, report: &StatReport) {
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
        self.window.record(now, report.source.clone(), value);
    }

    fn decide(&mut self, now: Instant, ready_replicas: u32) -> Decision {
        let s = &self.config.scaling.clone();
        let was_zero = self.last.desired == 0;
        let stable = self.window.average(now);
        let panic = self.window.average_over(now, panic_window(s));
        self.panic = panic;
        let kpa = self.kpa.decide(s, now, stable, panic, ready_replicas);
        let mut want = kpa.desired;
        let mut reason = if kpa.panicking {
            ScaleReason::Panic
        } else {
            ScaleReason::Stable
        };

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
            desired = self.scale_to_zero(now);
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
        if was_zero && desired > 0 {
            reason = ScaleReason::Activation;
        }

        let bounded = desired.clamp(s.min_scale, s.max_bound());
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
    /// path for the grace period.
    fn scale_to_zero(&mut self, now: Instant) -> u32 {
        let s = &self.config.scaling;
        let keep = self.last.desired;
        match self.activity {
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

/// The upper bound of a revision's scale: `max_scale` (0: none). Validation refuses
/// max < min; should such knobs arrive anyway, min wins.
trait MaxBound {
    fn max_bound(&self) -> u32;
}

impl MaxBound for RevisionScaling {
    fn max_bound(&self) -> u32 {
        if self.max_scale == 0 {
            u32::MAX
        } else {
            self.max_scale.max(self.min_scale)
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
    fn pattern_keeps_the_kpa_replica_until_its_forecast_has_saved_a_cold_start() {
        let t0 = Instant::now();
        let mut d = periodic_pattern_decider(t0);
        assert!(
            d.pattern().unwrap().window().is_some(),
            "a period is learned"
        );
        let last = t0 + secs(600);
        assert_eq!(d.decide(last + secs(2), 1).desired, 1);
        // The forecast says the next arrival is ~2 minutes away and would give the replica
        // back now; with no cold start saved yet, that is a risk the KPA did not take.
        for t in [8, 10, 12, 30] {
            let dec = d.decide(last + secs(t), 1);
            assert_eq!(dec.desired, 1, "{t} s idle: {dec:?}");
            assert_ne!(dec.reason, ScaleReason::Zero);
        }
        assert_eq!(d.ledger().unwrap().credit(), 0);
    }

    /// Drives a pattern-policy decider through `periods` requests `period` seconds apart
    /// (at odd seconds), ticking every 2 s; replicas are ready a tick after they are asked
    /// for. Returns, per period: (warm at the arrival, zeroed within 20 s of it with the
    /// credit it had then, pre-warmed before the next one).
    fn drive_periodic(
        d: &mut Decider,
        t0: Instant,
        period: u64,
        periods: u64,
    ) -> Vec<(bool, Option<i64>, bool)> {
        let mut ready = 0;
        let mut out = Vec::new();
        for n in 0..periods {
            let arrival = t0 + secs(period * n + 1);
            let next = arrival + secs(period);
            let mut row = (false, None, false);
            let mut t = arrival - secs(1);
            while t < next - secs(1) {
                t += secs(2);
                if t - secs(2) < arrival && arrival <= t {
                    row.0 = ready > 0;
                    d.record(arrival, &report(1.0));
                }
                let credit = d.ledger().map_or(0, Ledger::credit);
                let dec = d.decide(t, ready);
                if dec.desired == 0 && t < arrival + secs(20) && row.1.is_none() {
                    row.1 = Some(credit);
                }
                if dec.reason == ScaleReason::Prewarm && dec.desired > 0 {
                    row.2 = true;
                }
                ready = dec.desired;
            }
            out.push(row);
        }
        out
    }

    #[test]
    fn pattern_zeroes_early_and_prewarms_once_its_forecast_has_paid() {
        let t0 = Instant::now();
        let mut c = config(0);
        c.scaling.stable_window = Duration::from_secs(60);
        c.scaling.policy = ScalePolicy::Pattern;
        let mut d = Decider::new(c.clone(), t0, Some(0));
        let rows = drive_periodic(&mut d, t0, 120, 40);
        // Never an early zero without a saved cold start in hand.
        for (n, (_, zeroed, _)) in rows.iter().enumerate() {
            if let Some(credit) = zeroed {
                assert!(
                    *credit >= 1,
                    "period {n}: zeroed early with credit {credit}"
                );
            }
        }
        // Once the pre-warms (paid from the 3 % allowance) saved cold starts, every period
        // is zeroed early and pre-warmed, and every arrival finds a warm replica.
        let paid = rows
            .iter()
            .position(|r| r.1.is_some())
            .expect("zeroed early at some point");
        assert!(paid < 30, "{rows:?}");
        for (n, row) in rows.iter().enumerate().skip(paid + 1) {
            assert!(row.0 && row.1.is_some() && row.2, "period {n}: {row:?}");
        }
        // Fewer replica-seconds than the KPA, and more cold starts saved than added.
        let ledger = d.ledger().unwrap();
        let (own, kpa) = ledger.replica_seconds();
        assert!(own < kpa * 0.7, "{own} vs {kpa}");
        let (saved, added) = ledger.cold_starts();
        assert!(saved > 10 && added == 0, "{saved} {added}");
        // The same trace under the KPA: every arrival after the first is cold.
        c.scaling.policy = ScalePolicy::Kpa;
        let mut kpa = Decider::new(c, t0, Some(0));
        let kpa_rows = drive_periodic(&mut kpa, t0, 120, 40);
        assert!(kpa_rows.iter().all(|r| !r.0 && r.1.is_none() && !r.2));
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
