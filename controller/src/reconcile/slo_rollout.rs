//! SLO-gated rollout of a `latestRevision` target (`serving.sluice.dev/rollout-steps`, see
//! `sluice_crds::slo_rollout`), as pure functions of the Route's previous state, the
//! request counters the router keeps ([`Signals`]) and the wall clock.
//!
//! When the target's latest ready revision changes from A (the baseline) to B (the canary),
//! B gets the first step's share and A the rest. Each step lasts the interval; then B's
//! requests over that window are judged, and A's over the same window give the baseline
//! comparison. A verdict needs the minimum request count from B (the step waits for it).
//! Every gate passed: the next step, and after the last (100 %) B is promoted. One gate
//! failed: A takes the whole share back at once and the Route says why, with the numbers;
//! B stays rolled back until a newer revision becomes the latest ready one, whose rollout
//! starts from A. A newer revision mid-rollout restarts the rollout from A. The state lives
//! in the Route's `status.rolloutAnalysis` (the store), so it survives a restart; the
//! counters do not (they are the router's), so a window whose counters went away (another
//! `source`, or fewer requests than at its start) starts again and the step is measured
//! afresh.

use std::collections::HashMap;

use sluice_core::outcomes::LATENCY_BOUNDS_MS;

use sluice_crds::slo_rollout::{
    Counts, Measured, P99_SLACK, RolloutAnalysis, RolloutPhase, SloRollout, StepVerdict, Window,
};

/// The router's request counters at one moment, by namespace and revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// Which counters these are: the same source counts on, another started from zero.
    pub source: String,
    /// Cumulative counts by (namespace, revision).
    pub counts: HashMap<(String, String), Counts>,
}

impl Signals {
    fn of(&self, namespace: &str, revision: &str) -> Counts {
        self.counts
            .get(&(namespace.to_owned(), revision.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

/// What one `latestRevision` target needs to plan its rollout.
pub struct Target<'a> {
    /// The namespace (for the counters).
    pub namespace: &'a str,
    /// The configuration it follows.
    pub configuration: &'a str,
    /// Its tag.
    pub tag: Option<&'a str>,
    /// Its share.
    pub percent: i64,
    /// Its latest ready revision now.
    pub latest: &'a str,
    /// Whether the Route serves an InferenceService component (the model error gate).
    pub inference: bool,
}

fn step_text(a: &RolloutAnalysis) -> String {
    format!(
        "step {}/{} ({}%)",
        a.step + 1,
        a.steps.len(),
        a.steps.get(a.step as usize).copied().unwrap_or(100)
    )
}

/// The rollout state at `now_ms`, given the previous one (if any) or else the revision
/// the target sent its share to before. `None`: no rollout (the first revision, or the
/// latest one had the share already): the latest revision takes the whole share.
pub fn plan(
    target: &Target<'_>,
    previous: Option<&RolloutAnalysis>,
    previous_revision: Option<&str>,
    config: &SloRollout,
    signals: Option<&Signals>,
    now_ms: i64,
) -> Option<RolloutAnalysis> {
    let previous = previous
        .filter(|p| p.configuration_name == target.configuration && p.tag.as_deref() == target.tag);
    let mut state = match previous {
        Some(p) if p.canary == target.latest => {
            let mut p = p.clone();
            p.percent = target.percent;
            p.steps.clone_from(&config.steps);
            p
        }
        Some(p) => {
            // A newer revision: roll it out from the last good one.
            let baseline = match p.phase {
                RolloutPhase::Promoted => &p.canary,
                RolloutPhase::Progressing | RolloutPhase::RolledBack => &p.baseline,
            };
            start(target, baseline, config, now_ms)?
        }
        None => start(target, previous_revision?, config, now_ms)?,
    };
    if state.phase == RolloutPhase::Progressing {
        advance(&mut state, target, config, signals, now_ms);
    }
    Some(state)
}

fn start(
    target: &Target<'_>,
    baseline: &str,
    config: &SloRollout,
    now_ms: i64,
) -> Option<RolloutAnalysis> {
    (baseline != target.latest && !baseline.is_empty()).then(|| RolloutAnalysis {
        configuration_name: target.configuration.to_owned(),
        tag: target.tag.map(str::to_owned),
        percent: target.percent,
        baseline: baseline.to_owned(),
        canary: target.latest.to_owned(),
        steps: config.steps.clone(),
        step: 0,
        phase: RolloutPhase::Progressing,
        started_at_ms: now_ms,
        window: None,
        verdicts: Vec::new(),
        message: String::new(),
    })
}

fn interval_ms(config: &SloRollout) -> i64 {
    i64::try_from(config.interval.as_millis()).unwrap_or(i64::MAX)
}

/// When the rollout wants its next look (`None`: it is over).
pub fn next_check_ms(state: &RolloutAnalysis, config: &SloRollout, now_ms: i64) -> Option<i64> {
    if state.phase != RolloutPhase::Progressing {
        return None;
    }
    let retry = now_ms.saturating_add((interval_ms(config) / 10).clamp(1_000, 10_000));
    let due = state
        .window
        .as_ref()
        .map(|w| w.started_at_ms.saturating_add(interval_ms(config)));
    // Before the verdict, a look every few seconds keeps the message's count current.
    let refresh = now_ms.saturating_add(REFRESH_MS);
    Some(
        due.filter(|due| *due > now_ms)
            .map_or(retry, |due| due.min(refresh)),
    )
}

/// How often a step's progress (its request count so far) is brought up to date.
const REFRESH_MS: i64 = 5_000;

/// The `q` quantile of a cumulative histogram over `bounds`, interpolated within the bucket
/// as Prometheus' `histogram_quantile` does; past the last bound, the last bound.
pub fn quantile(q: f64, buckets: &[u64], bounds: &[f64], total: u64) -> Option<f64> {
    if total == 0 || buckets.is_empty() {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (count, upper) in buckets.iter().zip(bounds) {
        if *count as f64 >= rank {
            let inside = (*count - below) as f64;
            let fraction = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * fraction.clamp(0.0, 1.0));
        }
        below = *count;
        lower = *upper;
    }
    bounds.last().copied()
}

fn measured(c: &Counts) -> Measured {
    Measured {
        requests: c.requests,
        errors: c.errors,
        model_errors: c.model_errors,
        p99_us: quantile(0.99, &c.latency_buckets, &LATENCY_BOUNDS_MS, c.requests)
            .map(|ms| (ms * 1000.0).round() as u64),
    }
}

fn pct(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// The gates `canary` fails, each with its numbers (empty: it passes).
pub fn judge(
    config: &SloRollout,
    inference: bool,
    canary: &Measured,
    baseline: Option<&Measured>,
) -> Vec<String> {
    let g = &config.gates;
    let mut failed = Vec::new();
    let base = baseline.filter(|b| b.requests >= g.min_requests.max(1));
    let sr = canary.success_rate();
    if sr < g.min_success_rate {
        failed.push(format!(
            "success rate {} < {}",
            pct(sr),
            pct(g.min_success_rate)
        ));
    }
    if let Some(b) = base
        && sr < b.success_rate() - g.max_success_rate_drop
    {
        failed.push(format!(
            "success rate {} is more than {} points under the previous revision's {}",
            pct(sr),
            pct(g.max_success_rate_drop).trim_end_matches('%'),
            pct(b.success_rate())
        ));
    }
    if let (Some(max), Some(p99)) = (g.max_p99, canary.p99_us)
        && u128::from(p99) > max.as_micros()
    {
        failed.push(format!(
            "p99 {} > {}",
            ms(p99),
            ms(u64::try_from(max.as_micros()).unwrap_or(u64::MAX))
        ));
    }
    if let Some(b) = base
        && let (Some(p99), Some(b99)) = (canary.p99_us, b.p99_us)
        && p99 as f64 > b99 as f64 * (1.0 + g.max_p99_increase)
        && u128::from(p99 - b99.min(p99)) > P99_SLACK.as_micros()
    {
        failed.push(format!(
            "p99 {} is more than {} over the previous revision's {}",
            ms(p99),
            pct(g.max_p99_increase),
            ms(b99)
        ));
    }
    if inference {
        let mer = canary.model_error_rate();
        if mer > g.max_model_error_rate {
            failed.push(format!(
                "model error rate {} > {}",
                pct(mer),
                pct(g.max_model_error_rate)
            ));
        } else if let Some(b) = base
            && mer > b.model_error_rate() + g.max_success_rate_drop
        {
            failed.push(format!(
                "model error rate {} is more than {} points over the previous revision's {}",
                pct(mer),
                pct(g.max_success_rate_drop).trim_end_matches('%'),
                pct(b.model_error_rate())
            ));
        }
    }
    failed
}

/// Measures, judges and moves a progressing rollout on.
fn advance(
    state: &mut RolloutAnalysis,
    target: &Target<'_>,
    config: &SloRollout,
    signals: Option<&Signals>,
    now_ms: i64,
) {
    let Some(signals) = signals else {
        state.message = format!(
            "{}: waiting for request metrics (this controller has no source of the router's \
             request counts)",
            step_text(state)
        );
        return;
    };
    let canary_now = signals.of(target.namespace, &state.canary);
    let baseline_now = signals.of(target.namespace, &state.baseline);
    let fresh = |state: &mut RolloutAnalysis, why: &str| {
        state.window = Some(Window {
            source: signals.source.clone(),
            started_at_ms: now_ms,
            canary: canary_now.clone(),
            baseline: baseline_now.clone(),
        });
        state.message = format!("{}: measuring{why}", step_text(state));
    };
    let Some(window) = state.window.clone().filter(|w| w.source == signals.source) else {
        let why = if state.window.is_some() {
            " (the request counters restarted: measuring the step again)"
        } else {
            ""
        };
        fresh(state, why);
        return;
    };
    let (Some(canary), Some(baseline)) = (
        canary_now.since(&window.canary),
        baseline_now.since(&window.baseline),
    ) else {
        fresh(
            state,
            " (the request counters restarted: measuring the step again)",
        );
        return;
    };
    let due = window.started_at_ms.saturating_add(interval_ms(config));
    if canary.requests < config.gates.min_requests {
        state.message = format!(
            "{}: {} of the {} requests needed for a verdict",
            step_text(state),
            canary.requests,
            config.gates.min_requests
        );
        return;
    }
    if now_ms < due {
        state.message = format!(
            "{}: measuring, {} requests so far",
            step_text(state),
            canary.requests
        );
        return;
    }
    let (canary, baseline) = (measured(&canary), measured(&baseline));
    let failed = judge(config, target.inference, &canary, Some(&baseline));
    let percent = state.canary_percent();
    let passed = failed.is_empty();
    let summary = format!(
        "{} requests, success rate {}{}",
        canary.requests,
        pct(canary.success_rate()),
        canary
            .p99_us
            .map(|p| format!(", p99 {}", ms(p)))
            .unwrap_or_default()
    );
    state.verdicts.push(StepVerdict {
        percent,
        passed,
        at_ms: now_ms,
        canary,
        baseline: (baseline.requests > 0).then_some(baseline),
        failed: failed.clone(),
    });
    if !passed {
        state.message = format!(
            "{} rolled back at {}: {} (over {summary}); {} has the traffic again",
            state.canary,
            step_text(state),
            failed.join("; "),
            state.baseline
        );
        state.phase = RolloutPhase::RolledBack;
        state.window = None;
        return;
    }
    state.step += 1;
    if state.step as usize + 1 >= state.steps.len() {
        state.step = u32::try_from(state.steps.len().saturating_sub(1)).unwrap_or(0);
        state.phase = RolloutPhase::Promoted;
        state.window = None;
        let passed: Vec<String> = state
            .verdicts
            .iter()
            .map(|v| format!("{}%", v.percent))
            .collect();
        state.message = format!(
            "{} promoted: passed every step ({}); last: {summary}",
            state.canary,
            passed.join(", ")
        );
        return;
    }
    fresh(state, "");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_crds::slo_rollout::Gates;

    use super::*;

    fn config() -> SloRollout {
        SloRollout {
            steps: vec![10, 50, 100],
            interval: Duration::from_secs(10),
            gates: Gates {
                max_p99: Some(Duration::from_secs(1)),
                ..Gates::default()
            },
            max_surge: None,
        }
    }

    fn target(latest: &str) -> Target<'_> {
        Target {
            namespace: "default",
            configuration: "hello",
            tag: None,
            percent: 100,
            latest,
            inference: true,
        }
    }

    /// Counters where `requests` took `latency_ms` each and `errors` of them failed.
    fn counts(requests: u64, errors: u64, latency_ms: f64) -> Counts {
        let bounds = &LATENCY_BOUNDS_MS;
        Counts {
            requests,
            errors,
            model_errors: errors,
            latency_buckets: bounds
                .iter()
                .map(|b| if latency_ms <= *b { requests } else { 0 })
                .collect(),
        }
    }

    fn add(a: &Counts, b: &Counts) -> Counts {
        if a.latency_buckets.is_empty() {
            return add(&counts(0, 0, 0.0), b);
        }
        Counts {
            requests: a.requests + b.requests,
            errors: a.errors + b.errors,
            model_errors: a.model_errors + b.model_errors,
            latency_buckets: a
                .latency_buckets
                .iter()
                .zip(&b.latency_buckets)
                .map(|(x, y)| x + y)
                .collect(),
        }
    }

    fn signals(source: &str, a: &Counts, b: &Counts) -> Signals {
        Signals {
            source: source.into(),
            counts: HashMap::from([
                (("default".into(), "a".into()), a.clone()),
                (("default".into(), "b".into()), b.clone()),
            ]),
        }
    }

    #[test]
    fn a_healthy_canary_goes_through_every_step_and_is_promoted() {
        let c = config();
        let (mut a, mut b) = (counts(1000, 0, 2.0), Counts::default());
        let mut s = plan(
            &target("b"),
            None,
            Some("a"),
            &c,
            Some(&signals("x", &a, &b)),
            0,
        );
        let st = s.clone().unwrap();
        assert_eq!((st.baseline.as_str(), st.canary.as_str()), ("a", "b"));
        assert_eq!(st.canary_percent(), 10);
        assert_eq!(next_check_ms(&st, &c, 0), Some(5_000));
        assert_eq!(next_check_ms(&st, &c, 6_000), Some(10_000));
        for (k, now) in [(1, 10_000), (2, 20_000)] {
            a = add(&a, &counts(90, 0, 2.0));
            b = add(&b, &counts(30, 0, 3.0));
            s = plan(
                &target("b"),
                s.as_ref(),
                None,
                &c,
                Some(&signals("x", &a, &b)),
                now,
            );
            let st = s.clone().unwrap();
            assert_eq!(st.verdicts.len(), k, "{st:?}");
            assert!(st.verdicts.iter().all(|v| v.passed), "{st:?}");
        }
        let st = s.unwrap();
        assert_eq!(st.phase, RolloutPhase::Promoted, "{}", st.message);
        assert_eq!(st.canary_percent(), 100);
        assert_eq!(next_check_ms(&st, &c, 20_000), None);
        assert!(st.message.contains("b promoted"), "{}", st.message);
        assert_eq!(
            st.verdicts.iter().map(|v| v.percent).collect::<Vec<_>>(),
            [10, 50]
        );
    }

    #[test]
    fn an_error_rate_rolls_back_at_the_end_of_the_step_with_the_numbers() {
        let c = config();
        let (a, b) = (counts(100, 0, 2.0), Counts::default());
        let s = plan(
            &target("b"),
            None,
            Some("a"),
            &c,
            Some(&signals("x", &a, &b)),
            0,
        );
        let b2 = add(&b, &add(&counts(40, 0, 2.0), &counts(10, 10, 2.0)));
        // Mid-interval: still measuring.
        let s = plan(
            &target("b"),
            s.as_ref(),
            None,
            &c,
            Some(&signals("x", &a, &b2)),
            5_000,
        );
        assert_eq!(s.as_ref().unwrap().phase, RolloutPhase::Progressing);
        let s = plan(
            &target("b"),
            s.as_ref(),
            None,
            &c,
            Some(&signals("x", &a, &b2)),
            10_000,
        );
        let st = s.unwrap();
        assert_eq!(st.phase, RolloutPhase::RolledBack);
        assert_eq!(st.canary_percent(), 0);
        assert!(
            st.message.contains("success rate 80.0% < 99.0%")
                && st.message.contains("model error rate 20.0% > 1.0%")
                && st.message.contains("50 requests"),
            "{}",
            st.message
        );
        // It stays rolled back while b is the latest; a newer revision starts from a.
        let again = plan(&target("b"), Some(&st), None, &c, None, 99_000).unwrap();
        assert_eq!(again.phase, RolloutPhase::RolledBack);
        let next = plan(&target("c"), Some(&st), None, &c, None, 99_000).unwrap();
        assert_eq!((next.baseline.as_str(), next.canary.as_str()), ("a", "c"));
        assert_eq!(next.phase, RolloutPhase::Progressing);
    }

    #[test]
    fn a_latency_regression_under_the_absolute_bound_is_caught_against_the_baseline() {
        let c = config();
        let (a, b) = (counts(100, 0, 2.0), Counts::default());
        let s = plan(
            &target("b"),
            None,
            Some("a"),
            &c,
            Some(&signals("x", &a, &b)),
            0,
        );
        let (a2, b2) = (add(&a, &counts(200, 0, 2.0)), counts(30, 0, 80.0));
        let st = plan(
            &target("b"),
            s.as_ref(),
            None,
            &c,
            Some(&signals("x", &a2, &b2)),
            10_000,
        )
        .unwrap();
        assert_eq!(st.phase, RolloutPhase::RolledBack, "{}", st.message);
        assert!(
            st.message.contains("over the previous revision's"),
            "{}",
            st.message
        );
        assert!(!st.message.contains("> 1000.0 ms"), "{}", st.message);
        assert_eq!(st.verdicts[0].baseline.as_ref().unwrap().requests, 200);
    }

    #[test]
    fn too_few_requests_wait_and_restarted_counters_measure_the_step_again() {
        let c = config();
        let (a, b) = (counts(100, 0, 2.0), Counts::default());
        let s = plan(
            &target("b"),
            None,
            Some("a"),
            &c,
            Some(&signals("x", &a, &b)),
            0,
        );
        let b2 = counts(5, 0, 2.0);
        let s = plan(
            &target("b"),
            s.as_ref(),
            None,
            &c,
            Some(&signals("x", &a, &b2)),
            60_000,
        );
        let st = s.clone().unwrap();
        assert_eq!(st.phase, RolloutPhase::Progressing);
        assert!(
            st.message.contains("5 of the 20 requests"),
            "{}",
            st.message
        );
        assert_eq!(next_check_ms(&st, &c, 60_000), Some(61_000));
        // A restart (new source): the step, not the rollout, starts again.
        let mut st = st;
        st.step = 1;
        let s = plan(
            &target("b"),
            Some(&st),
            None,
            &c,
            Some(&signals("y", &b2, &b2)),
            61_000,
        );
        let st = s.unwrap();
        assert_eq!((st.step, st.phase), (1, RolloutPhase::Progressing));
        assert_eq!(st.window.as_ref().unwrap().started_at_ms, 61_000);
        assert!(st.message.contains("restarted"), "{}", st.message);
        // Without any counters, it says so and waits.
        let st = plan(&target("b"), Some(&st), None, &c, None, 70_000).unwrap();
        assert!(st.message.contains("no source"), "{}", st.message);
        // The first revision, or no change: no rollout.
        assert_eq!(plan(&target("b"), None, None, &c, None, 0), None);
        assert_eq!(plan(&target("b"), None, Some("b"), &c, None, 0), None);
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let bounds = [10.0, 20.0, 40.0];
        assert_eq!(quantile(0.5, &[0, 10, 10], &bounds, 10), Some(15.0));
        assert_eq!(quantile(0.99, &[0, 0, 0], &bounds, 10), Some(40.0));
        assert_eq!(quantile(0.99, &[0, 0, 0], &bounds, 0), None);
    }
}
