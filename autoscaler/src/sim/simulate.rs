//! The simulation loop: an event-driven virtual clock in milliseconds.
//!
//! Each virtual second every replica reports its time-weighted concurrency and the requests
//! it started, and the activator reports the requests it holds (so nothing counts twice),
//! exactly as queue layers and the activator feed the runner. The decider ticks every
//! `tick`, and at once when a request arrives for a revision at zero (the activator's poke).
//! Decisions are applied at once: new replicas become ready after the cold start; removed
//! replicas finish their requests first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use sluice_core::{NamespacedName, RevisionScaling, ScalePolicy, StatReport, StatSource};
use tokio::time::Instant;

use crate::decider::{Decider, DeciderConfig};
use crate::pattern::PatternConfig;
use crate::sim::Arrival;

/// How to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The revision's knobs (policy included).
    pub scaling: RevisionScaling,
    /// Time from a replica being asked for to it being ready.
    pub cold_start: Duration,
    /// Service time of requests whose trace line gives none.
    pub service_time: Duration,
    /// Requests one replica serves at once (0 = unlimited).
    pub concurrency: u32,
    /// Decision interval.
    pub tick: Duration,
    /// Scale-to-zero grace period.
    pub scale_to_zero_grace: Duration,
    /// The pattern policy's knobs (used when the policy is `pattern`).
    pub pattern: PatternConfig,
}

impl SimConfig {
    /// Knative's defaults for `policy`, with per-replica `concurrency` (which also becomes
    /// the revision's `containerConcurrency` and so caps its target).
    pub fn new(policy: ScalePolicy, concurrency: u32) -> Self {
        let mut scaling = RevisionScaling {
            policy,
            container_concurrency: concurrency,
            ..RevisionScaling::default()
        };
        if concurrency > 0 {
            scaling.target = f64::from(concurrency);
        }
        Self {
            scaling,
            cold_start: Duration::from_secs(2),
            service_time: Duration::from_millis(100),
            concurrency,
            tick: Duration::from_secs(2),
            scale_to_zero_grace: Duration::from_secs(30),
            pattern: PatternConfig::default(),
        }
    }
}

/// What a simulation measured.
#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    /// Requests replayed.
    pub requests: u64,
    /// Requests that arrived while no replica was ready and waited for one to start.
    pub cold_starts: u64,
    /// Median time from arrival to service start.
    pub p50_queue_ms: f64,
    /// 99th percentile of the same.
    pub p99_queue_ms: f64,
    /// Longest wait.
    pub max_queue_ms: f64,
    /// Integral of replicas (starting, ready or draining) over time.
    pub replica_seconds: f64,
    /// Most replicas at once.
    pub peak_replicas: u32,
    /// Time with no replica at all.
    pub seconds_at_zero: f64,
}

impl SimReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "cold_starts": self.cold_starts,
            "p50_queue_ms": self.p50_queue_ms,
            "p99_queue_ms": self.p99_queue_ms,
            "max_queue_ms": self.max_queue_ms,
            "replica_seconds": self.replica_seconds,
            "peak_replicas": self.peak_replicas,
            "seconds_at_zero": self.seconds_at_zero,
        })
    }
}

#[derive(Debug)]
struct Replica {
    id: u64,
    ready_at: u64,
    in_flight: u32,
    draining: bool,
    /// Σ in_flight × ms over the current second.
    area: f64,
    started_this_second: u64,
    /// Of those, the ones that waited at the activator (it proxied them).
    proxied_this_second: u64,
}

#[derive(Clone, Copy, Debug)]
struct Waiting {
    arrived: u64,
    duration: u64,
    cold: bool,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    origin: Instant,
    decider: Decider,
    revision: NamespacedName,
    now: u64,
    replicas: Vec<Replica>,
    next_id: u64,
    completions: BinaryHeap<Reverse<(u64, u64)>>,
    queue: VecDeque<Waiting>,
    queue_area: f64,
    queued_this_second: u64,
    delays: Vec<u64>,
    cold_starts: u64,
    replica_ms: f64,
    zero_ms: f64,
    peak: u32,
}

impl Sim<'_> {
    fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    fn ready_count(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| !r.draining && r.ready_at <= self.now)
            .count() as u32
    }

    fn advance_to(&mut self, t: u64) {
        let dt = t.saturating_sub(self.now) as f64;
        if dt > 0.0 {
            for r in &mut self.replicas {
                r.area += f64::from(r.in_flight) * dt;
            }
            self.queue_area += self.queue.len() as f64 * dt;
            self.replica_ms += self.replicas.len() as f64 * dt;
            if self.replicas.is_empty() {
                self.zero_ms += dt;
            }
        }
        self.now = t;
    }

    /// Starts `w` on the least-loaded ready replica with a free slot, if any; `proxied`:
    /// it waited at the activator, which proxies it (and has counted it).
    fn try_start(&mut self, w: Waiting, proxied: bool) -> bool {
        let cap = self.cfg.concurrency;
        let now = self.now;
        let best = self
            .replicas
            .iter_mut()
            .filter(|r| !r.draining && r.ready_at <= now && (cap == 0 || r.in_flight < cap))
            .min_by_key(|r| r.in_flight);
        let Some(r) = best else { return false };
        r.in_flight += 1;
        r.started_this_second += 1;
        r.proxied_this_second += u64::from(proxied);
        self.completions.push(Reverse((now + w.duration, r.id)));
        self.delays.push(now - w.arrived);
        if w.cold {
            self.cold_starts += 1;
        }
        true
    }

    fn drain_queue(&mut self) {
        while let Some(w) = self.queue.front().copied() {
            if !self.try_start(w, true) {
                break;
            }
            self.queue.pop_front();
        }
    }

    fn apply(&mut self, desired: u32) {
        let active = self.replicas.iter().filter(|r| !r.draining).count() as u32;
        if desired > active {
            for _ in active..desired {
                self.next_id += 1;
                self.replicas.push(Replica {
                    id: self.next_id,
                    ready_at: self.now + self.cfg.cold_start.as_millis() as u64,
                    in_flight: 0,
                    draining: false,
                    area: 0.0,
                    started_this_second: 0,
                    proxied_this_second: 0,
                });
            }
        } else if desired < active {
            // Remove starting replicas first, then idle ones, then drain busy ones.
            let now = self.now;
            let mut order: Vec<usize> = (0..self.replicas.len())
                .filter(|i| !self.replicas[*i].draining)
                .collect();
            order.sort_by_key(|i| {
                let r = &self.replicas[*i];
                (r.ready_at <= now, r.in_flight, Reverse(r.id))
            });
            for i in order.into_iter().take((active - desired) as usize) {
                self.replicas[i].draining = true;
            }
            self.replicas
                .retain(|r| !(r.draining && r.in_flight == 0 && r.area == 0.0));
        }
        self.peak = self.peak.max(self.replicas.len() as u32);
    }

    fn decide(&mut self) {
        let ready = self.ready_count();
        let d = self.decider.decide(self.at(self.now), ready);
        self.apply(d.desired);
    }

    fn arrive(&mut self, a: &Arrival) {
        let duration = a
            .duration_ms
            .unwrap_or(self.cfg.service_time.as_millis() as u64);
        let w = Waiting {
            arrived: self.now,
            duration,
            cold: self.ready_count() == 0,
        };
        if !self.try_start(w, false) {
            self.queue.push_back(w);
            self.queued_this_second += 1;
            // The activator's poke; at zero the runner decides at once.
            let now = self.at(self.now);
            self.decider
                .record(now, &StatReport::poke(self.revision.clone()));
            if self.decider.last().desired == 0 {
                self.decide();
            }
        }
    }

    fn complete(&mut self, id: u64) {
        if let Some(r) = self.replicas.iter_mut().find(|r| r.id == id) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        self.drain_queue();
    }

    /// Per-second reports from every replica and the activator.
    fn report(&mut self) {
        let now = self.at(self.now);
        let mut any = false;
        for r in &mut self.replicas {
            let report = StatReport {
                revision: self.revision.clone(),
                source: StatSource::Replica(r.id.to_string()),
                average_concurrency: r.area / 1000.0,
                average_proxied_concurrency: 0.0,
                request_count: r.started_this_second,
                proxied_request_count: r.proxied_this_second,
            };
            any |= report.average_concurrency > 0.0 || report.request_count > 0;
            self.decider.record(now, &report);
            r.area = 0.0;
            r.started_this_second = 0;
            r.proxied_this_second = 0;
        }
        if self.queue_area > 0.0 || self.queued_this_second > 0 {
            let report = StatReport {
                revision: self.revision.clone(),
                source: StatSource::Activator,
                average_concurrency: self.queue_area / 1000.0,
                average_proxied_concurrency: 0.0,
                request_count: self.queued_this_second,
                proxied_request_count: 0,
            };
            any = true;
            self.decider.record(now, &report);
        }
        self.queue_area = 0.0;
        self.queued_this_second = 0;
        self.replicas.retain(|r| !(r.draining && r.in_flight == 0));
        if any && self.decider.last().desired == 0 {
            self.decide();
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// Replays `trace` through the real decider. The revision starts at zero; the simulation
/// ends when every request is served and the revision is back at zero, or ten minutes of
/// virtual time after the last request finished.
pub fn simulate(trace: &[Arrival], cfg: &SimConfig) -> SimReport {
    let origin = Instant::now();
    let mut decider = Decider::new(
        DeciderConfig {
            scaling: cfg.scaling.clone(),
            scale_to_zero_grace: cfg.scale_to_zero_grace,
        },
        origin,
        Some(0),
    );
    decider.set_tick(cfg.tick);
    decider.set_pattern_config(cfg.pattern.clone());
    let mut sim = Sim {
        cfg,
        origin,
        decider,
        revision: NamespacedName::new("sim", "trace"),
        now: 0,
        replicas: Vec::new(),
        next_id: 0,
        completions: BinaryHeap::new(),
        queue: VecDeque::new(),
        queue_area: 0.0,
        queued_this_second: 0,
        delays: Vec::with_capacity(trace.len()),
        cold_starts: 0,
        replica_ms: 0.0,
        zero_ms: 0.0,
        peak: 0,
    };
    let tick_ms = cfg.tick.as_millis().max(1) as u64;
    let mut next_arrival = 0usize;
    let mut next_stat = 1000u64;
    let mut next_tick = 0u64;
    let mut last_busy = 0u64;
    loop {
        let busy =
            next_arrival < trace.len() || !sim.queue.is_empty() || !sim.completions.is_empty();
        if busy {
            last_busy = sim.now;
        } else if sim.replicas.is_empty() || sim.now >= last_busy + 600_000 {
            break;
        }
        let mut next = next_stat.min(next_tick);
        if let Some(a) = trace.get(next_arrival) {
            next = next.min(a.at_ms);
        }
        if let Some(Reverse((t, _))) = sim.completions.peek() {
            next = next.min(*t);
        }
        if let Some(t) = sim
            .replicas
            .iter()
            .map(|r| r.ready_at)
            .filter(|t| *t > sim.now)
            .min()
        {
            next = next.min(t);
        }
        sim.advance_to(next.max(sim.now));
        while let Some(Reverse((t, id))) = sim.completions.peek().copied() {
            if t > sim.now {
                break;
            }
            sim.completions.pop();
            sim.complete(id);
        }
        // Replicas that became ready take the queue.
        sim.drain_queue();
        while let Some(a) = trace.get(next_arrival) {
            if a.at_ms > sim.now {
                break;
            }
            next_arrival += 1;
            sim.arrive(a);
        }
        if sim.now >= next_stat {
            sim.report();
            next_stat += 1000;
        }
        if sim.now >= next_tick {
            sim.decide();
            next_tick += tick_ms;
        }
    }
    let mut delays = std::mem::take(&mut sim.delays);
    delays.sort_unstable();
    SimReport {
        requests: trace.len() as u64,
        cold_starts: sim.cold_starts,
        p50_queue_ms: percentile(&delays, 0.50),
        p99_queue_ms: percentile(&delays, 0.99),
        max_queue_ms: delays.last().copied().unwrap_or(0) as f64,
        replica_seconds: sim.replica_ms / 1000.0,
        peak_replicas: sim.peak,
        seconds_at_zero: sim.zero_ms / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{TraceKind, generate, parse_trace, true_daily_rates};

    fn arrivals(times_s: &[f64]) -> Vec<Arrival> {
        times_s
            .iter()
            .map(|t| Arrival {
                at_ms: (t * 1000.0) as u64,
                duration_ms: None,
            })
            .collect()
    }

    #[test]
    fn one_request_is_one_cold_start_then_kpa_scales_to_zero() {
        let cfg = SimConfig::new(ScalePolicy::Kpa, 1);
        let r = simulate(&arrivals(&[10.0]), &cfg);
        // The poke at 10 s asks for one replica (ready at 12 s). At the 12 s tick the
        // request has been waiting 2 s: panic average 1, target 1 × 70 % → ceil(1/0.7) = 2
        // with 1 ready: 2/1 ≥ 200 % → panic at 2 replicas, held for a stable window.
        assert_eq!((r.requests, r.cold_starts, r.peak_replicas), (1, 1, 2));
        assert_eq!(r.max_queue_ms, 2000.0, "waited for the 2 s cold start");
        // Panic ends a window after the 12 s tick (72 s), then 2 → 1 → inactive → 0 over
        // the next ticks: about 2 × 62 s + a few seconds.
        assert!(
            (124.0..=134.0).contains(&r.replica_seconds),
            "{}",
            r.replica_seconds
        );
        assert_eq!(r.seconds_at_zero, 10.0);
    }

    #[test]
    fn close_requests_share_a_warm_replica() {
        let cfg = SimConfig::new(ScalePolicy::Kpa, 1);
        let r = simulate(&arrivals(&[10.0, 20.0, 30.0]), &cfg);
        assert_eq!(r.cold_starts, 1);
        assert_eq!(r.p50_queue_ms, 0.0);
    }

    #[test]
    fn concurrency_limit_queues_and_scales_out() {
        let mut cfg = SimConfig::new(ScalePolicy::Kpa, 1);
        cfg.service_time = Duration::from_secs(10);
        let times: Vec<f64> = (0..20).map(|i| 5.0 + f64::from(i) * 0.05).collect();
        let r = simulate(&arrivals(&times), &cfg);
        assert_eq!(r.requests, 20);
        assert!(r.peak_replicas > 1, "{r:?}");
        assert!(r.max_queue_ms > 0.0);
    }

    #[test]
    fn pattern_has_no_more_cold_starts_than_kpa_on_a_periodic_trace() {
        let trace = parse_trace(&generate(TraceKind::Periodic, 42, 6.0)).unwrap();
        let kpa = simulate(&trace, &SimConfig::new(ScalePolicy::Kpa, 1));
        let pattern = simulate(&trace, &SimConfig::new(ScalePolicy::Pattern, 1));
        assert_eq!(kpa.requests, pattern.requests);
        // KPA scales to zero after ~70 s: every 3-minute arrival is a cold start.
        assert_eq!(kpa.cold_starts, kpa.requests);
        assert!(
            pattern.cold_starts <= kpa.cold_starts / 2,
            "pattern {pattern:?} kpa {kpa:?}"
        );
        assert!(
            pattern.replica_seconds <= kpa.replica_seconds,
            "pattern {pattern:?} kpa {kpa:?}"
        );
    }

    /// KPA and pattern on a freshly generated trace (not one of the committed ones).
    fn both(kind: TraceKind, seed: u64, hours: f64) -> (SimReport, SimReport) {
        let trace = parse_trace(&generate(kind, seed, hours)).unwrap();
        let kpa = simulate(&trace, &SimConfig::new(ScalePolicy::Kpa, 1));
        let pattern = simulate(&trace, &SimConfig::new(ScalePolicy::Pattern, 1));
        assert_eq!(kpa.requests, pattern.requests);
        (kpa, pattern)
    }

    #[test]
    fn pattern_trades_slow_hours_for_busy_ones_on_a_fresh_diurnal_trace() {
        // Seed 2026 (the committed diurnal trace is seed 3): a Poisson process whose rate
        // follows the time of day. Measured: 78 vs 128 cold starts at 102.4 % of the KPA's
        // replica-seconds (before the books against the KPA of issue 14: 88 at 99.5 %;
        // the first night is now the KPA's, as no cold start is saved yet, and holds
        // spend from the 3 % allowance). Issue 6's target (≤ 50 % of the cold starts at
        // ≤ 100 % of the replica-seconds) is NOT met; see bench/RESULTS.md for why.
        let (kpa, pattern) = both(TraceKind::Diurnal, 2026, 24.0);
        assert!(
            pattern.cold_starts * 4 <= kpa.cold_starts * 3,
            "pattern {pattern:?} kpa {kpa:?}"
        );
        assert!(
            pattern.replica_seconds <= kpa.replica_seconds * 1.05,
            "pattern {pattern:?} kpa {kpa:?}"
        );
    }

    #[test]
    fn pattern_is_within_5_percent_of_kpa_on_fresh_bursty_and_poisson_traces() {
        for (kind, seed, hours) in [(TraceKind::Bursty, 77, 6.0), (TraceKind::Poisson, 78, 4.0)] {
            let (kpa, pattern) = both(kind, seed, hours);
            assert!(
                pattern.cold_starts as f64 <= kpa.cold_starts as f64 * 1.05,
                "{kind:?}: pattern {pattern:?} kpa {kpa:?}"
            );
            assert!(
                pattern.replica_seconds <= kpa.replica_seconds * 1.05,
                "{kind:?}: pattern {pattern:?} kpa {kpa:?}"
            );
        }
    }

    #[test]
    fn pattern_is_never_worse_than_kpa_on_heavy_tailed_bursty_traces() {
        // Bursts of 50–500 requests separated by Pareto gaps (issue 14). Before the policy
        // kept books against the KPA it gave replicas back early after gaps that looked
        // long, and short ones followed: up to 1.7× the KPA's cold starts. Ten seeds, 3 h
        // each, with the default settings and with a 10 s cold start at concurrency 4.
        for seed in 1..=10 {
            let (kpa, pattern) = both(TraceKind::HeavyBursty, seed, 3.0);
            assert!(
                pattern.cold_starts <= kpa.cold_starts,
                "seed {seed}: pattern {pattern:?} kpa {kpa:?}"
            );
            assert!(
                pattern.replica_seconds <= kpa.replica_seconds * 1.05,
                "seed {seed}: pattern {pattern:?} kpa {kpa:?}"
            );
        }
        let slow = |policy| {
            let mut cfg = SimConfig::new(policy, 4);
            cfg.cold_start = Duration::from_secs(10);
            cfg.service_time = Duration::from_millis(500);
            cfg
        };
        for seed in 11..=13 {
            let trace = parse_trace(&generate(TraceKind::HeavyBursty, seed, 3.0)).unwrap();
            let kpa = simulate(&trace, &slow(ScalePolicy::Kpa));
            let pattern = simulate(&trace, &slow(ScalePolicy::Pattern));
            assert!(
                pattern.cold_starts <= kpa.cold_starts,
                "seed {seed}: pattern {pattern:?} kpa {kpa:?}"
            );
            assert!(
                pattern.replica_seconds <= kpa.replica_seconds * 1.05,
                "seed {seed}: pattern {pattern:?} kpa {kpa:?}"
            );
        }
    }

    /// The run's cold starts and replica-seconds after its first day: the run minus a
    /// run of its first 24 h alone (the same arrivals up to then).
    fn after_first_day(trace: &[Arrival], cfg: &SimConfig) -> (f64, f64) {
        let day1: Vec<Arrival> = trace
            .iter()
            .copied()
            .filter(|a| a.at_ms < 86_400_000)
            .collect();
        let (all, first) = (simulate(trace, cfg), simulate(&day1, cfg));
        (
            all.cold_starts as f64 - first.cold_starts as f64,
            all.replica_seconds - first.replica_seconds,
        )
    }

    fn pattern_with(config: PatternConfig) -> SimConfig {
        let mut cfg = SimConfig::new(ScalePolicy::Pattern, 1);
        cfg.pattern = config;
        cfg
    }

    #[test]
    fn a_daily_table_halves_the_kpa_cold_starts_from_the_second_day() {
        // Diurnal seed 22, three days (not a committed trace). From day 2 on the policy
        // keeps warm the slots the day before says are busy, planned to the KPA's
        // expected replica-seconds. Measured after day 1: 140 vs KPA 278 cold starts
        // (0.504×) at 0.994× its replica-seconds; without the table (the online
        // estimate alone) 179. Before the books against the KPA (issue 14) it was 139
        // (0.500×) at 0.9955×: early zeros now wait for saved cold starts.
        let trace = parse_trace(&generate(TraceKind::Diurnal, 22, 72.0)).unwrap();
        let (kpa_cold, kpa_rs) = after_first_day(&trace, &SimConfig::new(ScalePolicy::Kpa, 1));
        let (cold, rs) = after_first_day(&trace, &pattern_with(PatternConfig::default()));
        let (online_cold, _) = after_first_day(
            &trace,
            &pattern_with(PatternConfig {
                daily_quiet_limit: -1.0, // the table is never used
                ..PatternConfig::default()
            }),
        );
        assert!(cold <= 0.55 * kpa_cold, "{cold} vs KPA {kpa_cold}");
        assert!(rs <= kpa_rs, "{rs} vs KPA {kpa_rs}");
        assert!(cold < online_cold, "{cold} vs online only {online_cold}");
    }

    #[test]
    fn even_the_oracle_misses_half_the_cold_starts_on_the_committed_diurnal_day() {
        // The committed one-day trace: no earlier day to learn a table from. A policy told
        // the true rate curve (1-minute slots) and a fixed exchange rate c (warm while
        // λ·c ≥ 1) traces the best cold starts for each replica-second spend; wherever it
        // spends no more than the KPA it keeps more than half of the KPA's cold starts.
        let committed = include_str!("../../../samples/traces/diurnal.csv");
        let trace = parse_trace(committed).unwrap();
        assert_eq!(
            trace,
            parse_trace(&generate(TraceKind::Diurnal, 3, 24.0)).unwrap()
        );
        let kpa = simulate(&trace, &SimConfig::new(ScalePolicy::Kpa, 1));
        let rates = true_daily_rates(TraceKind::Diurnal, 1440).unwrap();
        // The forecast alone: the books against the KPA would keep it from trading
        // cold starts for replica-seconds before it has saved some.
        let oracle = |exchange: Option<u64>| {
            simulate(
                &trace,
                &pattern_with(PatternConfig {
                    daily_rates: Some(rates.clone()),
                    daily_exchange: exchange.map(Duration::from_secs),
                    guarded: false,
                    ..PatternConfig::default()
                }),
            )
        };
        let mut within_budget = 0;
        for c in (62..=98).step_by(4) {
            let r = oracle(Some(c));
            if r.replica_seconds <= kpa.replica_seconds {
                within_budget += 1;
                assert!(
                    r.cold_starts * 2 > kpa.cold_starts,
                    "c = {c}: {r:?} vs KPA {kpa:?}"
                );
            }
        }
        assert!(within_budget >= 3, "the sweep reaches the KPA's spend");
        // The planned oracle (the default policy's plan, on the true rates): 74 vs 136.
        let planned = oracle(None);
        assert!(planned.replica_seconds <= kpa.replica_seconds);
        assert!(planned.cold_starts * 2 > kpa.cold_starts, "{planned:?}");
    }

    #[test]
    fn the_daily_table_stays_within_5_percent_on_multi_day_bursty_and_poisson_traces() {
        for (kind, seed) in [(TraceKind::Bursty, 77), (TraceKind::Poisson, 78)] {
            let (kpa, pattern) = both(kind, seed, 72.0);
            assert!(
                pattern.cold_starts as f64 <= kpa.cold_starts as f64 * 1.05,
                "{kind:?}: pattern {pattern:?} kpa {kpa:?}"
            );
            assert!(
                pattern.replica_seconds <= kpa.replica_seconds * 1.05,
                "{kind:?}: pattern {pattern:?} kpa {kpa:?}"
            );
        }
    }

    #[test]
    fn empty_trace_is_fine() {
        let r = simulate(&[], &SimConfig::new(ScalePolicy::Kpa, 1));
        assert_eq!((r.requests, r.cold_starts, r.peak_replicas), (0, 0, 0));
    }
}
