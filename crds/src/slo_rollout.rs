//! Sluice's SLO-gated rollout: annotations under `serving.sluice.dev/` (on a Service, a
//! Route, or an InferenceService, which hands them to its component Services) that move a
//! new latest revision through steps of traffic, judging it at the end of each step against
//! thresholds and against the previous revision measured over the same interval, and the
//! state a Route keeps in `status.rolloutAnalysis` while it does.
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     serving.sluice.dev/rollout-steps: "5,20,50,100"   # turns it on
//!     serving.sluice.dev/rollout-step-interval: "1m"
//!     serving.sluice.dev/rollout-min-requests: "20"
//!     serving.sluice.dev/rollout-min-success-rate: "99"
//!     serving.sluice.dev/rollout-max-p99-latency: "500ms"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use sluice_core::outcomes::Counts;

use crate::autoscaling::{GoDuration, parse_go_duration};
use crate::validation::Validator;

/// The steps of traffic, in percent of the target's share, ending at 100 (turns it on).
pub const STEPS: &str = "serving.sluice.dev/rollout-steps";
/// How long each step lasts before its verdict (default 1m).
pub const INTERVAL: &str = "serving.sluice.dev/rollout-step-interval";
/// Requests the new revision must have served in a step before a verdict (default 20).
pub const MIN_REQUESTS: &str = "serving.sluice.dev/rollout-min-requests";
/// Lowest success rate (non-5xx, gRPC OK-class), in percent (default 99).
pub const MIN_SUCCESS_RATE: &str = "serving.sluice.dev/rollout-min-success-rate";
/// Highest p99 latency (a duration; no bound by default).
pub const MAX_P99_LATENCY: &str = "serving.sluice.dev/rollout-max-p99-latency";
/// Highest rate of the model's own errors, in percent (InferenceServices; default 1).
pub const MAX_MODEL_ERROR_RATE: &str = "serving.sluice.dev/rollout-max-model-error-rate";
/// How many points the success rate may fall below the previous revision's (default 1).
pub const MAX_SUCCESS_RATE_DROP: &str = "serving.sluice.dev/rollout-max-success-rate-drop";
/// How many percent the p99 may rise over the previous revision's (default 50).
pub const MAX_P99_INCREASE: &str = "serving.sluice.dev/rollout-max-p99-increase";
/// How many replicas the new revision may run while it is being judged (no bound by default).
pub const MAX_SURGE: &str = "serving.sluice.dev/rollout-max-surge";

const ALL: [&str; 9] = [
    STEPS,
    INTERVAL,
    MIN_REQUESTS,
    MIN_SUCCESS_RATE,
    MAX_P99_LATENCY,
    MAX_MODEL_ERROR_RATE,
    MAX_SUCCESS_RATE_DROP,
    MAX_P99_INCREASE,
    MAX_SURGE,
];

/// Latency differences under this are not judged against the previous revision: the
/// histograms the p99 comes from are not finer than that at small latencies.
pub const P99_SLACK: Duration = Duration::from_millis(5);

/// The gates every step is judged by.
#[derive(Clone, Debug, PartialEq)]
pub struct Gates {
    /// Requests before a verdict.
    pub min_requests: u64,
    /// Lowest success rate, a fraction.
    pub min_success_rate: f64,
    /// Highest p99.
    pub max_p99: Option<Duration>,
    /// Highest model error rate, a fraction (applied to InferenceServices' components).
    pub max_model_error_rate: f64,
    /// Largest fall of the success rate below the baseline's, a fraction.
    pub max_success_rate_drop: f64,
    /// Largest rise of the p99 over the baseline's, a fraction.
    pub max_p99_increase: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            min_requests: 20,
            min_success_rate: 0.99,
            max_p99: None,
            max_model_error_rate: 0.01,
            max_success_rate_drop: 0.01,
            max_p99_increase: 0.5,
        }
    }
}

/// An SLO-gated rollout as the annotations ask for it.
#[derive(Clone, Debug, PartialEq)]
pub struct SloRollout {
    /// Percent of the target's share at each step, increasing, the last 100.
    pub steps: Vec<i64>,
    /// Each step's length.
    pub interval: Duration,
    /// What a step must pass.
    pub gates: Gates,
    /// Replicas the new revision may run while judged.
    pub max_surge: Option<u32>,
}

/// An annotation's field path, as errors name it.
pub fn path(annotation: &str) -> String {
    format!("metadata.annotations[{annotation:?}]")
}

fn percent(value: &str) -> Result<f64, String> {
    let number = value.trim().trim_end_matches('%').trim();
    match number.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(format!(
            "invalid value: {value:?}: want a percentage from 0 to 100 (e.g. \"99\" or \"99.5%\")"
        )),
    }
}

fn duration(value: &str) -> Result<Duration, String> {
    match parse_go_duration(value.trim()) {
        Some(GoDuration::Positive(d)) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "invalid value: {value:?}: want a positive duration (e.g. \"30s\", \"500ms\")"
        )),
    }
}

fn count(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= 1_000_000)
        .ok_or_else(|| format!("invalid value: {value:?}: want a whole number from 0 to 1000000"))
}

fn steps(value: &str) -> Result<Vec<i64>, String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid value: {value:?}: {why} (e.g. \"5,20,50,100\")"
        ))
    };
    let mut out = Vec::new();
    for part in value.split(',') {
        match part.trim().trim_end_matches('%').parse::<i64>() {
            Ok(p) if (1..=100).contains(&p) => out.push(p),
            _ => return bad("each step is a percentage from 1 to 100"),
        }
    }
    if out.len() > 20 {
        return bad("at most 20 steps");
    }
    if out.windows(2).any(|w| w[0] >= w[1]) {
        return bad("steps must increase");
    }
    if out.last() != Some(&100) {
        return bad("the last step must be 100");
    }
    Ok(out)
}

/// The SLO-gated rollout the annotations ask for: `Ok(None)` without `rollout-steps`;
/// otherwise every invalid annotation as `(field path, message)`.
pub fn slo_rollout(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<SloRollout>, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let field = |name: &'static str| annotations.get(name).map(|v| (name, v.as_str()));
    let Some(steps_value) = annotations.get(STEPS) else {
        for name in ALL.iter().skip(1) {
            if annotations.contains_key(*name) {
                errors.push((
                    path(name),
                    format!("only used with {STEPS:?}, which is not set"),
                ));
            }
        }
        return if errors.is_empty() {
            Ok(None)
        } else {
            Err(errors)
        };
    };
    let mut note = |name: &str, e: String| errors.push((path(name), e));
    let steps = steps(steps_value).unwrap_or_else(|e| {
        note(STEPS, e);
        vec![100]
    });
    if annotations.contains_key(crate::rollout::ROLLOUT_DURATION) {
        note(
            STEPS,
            format!(
                "cannot be used with {:?}: choose a timed rollout or an SLO-gated one",
                crate::rollout::ROLLOUT_DURATION
            ),
        );
    }
    let mut rollout = SloRollout {
        steps,
        interval: Duration::from_secs(60),
        gates: Gates::default(),
        max_surge: None,
    };
    let g = &mut rollout.gates;
    if let Some((name, value)) = field(INTERVAL) {
        duration(value).map_or_else(|e| note(name, e), |d| rollout.interval = d);
    }
    if let Some((name, value)) = field(MIN_REQUESTS) {
        count(value).map_or_else(|e| note(name, e), |n| g.min_requests = n);
    }
    if let Some((name, value)) = field(MIN_SUCCESS_RATE) {
        percent(value).map_or_else(|e| note(name, e), |p| g.min_success_rate = p);
    }
    if let Some((name, value)) = field(MAX_P99_LATENCY) {
        duration(value).map_or_else(|e| note(name, e), |d| g.max_p99 = Some(d));
    }
    if let Some((name, value)) = field(MAX_MODEL_ERROR_RATE) {
        percent(value).map_or_else(|e| note(name, e), |p| g.max_model_error_rate = p);
    }
    if let Some((name, value)) = field(MAX_SUCCESS_RATE_DROP) {
        percent(value).map_or_else(|e| note(name, e), |p| g.max_success_rate_drop = p);
    }
    if let Some((name, value)) = field(MAX_P99_INCREASE) {
        match value.trim().trim_end_matches('%').parse::<f64>() {
            Ok(p) if (0.0..=10_000.0).contains(&p) => g.max_p99_increase = p / 100.0,
            _ => note(
                name,
                format!("invalid value: {value:?}: want a percentage from 0 to 10000"),
            ),
        }
    }
    if let Some((name, value)) = field(MAX_SURGE) {
        match count(value).map(u32::try_from) {
            Ok(Ok(n)) if n >= 1 => rollout.max_surge = Some(n),
            _ => note(
                name,
                format!("invalid value: {value:?}: want a number of replicas, at least 1"),
            ),
        }
    }
    if errors.is_empty() {
        Ok(Some(rollout))
    } else {
        Err(errors)
    }
}

/// Records an error at each invalid annotation's path.
pub fn validate(v: &mut Validator, annotations: &BTreeMap<String, String>) {
    if let Err(errors) = slo_rollout(annotations) {
        for (path, message) in errors {
            v.error(path, message);
        }
    }
}

/// Where an SLO-gated rollout stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    /// Moving through the steps.
    #[default]
    Progressing,
    /// Every step passed: the new revision has the whole share.
    Promoted,
    /// A gate failed: the previous revision has the whole share again.
    RolledBack,
}

/// One revision's numbers over a step's interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// The model's own failures.
    pub model_errors: u64,
    /// p99 latency in microseconds (none without requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
}

impl Measured {
    /// Success rate, a fraction (1 without requests).
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            1.0 - self.errors as f64 / self.requests as f64
        }
    }

    /// Model error rate, a fraction.
    pub fn model_error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.model_errors as f64 / self.requests as f64
        }
    }
}

/// The verdict on one step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepVerdict {
    /// The step's share, percent.
    pub percent: i64,
    /// Whether every gate passed.
    pub passed: bool,
    /// When it was judged, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The new revision's numbers.
    pub canary: Measured,
    /// The previous revision's numbers over the same interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Measured>,
    /// Each gate that failed, with its numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// Counters at the start of a step's measuring window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Which counters (the process that counts; a new one restarts the window).
    pub source: String,
    /// When the window started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// The new revision's counters then.
    pub canary: Counts,
    /// The previous revision's counters then.
    pub baseline: Counts,
}

/// `status.rolloutAnalysis` of a Route: an SLO-gated rollout of its `latestRevision` target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// The configuration the target follows.
    pub configuration_name: String,
    /// The target's tag, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The target's whole share.
    pub percent: i64,
    /// The revision that had the share before (the baseline).
    pub baseline: String,
    /// The revision being rolled out.
    pub canary: String,
    /// The steps, percent of the share.
    pub steps: Vec<i64>,
    /// Index of the current step.
    pub step: u32,
    /// Where it stands.
    pub phase: RolloutPhase,
    /// When the rollout started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// The current step's measuring window (none until the first counters are read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The verdicts so far, one per judged step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<StepVerdict>,
    /// What is happening, in words.
    #[serde(default)]
    pub message: String,
}

impl RolloutAnalysis {
    /// The canary's share now, percent of the route.
    pub fn canary_percent(&self) -> i64 {
        match self.phase {
            RolloutPhase::Promoted => self.percent,
            RolloutPhase::RolledBack => 0,
            RolloutPhase::Progressing => {
                let step = self.steps.get(self.step as usize).copied().unwrap_or(100);
                (self.percent * step / 100).clamp(1.min(self.percent), self.percent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_the_annotations_with_defaults() {
        assert_eq!(slo_rollout(&BTreeMap::new()), Ok(None));
        let r = slo_rollout(&ann(&[(STEPS, "5, 20,50%,100")]))
            .unwrap()
            .unwrap();
        assert_eq!(r.steps, [5, 20, 50, 100]);
        assert_eq!(r.interval, Duration::from_secs(60));
        assert_eq!(r.gates, Gates::default());
        let r = slo_rollout(&ann(&[
            (STEPS, "100"),
            (INTERVAL, "30s"),
            (MIN_REQUESTS, "50"),
            (MIN_SUCCESS_RATE, "99.5%"),
            (MAX_P99_LATENCY, "250ms"),
            (MAX_MODEL_ERROR_RATE, "0.1"),
            (MAX_SUCCESS_RATE_DROP, "0"),
            (MAX_P99_INCREASE, "200"),
            (MAX_SURGE, "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(r.interval, Duration::from_secs(30));
        assert_eq!(r.gates.min_requests, 50);
        assert!((r.gates.min_success_rate - 0.995).abs() < 1e-12);
        assert_eq!(r.gates.max_p99, Some(Duration::from_millis(250)));
        assert!((r.gates.max_model_error_rate - 0.001).abs() < 1e-12);
        assert_eq!(r.gates.max_success_rate_drop, 0.0);
        assert!((r.gates.max_p99_increase - 2.0).abs() < 1e-12);
        assert_eq!(r.max_surge, Some(2));
    }

    #[test]
    fn refuses_bad_values_naming_the_annotation() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (&[(STEPS, "5,20,50")], STEPS, "the last step must be 100"),
            (&[(STEPS, "20,5,100")], STEPS, "steps must increase"),
            (&[(STEPS, "0,100")], STEPS, "from 1 to 100"),
            (&[(STEPS, "soon")], STEPS, "from 1 to 100"),
            (
                &[(STEPS, "100"), (INTERVAL, "0s")],
                INTERVAL,
                "positive duration",
            ),
            (
                &[(STEPS, "100"), (MIN_SUCCESS_RATE, "101")],
                MIN_SUCCESS_RATE,
                "0 to 100",
            ),
            (
                &[(STEPS, "100"), (MIN_REQUESTS, "-1")],
                MIN_REQUESTS,
                "whole number",
            ),
            (&[(STEPS, "100"), (MAX_SURGE, "0")], MAX_SURGE, "at least 1"),
            (&[(MIN_REQUESTS, "5")], MIN_REQUESTS, "which is not set"),
            (
                &[(STEPS, "100"), (crate::rollout::ROLLOUT_DURATION, "60s")],
                STEPS,
                "cannot be used with",
            ),
        ];
        for (pairs, name, want) in cases {
            let mut v = Validator::default();
            validate(&mut v, &ann(pairs));
            let errors = v.finish().unwrap_err();
            assert_eq!(errors[0].path, path(name), "{pairs:?}");
            assert!(
                errors[0].message.contains(want),
                "{pairs:?}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn canary_share_follows_the_step_and_phase() {
        let mut a = RolloutAnalysis {
            percent: 100,
            steps: vec![5, 20, 100],
            ..RolloutAnalysis::default()
        };
        assert_eq!(a.canary_percent(), 5);
        a.step = 1;
        a.percent = 50;
        assert_eq!(a.canary_percent(), 10);
        a.percent = 4;
        a.step = 0;
        assert_eq!(a.canary_percent(), 1);
        a.phase = RolloutPhase::Promoted;
        assert_eq!(a.canary_percent(), 4);
        a.phase = RolloutPhase::RolledBack;
        assert_eq!(a.canary_percent(), 0);
    }
}
