//! When the controller runs which kind of pass: pure (times go in as arguments), so the
//! rules are tested without a clock, a store or a runtime.
//!
//! * A **full** pass (re-read the store, reconcile everything) runs at start, whenever
//!   something forces one (a lagged watch, a changed serving runtime: `full_due`), after a
//!   failed full pass or resync, and every [`FULL_EVERY`] resync intervals.
//! * A **resync** (compare the store's object versions with the cache, reconcile what
//!   differs and what failed) runs every resync interval, stretched to [`RESYNC_STRETCH`]
//!   times the last one's duration so it takes at most 2 % of a core.
//! * Otherwise an **incremental** pass reconciles what changed.

use std::time::Duration;

use tokio::time::Instant;

/// A resync (or full pass) waits at least this many times its own duration before the
/// next one.
pub(super) const RESYNC_STRETCH: u32 = 50;

/// Every this many resync intervals, the resync is a full pass (re-reading the store and
/// reconciling everything) rather than a comparison of versions.
pub(super) const FULL_EVERY: u32 = 600;

/// The kind of a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PassKind {
    /// Re-read the store and reconcile everything.
    Full,
    /// Compare versions, then reconcile what differs, what changed and what failed.
    Resync,
    /// Reconcile what changed.
    Incremental,
}

/// When the next resync and the next full pass are due.
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    interval: Duration,
    next_resync: Instant,
    next_full: Instant,
}

impl Schedule {
    /// Resyncs every `interval`; the first pass, at `now`, is a full one.
    pub(super) fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            next_resync: now,
            next_full: now,
        }
    }

    /// The pass to run at `now`; `full_due` forces a full one.
    pub(super) fn kind(&self, now: Instant, full_due: bool) -> PassKind {
        let resync = now >= self.next_resync;
        if full_due || (resync && now >= self.next_full) {
            PassKind::Full
        } else if resync {
            PassKind::Resync
        } else {
            PassKind::Incremental
        }
    }

    /// Records a pass of `kind` that started at `started`, took `elapsed` and succeeded
    /// (`ok`) or not.
    pub(super) fn after(&mut self, kind: PassKind, started: Instant, elapsed: Duration, ok: bool) {
        let stretched = elapsed * RESYNC_STRETCH;
        if kind == PassKind::Full {
            self.next_full = started + (self.interval * FULL_EVERY).max(stretched);
        }
        if kind != PassKind::Incremental {
            self.next_resync = started + self.interval.max(stretched);
        }
        if !ok {
            // An incremental pass's objects are retried by the next resync; what a failed
            // full pass or resync missed is not known object by object, so the next resync
            // is a full pass.
            self.next_resync = self.next_resync.min(started + self.interval);
            if kind != PassKind::Incremental {
                self.next_full = self.next_resync;
            }
        }
    }

    /// When the next resync is due (the loop wakes then if nothing else happens).
    pub(super) fn next_resync(&self) -> Instant {
        self.next_resync
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_pass_is_full_then_incremental_until_the_resync_is_due() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SECOND, t0);
        assert_eq!(s.kind(t0, false), PassKind::Full);
        s.after(PassKind::Full, t0, Duration::from_millis(2), true);
        assert_eq!(
            s.kind(t0 + Duration::from_millis(500), false),
            PassKind::Incremental
        );
        // Something forces a full pass at once.
        assert_eq!(
            s.kind(t0 + Duration::from_millis(500), true),
            PassKind::Full
        );
        assert_eq!(s.next_resync(), t0 + SECOND);
        assert_eq!(s.kind(t0 + SECOND, false), PassKind::Resync);
    }

    #[test]
    fn a_slow_resync_stretches_the_next_one() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SECOND, t0);
        s.after(PassKind::Full, t0, Duration::ZERO, true);
        let started = t0 + SECOND;
        s.after(PassKind::Resync, started, Duration::from_millis(100), true);
        // 100 ms × 50 = 5 s, more than the 1 s interval.
        assert_eq!(s.next_resync(), started + Duration::from_secs(5));
        // An incremental pass does not move the resync.
        s.after(PassKind::Incremental, started + SECOND, SECOND, true);
        assert_eq!(s.next_resync(), started + Duration::from_secs(5));
    }

    #[test]
    fn every_full_every_intervals_the_resync_is_a_full_pass() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SECOND, t0);
        s.after(PassKind::Full, t0, Duration::ZERO, true);
        let mut now = t0;
        for _ in 1..FULL_EVERY {
            now += SECOND;
            assert_eq!(s.kind(now, false), PassKind::Resync);
            s.after(PassKind::Resync, now, Duration::ZERO, true);
        }
        now += SECOND;
        assert_eq!(s.kind(now, false), PassKind::Full);
    }

    #[test]
    fn after_a_failed_resync_the_next_one_is_full_and_on_time() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SECOND, t0);
        s.after(PassKind::Full, t0, Duration::ZERO, true);
        let started = t0 + SECOND;
        s.after(PassKind::Resync, started, Duration::from_millis(100), false);
        assert_eq!(
            s.next_resync(),
            started + SECOND,
            "not stretched after a failure"
        );
        assert_eq!(s.kind(started + SECOND, false), PassKind::Full);
        // A failed incremental pass brings the resync forward but does not force a full one.
        let mut s = Schedule::new(SECOND, t0);
        s.after(PassKind::Full, t0, Duration::from_secs(1), true);
        assert_eq!(s.next_resync(), t0 + Duration::from_secs(50));
        s.after(PassKind::Incremental, t0 + SECOND, Duration::ZERO, false);
        assert_eq!(s.next_resync(), t0 + 2 * SECOND);
        assert_eq!(s.kind(t0 + 2 * SECOND, false), PassKind::Resync);
    }
}
