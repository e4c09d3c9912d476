//! The pattern policy's books against the KPA it replaced.
//!
//! A revision that opts into the pattern policy must never do worse than plain KPA: no more
//! cold starts, and at most `1 + allowance` times its replica-seconds. The policy's forecast
//! cannot promise that — on heavy-tailed traffic an idle gap that looks long is often
//! followed by a short one — so the decider keeps books, per revision and on line, of what
//! the policy did against what the KPA alone would have done on the same stats (a shadow
//! KPA: the decider's own KPA and scale-to-zero state machine, ticked as if it had been
//! obeyed), and lets the forecast act only where it has paid for itself:
//!
//! * **Cold starts.** Each time a request ends an idle period the books compare who had a
//!   ready replica after the last tick. The policy warm where the KPA would have been cold
//!   saves the cold starts of the requests that replicas started within a cold start; the
//!   reverse adds those of every request reported within a cold start and a second (by the
//!   activator, pokes included, or straight by a replica). Stats come once a second and
//!   may count a request twice, so savings are under-counted and losses over-counted,
//!   never the reverse. Giving a replica back before the KPA would (a *risk*) is allowed
//!   only while the saved cold starts in hand cover the largest such episode seen, so the
//!   policy spends at most the cold starts it saved. The largest episode is measured on
//!   every idle period the policy ended cold, the KPA's own cold starts included: a loss
//!   looks like those (on heavy-tailed traffic one burst can be many times another).
//! * **Replica-seconds.** Both sides' replicas are integrated over time; the budget is
//!   `(1 + allowance) × KPA − own`. Keeping a replica the KPA would not keep (a *spend*) is
//!   allowed only while the budget covers it: starting one needs a pre-warm lead's worth,
//!   going on with one a tick's worth.
//!
//! Where the forecast does not pay, neither is allowed and the decision is the KPA's.
//! Memory: a handful of numbers per revision.

use std::time::Duration;

use tokio::time::Instant;

/// An idle period, for the cold-start books: no activity for at least this long.
const IDLE: Duration = Duration::from_secs(2);

/// What an episode (the requests right after an idle period) books.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Episode {
    /// The policy was warm, the KPA would have been cold: cold starts saved.
    Saves,
    /// The policy was cold, the KPA would have been warm: cold starts added.
    Adds,
    /// Both were cold: only measured (how large a loss can be).
    Measures,
}

/// The books of one pattern-policy revision against its shadow KPA.
#[derive(Clone, Debug)]
pub struct Ledger {
    allowance: f64,
    /// Cold starts (requests) saved minus added against the KPA.
    credit: i64,
    saved: u64,
    added: u64,
    /// The episode being counted: until when, and what it books.
    episode: Option<(Instant, Episode)>,
    /// The most cold starts one idle period that the policy ended cold had.
    largest: u64,
    /// Its count so far.
    counted: u64,
    /// Replica-seconds so far: the policy's and the shadow KPA's.
    own_rs: f64,
    kpa_rs: f64,
    /// The last tick: when, and the replicas each side wanted then.
    last_tick: Option<(Instant, u32, u32)>,
    /// Whether each side had a ready replica at the last tick.
    own_ready: bool,
    kpa_ready: bool,
    last_active: Option<Instant>,
}

impl Ledger {
    /// Empty books; the policy may spend `allowance` (a fraction) of the KPA's
    /// replica-seconds beyond them.
    pub fn new(allowance: f64) -> Self {
        Self {
            allowance: if allowance.is_finite() {
                allowance.max(0.0)
            } else {
                0.0
            },
            credit: 0,
            saved: 0,
            added: 0,
            episode: None,
            largest: 0,
            counted: 0,
            own_rs: 0.0,
            kpa_rs: 0.0,
            last_tick: None,
            own_ready: false,
            kpa_ready: false,
            last_active: None,
        }
    }

    /// Books one decision at `now`: the replicas the policy and the KPA wanted (from now
    /// on) and whether each has one ready once the decision is applied.
    pub fn tick(&mut self, now: Instant, own: u32, kpa: u32, own_ready: bool, kpa_ready: bool) {
        if let Some((at, o, k)) = self.last_tick {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.own_rs += f64::from(o) * dt;
            self.kpa_rs += f64::from(k) * dt;
        }
        self.last_tick = Some((now, own, kpa));
        self.own_ready = own_ready;
        self.kpa_ready = kpa_ready;
    }

    /// Books activity seen at `now`, from one report: the requests a replica `started`
    /// (0 for the activator), and the requests it saw `arrive` (the activator's, or those a
    /// replica got straight, not through the activator). When it ends an idle period and
    /// only one side had a ready replica after the last tick, an episode starts: the
    /// policy warm saves what is started within `cold_start`, the policy cold adds what
    /// arrives within `cold_start` + 1 s.
    pub fn activity(&mut self, now: Instant, started: u64, arrived: u64, cold_start: Duration) {
        if let Some(last) = self.last_active
            && now.saturating_duration_since(last) >= IDLE
        {
            self.close_episode();
            let long = cold_start + Duration::from_secs(1);
            self.episode = match (self.own_ready, self.kpa_ready) {
                (true, false) => Some((now + cold_start, Episode::Saves)),
                (false, true) => Some((now + long, Episode::Adds)),
                (false, false) => Some((now + long, Episode::Measures)),
                (true, true) => None,
            };
        }
        if let Some((until, kind)) = self.episode {
            if now <= until {
                let requests = if kind == Episode::Saves {
                    started
                } else {
                    arrived
                };
                self.counted += requests;
                let n = i64::try_from(requests).unwrap_or(i64::MAX);
                match kind {
                    Episode::Saves => {
                        self.credit = self.credit.saturating_add(n);
                        self.saved += requests;
                    }
                    Episode::Adds => {
                        self.credit = self.credit.saturating_sub(n);
                        self.added += requests;
                    }
                    Episode::Measures => {}
                }
            } else {
                self.close_episode();
            }
        }
        if self.last_active.is_none_or(|l| l < now) {
            self.last_active = Some(now);
        }
    }

    fn close_episode(&mut self) {
        if let Some((_, kind)) = self.episode.take()
            && kind != Episode::Saves
        {
            self.largest = self.largest.max(self.counted);
        }
        self.counted = 0;
    }

    /// Cold starts (requests) saved minus added so far.
    pub fn credit(&self) -> i64 {
        self.credit
    }

    /// Cold starts (requests) saved and added so far.
    pub fn cold_starts(&self) -> (u64, u64) {
        (self.saved, self.added)
    }

    /// Replica-seconds the policy may still spend beyond the KPA's.
    pub fn budget(&self) -> f64 {
        (1.0 + self.allowance) * self.kpa_rs - self.own_rs
    }

    /// Replica-seconds so far: (the policy's, the shadow KPA's).
    pub fn replica_seconds(&self) -> (f64, f64) {
        (self.own_rs, self.kpa_rs)
    }

    /// Whether the policy may give a replica back before the KPA would: only while the
    /// saved cold starts in hand cover the largest cold episode seen (at least one), or
    /// the one open now if that is larger.
    pub fn may_risk(&self) -> bool {
        // An open cold episode may still grow.
        let open = match self.episode {
            Some((_, Episode::Adds | Episode::Measures)) => self.counted,
            _ => 0,
        };
        let need = self.largest.max(open).max(1);
        self.credit >= i64::try_from(need).unwrap_or(i64::MAX)
    }

    /// Whether the policy may keep one replica the KPA would not for another `tick`:
    /// `starting` one (the policy had none beyond the KPA at the last tick) needs what it
    /// is expected to `cost` in the budget, so a pre-warm is not cut off before it is used.
    /// `None`: too late to start one.
    pub fn may_spend(&self, starting: bool, tick: Duration, cost: Option<Duration>) -> bool {
        let need = match (starting, cost) {
            (false, _) => tick,
            (true, Some(cost)) => cost.max(tick),
            (true, None) => return false,
        };
        self.budget() >= need.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn cold_starts_are_booked_at_the_end_of_an_idle_period() {
        let t0 = Instant::now();
        let cs = secs(2);
        let mut l = Ledger::new(0.0);
        l.activity(t0, 5, 5, cs);
        // Both warm at the end of an idle period: nothing.
        l.tick(t0 + secs(2), 1, 1, true, true);
        l.activity(t0 + secs(3), 4, 4, cs);
        assert_eq!(l.credit(), 0);
        // The policy warm where the KPA had gone to zero: the requests of the next cold
        // start (2 s) are saved, not those after it.
        l.tick(t0 + secs(100), 1, 0, true, false);
        l.activity(t0 + secs(101), 7, 7, cs);
        l.activity(t0 + secs(102), 6, 6, cs);
        l.activity(t0 + secs(103), 5, 5, cs);
        l.activity(t0 + secs(104), 9, 9, cs);
        assert_eq!((l.credit(), l.cold_starts()), (18, (18, 0)));
        assert!(l.may_risk(), "18 in hand cover the largest episode (18)");
        // The policy cold where the KPA would have been warm: the requests of a cold start
        // and a second are added.
        l.tick(t0 + secs(120), 0, 1, false, true);
        l.activity(t0 + secs(130), 10, 10, cs);
        assert!(!l.may_risk(), "8 in hand, 10 counted in the open episode");
        l.activity(t0 + secs(131), 10, 10, cs);
        l.activity(t0 + secs(132), 10, 10, cs);
        l.activity(t0 + Duration::from_millis(133_500), 10, 10, cs);
        assert_eq!((l.credit(), l.cold_starts()), (-12, (18, 30)));
        assert!(!l.may_risk());
        // Both cold: no credit either way; the largest episode (30) is what a risk must now
        // cover.
        l.tick(t0 + secs(300), 0, 0, false, false);
        l.activity(t0 + secs(301), 3, 3, cs);
        assert_eq!(l.credit(), -12);
        l.tick(t0 + secs(400), 1, 0, true, false);
        l.activity(t0 + secs(401), 41, 41, cs);
        assert_eq!(l.credit(), 29);
        assert!(!l.may_risk(), "29 in hand < 30");
        l.activity(t0 + secs(402), 1, 1, cs);
        assert!(l.may_risk());
        // A larger cold start of the KPA's own (both cold) raises the bar.
        l.tick(t0 + secs(500), 0, 0, false, false);
        l.activity(t0 + secs(501), 50, 50, cs);
        assert!(!l.may_risk(), "30 in hand, 50 in the open cold episode");
        l.activity(t0 + secs(600), 1, 1, cs);
        assert_eq!(l.credit(), 30);
        assert!(!l.may_risk(), "30 in hand, 50 the largest");
    }

    #[test]
    fn the_budget_is_the_allowance_plus_what_the_policy_saved() {
        let t0 = Instant::now();
        let mut l = Ledger::new(0.05);
        assert_eq!(l.budget(), 0.0);
        assert!(!l.may_spend(false, secs(2), Some(secs(6))));
        // 100 s with 2 replicas on both sides: 5 % of 200 = 10.
        l.tick(t0, 2, 2, true, true);
        l.tick(t0 + secs(100), 0, 1, false, true);
        assert!((l.budget() - 10.0).abs() < 1e-9);
        assert!(l.may_spend(true, secs(2), Some(secs(6))));
        assert!(!l.may_spend(true, secs(2), None), "too late to start");
        // 60 s at zero while the KPA kept one: saved 60 (+ 3 allowance).
        l.tick(t0 + secs(160), 1, 0, true, false);
        assert!((l.budget() - 73.0).abs() < 1e-9, "{}", l.budget());
        // 70 s of one replica the KPA would not have kept: 3 left.
        l.tick(t0 + secs(230), 1, 0, true, false);
        assert!((l.budget() - 3.0).abs() < 1e-9, "{}", l.budget());
        assert!(
            l.may_spend(false, secs(2), Some(secs(6))),
            "going on: a tick's worth"
        );
        assert!(
            !l.may_spend(true, secs(2), Some(secs(6))),
            "starting: its expected cost"
        );
        assert_eq!(l.replica_seconds(), (270.0, 260.0));
        assert!(Ledger::new(f64::NAN).budget() == 0.0);
    }
}
