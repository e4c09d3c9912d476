//! Time-weighted concurrency and request counts, reported once per second.

use std::sync::Mutex;

use sluice_core::PeriodStats;
use tokio::time::Instant;

#[derive(Debug)]
struct Accumulator {
    in_flight: u64,
    proxied_in_flight: u64,
    /// Integral of in-flight over time since `period_start`, in request-seconds.
    area: f64,
    proxied_area: f64,
    last_change: Instant,
    period_start: Instant,
    request_count: u64,
    proxied_request_count: u64,
}

/// Records request arrivals and departures and turns them into [`PeriodStats`].
#[derive(Debug)]
pub struct StatsRecorder {
    inner: Mutex<Accumulator>,
}

impl StatsRecorder {
    /// A recorder whose first period starts `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            inner: Mutex::new(Accumulator {
                in_flight: 0,
                proxied_in_flight: 0,
                area: 0.0,
                proxied_area: 0.0,
                last_change: now,
                period_start: now,
                request_count: 0,
                proxied_request_count: 0,
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Accumulator) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain counters;
        // the numbers are still usable.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// A request started.
    pub fn request_in(&self, now: Instant, proxied: bool) {
        self.with(|a| {
            a.advance(now);
            a.in_flight += 1;
            a.request_count += 1;
            if proxied {
                a.proxied_in_flight += 1;
                a.proxied_request_count += 1;
            }
        });
    }

    /// A request finished.
    pub fn request_out(&self, now: Instant, proxied: bool) {
        self.with(|a| {
            a.advance(now);
            a.in_flight = a.in_flight.saturating_sub(1);
            if proxied {
                a.proxied_in_flight = a.proxied_in_flight.saturating_sub(1);
            }
        });
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> u64 {
        self.with(|a| a.in_flight)
    }

    /// Closes the current period at `now` and starts the next one.
    pub fn take_period(&self, now: Instant) -> PeriodStats {
        self.with(|a| {
            a.advance(now);
            let secs = now.saturating_duration_since(a.period_start).as_secs_f64();
            let (avg, proxied_avg) = if secs > 0.0 {
                (a.area / secs, a.proxied_area / secs)
            } else {
                (a.in_flight as f64, a.proxied_in_flight as f64)
            };
            let stats = PeriodStats {
                average_concurrency: avg,
                average_proxied_concurrency: proxied_avg,
                request_count: a.request_count,
                proxied_request_count: a.proxied_request_count,
                in_flight: a.in_flight,
            };
            a.area = 0.0;
            a.proxied_area = 0.0;
            a.request_count = 0;
            a.proxied_request_count = 0;
            a.period_start = now;
            stats
        })
    }
}

impl Accumulator {
    fn advance(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.last_change)
            .as_secs_f64();
        self.area += self.in_flight as f64 * dt;
        self.proxied_area += self.proxied_in_flight as f64 * dt;
        self.last_change = now;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn averages_are_time_weighted() {
        let t0 = Instant::now();
        let rec = StatsRecorder::new(t0);
        rec.request_in(t0, false);
        rec.request_in(t0 + Duration::from_millis(500), true);
        rec.request_out(t0 + Duration::from_millis(750), true);
        // 1 request for 1 s, a second one (proxied) for 0.25 s.
        let s = rec.take_period(t0 + Duration::from_secs(1));
        assert!((s.average_concurrency - 1.25).abs() < 1e-9, "{s:?}");
        assert!((s.average_proxied_concurrency - 0.25).abs() < 1e-9, "{s:?}");
        assert_eq!(
            (s.request_count, s.proxied_request_count, s.in_flight),
            (2, 1, 1)
        );
        // Next period: the first request is still in flight the whole time.
        let s = rec.take_period(t0 + Duration::from_secs(2));
        assert!((s.average_concurrency - 1.0).abs() < 1e-9);
        assert_eq!(s.request_count, 0);
    }
}
