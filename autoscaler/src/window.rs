//! Stats ingestion: per-source reports → one revision-wide total per 1-second bucket,
//! averaged over the stable and panic windows.
//!
//! Within one second, repeated reports from one source are averaged (a replica scraped twice
//! is not counted twice) and sources are summed. A replica that misses a second keeps
//! contributing its last concurrency for up to `stale_after` seconds (a late scrape is not a
//! dip in load); after that it has expired and is forgotten. The activator is never carried
//! forward: it only reports while it holds or proxies requests. Request counts (rps) are
//! never carried either: a late report covers the missed second itself.

use std::collections::VecDeque;
use std::time::Duration;

use sluice_core::StatSource;
use tokio::time::Instant;

/// At most this many sources are tracked per revision; reports from further sources are
/// dropped (and counted) until some expire.
pub const MAX_SOURCES: usize = 4096;

#[derive(Debug)]
struct Source {
    id: StatSource,
    /// Sum and count of this source's reports in the open second.
    open_sum: f64,
    open_count: u32,
    /// Its last per-second value and the second it was reported in.
    last_value: f64,
    last_sec: u64,
}

/// Per-second revision-wide totals over a sliding window.
#[derive(Debug)]
pub struct WindowedSum {
    origin: Instant,
    span: u64,
    stale_after: u64,
    carry: bool,
    /// Totals of closed seconds, newest last; at most `span` of them.
    closed: VecDeque<f64>,
    /// The open second (the newest one seen); closed seconds end just before it.
    open_sec: u64,
    sources: Vec<Source>,
    first_record: Option<u64>,
    dropped: u64,
}

impl WindowedSum {
    /// An empty window of `window` (whole seconds, at least 1); `origin` anchors bucket
    /// boundaries. Replicas are carried forward for 2 missed seconds.
    pub fn new(origin: Instant, window: Duration) -> Self {
        Self {
            origin,
            span: window.as_secs().max(1),
            stale_after: 2,
            carry: true,
            closed: VecDeque::new(),
            open_sec: 0,
            sources: Vec::new(),
            first_record: None,
            dropped: 0,
        }
    }

    /// Sets how many missed seconds a replica's last value is carried for (0: never), and
    /// whether values are carried at all (concurrency: yes; request counts: no).
    pub fn set_carry(&mut self, carry: bool, stale_after_secs: u64) {
        self.carry = carry;
        self.stale_after = stale_after_secs;
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// The total of second `sec` as the sources stand (reports in the open second plus
    /// replicas carried forward).
    fn total_at(&self, sec: u64, is_open: bool) -> f64 {
        let mut total = 0.0;
        for s in &self.sources {
            if is_open && s.open_count > 0 {
                total += s.open_sum / f64::from(s.open_count);
            } else if self.carry
                && matches!(s.id, StatSource::Replica(_))
                && s.last_sec < sec
                && sec - s.last_sec <= self.stale_after
            {
                total += s.last_value;
            }
        }
        total
    }

    fn push_closed(&mut self, total: f64) {
        if self.closed.len() as u64 >= self.span {
            self.closed.pop_front();
        }
        self.closed.push_back(total);
    }

    /// Closes every second before `sec` and opens `sec`.
    fn advance(&mut self, sec: u64) {
        if sec <= self.open_sec {
            return;
        }
        if self.first_record.is_some() {
            let open_total = self.total_at(self.open_sec, true);
            self.push_closed(open_total);
            for s in &mut self.sources {
                if s.open_count > 0 {
                    s.last_value = s.open_sum / f64::from(s.open_count);
                    s.last_sec = self.open_sec;
                    s.open_sum = 0.0;
                    s.open_count = 0;
                }
            }
            // Seconds nobody reported in: only carried replicas, and only for a while.
            let gap_end = sec.min(self.open_sec + 1 + self.span);
            for gap in self.open_sec + 1..gap_end {
                let t = self.total_at(gap, false);
                self.push_closed(t);
            }
            for _ in 0..(sec - gap_end).min(self.span) {
                self.push_closed(0.0);
            }
            let stale = self.stale_after;
            self.sources
                .retain(|s| s.open_count > 0 || sec.saturating_sub(s.last_sec) <= stale);
        }
        self.open_sec = sec;
    }

    /// Adds `value` measured by `source` at `now`. Non-finite or negative values count as 0.
    pub fn record(&mut self, now: Instant, source: StatSource, value: f64) {
        let sec = self.second(now);
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        if self.first_record.is_none() {
            self.open_sec = sec;
            self.first_record = Some(sec);
        }
        self.advance(sec);
        // A report stamped before the open second (cannot happen with one clock) lands in
        // the open one.
        match self.sources.iter().position(|s| s.id == source) {
            Some(i) => {
                let s = &mut self.sources[i];
                s.open_sum += value;
                s.open_count += 1;
            }
            None if self.sources.len() < MAX_SOURCES => self.sources.push(Source {
                id: source,
                open_sum: value,
                open_count: 1,
                last_value: 0.0,
                last_sec: sec,
            }),
            None => self.dropped += 1,
        }
    }

    /// Average per second over the last `span` (whole seconds, at least 1, at most the
    /// window) ending at `now`. Seconds without reports count, but only from the first
    /// report on (a young window averages what it has, as Knative's buckets do).
    pub fn average_over(&mut self, now: Instant, span: Duration) -> f64 {
        let Some(first) = self.first_record else {
            return 0.0;
        };
        let now_sec = self.second(now).max(self.open_sec);
        self.advance(now_sec);
        let span = span.as_secs().clamp(1, self.span);
        let seconds = (now_sec.saturating_sub(first) + 1).min(span);
        let from_closed = (seconds - 1) as usize;
        let closed: f64 = self.closed.iter().rev().take(from_closed).sum();
        let total = closed + self.total_at(now_sec, true);
        let avg = total / seconds as f64;
        if avg.is_finite() { avg } else { f64::MAX }
    }

    /// Average over the whole window.
    pub fn average(&mut self, now: Instant) -> f64 {
        self.average_over(now, Duration::from_secs(self.span))
    }

    /// The revision-wide total of the open second at `now`, as reported so far (with
    /// replicas carried forward).
    pub fn current(&mut self, now: Instant) -> f64 {
        if self.first_record.is_none() {
            return 0.0;
        }
        let now_sec = self.second(now).max(self.open_sec);
        self.advance(now_sec);
        self.total_at(now_sec, true)
    }

    /// Whether every second in the window was zero (an empty window counts as all zero).
    pub fn all_zero(&mut self, now: Instant) -> bool {
        self.average(now) == 0.0
    }

    /// Changes the window length (keeps what was recorded, up to the new length).
    pub fn set_window(&mut self, window: Duration) {
        self.span = window.as_secs().max(1);
        while self.closed.len() as u64 > self.span {
            self.closed.pop_front();
        }
    }

    /// Sources currently tracked (replicas and the activator not yet expired).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Reports dropped because [`MAX_SOURCES`] sources were already tracked.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(n: u8) -> StatSource {
        StatSource::Replica(format!("r{n}"))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn averages_sum_sources_and_average_repeats() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, secs(6));
        w.set_carry(false, 0);
        w.record(t0, replica(1), 2.0);
        w.record(t0, replica(1), 4.0); // same second, same source: averaged to 3
        w.record(t0, replica(2), 1.0); // another source: summed → 4
        assert_eq!(w.average(t0), 4.0);
        // A second later with no reports: (4 + 0) / 2.
        assert_eq!(w.average(t0 + secs(1)), 2.0);
    }

    #[test]
    fn window_slides_and_zero_detection() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, secs(6));
        assert!(w.all_zero(t0));
        w.record(t0, replica(1), 1.0);
        assert!(!w.all_zero(t0 + secs(5)));
        // The silent replica was carried for seconds 1 and 2, so only at 8 is the window
        // (seconds 3..=8) all zero.
        assert!(!w.all_zero(t0 + secs(7)));
        assert!(w.all_zero(t0 + secs(8)));
        assert_eq!(w.average(t0 + secs(8)), 0.0);
    }

    #[test]
    fn panic_span_averages_the_newest_seconds() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, secs(10));
        w.set_carry(false, 0);
        for s in 0..10 {
            w.record(t0 + secs(s), replica(1), if s < 8 { 1.0 } else { 10.0 });
        }
        // Stable: (8·1 + 2·10) / 10; panic over the last 2 s: 10.
        assert_eq!(w.average(t0 + secs(9)), 2.8);
        assert_eq!(w.average_over(t0 + secs(9), secs(2)), 10.0);
    }

    #[test]
    fn a_late_replica_is_carried_then_expires() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, secs(60));
        w.record(t0, replica(1), 4.0);
        w.record(t0, replica(2), 6.0);
        // r2 misses seconds 1 and 2 (carried), then has expired and is forgotten.
        let mut seen = Vec::new();
        for s in 1..6 {
            w.record(t0 + secs(s), replica(1), 4.0);
            seen.push(w.current(t0 + secs(s)));
        }
        assert_eq!(seen, [10.0, 10.0, 4.0, 4.0, 4.0]);
        assert_eq!(w.sources(), 1);
        // Seconds 0..=5: 10, 10, 10, 4, 4, 4.
        assert_eq!(w.average(t0 + secs(5)), 7.0);
    }

    #[test]
    fn activator_and_request_counts_are_not_carried() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, secs(60));
        w.record(t0, StatSource::Activator, 3.0);
        assert_eq!(w.current(t0 + secs(1)), 0.0);
        let mut w = WindowedSum::new(t0, secs(60));
        w.set_carry(false, 2);
        w.record(t0, replica(1), 3.0);
        assert_eq!(w.current(t0 + secs(1)), 0.0);
    }

    #[test]
    fn extreme_values_never_poison_the_average() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, secs(6));
        w.record(t0, replica(1), f64::NAN);
        w.record(t0, replica(2), -5.0);
        assert_eq!(w.average(t0), 0.0);
        w.record(t0 + secs(1), replica(1), f64::MAX);
        w.record(t0 + secs(1), replica(2), f64::MAX);
        let avg = w.average(t0 + secs(1));
        assert!(avg.is_finite() && avg > 0.0);
    }

    #[test]
    fn long_silence_closes_in_bounded_time() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, secs(6));
        w.record(t0, replica(1), 1.0);
        // A year later: no loop over every missed second.
        assert_eq!(w.average(t0 + secs(365 * 24 * 3600)), 0.0);
        assert!(w.closed.len() <= 6);
    }
}
