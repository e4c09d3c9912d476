//! One-second buckets of revision-wide load, averaged over a window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use sluice_core::StatSource;
use tokio::time::Instant;

/// One second: per source, the sum and count of its reports.
type Bucket = HashMap<StatSource, (f64, u32)>;

/// Per-second totals over a sliding window. Within one second, reports from one source are
/// averaged and sources are summed, so a replica that reports twice in a second is not
/// counted twice.
#[derive(Debug)]
pub struct WindowedSum {
    origin: Instant,
    window: Duration,
    /// Oldest first: (second since origin, per-source (sum, count)).
    buckets: VecDeque<(u64, Bucket)>,
    first_record: Option<u64>,
}

impl WindowedSum {
    /// An empty window; `origin` anchors bucket boundaries.
    pub fn new(origin: Instant, window: Duration) -> Self {
        Self {
            origin,
            window,
            buckets: VecDeque::new(),
            first_record: None,
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// Adds `value` measured by `source` at `now`.
    pub fn record(&mut self, now: Instant, source: StatSource, value: f64) {
        let sec = self.second(now);
        self.first_record.get_or_insert(sec);
        match self.buckets.back_mut() {
            Some((s, bucket)) if *s == sec => {
                let e = bucket.entry(source).or_insert((0.0, 0));
                e.0 += value;
                e.1 += 1;
            }
            _ => {
                let mut bucket = HashMap::new();
                bucket.insert(source, (value, 1));
                self.buckets.push_back((sec, bucket));
            }
        }
        self.prune(sec);
    }

    fn prune(&mut self, now_sec: u64) {
        let span = self.window.as_secs().max(1);
        while let Some((s, _)) = self.buckets.front() {
            if *s + span <= now_sec {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn totals(&self, now_sec: u64) -> BTreeMap<u64, f64> {
        let span = self.window.as_secs().max(1);
        self.buckets
            .iter()
            .filter(|(s, _)| *s + span > now_sec && *s <= now_sec)
            .map(|(s, b)| (*s, b.values().map(|(sum, n)| sum / f64::from(*n)).sum()))
            .collect()
    }

    /// Average per second over the window ending at `now`. Seconds without reports count as
    /// zero, but only from the first report on (a young window averages what it has).
    pub fn average(&mut self, now: Instant) -> f64 {
        let now_sec = self.second(now);
        self.prune(now_sec);
        let Some(first) = self.first_record else {
            return 0.0;
        };
        let span = self.window.as_secs().max(1);
        let seconds = (now_sec.saturating_sub(first) + 1).min(span);
        self.totals(now_sec).values().sum::<f64>() / seconds as f64
    }

    /// Whether every report in the window was zero (an empty window counts as all zero).
    pub fn all_zero(&mut self, now: Instant) -> bool {
        let now_sec = self.second(now);
        self.prune(now_sec);
        self.totals(now_sec).values().all(|v| *v == 0.0)
    }

    /// Changes the window length (keeps what was recorded).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(n: u8) -> StatSource {
        StatSource::Replica(format!("r{n}"))
    }

    #[test]
    fn averages_sum_sources_and_average_repeats() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, Duration::from_secs(6));
        w.record(t0, replica(1), 2.0);
        w.record(t0, replica(1), 4.0); // same second, same source: averaged to 3
        w.record(t0, replica(2), 1.0); // another source: summed → 4
        assert_eq!(w.average(t0), 4.0);
        // A second later with no reports: (4 + 0) / 2.
        assert_eq!(w.average(t0 + Duration::from_secs(1)), 2.0);
    }

    #[test]
    fn window_slides_and_zero_detection() {
        let t0 = Instant::now();
        let mut w = WindowedSum::new(t0, Duration::from_secs(6));
        assert!(w.all_zero(t0));
        w.record(t0, replica(1), 1.0);
        assert!(!w.all_zero(t0 + Duration::from_secs(5)));
        assert!(w.all_zero(t0 + Duration::from_secs(6)));
        assert_eq!(w.average(t0 + Duration::from_secs(6)), 0.0);
    }
}
