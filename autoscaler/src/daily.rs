//! Per-time-of-day arrival rates with a daily period (the pattern policy's rate table).
//!
//! The day (24 h from the model's origin) is cut into fixed slots (15 min by default). For
//! every slot the table keeps the arrival rate *after idle* as a piecewise-constant hazard:
//! idle periods that ended with an arrival in that slot, over the idle time (beyond the
//! policy's `zero_after`) that fell in that slot. That is the maximum-likelihood rate of a
//! Poisson process whose rate is constant within a slot, and it is exactly the rate that
//! decides whether a replica kept warm through an idle stretch is used before it would have
//! been given back.
//!
//! Today's counts go into a scratch row; at each day boundary the row is folded into the
//! learned sums, older days weighing `day_decay` per day, so a changed daily shape is
//! followed within a few days. The table is trusted once one whole day has been folded in.
//! Rates are read smoothed over `±smooth` neighbouring slots (circularly), which steadies
//! the estimate in slow slots where one day holds only a few arrivals.
//!
//! A table can also be given up front ([`DailyRates::with_rates`]): the simulator's oracle
//! bound uses that with the generator's true rate curve.
//!
//! Memory is bounded: four rows of `slots` numbers (96 slots: 3 KiB), whatever the traffic.

/// Seconds in the period the table repeats with.
pub const DAY_SECS: f64 = 86_400.0;

/// The most slots a table may have (1-minute slots).
pub const MAX_SLOTS: usize = 1440;

/// Per-slot arrival rates over a daily period.
#[derive(Clone, Debug)]
pub struct DailyRates {
    slot_secs: f64,
    smooth: usize,
    day_decay: f64,
    /// The day (counted from the origin) the scratch row belongs to.
    day: u64,
    today_ends: Vec<f64>,
    today_exposure: Vec<f64>,
    ends: Vec<f64>,
    exposure: Vec<f64>,
    /// Decayed number of whole days folded in.
    days: f64,
    /// Rates given up front; when set, learning is off.
    given: Option<Vec<f64>>,
}

impl DailyRates {
    /// An empty table of `slots` slots per day (clamped to 1 ..= [`MAX_SLOTS`]), read
    /// smoothed over `±smooth` slots, older days weighing `day_decay` per day.
    pub fn new(slots: usize, smooth: usize, day_decay: f64) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        Self {
            slot_secs: DAY_SECS / slots as f64,
            smooth: smooth.min(slots / 2),
            day_decay: if day_decay.is_finite() {
                day_decay.clamp(0.0, 1.0)
            } else {
                0.0
            },
            day: 0,
            today_ends: vec![0.0; slots],
            today_exposure: vec![0.0; slots],
            ends: vec![0.0; slots],
            exposure: vec![0.0; slots],
            days: 0.0,
            given: None,
        }
    }

    /// A table that knows its rates (per second, one per slot, the day cut evenly) from the
    /// start and learns nothing. Non-finite or negative rates read as 0.
    pub fn with_rates(rates: &[f64]) -> Self {
        let mut t = Self::new(rates.len(), 0, 0.0);
        let rates: Vec<f64> = rates
            .iter()
            .take(t.today_ends.len())
            .map(|r| if r.is_finite() { r.max(0.0) } else { 0.0 })
            .collect();
        t.given = Some(rates);
        t
    }

    /// Slots per day.
    pub fn slots(&self) -> usize {
        self.ends.len()
    }

    /// Whole days learned (decayed); at least 1 once the table is trusted.
    pub fn days(&self) -> f64 {
        self.days
    }

    /// The slot `secs` (since the origin) falls in.
    pub fn slot_of(&self, secs: f64) -> usize {
        let in_day = secs.rem_euclid(DAY_SECS);
        ((in_day / self.slot_secs) as usize).min(self.slots() - 1)
    }

    fn day_of(secs: f64) -> u64 {
        (secs.max(0.0) / DAY_SECS) as u64
    }

    /// Folds finished days into the learned sums, up to the day of `secs`.
    fn roll_to(&mut self, secs: f64) {
        let day = Self::day_of(secs);
        // After a long silence only the last week matters (0.5^7 < 1 %).
        let mut steps = 0;
        while self.day < day && steps < 8 {
            for s in 0..self.slots() {
                self.ends[s] = self.ends[s] * self.day_decay + self.today_ends[s];
                self.exposure[s] = self.exposure[s] * self.day_decay + self.today_exposure[s];
                self.today_ends[s] = 0.0;
                self.today_exposure[s] = 0.0;
            }
            self.days = self.days * self.day_decay + 1.0;
            self.day += 1;
            steps += 1;
        }
        self.day = self.day.max(day);
    }

    /// Records idle time from `from` to `to` (seconds since the origin), split over the
    /// slots it covers, and, when `ended`, an arrival ending it at `to`.
    pub fn record_idle(&mut self, from: f64, to: f64, ended: bool) {
        if self.given.is_some() || !from.is_finite() || !to.is_finite() {
            return;
        }
        let mut t = from.max(0.0);
        let to = to.max(t);
        while t < to {
            self.roll_to(t);
            let slot_end = ((t / self.slot_secs).floor() + 1.0) * self.slot_secs;
            let until = slot_end.min(to);
            let s = self.slot_of(t);
            self.today_exposure[s] += until - t;
            if until <= t {
                break;
            }
            t = until;
        }
        if ended {
            self.roll_to(to);
            let s = self.slot_of(to);
            self.today_ends[s] += 1.0;
        }
    }

    /// Moves the table's clock to `secs` (folds finished days) without recording anything.
    pub fn advance(&mut self, secs: f64) {
        if self.given.is_none() && secs.is_finite() {
            self.roll_to(secs);
        }
    }

    /// Seconds per slot.
    pub fn slot_secs(&self) -> f64 {
        self.slot_secs
    }

    /// Folded-in days so far (changes each time a day is folded in); lets a caller re-plan
    /// only when the table changed.
    pub fn generation(&self) -> u64 {
        self.day
    }

    /// The rate of every slot as [`DailyRates::rate_at`] reads it (slots with no
    /// evidence read as 0). `None` until the table is trusted.
    pub fn rates(&self) -> Option<Vec<f64>> {
        if self.given.is_none() && self.days < 1.0 {
            return None;
        }
        Some(
            (0..self.slots())
                .map(|s| {
                    self.rate_at((s as f64 + 0.5) * self.slot_secs)
                        .unwrap_or(0.0)
                })
                .collect(),
        )
    }

    /// The arrival rate after idle (per second) at `secs` since the origin: the given rate
    /// of its slot, or the learned rate over the slot and its `±smooth` neighbours. `None`
    /// until a whole day is learned. A slot with arrivals but no idle time reads as
    /// infinite (always busy); one with neither reads as `None`.
    pub fn rate_at(&self, secs: f64) -> Option<f64> {
        if !secs.is_finite() {
            return None;
        }
        let s = self.slot_of(secs);
        if let Some(given) = &self.given {
            return given.get(s).copied();
        }
        if self.days < 1.0 {
            return None;
        }
        let n = self.slots();
        let (mut ends, mut exposure) = (0.0, 0.0);
        for k in 0..=2 * self.smooth {
            let i = (s + n + k - self.smooth) % n;
            ends += self.ends[i];
            exposure += self.exposure[i];
        }
        if exposure > 0.0 {
            Some(ends / exposure)
        } else if ends > 0.0 {
            Some(f64::INFINITY)
        } else {
            None
        }
    }
}

/// The costs a warm plan is weighed with, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanCosts {
    /// The KPA's keep-alive after the last request (its stable window plus a tick).
    pub kpa_keep_alive: f64,
    /// How long a policy-zeroed replica lingers after the last request (the panic window
    /// must empty and a tick pass before the policy may let it go).
    pub zero_linger: f64,
    /// Replica-seconds a cold start adds (the replica starting).
    pub start: f64,
}

/// Expected replica-seconds per second and cold starts per second of memoryless arrivals
/// at rate `r` when a replica is kept `t` seconds after each request (`t = ∞`: always warm):
/// the replica is up when an arrival came in the last `t`, and each arrival after a longer
/// gap is a cold start that adds `start`.
pub fn keep_alive_cost(r: f64, t: f64, start: f64) -> (f64, f64) {
    if r.is_infinite() || t.is_infinite() {
        return (1.0, 0.0);
    }
    let quiet = (-r * t).exp();
    (1.0 - quiet + r * quiet * start, r * quiet)
}

/// Plans which slots to keep warm for a day of the given per-slot rates (per second, each
/// slot `slot_secs` long) so that the plan's expected replica-seconds stay within
/// `budget` × the KPA's; `true` = keep the slot warm.
///
/// Over a slot with memoryless arrivals at rate `λ`, keeping a replica `t` after each
/// request costs `1 − e^{−λt}(1 − λ·start)` replica-seconds per second and cold-starts
/// `λe^{−λt}` per second ([`keep_alive_cost`]). The KPA keeps `t = K`; a slot given back
/// early keeps `t = zero_linger`; a warm slot `t = ∞`. All three lie on one line, so
/// warming a slot instead of giving it back saves cold starts at `λ / (1 − λ·start)` per
/// replica-second, which grows with `λ`: the cheapest plan for a number of cold starts
/// warms the busiest slots (a fractional knapsack solved greedily). Starting from every slot
/// given back, slots are warmed busiest first while the plan's expected replica-seconds
/// stay within the budget. A slot where `λ·start ≥ 1` (giving it back costs as much as
/// keeping it) and an always-busy one are always warm. With one rate everywhere the plan
/// warms a fraction `1 − e^{−λ(K − zero_linger)}` of the slots and expects the KPA's cold
/// starts at the KPA's replica-seconds: for a steady rate the trade is at par, and the gain
/// comes only from moving replica-seconds from slow hours to busy ones.
pub fn plan_warm(rates: &[f64], slot_secs: f64, costs: PlanCosts, budget: f64) -> Vec<bool> {
    let (k, t0, start) = (
        costs.kpa_keep_alive.max(0.0),
        costs.zero_linger.max(0.0),
        costs.start.max(0.0),
    );
    let rates: Vec<f64> = rates
        .iter()
        .map(|r| if r.is_nan() { 0.0 } else { r.max(0.0) })
        .collect();
    let mut kpa = 0.0;
    let mut spend = 0.0;
    for &r in &rates {
        kpa += slot_secs * keep_alive_cost(r, k, start).0;
        spend += slot_secs * keep_alive_cost(r, t0, start).0;
    }
    let allowed = kpa * budget;
    let mut order: Vec<usize> = (0..rates.len()).collect();
    // Busiest first; ties in slot order, so the plan is deterministic.
    order.sort_by(|a, b| rates[*b].total_cmp(&rates[*a]).then(a.cmp(b)));
    let mut warm = vec![false; rates.len()];
    for i in order {
        let next = spend + slot_secs * (1.0 - keep_alive_cost(rates[i], t0, start).0);
        if next > allowed && next > spend {
            break;
        }
        spend = next;
        warm[i] = true;
    }
    warm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_until_a_whole_day_is_folded_in() {
        let mut t = DailyRates::new(96, 0, 0.5);
        t.record_idle(0.0, 100.0, true);
        assert_eq!(t.rate_at(50.0), None);
        t.advance(DAY_SECS - 1.0);
        assert_eq!(t.rate_at(50.0), None);
        t.advance(DAY_SECS);
        assert_eq!(t.days(), 1.0);
        // Slot 0 (900 s): one end over 100 s of idle.
        assert_eq!(t.rate_at(DAY_SECS + 10.0), Some(0.01));
        // The same slot on any later day, and its time of day from the origin.
        assert_eq!(t.rate_at(5.0 * DAY_SECS + 899.0), Some(0.01));
        // Slot 1 saw nothing.
        assert_eq!(t.rate_at(DAY_SECS + 900.0), None);
    }

    #[test]
    fn idle_time_is_split_over_the_slots_it_covers() {
        let mut t = DailyRates::new(96, 0, 0.5);
        // 800 s … 1000 s: 100 s in slot 0, 100 s in slot 1, the arrival in slot 1.
        t.record_idle(800.0, 1000.0, true);
        // 1000 s … 1450 s: the rest of slot 1 without an arrival (still idle at the roll).
        t.record_idle(1000.0, 1450.0, false);
        t.advance(DAY_SECS);
        assert_eq!(t.rate_at(0.0), Some(0.0), "slot 0: no arrival in 100 s");
        assert_eq!(
            t.rate_at(900.0),
            Some(1.0 / 550.0),
            "slot 1: 1 over 100 + 450 s"
        );
        // Smoothed over ±1 slot: slots 95, 0, 1 hold 1 end over 650 s.
        let mut s = DailyRates::new(96, 1, 0.5);
        s.record_idle(800.0, 1000.0, true);
        s.record_idle(1000.0, 1450.0, false);
        s.advance(DAY_SECS);
        assert_eq!(s.rate_at(0.0), Some(1.0 / 650.0));
    }

    #[test]
    fn idle_across_midnight_lands_in_both_days_and_old_days_fade() {
        let mut t = DailyRates::new(4, 0, 0.5); // 6 h slots
        // Day 0: 21 600 s of idle in slot 3 ending at midnight+0: split 100 s before it.
        t.record_idle(DAY_SECS - 100.0, DAY_SECS + 100.0, true);
        // The 100 s before midnight are day 0 (folded); the 100 s after are today's.
        assert_eq!(t.days(), 1.0);
        assert_eq!(t.rate_at(DAY_SECS - 1.0), Some(0.0));
        assert_eq!(t.rate_at(0.0), None, "slot 0 of day 0 saw nothing");
        // Day 1: slot 0 gets 1 end over 100 s; folded at day 2 with day 0 weighing 0.5.
        t.advance(2.0 * DAY_SECS);
        assert_eq!(t.days(), 1.5);
        assert_eq!(t.rate_at(0.0), Some(0.01));
        // A week of silence: every slot fades, nothing ends.
        t.advance(30.0 * DAY_SECS);
        assert!(t.days() < 2.0 && t.days() > 1.0, "{}", t.days());
        assert_eq!(t.rate_at(0.0), Some(0.01), "a ratio of faded sums");
    }

    #[test]
    fn given_rates_are_read_per_slot_and_never_learn() {
        let mut t = DailyRates::with_rates(&[0.1, f64::NAN, -1.0, 0.5]);
        assert_eq!(t.rate_at(0.0), Some(0.1));
        assert_eq!(t.rate_at(DAY_SECS / 4.0), Some(0.0));
        assert_eq!(t.rate_at(DAY_SECS / 2.0), Some(0.0));
        assert_eq!(t.rate_at(DAY_SECS * 3.8), Some(0.5));
        t.record_idle(0.0, 10.0, true);
        assert_eq!(t.rate_at(0.0), Some(0.1));
        assert_eq!(t.rate_at(f64::NAN), None);
    }

    #[test]
    fn bounded_and_safe_on_odd_input() {
        let mut t = DailyRates::new(usize::MAX, usize::MAX, f64::NAN);
        assert_eq!(t.slots(), MAX_SLOTS);
        t.record_idle(f64::INFINITY, 1.0, true);
        t.record_idle(-5.0, -1.0, true);
        t.advance(1e18);
        assert!(t.days() >= 1.0);
        assert_eq!(DailyRates::new(0, 3, 0.5).slots(), 1);
    }
    const COSTS: PlanCosts = PlanCosts {
        kpa_keep_alive: 62.0,
        zero_linger: 8.0,
        start: 2.0,
    };

    #[test]
    fn keep_alive_cost_matches_the_poisson_formulas() {
        // λ = 0.05, t = 62 s: warm 1 − e^−3.1 of the time, e^−3.1 of arrivals cold (+2 s).
        let (spend, cold) = keep_alive_cost(0.05, 62.0, 2.0);
        let q = (-3.1f64).exp();
        assert!((spend - (1.0 - q + 0.05 * q * 2.0)).abs() < 1e-12);
        assert!((spend - 0.959_456).abs() < 1e-6, "{spend}");
        assert!((cold - 0.05 * q).abs() < 1e-12);
        assert_eq!(keep_alive_cost(0.05, f64::INFINITY, 2.0), (1.0, 0.0));
        assert_eq!(keep_alive_cost(f64::INFINITY, 8.0, 2.0), (1.0, 0.0));
        assert_eq!(keep_alive_cost(0.0, 8.0, 2.0), (0.0, 0.0));
    }

    #[test]
    fn the_plan_warms_the_busiest_slots_within_the_kpa_budget() {
        // 6 h slots. Expected replica-seconds: KPA 39 843; all given back 18 195; warming
        // 0.1/s → 25 960 (fits); then 0.02/s → 43 630 (over the KPA's).
        let rates = [0.001, 0.1, 0.001, 0.02];
        assert_eq!(
            plan_warm(&rates, 21_600.0, COSTS, 1.0),
            [false, true, false, false]
        );
        // 20 % more budget (47 811) fits the 0.02/s slot too.
        assert_eq!(
            plan_warm(&rates, 21_600.0, COSTS, 1.2),
            [false, true, false, true]
        );
        // No budget: only slots where giving back costs as much as keeping (λ·start ≥ 1)
        // and always-busy ones stay warm.
        assert_eq!(
            plan_warm(&[0.6, f64::INFINITY, 0.1, f64::NAN], 900.0, COSTS, 0.0),
            [true, true, false, false]
        );
        assert!(plan_warm(&[], 900.0, COSTS, 1.0).is_empty());
    }

    #[test]
    fn a_steady_rate_is_at_par_with_the_kpa() {
        // λ = 0.05 everywhere: a fraction 1 − e^{−λ(K − linger)} = 93.3 % of the slots
        // (89.5 of 96) can be warm; the plan warms 89 (whole slots, earliest first).
        let warm = plan_warm(&[0.05; 96], 900.0, COSTS, 1.0);
        assert_eq!(warm.iter().filter(|w| **w).count(), 89);
        assert!(warm[..89].iter().all(|w| *w));
        // Expected cold starts: the 7 slots given back cold-start λe^{−8λ} per second:
        // 211 against the KPA's 195 over the day — at par up to the last part-slot.
        let plan_cold = 7.0 * 900.0 * keep_alive_cost(0.05, 8.0, 2.0).1;
        let kpa_cold = 96.0 * 900.0 * keep_alive_cost(0.05, 62.0, 2.0).1;
        assert!((plan_cold - 211.15).abs() < 0.01, "{plan_cold}");
        assert!((kpa_cold - 194.61).abs() < 0.01, "{kpa_cold}");
    }
}
