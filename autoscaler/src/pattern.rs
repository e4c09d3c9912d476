//! The traffic-pattern policy (opt-in: `autoscaling.sluice.dev/policy: pattern`).
//!
//! After "Serverless in the Wild" (USENIX ATC'20): per revision, an online histogram of idle
//! times (the gaps between bursts of activity) with bounded memory (fixed geometric bins,
//! exponentially decayed counts). When the histogram says the gaps are regular — its 5th
//! and 99th percentiles close together, so the revision has a period — the policy:
//!
//! * scales to zero soon after a burst ends (the next arrival is predicted far away),
//! * pre-warms one replica `lead` before the 5th percentile of the idle time (`lead` covers a
//!   tick and the cold start it has learned), and
//! * keeps it warm until the 99th percentile, then lets it go.
//!
//! While the pattern is uncertain (too few gaps, or gaps too irregular to predict) it
//! advises nothing and the KPA decides alone; under load the decider never goes below what
//! the KPA provisions.

use std::time::Duration;

use tokio::time::Instant;

/// Bins per doubling of idle time (bin edges grow by 2^(1/8) ≈ 9 %).
const BINS_PER_DOUBLING: f64 = 8.0;
/// Bins cover 1 s … 2^15 s (≈ 9 h); longer gaps land in the last bin.
const BINS: usize = 15 * 8;

/// Knobs of the pattern policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PatternConfig {
    /// Idle-time percentile to pre-warm at.
    pub prewarm_percentile: f64,
    /// Idle-time percentile to keep warm until.
    pub keep_alive_percentile: f64,
    /// Gaps (decayed weight) needed before the pattern is trusted.
    pub min_samples: f64,
    /// The pattern is trusted only when p99 ≤ this × p5 (regular gaps).
    pub max_spread: f64,
    /// Each new gap multiplies older counts by this (forgets old patterns).
    pub decay: f64,
    /// Quiet time after a burst before the policy scales to zero.
    pub zero_after: Duration,
    /// Cold start assumed until one has been observed.
    pub initial_cold_start: Duration,
    /// Extra margin added to the pre-warm lead and the keep-alive end.
    pub margin: Duration,
}

impl Default for PatternConfig {
    fn default() -> Self {
        Self {
            prewarm_percentile: 0.05,
            keep_alive_percentile: 0.99,
            min_samples: 4.0,
            max_spread: 2.0,
            decay: 0.97,
            zero_after: Duration::from_secs(4),
            initial_cold_start: Duration::from_secs(2),
            margin: Duration::from_secs(2),
        }
    }
}

/// What the pattern policy advises at one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// No confident pattern: let the KPA decide.
    Kpa,
    /// Keep (or bring up) one replica: an arrival is predicted soon.
    Warm,
    /// No arrival predicted before a cold start could serve it: scale to zero.
    Zero,
}

/// The online idle-time model of one revision (about 1 KiB, whatever the traffic).
#[derive(Debug)]
pub struct Pattern {
    config: PatternConfig,
    counts: [f64; BINS],
    total: f64,
    /// End of the last second with activity.
    last_active: Option<Instant>,
    /// Learned cold start (EWMA of activation latencies).
    cold_start: Duration,
    activating_since: Option<Instant>,
}

fn bin_of(idle: Duration) -> usize {
    let secs = idle.as_secs_f64().max(1.0);
    let b = (secs.log2() * BINS_PER_DOUBLING).floor();
    if b.is_finite() && b > 0.0 {
        (b as usize).min(BINS - 1)
    } else {
        0
    }
}

fn lower_edge(bin: usize) -> Duration {
    Duration::from_secs_f64(2f64.powf(bin as f64 / BINS_PER_DOUBLING))
}

fn upper_edge(bin: usize) -> Duration {
    lower_edge(bin + 1)
}

impl Pattern {
    /// An empty model.
    pub fn new(config: PatternConfig) -> Self {
        Self {
            cold_start: config.initial_cold_start,
            config,
            counts: [0.0; BINS],
            total: 0.0,
            last_active: None,
            activating_since: None,
        }
    }

    /// Records activity (a request arriving or running) seen at `now`. A gap of at least
    /// two seconds since the last activity is an idle period and goes into the histogram.
    pub fn activity(&mut self, now: Instant) {
        if let Some(last) = self.last_active {
            let idle = now.saturating_duration_since(last);
            if idle >= Duration::from_secs(2) {
                for c in &mut self.counts {
                    *c *= self.config.decay;
                }
                self.total = self.total * self.config.decay + 1.0;
                self.counts[bin_of(idle)] += 1.0;
            }
        }
        if self.last_active.is_none_or(|l| l < now) {
            self.last_active = Some(now);
        }
    }

    /// Tells the model the revision's scale moved: a 0 → >0 decision at `now` starts timing
    /// a cold start, and the first tick with a ready replica ends it.
    pub fn scaled(&mut self, now: Instant, was_zero: bool, desired: u32, ready: u32) {
        if was_zero && desired > 0 && self.activating_since.is_none() {
            self.activating_since = Some(now);
        }
        if ready > 0
            && let Some(since) = self.activating_since.take()
        {
            let observed = now.saturating_duration_since(since);
            // EWMA with weight 1/2: a few activations settle it.
            self.cold_start = (self.cold_start + observed) / 2;
        }
        if desired == 0 {
            self.activating_since = None;
        }
    }

    /// The cold start learned so far.
    pub fn cold_start(&self) -> Duration {
        self.cold_start
    }

    fn percentile(&self, p: f64) -> Option<usize> {
        if self.total <= 0.0 {
            return None;
        }
        let want = p * self.total;
        let mut acc = 0.0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= want && *c > 0.0 {
                return Some(i);
            }
        }
        self.counts.iter().rposition(|c| *c > 0.0)
    }

    /// The predicted window of the next arrival, as offsets from the end of the last
    /// activity: (pre-warm at, keep warm until). `None` while the pattern is uncertain.
    pub fn window(&self) -> Option<(Duration, Duration)> {
        if self.total < self.config.min_samples {
            return None;
        }
        let lo = lower_edge(self.percentile(self.config.prewarm_percentile)?);
        let hi = upper_edge(self.percentile(self.config.keep_alive_percentile)?);
        if hi.as_secs_f64() > self.config.max_spread * lo.as_secs_f64() {
            return None;
        }
        Some((lo, hi + self.config.margin))
    }

    /// Advice at `now`, given the decision interval `tick`.
    pub fn advise(&self, now: Instant, tick: Duration) -> Advice {
        let (Some((lo, hi)), Some(last)) = (self.window(), self.last_active) else {
            return Advice::Kpa;
        };
        let lead = tick + self.cold_start + self.config.margin;
        let warm_from = lo.saturating_sub(lead);
        // Only worth it when there is room to go to zero between bursts.
        if warm_from <= self.config.zero_after + tick {
            return Advice::Kpa;
        }
        let idle = now.saturating_duration_since(last);
        if idle < self.config.zero_after {
            Advice::Kpa
        } else if idle < warm_from {
            Advice::Zero
        } else if idle <= hi {
            Advice::Warm
        } else {
            Advice::Zero
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn learns_a_period_and_advises_around_it() {
        let t0 = Instant::now();
        let mut p = Pattern::new(PatternConfig::default());
        assert_eq!(p.advise(t0, secs(2)), Advice::Kpa);
        for i in 0..6 {
            p.activity(t0 + secs(120 * i));
        }
        let (lo, hi) = p.window().unwrap();
        assert!(lo <= secs(120) && lo > secs(100), "{lo:?}");
        assert!(hi >= secs(120) && hi < secs(140), "{hi:?}");
        let last = t0 + secs(600);
        assert_eq!(p.advise(last + secs(1), secs(2)), Advice::Kpa);
        assert_eq!(p.advise(last + secs(30), secs(2)), Advice::Zero);
        // lead = tick 2 + cold start 2 + margin 2 = 6 s before lo.
        assert_eq!(p.advise(last + lo - secs(6), secs(2)), Advice::Warm);
        assert_eq!(p.advise(last + secs(120), secs(2)), Advice::Warm);
        assert_eq!(p.advise(last + hi + secs(1), secs(2)), Advice::Zero);
    }

    #[test]
    fn irregular_gaps_are_left_to_the_kpa() {
        let t0 = Instant::now();
        let mut p = Pattern::new(PatternConfig::default());
        let mut t = t0;
        for gap in [3, 200, 10, 90, 5, 600, 30, 7] {
            t += secs(gap);
            p.activity(t);
        }
        assert_eq!(p.window(), None);
        assert_eq!(p.advise(t + secs(50), secs(2)), Advice::Kpa);
    }

    #[test]
    fn learns_the_cold_start() {
        let t0 = Instant::now();
        let mut p = Pattern::new(PatternConfig::default());
        p.scaled(t0, true, 1, 0);
        p.scaled(t0 + secs(2), false, 1, 0);
        p.scaled(t0 + secs(6), false, 1, 1);
        assert_eq!(p.cold_start(), secs(4)); // (2 + 6) / 2
    }

    #[test]
    fn memory_is_bounded_and_huge_gaps_land_in_the_last_bin() {
        assert_eq!(bin_of(Duration::from_secs(u64::MAX / 4)), BINS - 1);
        assert_eq!(bin_of(Duration::ZERO), 0);
        assert!(std::mem::size_of::<Pattern>() < 2048);
    }
}
