//! Synthetic traces, reproducible from a seed (SplitMix64; no dependency).
//!
//! * `periodic`: a timer-driven client — one request every 3 minutes, ±2 s of jitter.
//! * `bursty`: quiet, then bursts of 20–200 requests over 5–30 s, bursts arriving as a
//!   Poisson process (mean gap 10 minutes).
//! * `diurnal`: a Poisson process whose rate follows the time of day (a sinusoid with a 24 h
//!   period, peak 0.2 req/s at 14:00, trough 0.002 req/s at 02:00; the trace starts at 00:00).
//! * `poisson`: a constant-rate Poisson process, one request every 20 s on average.
//! * `heavy-bursty`: heavy-tailed bursts — bursts of 50–500 requests whose starts are
//!   separated by Pareto gaps (shape 1.2, scale 15 s: half under 27 s, 1 in 5 over 60 s,
//!   1 in 90 over 10 minutes; capped at 12 h), requests within a burst separated by Pareto
//!   inter-arrival times (shape 1.5, scale 20 ms: mostly back to back, now and then a pause
//!   of seconds). Neither periodic nor memoryless: after a short gap another one is likely,
//!   after a long one a longer one.
//!
//! Service times are left to the simulator's `--service-time` (no duration column).

use std::f64::consts::PI;
use std::fmt::Write as _;
use std::str::FromStr;

/// The shape of a generated trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// Regular arrivals.
    Periodic,
    /// Bursts separated by idle periods.
    Bursty,
    /// A daily cycle.
    Diurnal,
    /// Memoryless arrivals at a constant rate.
    Poisson,
    /// Bursts of 50–500 requests with Pareto (heavy-tailed) gaps.
    HeavyBursty,
}

impl FromStr for TraceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "periodic" => Ok(Self::Periodic),
            "bursty" => Ok(Self::Bursty),
            "diurnal" => Ok(Self::Diurnal),
            "poisson" => Ok(Self::Poisson),
            "heavy-bursty" => Ok(Self::HeavyBursty),
            other => Err(format!(
                "unknown trace kind {other:?} (periodic, bursty, diurnal, poisson, heavy-bursty)"
            )),
        }
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Exponential with the given mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Pareto with the given shape and scale (the smallest value): `scale / U^(1/shape)`.
    fn pareto(&mut self, shape: f64, scale: f64) -> f64 {
        scale / (1.0 - self.unit()).powf(1.0 / shape)
    }
}

/// The heavy-tailed bursty trace's burst sizes (requests, inclusive).
pub const HEAVY_BURST_SIZES: (u64, u64) = (50, 500);
/// Shape and scale (seconds) of the Pareto gap between the heavy-tailed bursts.
const HEAVY_GAP: (f64, f64) = (1.2, 15.0);
/// The longest gap between heavy-tailed bursts (seconds).
const HEAVY_GAP_CAP: f64 = 12.0 * 3600.0;
/// Shape and scale (seconds) of the Pareto inter-arrival times within a burst.
const HEAVY_WITHIN: (f64, f64) = (1.5, 0.02);

/// The diurnal trace's peak rate (requests per second, at 14:00).
const DIURNAL_PEAK: f64 = 0.2;
/// The diurnal trace's trough rate (at 02:00).
const DIURNAL_TROUGH: f64 = 0.002;
/// The Poisson trace's mean gap (seconds).
const POISSON_GAP: f64 = 20.0;

/// The diurnal trace's true arrival rate (per second) `t` seconds after 00:00.
pub fn diurnal_rate(t: f64) -> f64 {
    let phase = 2.0 * PI * (t / 86_400.0 - 14.0 / 24.0);
    DIURNAL_TROUGH + (DIURNAL_PEAK - DIURNAL_TROUGH) * (1.0 + phase.cos()) / 2.0
}

/// The true arrival rate of a memoryless trace kind, averaged over each of `slots` equal
/// slots of a day (the oracle's rate table); `None` for kinds that are not memoryless
/// (periodic, bursty).
pub fn true_daily_rates(kind: TraceKind, slots: usize) -> Option<Vec<f64>> {
    let slots = slots.max(1);
    let slot = 86_400.0 / slots as f64;
    match kind {
        TraceKind::Diurnal => Some(
            (0..slots)
                .map(|s| {
                    // Midpoint rule over 60 points per slot.
                    let n = 60;
                    (0..n)
                        .map(|k| diurnal_rate(slot * (s as f64 + (k as f64 + 0.5) / n as f64)))
                        .sum::<f64>()
                        / n as f64
                })
                .collect(),
        ),
        TraceKind::Poisson => Some(vec![1.0 / POISSON_GAP; slots]),
        TraceKind::Periodic | TraceKind::Bursty | TraceKind::HeavyBursty => None,
    }
}

/// Generates a trace of `hours` hours as CSV text (one `timestamp_seconds` a line, in
/// order, with a `#` header comment naming the kind and seed).
pub fn generate(kind: TraceKind, seed: u64, hours: f64) -> String {
    let mut rng = SplitMix64(seed);
    let end = (hours.max(0.0) * 3600.0).min(31.0 * 24.0 * 3600.0);
    let mut times: Vec<f64> = Vec::new();
    match kind {
        TraceKind::Periodic => {
            let period = 180.0;
            let mut t = rng.uniform(0.0, period);
            while t < end {
                times.push((t + rng.uniform(-2.0, 2.0)).max(0.0));
                t += period;
            }
        }
        TraceKind::Bursty => {
            let mut t = rng.exp(600.0);
            while t < end {
                let count = rng.uniform(20.0, 200.0) as usize;
                let span = rng.uniform(5.0, 30.0);
                let mut burst: Vec<f64> = (0..count).map(|_| t + rng.uniform(0.0, span)).collect();
                burst.sort_by(f64::total_cmp);
                times.extend(burst.into_iter().filter(|b| *b < end));
                t += span + rng.exp(600.0);
            }
        }
        TraceKind::Diurnal => {
            let peak = DIURNAL_PEAK;
            let rate = diurnal_rate;
            // Thinning: candidates at the peak rate, kept with probability rate/peak.
            let mut t = 0.0;
            loop {
                t += rng.exp(1.0 / peak);
                if t >= end {
                    break;
                }
                if rng.unit() < rate(t) / peak {
                    times.push(t);
                }
            }
        }
        TraceKind::Poisson => {
            let mut t = rng.exp(POISSON_GAP);
            while t < end {
                times.push(t);
                t += rng.exp(POISSON_GAP);
            }
        }
        TraceKind::HeavyBursty => {
            let (lo, hi) = HEAVY_BURST_SIZES;
            let gap =
                |rng: &mut SplitMix64| rng.pareto(HEAVY_GAP.0, HEAVY_GAP.1).min(HEAVY_GAP_CAP);
            let mut t = gap(&mut rng);
            while t < end {
                let count = lo + rng.next_u64() % (hi - lo + 1);
                for i in 0..count {
                    if i > 0 {
                        t += rng
                            .pareto(HEAVY_WITHIN.0, HEAVY_WITHIN.1)
                            .min(HEAVY_GAP_CAP);
                    }
                    if t >= end {
                        break;
                    }
                    times.push(t);
                }
                t += gap(&mut rng);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let name = match kind {
        TraceKind::Periodic => "periodic",
        TraceKind::Bursty => "bursty",
        TraceKind::Diurnal => "diurnal",
        TraceKind::Poisson => "poisson",
        TraceKind::HeavyBursty => "heavy-bursty",
    };
    let mut out =
        format!("# sluice autoscaler gen-trace --kind {name} --seed {seed} --hours {hours}\n");
    for t in times {
        let _ = writeln!(out, "{t:.3}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::parse_trace;

    #[test]
    fn traces_are_reproducible_ordered_and_parse() {
        for kind in [
            TraceKind::Periodic,
            TraceKind::Bursty,
            TraceKind::Diurnal,
            TraceKind::Poisson,
            TraceKind::HeavyBursty,
        ] {
            let a = generate(kind, 7, 2.0);
            assert_eq!(a, generate(kind, 7, 2.0), "{kind:?}");
            assert_ne!(a, generate(kind, 8, 2.0), "{kind:?}");
            let arrivals = parse_trace(&a).unwrap();
            assert!(!arrivals.is_empty(), "{kind:?}");
            assert!(arrivals.iter().all(|x| x.at_ms <= 7_200_000));
        }
        // Periodic: 2 h / 3 min = 40 arrivals.
        assert_eq!(
            parse_trace(&generate(TraceKind::Periodic, 1, 2.0))
                .unwrap()
                .len(),
            40
        );
        assert!("weekly".parse::<TraceKind>().is_err());
        assert_eq!("heavy-bursty".parse(), Ok(TraceKind::HeavyBursty));
    }

    #[test]
    fn heavy_bursty_bursts_are_50_to_500_requests_with_heavy_tailed_gaps() {
        let trace = parse_trace(&generate(TraceKind::HeavyBursty, 3, 24.0)).unwrap();
        // Split into bursts at gaps of at least the Pareto scale between bursts (15 s); a
        // pause within a burst that long is rare (20 ms scale, shape 1.5: 1 in 20 000).
        let mut bursts = vec![1u64];
        let mut gaps = Vec::new();
        for w in trace.windows(2) {
            let gap = w[1].at_ms - w[0].at_ms;
            if gap >= 15_000 {
                bursts.push(1);
                gaps.push(gap);
            } else {
                *bursts.last_mut().unwrap() += 1;
            }
        }
        bursts.pop(); // the last one may be cut off by the end of the trace
        assert!(bursts.len() > 100, "{}", bursts.len());
        let in_range = bursts.iter().filter(|b| (50..=500).contains(*b)).count();
        assert!(in_range * 100 >= bursts.len() * 97, "{bursts:?}");
        // Heavy tail: most gaps are short, yet some are over ten minutes.
        let short = gaps.iter().filter(|g| **g < 60_000).count();
        let long = gaps.iter().filter(|g| **g > 600_000).count();
        assert!(short * 2 > gaps.len(), "{short} of {}", gaps.len());
        assert!(long > 0, "no gap over 10 minutes in {} gaps", gaps.len());
    }
}
