//! Plain benchmark (no criterion: too heavy to build on this machine): 10,000 revisions,
//! each with two replicas reporting every second; times ingesting one second of reports for
//! all of them, and one tick of all their deciders. Prints the median and p90 of 60 rounds.
//!
//! `cargo bench -p sluice-autoscaler --bench decider`

use std::hint::black_box;
use std::time::Duration;

use sluice_autoscaler::{Decider, DeciderConfig};
use sluice_core::{NamespacedName, RevisionScaling, ScalePolicy, StatReport, StatSource};
use tokio::time::Instant;

const REVISIONS: usize = 10_000;
const ROUNDS: u64 = 60;

fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn main() {
    let t0 = Instant::now();
    let mut deciders: Vec<Decider> = (0..REVISIONS)
        .map(|i| {
            let policy = if i % 2 == 0 {
                ScalePolicy::Kpa
            } else {
                ScalePolicy::Pattern
            };
            Decider::new(
                DeciderConfig {
                    scaling: RevisionScaling {
                        policy,
                        ..RevisionScaling::default()
                    },
                    scale_to_zero_grace: Duration::from_secs(30),
                },
                t0,
                Some(2),
            )
        })
        .collect();
    let reports: Vec<[StatReport; 2]> = (0..REVISIONS)
        .map(|i| {
            let revision = NamespacedName::new("bench", format!("r-{i:05}"));
            let r = |n: &str, c: f64| StatReport {
                revision: revision.clone(),
                source: StatSource::Replica(n.to_owned()),
                average_concurrency: c,
                average_proxied_concurrency: 0.0,
                request_count: c as u64,
                proxied_request_count: 0,
            };
            [r("a", (i % 300) as f64), r("b", (i % 7) as f64)]
        })
        .collect();

    let (mut ingest, mut tick) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let now = t0 + Duration::from_secs(round);
        let start = Instant::now();
        for (d, rs) in deciders.iter_mut().zip(&reports) {
            d.record(now, &rs[0]);
            d.record(now, &rs[1]);
        }
        ingest.push(start.elapsed());
        if round % 2 == 0 {
            let start = Instant::now();
            for d in &mut deciders {
                black_box(d.decide(now, 2));
            }
            tick.push(start.elapsed());
        }
    }
    let (i50, i90) = quantiles(ingest);
    let (t50, t90) = quantiles(tick);
    println!("revisions: {REVISIONS} (half KPA, half pattern), 2 replicas each, 60 s windows");
    println!(
        "ingest 20,000 reports (one second):  median {:.2} ms  p90 {:.2} ms",
        i50.as_secs_f64() * 1e3,
        i90.as_secs_f64() * 1e3
    );
    println!(
        "tick 10,000 deciders:                 median {:.2} ms  p90 {:.2} ms  (target < 20 ms)",
        t50.as_secs_f64() * 1e3,
        t90.as_secs_f64() * 1e3
    );
}
