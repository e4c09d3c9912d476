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
//! When the gaps are irregular — memoryless arrivals, as in a Poisson process whose rate
//! drifts with the time of day — there is no arrival to pre-warm for, but there is still a
//! rate. The policy then tracks the recent *arrival rate after idle* online (a decayed count
//! of idle periods that ended with an arrival over the decayed idle time they lasted, plus
//! the idle time still running): the hazard `h` of the next arrival once the revision has
//! been quiet for `zero_after`. With memoryless arrivals the cost-optimal keep-alive is all
//! or nothing (warm until the next arrival, or not at all): staying warm costs `1/h`
//! replica-seconds per arrival on average and saves a cold start; the KPA spends up to its
//! own keep-alive `K` (stable window + grace) per arrival and still cold-starts with
//! probability `e^(−hK)`. Taking the KPA's own keep-alive as the exchange rate (a cold
//! start is worth `K` replica-seconds), the policy
//!
//! * holds one replica warm between requests while `h·K ≥ 1` (the next arrival is expected
//!   before the KPA's keep-alive would run out: staying warm costs at most `K` per arrival
//!   and removes the KPA's cold starts), until `hold_gaps` mean gaps pass without one;
//! * scales to zero as soon as the revision is quiet while `h·K < ln 2` (the KPA's
//!   keep-alive would expire before the next arrival more often than not: waiting it out
//!   mostly buys replica-seconds, not warm starts);
//! * leaves the KPA alone in between.
//!
//! For arrivals that are memoryless at a steady rate every trade is at par — a hold past
//! the KPA's keep-alive buys each avoided cold start for `1/h` replica-seconds, an early
//! zero sells each added one for the same — so the policy gains only by moving
//! replica-seconds from slow hours to busy ones. It keeps a budget to make sure it does not
//! spend more than the KPA overall: early zeros add what the KPA's keep-alive would have
//! spent (`min(gap, K)` minus the time the policy stayed warm), each idle period adds
//! `hold_allowance` (2 %) of the KPA's spend, and a hold past `K` goes on only while the
//! budget covers it (saved up to at most an hour's worth).
//!
//! The estimate forgets with a time constant of 15 minutes, so it follows a rate that drifts
//! with the time of day, and the running idle time counts as evidence against a high rate,
//! so a hold ends soon after the rate drops. Memory stays bounded: a handful of numbers.
//!
//! An online estimate must first see a rate change before it follows it. From the second
//! day on the policy does not have to: it also keeps a per-time-of-day table of the same
//! rate ([`DailyRates`]: 15-minute slots over a day from the model's origin, read smoothed
//! over ±2 slots, older days weighing half as much per day) and plans each day from it
//! ([`plan_warm`]): which slots to keep one replica warm through (pre-warming one lead
//! before they start) and which to give back as soon as the revision is quiet, warming the
//! busiest slots first while the day's *expected* replica-seconds stay within the KPA's
//! (memoryless arrivals; the KPA keep-alive, the cold start learned and how long a zeroed
//! replica lingers give the costs). Once the table holds a whole day it decides instead of
//! the online estimate, unless the revision has been quiet through more than 8 arrivals
//! the table expected (today does not follow the table: the online estimate decides, and a
//! revision whose traffic stopped is not pre-warmed from memory day after day).
//!
//! While there is neither (too few gaps) it advises nothing and the KPA decides alone;
//! under load the decider never goes below what the KPA provisions.
//!
//! All of this is a forecast. The decider follows it only where it has paid against the
//! KPA ([`crate::ledger::Ledger`]): an early zero needs saved cold starts in hand, a
//! replica the KPA would not keep needs replica-second budget; otherwise the KPA decides
//! (issue 14: on heavy-tailed traffic the forecast alone had 1.7× the KPA's cold starts).

use std::time::Duration;

use tokio::time::Instant;

use crate::daily::{DailyRates, PlanCosts, plan_warm};

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
    /// Time constant of the arrival-rate estimate's exponential forgetting.
    pub rate_time_constant: Duration,
    /// Idle periods (decayed weight) needed before the arrival rate is trusted.
    pub min_rate_samples: f64,
    /// A hold ends after this many mean gaps (`1/h`) without an arrival: a memoryless gap
    /// is that long with probability `e^−8` ≈ 0.03 %, so a quiet that long says the rate
    /// has dropped faster than the estimate follows.
    pub hold_gaps: f64,
    /// Below `h·K` = this, the policy scales to zero as soon as the revision is quiet,
    /// instead of waiting out the KPA's keep-alive `K`. At `ln 2` the KPA's keep-alive would
    /// expire before the next arrival more often than not; between it and 1 the KPA decides.
    pub zero_below: f64,
    /// Replica-seconds a hold may spend beyond the KPA's keep-alive come from a budget: what
    /// early zeros saved against the KPA's keep-alive, plus this fraction of what the KPA's
    /// keep-alive would have spent on each idle period.
    pub hold_allowance: f64,
    /// The most replica-seconds the budget saves up.
    pub max_budget: Duration,
    /// Slots per day of the per-time-of-day rate table (96: 15 minutes).
    pub daily_slots: usize,
    /// The table reads each slot's rate smoothed over this many neighbours on each side.
    pub daily_smooth: usize,
    /// Each older day weighs this much less in the table.
    pub daily_day_decay: f64,
    /// Rates known up front, one per slot over the day from the model's origin (the
    /// simulator's oracle bound); `None`: learned from the days seen.
    pub daily_rates: Option<Vec<f64>>,
    /// Once the table is trusted, each day is planned from it ([`plan_warm`]): the busiest
    /// slots are kept warm, the rest given back early, so that the day's expected
    /// replica-seconds stay within this fraction of the KPA's.
    pub daily_budget: f64,
    /// How long a replica lingers after a request in a slot given back early: the panic
    /// window must empty and a tick pass before the policy may let it go.
    pub daily_zero_linger: Duration,
    /// A fixed exchange rate instead of the plan (to sweep the trade-off): a slot is warm
    /// while its rate × this ≥ 1, i.e. a cold start is worth this many replica-seconds.
    pub daily_exchange: Option<Duration>,
    /// The table is set aside (the online estimate decides) while the revision has been
    /// quiet through more arrivals than this that the table expected since its last
    /// activity: a memoryless quiet that long has probability `e^−8` ≈ 0.03 %, so today's
    /// traffic does not follow the table (it stopped, or the day's shape changed), and a
    /// revision whose traffic stopped is not pre-warmed by its memory day after day.
    pub daily_quiet_limit: f64,
    /// Whether the decider holds the forecast to its books against the KPA ([`Ledger`]):
    /// no early zero without a saved cold start in hand, no replica beyond the KPA's
    /// without budget. Off only to study what the forecast alone would do (the simulator's
    /// oracle bound); a revision that opts in always has it on.
    ///
    /// [`Ledger`]: crate::ledger::Ledger
    pub guarded: bool,
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
            rate_time_constant: Duration::from_secs(900),
            min_rate_samples: 4.0,
            hold_gaps: 8.0,
            zero_below: std::f64::consts::LN_2,
            hold_allowance: 0.02,
            max_budget: Duration::from_secs(3600),
            daily_slots: 96,
            daily_smooth: 2,
            daily_day_decay: 0.5,
            daily_rates: None,
            daily_budget: 1.0,
            daily_zero_linger: Duration::from_secs(8),
            daily_exchange: None,
            daily_quiet_limit: 8.0,
            guarded: true,
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
    /// Arrivals are memoryless but frequent enough that staying warm until the next one
    /// costs less than the KPA's keep-alive: hold one replica between requests.
    Hold,
}

/// A booking of the last advice and the value it replaced.
#[derive(Clone, Copy, Debug)]
enum Booked {
    Held(Option<Duration>),
    Zeroed(Option<Duration>),
}

/// The online idle-time model of one revision (about 1 KiB inline, plus the daily table's
/// four rows of 96 numbers and the 96-flag plan on the heap, whatever the traffic).
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
    /// Decayed count of idle periods (at least `zero_after` long) ended by an arrival.
    idle_ends: f64,
    /// Decayed seconds those idle periods lasted beyond `zero_after`.
    idle_secs: f64,
    /// When `idle_ends` and `idle_secs` were last decayed.
    rate_at: Option<Instant>,
    /// Replica-seconds holds may still spend beyond the KPA's keep-alive.
    budget: f64,
    /// The KPA's keep-alive at the last advice.
    keep_alive: Duration,
    /// In the idle period running now: how long it had lasted when the policy first advised
    /// an early zero, and the longest it lasted under a hold past the KPA's keep-alive.
    zeroed_at: Option<Duration>,
    held_to: Option<Duration>,
    /// What the last advice booked, to take back when the decider overrules it.
    undo: Option<Booked>,
    /// Where the daily period starts: the first time the model saw the clock.
    origin: Option<Instant>,
    /// Per-time-of-day arrival rates after idle.
    daily: DailyRates,
    /// The warm plan (one flag a slot), with the table generation and the KPA keep-alive
    /// it was planned for.
    plan: Option<(u64, Duration, Vec<bool>)>,
    /// Arrivals the table expected since the revision went quiet (beyond `zero_after`),
    /// integrated up to `expected_at`.
    expected_quiet: f64,
    expected_at: Option<Instant>,
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
        let daily = match &config.daily_rates {
            Some(rates) => DailyRates::with_rates(rates),
            None => DailyRates::new(
                config.daily_slots,
                config.daily_smooth,
                config.daily_day_decay,
            ),
        };
        Self {
            origin: None,
            daily,
            plan: None,
            expected_quiet: 0.0,
            expected_at: None,
            cold_start: config.initial_cold_start,
            config,
            counts: [0.0; BINS],
            total: 0.0,
            last_active: None,
            activating_since: None,
            idle_ends: 0.0,
            idle_secs: 0.0,
            rate_at: None,
            budget: 0.0,
            keep_alive: Duration::ZERO,
            zeroed_at: None,
            held_to: None,
            undo: None,
        }
    }

    /// The knobs.
    pub fn config(&self) -> &PatternConfig {
        &self.config
    }

    /// Forgets old rate evidence: both sums decay by `e^(−Δt/τ)`.
    fn decay_rate_to(&mut self, now: Instant) {
        let factor = self.decay_factor(now);
        self.idle_ends *= factor;
        self.idle_secs *= factor;
        self.rate_at = Some(now);
    }

    fn decay_factor(&self, now: Instant) -> f64 {
        let tau = self.config.rate_time_constant.as_secs_f64();
        match self.rate_at {
            Some(at) if tau > 0.0 => (-now.saturating_duration_since(at).as_secs_f64() / tau).exp(),
            Some(_) => 0.0,
            None => 1.0,
        }
    }

    /// Records activity (a request arriving or running) seen at `now`. A gap of at least
    /// two seconds since the last activity is an idle period and goes into the histogram.
    pub fn activity(&mut self, now: Instant) {
        let origin = *self.origin.get_or_insert(now);
        if let Some(last) = self.last_active {
            let idle = now.saturating_duration_since(last);
            if idle >= Duration::from_secs(2) {
                for c in &mut self.counts {
                    *c *= self.config.decay;
                }
                self.total = self.total * self.config.decay + 1.0;
                self.counts[bin_of(idle)] += 1.0;
            }
            if idle >= self.config.zero_after {
                self.decay_rate_to(now);
                self.idle_ends += 1.0;
                self.idle_secs += (idle - self.config.zero_after).as_secs_f64();
                self.settle(idle);
                let from = (last + self.config.zero_after).saturating_duration_since(origin);
                let to = now.saturating_duration_since(origin);
                self.daily
                    .record_idle(from.as_secs_f64(), to.as_secs_f64(), true);
            }
        }
        if self.last_active.is_none_or(|l| l < now) {
            self.last_active = Some(now);
        }
        self.expected_quiet = 0.0;
        self.expected_at = None;
    }

    /// Books an idle period of length `idle` that just ended against the KPA's keep-alive
    /// `K`: an early zero at `e` saved `min(idle, K) − e` replica-seconds, a hold until `h`
    /// spent `min(idle, h) − K`.
    fn settle(&mut self, idle: Duration) {
        let k = self.keep_alive.as_secs_f64();
        let idle = idle.as_secs_f64();
        let kpa_spend = idle.min(k);
        let mut budget = self.budget + self.config.hold_allowance * kpa_spend;
        if let Some(e) = self.zeroed_at.take() {
            budget += (kpa_spend - e.as_secs_f64()).max(0.0);
        }
        if let Some(h) = self.held_to.take() {
            budget -= (idle.min(h.as_secs_f64()) - k).max(0.0);
        }
        self.budget = budget.min(self.config.max_budget.as_secs_f64());
    }

    /// The decider did not follow the last advice (the revision's books against the KPA
    /// did not cover it): an early zero or a hold it booked for the budget did not happen.
    pub fn overruled(&mut self) {
        match self.undo.take() {
            Some(Booked::Held(before)) => self.held_to = before,
            Some(Booked::Zeroed(before)) => self.zeroed_at = before,
            None => {}
        }
    }

    /// Replica-seconds holds may still spend beyond the KPA's keep-alive.
    pub fn budget(&self) -> f64 {
        self.budget
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

    /// The recent arrival rate (per second) of a revision that has been idle for
    /// `zero_after`: decayed idle periods ended by an arrival over the decayed idle time
    /// beyond `zero_after`, the idle time running now included. `None` until
    /// `min_rate_samples` idle periods are on record.
    pub fn arrival_rate(&self, now: Instant) -> Option<f64> {
        let last = self.last_active?;
        let factor = self.decay_factor(now);
        let ends = self.idle_ends * factor;
        if ends < self.config.min_rate_samples {
            return None;
        }
        let running = now
            .saturating_duration_since(last)
            .saturating_sub(self.config.zero_after)
            .as_secs_f64();
        let exposure = self.idle_secs * factor + running;
        if exposure <= 0.0 {
            return Some(f64::INFINITY);
        }
        Some(ends / exposure)
    }

    /// The per-time-of-day rate table.
    pub fn daily(&self) -> &DailyRates {
        &self.daily
    }

    /// Whether the daily plan keeps the slot of `at` (seconds since the origin) or the one
    /// `lead` later warm: with `daily_exchange` set, a slot is warm while its rate × that
    /// ≥ 1; else per the plan for the KPA keep-alive `k` ([`plan_warm`], re-planned when
    /// the table or `k` changes). `None` while the table is not trusted.
    pub fn daily_warm(&mut self, at: f64, lead: Duration, k: Duration) -> Option<bool> {
        let ahead = at + lead.as_secs_f64();
        if let Some(c) = self.config.daily_exchange {
            let c = c.as_secs_f64();
            let rates = [self.daily.rate_at(at), self.daily.rate_at(ahead)];
            if rates.iter().all(Option::is_none) {
                return None;
            }
            return Some(rates.iter().flatten().any(|r| r * c >= 1.0));
        }
        let generation = self.daily.generation();
        let fresh = matches!(&self.plan, Some((g, pk, _)) if *g == generation && *pk == k);
        if !fresh {
            let rates = self.daily.rates()?;
            let costs = PlanCosts {
                kpa_keep_alive: k.as_secs_f64(),
                zero_linger: self.config.daily_zero_linger.as_secs_f64(),
                start: self.cold_start.as_secs_f64(),
            };
            let warm = plan_warm(
                &rates,
                self.daily.slot_secs(),
                costs,
                self.config.daily_budget,
            );
            self.plan = Some((generation, k, warm));
        }
        let (_, _, warm) = self.plan.as_ref()?;
        let flag = |secs: f64| warm.get(self.daily.slot_of(secs)).copied().unwrap_or(false);
        Some(flag(at) || flag(ahead))
    }

    /// In periodic mode (regular gaps, with room to go to zero between them): when, as
    /// idle time, a replica is pre-warmed (one lead before the predicted window) and until
    /// when it is kept warm.
    fn periodic_window(&self, tick: Duration) -> Option<(Duration, Duration)> {
        let (lo, hi) = self.window()?;
        let lead = tick + self.cold_start + self.config.margin;
        let warm_from = lo.saturating_sub(lead);
        // Only worth it when there is room to go to zero between bursts.
        (warm_from > self.config.zero_after + tick).then_some((warm_from, hi))
    }

    /// What a replica warmed now for the forecast is expected to cost at most before the
    /// arrival it is warmed for: in periodic mode, until the end of the predicted window
    /// (`None` once a pre-warm started now would come too late: more than a tick after
    /// its lead); otherwise `otherwise` (the caller's bound: the KPA's keep-alive).
    pub fn warm_cost(&self, now: Instant, tick: Duration, otherwise: Duration) -> Option<Duration> {
        let idle = self
            .last_active
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        match self.periodic_window(tick) {
            Some((warm_from, _)) if idle > warm_from + tick => None,
            Some((_, hi)) => Some(hi.saturating_sub(idle) + tick),
            None => Some(otherwise),
        }
    }

    /// Advice at `now`, given the decision interval `tick` and how long the KPA keeps a
    /// replica after the last request (`kpa_keep_alive`: its stable window plus the
    /// scale-to-zero grace).
    pub fn advise(&mut self, now: Instant, tick: Duration, kpa_keep_alive: Duration) -> Advice {
        self.keep_alive = kpa_keep_alive;
        self.undo = None;
        let origin = *self.origin.get_or_insert(now);
        let since_origin = now.saturating_duration_since(origin).as_secs_f64();
        self.daily.advance(since_origin);
        let Some(last) = self.last_active else {
            return Advice::Kpa;
        };
        let idle = now.saturating_duration_since(last);
        if idle < self.config.zero_after {
            return Advice::Kpa;
        }
        if let Some((warm_from, hi)) = self.periodic_window(tick) {
            return if idle < warm_from {
                Advice::Zero
            } else if idle <= hi {
                Advice::Warm
            } else {
                Advice::Zero
            };
        }
        // From the second day on: the rate this time of day had on the days before, now
        // and one pre-warm lead ahead (so a replica is ready when a busy slot starts).
        let lead = tick + self.cold_start + self.config.margin;
        let quiet_from = last + self.config.zero_after;
        if let Some(rate) = self.daily.rate_at(since_origin) {
            let from = self.expected_at.map_or(quiet_from, |at| at.max(quiet_from));
            self.expected_quiet += rate * now.saturating_duration_since(from).as_secs_f64();
            self.expected_at = Some(now);
        }
        if self.expected_quiet <= self.config.daily_quiet_limit
            && let Some(warm) = self.daily_warm(since_origin, lead, kpa_keep_alive)
        {
            return if warm { Advice::Warm } else { Advice::Zero };
        }
        let Some(rate) = self.arrival_rate(now) else {
            return Advice::Kpa;
        };
        // Expected arrivals within the KPA's keep-alive, and mean gaps waited so far.
        let per_keep_alive = rate * kpa_keep_alive.as_secs_f64();
        let gaps_waited = (idle - self.config.zero_after).as_secs_f64() * rate;
        // Past the KPA's keep-alive a hold spends from the budget.
        let beyond = idle.saturating_sub(kpa_keep_alive).as_secs_f64();
        let affordable = beyond <= 0.0 || beyond < self.budget;
        if per_keep_alive >= 1.0 && gaps_waited <= self.config.hold_gaps && affordable {
            if beyond > 0.0 {
                self.undo = Some(Booked::Held(self.held_to));
                self.held_to = Some(idle);
            }
            Advice::Hold
        } else if per_keep_alive < self.config.zero_below {
            self.undo = Some(Booked::Zeroed(self.zeroed_at));
            self.zeroed_at.get_or_insert(idle);
            Advice::Zero
        } else {
            Advice::Kpa
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
        assert_eq!(p.advise(t0, secs(2), secs(90)), Advice::Kpa);
        for i in 0..6 {
            p.activity(t0 + secs(120 * i));
        }
        let (lo, hi) = p.window().unwrap();
        assert!(lo <= secs(120) && lo > secs(100), "{lo:?}");
        assert!(hi >= secs(120) && hi < secs(140), "{hi:?}");
        let last = t0 + secs(600);
        assert_eq!(p.advise(last + secs(1), secs(2), secs(90)), Advice::Kpa);
        assert_eq!(p.advise(last + secs(30), secs(2), secs(90)), Advice::Zero);
        // lead = tick 2 + cold start 2 + margin 2 = 6 s before lo.
        assert_eq!(
            p.advise(last + lo - secs(6), secs(2), secs(90)),
            Advice::Warm
        );
        assert_eq!(p.advise(last + secs(120), secs(2), secs(90)), Advice::Warm);
        assert_eq!(
            p.advise(last + hi + secs(1), secs(2), secs(90)),
            Advice::Zero
        );
    }

    #[test]
    fn irregular_gaps_without_a_rate_are_left_to_the_kpa() {
        let t0 = Instant::now();
        let mut p = Pattern::new(PatternConfig {
            min_rate_samples: 100.0,
            ..PatternConfig::default()
        });
        let mut t = t0;
        for gap in [3, 200, 10, 90, 5, 600, 30, 7] {
            t += secs(gap);
            p.activity(t);
        }
        assert_eq!(p.window(), None);
        assert_eq!(p.arrival_rate(t + secs(50)), None);
        assert_eq!(p.advise(t + secs(50), secs(2), secs(90)), Advice::Kpa);
    }

    /// A model without forgetting (τ = 10⁹ s; trusted from 3.9 idle periods) that was told
    /// the KPA keeps a replica 90 s and has seen idle gaps of `gaps` seconds, the first
    /// activity at `t0`. Every idle period adds `allowance` × min(gap, 90 s) to the budget.
    fn model(t0: Instant, gaps: &[u64], allowance: f64) -> (Pattern, Instant) {
        let mut p = Pattern::new(PatternConfig {
            rate_time_constant: secs(1_000_000_000),
            min_rate_samples: 3.9,
            hold_allowance: allowance,
            ..PatternConfig::default()
        });
        assert_eq!(
            p.advise(t0, secs(2), secs(90)),
            Advice::Kpa,
            "nothing seen yet"
        );
        let mut t = t0;
        p.activity(t);
        for gap in gaps {
            t += secs(*gap);
            p.activity(t);
        }
        (p, t)
    }

    /// Idle gaps of 10, 30, 15 and 25 s (irregular: p99 > 2 × p5), the last activity at
    /// `t0 + 80 s`, with a budget of 10 × 80 = 800 replica-seconds.
    fn memoryless_model(t0: Instant) -> Pattern {
        model(t0, &[10, 30, 15, 25], 10.0).0
    }

    #[test]
    fn arrival_rate_is_idle_periods_over_idle_time_beyond_zero_after() {
        let t0 = Instant::now();
        let mut p = Pattern::new(PatternConfig {
            rate_time_constant: secs(1_000_000_000),
            min_rate_samples: 3.9,
            ..PatternConfig::default()
        });
        p.activity(t0);
        p.activity(t0 + secs(10));
        p.activity(t0 + secs(40));
        assert_eq!(p.arrival_rate(t0 + secs(41)), None, "2 idle periods < 3.9");
        let p = memoryless_model(t0);
        assert_eq!(p.window(), None, "irregular");
        let last = t0 + secs(80);
        // 4 idle periods, (10 − 4) + (30 − 4) + (15 − 4) + (25 − 4) = 64 s beyond zero_after.
        let rate = |at| p.arrival_rate(at).unwrap();
        assert!((rate(last + secs(4)) - 4.0 / 64.0).abs() < 1e-9);
        // The idle time running now counts: 20 s idle = 16 s beyond zero_after.
        assert!((rate(last + secs(20)) - 4.0 / 80.0).abs() < 1e-9);
        // Forgetting: with τ = 900 s, 900 s later the same evidence weighs e^-1.
        let mut q = Pattern::new(PatternConfig::default());
        let mut t = t0;
        q.activity(t);
        for gap in [10, 30, 15, 25, 10, 30, 15, 25] {
            t += secs(gap);
            q.activity(t);
        }
        assert!(q.arrival_rate(t + secs(4)).is_some());
        assert_eq!(q.arrival_rate(t + secs(900)), None, "8 · e^-1 < 4 samples");
    }

    #[test]
    fn holds_while_the_next_arrival_is_due_within_the_kpa_keep_alive() {
        let t0 = Instant::now();
        let mut p = memoryless_model(t0);
        let last = t0 + secs(80);
        let k = secs(90);
        // rate(idle) = 4 / (60 + idle): quiet for less than zero_after → the KPA decides.
        assert_eq!(p.advise(last + secs(3), secs(2), k), Advice::Kpa);
        // rate·K = 360 / (60 + idle) ≥ 1 up to 300 s idle: hold one replica.
        assert_eq!(p.advise(last + secs(10), secs(2), k), Advice::Hold);
        assert_eq!(p.advise(last + secs(298), secs(2), k), Advice::Hold);
        // Between ln 2 and 1 (300 s < idle < 459.4 s): the KPA decides.
        assert_eq!(p.advise(last + secs(302), secs(2), k), Advice::Kpa);
        assert_eq!(p.advise(last + secs(458), secs(2), k), Advice::Kpa);
        // Below ln 2: arrivals are now too rare to wait out the KPA's keep-alive.
        assert_eq!(p.advise(last + secs(461), secs(2), k), Advice::Zero);
        // A short keep-alive makes the same rate rare: zero as soon as quiet.
        assert_eq!(p.advise(last + secs(10), secs(2), secs(5)), Advice::Zero);
    }

    #[test]
    fn holds_past_the_kpa_keep_alive_spend_what_early_zeros_saved() {
        let t0 = Instant::now();
        // Without a budget a hold stops where the KPA's keep-alive (90 s) ends.
        let (mut p, last) = model(t0, &[10, 30, 15, 25], 0.0);
        assert_eq!(p.budget(), 0.0);
        assert_eq!(p.advise(last + secs(90), secs(2), secs(90)), Advice::Hold);
        assert_eq!(p.advise(last + secs(92), secs(2), secs(90)), Advice::Kpa);
        // Rare arrivals (rate·K = 4 / 1384 × 90 ≈ 0.26 < ln 2): zero early, at 10 s idle.
        let (mut p, last) = model(t0, &[300, 500, 200, 400], 0.0);
        assert_eq!(p.window(), None, "irregular");
        assert_eq!(p.advise(last + secs(10), secs(2), secs(90)), Advice::Zero);
        assert_eq!(p.advise(last + secs(12), secs(2), secs(90)), Advice::Zero);
        // The next request 60 s after the last: the KPA would have stayed warm 60 s, the
        // policy was warm for 10 s — 50 replica-seconds saved.
        p.activity(last + secs(60));
        assert!((p.budget() - 50.0).abs() < 1e-9, "{}", p.budget());
        // A hold booked: budget 800, held to 200 s idle, next arrival at 250 s: spent
        // 200 − 90 = 110, allowance 10 × 90 = 900 added.
        let mut p = memoryless_model(t0);
        let last = t0 + secs(80);
        assert!((p.budget() - 800.0).abs() < 1e-9, "{}", p.budget());
        assert_eq!(p.advise(last + secs(200), secs(2), secs(90)), Advice::Hold);
        p.activity(last + secs(250));
        assert!((p.budget() - 1590.0).abs() < 1e-9, "{}", p.budget());
        // The budget saves up at most max_budget.
        let (p, _) = model(t0, &[10, 30, 15, 25], 1000.0);
        assert_eq!(p.budget(), 3600.0);
    }

    #[test]
    fn a_hold_ends_after_hold_gaps_mean_gaps_without_an_arrival() {
        let t0 = Instant::now();
        let mut p = Pattern::new(PatternConfig {
            rate_time_constant: secs(1_000_000_000),
            min_rate_samples: 3.9,
            hold_gaps: 2.0,
            ..PatternConfig::default()
        });
        let mut t = t0;
        p.activity(t);
        for gap in [10, 30, 15, 25] {
            t += secs(gap);
            p.activity(t);
        }
        // Gaps waited = (idle − 4) · 4 / (60 + idle) ≤ 2 up to idle = 68 s.
        assert_eq!(p.advise(t + secs(66), secs(2), secs(1000)), Advice::Hold);
        assert_eq!(p.advise(t + secs(70), secs(2), secs(1000)), Advice::Kpa);
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
        // The daily table is bounded too, whatever the knobs or the given rates.
        let p = Pattern::new(PatternConfig {
            daily_slots: usize::MAX,
            ..PatternConfig::default()
        });
        assert_eq!(p.daily().slots(), crate::daily::MAX_SLOTS);
        let p = Pattern::new(PatternConfig {
            daily_rates: Some(vec![0.1; 100_000]),
            ..PatternConfig::default()
        });
        assert_eq!(p.daily().slots(), crate::daily::MAX_SLOTS);
    }

    /// 6 h slots of 0.001, 0.1, 0.001 and 0.02 arrivals/s known up front: with the KPA
    /// keeping 62 s, the plan warms only slot 1 (06:00–12:00; see `daily::tests`).
    fn given_table() -> PatternConfig {
        PatternConfig {
            daily_rates: Some(vec![0.001, 0.1, 0.001, 0.02]),
            ..PatternConfig::default()
        }
    }

    #[test]
    fn a_daily_table_prewarms_before_a_busy_slot_and_zeros_quiet_ones() {
        let t0 = Instant::now();
        let k = secs(62);
        let h6 = secs(6 * 3600);
        let mut p = Pattern::new(given_table());
        p.activity(t0); // the origin: 00:00
        p.activity(t0 + h6 - secs(60));
        assert_eq!(
            p.advise(t0 + h6 - secs(58), secs(2), k),
            Advice::Kpa,
            "< zero_after"
        );
        assert_eq!(p.advise(t0 + h6 - secs(30), secs(2), k), Advice::Zero);
        // One lead (tick 2 + cold start 2 + margin 2 = 6 s) before 06:00: pre-warm.
        assert_eq!(p.advise(t0 + h6 - secs(7), secs(2), k), Advice::Zero);
        assert_eq!(p.advise(t0 + h6 - secs(5), secs(2), k), Advice::Warm);
        assert_eq!(p.advise(t0 + h6 + secs(60), secs(2), k), Advice::Warm);
        // Quiet through 0.001 × 56 + 0.1 × 100 ≈ 10 expected arrivals (> 8): today does
        // not follow the table; the online estimate (no rate yet) leaves it to the KPA.
        assert_eq!(p.advise(t0 + h6 + secs(100), secs(2), k), Advice::Kpa);
        p.activity(t0 + h6 + secs(101));
        assert_eq!(p.advise(t0 + h6 + secs(110), secs(2), k), Advice::Warm);
        // The same times of day repeat every day.
        let day = secs(86_400);
        p.activity(t0 + day + h6);
        assert_eq!(p.advise(t0 + day + h6 + secs(10), secs(2), k), Advice::Warm);
        p.activity(t0 + day + h6 * 3);
        assert_eq!(
            p.advise(t0 + day + h6 * 3 + secs(10), secs(2), k),
            Advice::Zero
        );
        // A longer KPA keep-alive raises the budget (expected replica-seconds 48 259 at
        // 150 s): the 0.02/s slot (43 630 with it) fits too.
        assert_eq!(
            p.advise(t0 + day + h6 * 3 + secs(12), secs(2), secs(150)),
            Advice::Warm
        );
    }

    #[test]
    fn learns_a_day_then_follows_it_the_next_day() {
        let t0 = Instant::now();
        let mut p = Pattern::new(PatternConfig {
            daily_slots: 4,
            daily_smooth: 0,
            daily_exchange: Some(secs(62)),
            ..PatternConfig::default()
        });
        p.activity(t0);
        // Day 0: 06:00–12:00 busy (irregular gaps of 10, 30, 15, 25 s: 4 arrivals after
        // idle per 64 s idle beyond zero_after), quiet otherwise.
        let mut t = t0 + secs(6 * 3600);
        p.activity(t);
        while t < t0 + secs(12 * 3600) {
            for gap in [10, 30, 15, 25] {
                t += secs(gap);
                p.activity(t);
            }
        }
        assert_eq!(p.daily().days(), 0.0);
        // Day 1, 05:00: one arrival. Day 0 is folded in: slot 1's rate ≈ 1/16 per second
        // (× 62 s ≥ 1: warm), slot 0 saw 6 h of quiet (rate 0: zero).
        let day = t0 + secs(86_400);
        p.activity(day + secs(5 * 3600));
        assert_eq!(p.daily().days(), 1.0);
        let rate = p.daily().rate_at(86_400.0 + 7.0 * 3600.0).unwrap();
        assert!((rate - 0.0625).abs() < 0.001, "{rate}");
        let k = secs(62);
        assert_eq!(
            p.advise(day + secs(5 * 3600 + 30), secs(2), k),
            Advice::Zero
        );
        assert_eq!(p.advise(day + secs(6 * 3600 - 5), secs(2), k), Advice::Warm);
        assert_eq!(
            p.advise(day + secs(6 * 3600 + 30), secs(2), k),
            Advice::Warm
        );
    }
}
