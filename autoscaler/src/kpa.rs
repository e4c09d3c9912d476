//! Knative's KPA arithmetic: stable and panic windows, rate limits, panic mode, the
//! scale-down delay and the excess burst capacity. Pure: state + averages + `now` → numbers.
//!
//! Bounds (min/max/initial/activation scale) and scale to zero are applied afterwards by
//! [`crate::Decider`], as Knative's PodAutoscaler reconciler applies them after its decider.

use std::collections::VecDeque;
use std::time::Duration;

use sluice_core::RevisionScaling;
use tokio::time::Instant;

/// Knative's `max-scale-up-rate`: at most this many times the ready replicas per tick.
pub const MAX_SCALE_UP_RATE: f64 = 1000.0;
/// Knative's `max-scale-down-rate`: at most halve the ready replicas per tick.
pub const MAX_SCALE_DOWN_RATE: f64 = 2.0;

/// What the KPA concluded this tick, before bounds and scale to zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KpaOutcome {
    /// Desired replicas (after rate limits, panic and scale-down delay).
    pub desired: u32,
    /// Whether the revision is in panic mode.
    pub panicking: bool,
    /// `floor(ready·totalTarget − targetBurstCapacity − panicAvg)`; 0 when the burst
    /// capacity is 0, −1 when it is −1 (activator always in path).
    pub excess_burst_capacity: f64,
}

/// The panic window of a revision: `stable × percentage / 100`, rounded up to whole
/// seconds, at least 1 s.
pub fn panic_window(s: &RevisionScaling) -> Duration {
    let secs = s.stable_window.as_secs_f64() * s.panic_window_percentage / 100.0;
    let secs = if secs.is_finite() { secs.ceil() } else { 1.0 };
    Duration::from_secs_f64(secs.clamp(1.0, s.stable_window.as_secs_f64().max(1.0)))
}

/// `ceil(value / target)` as a replica count, finite and non-negative whatever the input.
fn pods_for(value: f64, target: f64) -> f64 {
    let value = if value.is_nan() { 0.0 } else { value.max(0.0) };
    let n = (value / target).ceil();
    if n.is_finite() { n } else { f64::MAX }
}

/// Saturating conversion of a replica count to `u32`.
fn to_u32(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x as u32
    }
}

/// The maximum of the values recorded over a trailing window (a monotonic deque, so it is
/// bounded by the number of ticks in the window and O(1) amortized).
#[derive(Debug, Default)]
struct MaxWindow {
    entries: VecDeque<(Instant, u32)>,
}

impl MaxWindow {
    fn record(&mut self, now: Instant, value: u32, window: Duration) -> u32 {
        while self.entries.back().is_some_and(|(_, v)| *v <= value) {
            self.entries.pop_back();
        }
        self.entries.push_back((now, value));
        while self
            .entries
            .front()
            .is_some_and(|(t, _)| *t + window <= now && self.entries.len() > 1)
        {
            self.entries.pop_front();
        }
        self.entries.front().map_or(value, |(_, v)| *v)
    }
}

/// One revision's KPA state.
#[derive(Debug, Default)]
pub struct Kpa {
    panic_since: Option<Instant>,
    max_panic: u32,
    delay: MaxWindow,
}

impl Kpa {
    /// A fresh KPA. Knative starts a new autoscaler in panic when more than one replica is
    /// ready, so nothing scales down before there is history: pass that count here.
    pub fn new(now: Instant, ready_at_start: u32) -> Self {
        let mut kpa = Self::default();
        if ready_at_start > 1 {
            kpa.panic_since = Some(now);
            kpa.max_panic = ready_at_start;
        }
        kpa
    }

    /// Whether the revision is in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    /// One tick: `stable` and `panic` are the revision-wide averages over the stable and
    /// panic windows, `ready` the replicas ready now.
    pub fn decide(
        &mut self,
        s: &RevisionScaling,
        now: Instant,
        stable: f64,
        panic: f64,
        ready: u32,
    ) -> KpaOutcome {
        let ready_f = f64::from(ready.max(1));
        let target = s.effective_target();
        let max_up = (MAX_SCALE_UP_RATE * ready_f).ceil();
        let max_down = (ready_f / MAX_SCALE_DOWN_RATE).floor();
        let raw_panic = pods_for(panic, target);
        let desired_stable = to_u32(pods_for(stable, target).clamp(max_down, max_up));
        let desired_panic = to_u32(raw_panic.clamp(max_down, max_up));
        let over = raw_panic / ready_f >= s.panic_threshold_percentage / 100.0;

        if over {
            // Enter, or extend.
            self.panic_since = Some(now);
        } else if self
            .panic_since
            .is_some_and(|since| since + s.stable_window < now)
        {
            // A full stable window without a tick over the threshold: leave panic.
            self.panic_since = None;
            self.max_panic = 0;
        }

        let mut desired = desired_stable;
        if self.panic_since.is_some() {
            // Provision for the larger of the two; never scale down while panicking.
            desired = desired.max(desired_panic);
            if desired > self.max_panic {
                self.max_panic = desired;
            } else {
                desired = self.max_panic;
            }
        }
        if !s.scale_down_delay.is_zero() {
            desired = self.delay.record(now, desired, s.scale_down_delay);
        }

        let excess_burst_capacity = if s.target_burst_capacity == 0.0 {
            0.0
        } else if s.target_burst_capacity < 0.0 {
            -1.0
        } else {
            let panic = if panic.is_finite() { panic } else { f64::MAX };
            (f64::from(ready) * s.target - s.target_burst_capacity - panic).floor()
        };
        KpaOutcome {
            desired,
            panicking: self.panic_since.is_some(),
            excess_burst_capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn scaling() -> RevisionScaling {
        RevisionScaling::default() // target 100 × 70 % = 70, window 60 s, threshold 200 %
    }

    #[test]
    fn issue_example_enters_panic_with_six() {
        // ready=2, stable=350, panic=400, target 70: ceil(350/70)=5, ceil(400/70)=6,
        // 6/2 = 3 ≥ 2 → panic, desired max(5, 6) = 6; excess = floor(2·100 − 211 − 400) < 0.
        let t0 = Instant::now();
        let mut kpa = Kpa::new(t0, 0);
        let out = kpa.decide(&scaling(), t0, 350.0, 400.0, 2);
        assert_eq!(out.desired, 6);
        assert!(out.panicking);
        assert_eq!(out.excess_burst_capacity, -411.0);
    }

    #[test]
    fn stable_mode_targets_the_stable_average() {
        let t0 = Instant::now();
        let mut kpa = Kpa::new(t0, 0);
        // ceil(350/70) = 5; panic ceil(300/70)=5, 5/4 = 1.25 < 2 → no panic.
        let out = kpa.decide(&scaling(), t0, 350.0, 300.0, 4);
        assert_eq!((out.desired, out.panicking), (5, false));
        // excess = floor(4·100 − 211 − 300) = −111.
        assert_eq!(out.excess_burst_capacity, -111.0);
        // 10 ready, no load: excess = floor(10·100 − 211 − 0) = 789; desired no lower than 5.
        let out = kpa.decide(&scaling(), t0, 0.0, 0.0, 10);
        assert_eq!(out.excess_burst_capacity, 789.0);
        assert_eq!(out.desired, 5, "at most halved per tick: floor(10/2)");
    }

    #[test]
    fn rate_limits_clamp_both_ways() {
        let t0 = Instant::now();
        let mut kpa = Kpa::new(t0, 0);
        let mut s = scaling();
        s.panic_threshold_percentage = 1000.0;
        s.target = 1.0;
        s.target_utilization = 1.0;
        // 1 ready (or 0, counted as 1): at most ceil(1000·1) = 1000 (and that is a panic).
        let out = kpa.decide(&s, t0, 5000.0, 5000.0, 0);
        assert_eq!(out.desired, 1000);
        // 9 ready, no load: no lower than floor(9/2) = 4.
        let mut kpa = Kpa::new(t0, 0);
        assert_eq!(kpa.decide(&s, t0, 0.0, 0.0, 9).desired, 4);
        // 1 ready, no load: floor(1/2) = 0.
        assert_eq!(kpa.decide(&s, t0, 0.0, 0.0, 1).desired, 0);
    }

    #[test]
    fn panic_extends_never_scales_down_and_exits_after_a_window() {
        let t0 = Instant::now();
        let mut s = scaling();
        s.stable_window = secs(6);
        let mut kpa = Kpa::new(t0, 0);
        // Over: ceil(700/70)=10, 10/2 = 5 ≥ 2 → panic at 10.
        assert_eq!(kpa.decide(&s, t0, 70.0, 700.0, 2).desired, 10);
        // Load falls while panicking: stays at 10 (no scale-down in panic).
        let out = kpa.decide(&s, t0 + secs(2), 70.0, 70.0, 10);
        assert_eq!((out.desired, out.panicking), (10, true));
        // Over again at t+4 (ceil(1500/70)=22, 22/10 ≥ 2): extends and raises to 22.
        assert_eq!(kpa.decide(&s, t0 + secs(4), 70.0, 1500.0, 10).desired, 22);
        // t+10 = 4 + 6: not yet strictly after a full window since the last over tick.
        let out = kpa.decide(&s, t0 + secs(10), 70.0, 70.0, 22);
        assert_eq!((out.desired, out.panicking), (22, true));
        // t+11: a full stable window without a tick over → leave panic; stable says 1, but
        // the rate limit keeps floor(22/2) = 11.
        let out = kpa.decide(&s, t0 + secs(11), 70.0, 70.0, 22);
        assert_eq!((out.desired, out.panicking), (11, false));
    }

    #[test]
    fn stable_above_panic_is_provisioned_in_panic() {
        let t0 = Instant::now();
        let mut kpa = Kpa::new(t0, 3);
        // Started in panic (3 ready): stable ceil(700/70)=10 > panic 1 → 10.
        let out = kpa.decide(&scaling(), t0, 700.0, 1.0, 3);
        assert_eq!((out.desired, out.panicking), (10, true));
    }

    #[test]
    fn a_restart_with_several_ready_starts_in_panic() {
        let t0 = Instant::now();
        let mut kpa = Kpa::new(t0, 4);
        let out = kpa.decide(&scaling(), t0 + secs(2), 0.0, 0.0, 4);
        assert_eq!((out.desired, out.panicking), (4, true));
        // After a full stable window (60 s) without an over tick: back to stable.
        let out = kpa.decide(&scaling(), t0 + secs(61), 0.0, 0.0, 4);
        assert_eq!((out.desired, out.panicking), (2, false));
        // One ready replica at start: no panic.
        assert!(!Kpa::new(t0, 1).panicking());
    }

    #[test]
    fn scale_down_delay_keeps_the_max_over_its_window() {
        let t0 = Instant::now();
        let mut s = scaling();
        s.scale_down_delay = secs(10);
        s.panic_threshold_percentage = 1000.0;
        let mut kpa = Kpa::new(t0, 0);
        assert_eq!(kpa.decide(&s, t0, 350.0, 350.0, 5).desired, 5);
        assert_eq!(kpa.decide(&s, t0 + secs(2), 70.0, 70.0, 5).desired, 5);
        assert_eq!(kpa.decide(&s, t0 + secs(8), 70.0, 70.0, 5).desired, 5);
        // 10 s after the 5 was recorded it leaves the window: max(2 @8, 3 now) = 3.
        assert_eq!(kpa.decide(&s, t0 + secs(10), 210.0, 210.0, 5).desired, 3);
        // Then ceil(70/70) = 1 (floor(3/2) = 1), but the 3 holds for its 10 s.
        assert_eq!(kpa.decide(&s, t0 + secs(19), 70.0, 70.0, 3).desired, 3);
        assert_eq!(kpa.decide(&s, t0 + secs(20), 70.0, 70.0, 3).desired, 1);
    }

    #[test]
    fn burst_capacity_zero_and_minus_one() {
        let t0 = Instant::now();
        let mut s = scaling();
        s.target_burst_capacity = 0.0;
        let mut kpa = Kpa::new(t0, 0);
        assert_eq!(kpa.decide(&s, t0, 10.0, 10.0, 1).excess_burst_capacity, 0.0);
        s.target_burst_capacity = -1.0;
        assert_eq!(
            kpa.decide(&s, t0, 10.0, 10.0, 100).excess_burst_capacity,
            -1.0
        );
    }

    #[test]
    fn extreme_stats_never_overflow_or_divide_by_zero() {
        let t0 = Instant::now();
        let mut s = scaling();
        s.target = 0.0; // effective target is floored at 0.01
        let mut kpa = Kpa::new(t0, 0);
        let out = kpa.decide(&s, t0, f64::MAX, f64::INFINITY, u32::MAX);
        assert_eq!(out.desired, u32::MAX);
        assert!(out.excess_burst_capacity.is_finite());
        // NaN counts as no load: with one ready (or none) that is 0.
        let mut kpa = Kpa::new(t0, 0);
        let out = kpa.decide(&s, t0, f64::NAN, f64::NAN, 0);
        assert_eq!((out.desired, out.panicking), (0, false));
    }

    #[test]
    fn panic_window_is_a_percentage_of_stable() {
        let mut s = scaling();
        assert_eq!(panic_window(&s), secs(6));
        s.stable_window = secs(6);
        s.panic_window_percentage = 1.0;
        assert_eq!(panic_window(&s), secs(1));
        s.panic_window_percentage = 100.0;
        assert_eq!(panic_window(&s), secs(6));
    }
}
