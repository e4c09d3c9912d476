//! `autoscaling.knative.dev/*` annotations (and Sluice's `autoscaling.sluice.dev/policy`):
//! parsing, defaulting and validation into the [`RevisionScaling`] the autoscaler consumes.
//!
//! Ranges, error texts and field paths follow Knative's `pkg/apis/autoscaling` validation:
//! `invalid value: X`, `expected LO <= X <= HI`, `max-scale=A is less than min-scale=B`, at
//! `metadata.annotations.<key>`. Go durations are parsed and printed as Go does (`1h0m0s`).

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::{RevisionScaling, ScaleMetric, ScalePolicy};

use crate::validation::{ValidationError, Validator};

/// Annotation prefix of Knative's per-revision autoscaling knobs.
pub const PREFIX: &str = "autoscaling.knative.dev/";
/// `min-scale`.
pub const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
/// `max-scale`.
pub const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
/// `target`.
pub const TARGET: &str = "autoscaling.knative.dev/target";
/// `metric`.
pub const METRIC: &str = "autoscaling.knative.dev/metric";
/// `window`.
pub const WINDOW: &str = "autoscaling.knative.dev/window";
/// `class`.
pub const CLASS: &str = "autoscaling.knative.dev/class";
/// Sluice's policy annotation: `kpa` (default) or `pattern`.
pub const POLICY: &str = "autoscaling.sluice.dev/policy";

/// The KPA class value.
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
/// The HPA class value.
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";

const WINDOW_MIN: Duration = Duration::from_secs(6);
const WINDOW_MAX: Duration = Duration::from_secs(3600);

/// The cluster-wide autoscaler settings apply-time validation depends on (Knative's
/// `config-autoscaler` ConfigMap). `Default` is upstream's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `allow-zero-initial-scale`: whether `initial-scale: 0` may be applied (upstream: false).
    pub allow_zero_initial_scale: bool,
}

/// Each knob with its accepted spellings, preferred first (Knative's `kmap.KeyPriority`).
const KNOBS: &[(&str, &[&str])] = &[
    ("min-scale", &["min-scale", "minScale"]),
    ("max-scale", &["max-scale", "maxScale"]),
    ("initial-scale", &["initial-scale", "initialScale"]),
    ("activation-scale", &["activation-scale"]),
    ("target", &["target"]),
    (
        "target-utilization-percentage",
        &[
            "target-utilization-percentage",
            "targetUtilizationPercentage",
        ],
    ),
    (
        "target-burst-capacity",
        &["target-burst-capacity", "targetBurstCapacity"],
    ),
    (
        "panic-window-percentage",
        &["panic-window-percentage", "panicWindowPercentage"],
    ),
    (
        "panic-threshold-percentage",
        &["panic-threshold-percentage", "panicThresholdPercentage"],
    ),
    ("window", &["window"]),
    ("metric", &["metric"]),
    ("class", &["class"]),
    ("scale-down-delay", &["scale-down-delay"]),
    (
        "scale-to-zero-pod-retention-period",
        &["scale-to-zero-pod-retention-period"],
    ),
    (
        "metric-aggregation-algorithm",
        &["metric-aggregation-algorithm"],
    ),
];

/// The field path of an annotation, as Knative reports it.
pub fn path(key: &str) -> String {
    format!("metadata.annotations.{key}")
}

/// Looks a knob up by its spellings: (full key found, value).
fn get<'a>(annotations: &'a BTreeMap<String, String>, knob: &str) -> Option<(String, &'a str)> {
    let (_, keys) = KNOBS.iter().find(|(k, _)| *k == knob)?;
    keys.iter().find_map(|k| {
        let full = format!("{PREFIX}{k}");
        annotations.get(&full).map(|v| (full, v.as_str()))
    })
}

/// Warnings for annotations that are accepted but cannot act in local mode (path, message).
pub fn annotation_warnings(annotations: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut warnings = Vec::new();
    if let Some((key, class)) = get(annotations, "class")
        && class != KPA_CLASS
    {
        warnings.push((
            path(&key),
            format!("{class:?} is not available in local mode; the KPA scales this revision"),
        ));
    }
    if let Some((key, metric)) = get(annotations, "metric")
        && !matches!(metric, "concurrency" | "rps")
    {
        warnings.push((
            path(&key),
            format!("{metric:?} needs a Kubernetes HPA; local mode scales on concurrency"),
        ));
    }
    warnings
}

/// Validates the autoscaling annotations of an object by the rules that hold whatever the
/// cluster's settings; [`validate_for_cluster`] adds those that depend on them.
pub fn validate_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<(), Vec<ValidationError>> {
    scaling_from_annotations(annotations, 0).map(|_| ())
}

/// The rules that depend on the cluster's [`ClusterConfig`]: `initial-scale: 0` is refused
/// unless `allow-zero-initial-scale` is on, with Knative's path and message. Paths are
/// relative to the object whose metadata holds `annotations`.
pub fn validate_for_cluster(
    annotations: &BTreeMap<String, String>,
    config: &ClusterConfig,
) -> Result<(), Vec<ValidationError>> {
    let mut v = Validator::default();
    if let Some((key, value)) = get(annotations, "initial-scale")
        && !config.allow_zero_initial_scale
        && value.parse::<i64>() == Ok(0)
    {
        v.error(
            format!("{}=0 not allowed by cluster", path(&key)),
            format!("invalid value: {value}"),
        );
    }
    v.finish()
}

fn invalid(v: &mut Validator, key: &str, value: &str) {
    v.error(path(key), format!("invalid value: {value}"));
}

/// Go's `strconv.ParseInt(v, 10, 32)`: `Err(true)` when out of the i32 range.
fn parse_i32(value: &str) -> Result<i32, bool> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(false);
    }
    value.parse::<i32>().map_err(|_| true)
}

/// Knative's `getIntGE0`: a non-negative int32.
fn int_ge0(v: &mut Validator, annotations: &BTreeMap<String, String>, knob: &str) -> u32 {
    let Some((key, value)) = get(annotations, knob) else {
        return 0;
    };
    match parse_i32(value) {
        Ok(n) if n >= 0 => n.unsigned_abs(),
        Ok(_) | Err(true) => {
            v.error(path(&key), format!("expected 0 <= {value} <= {}", i32::MAX));
            0
        }
        Err(false) => {
            invalid(v, &key, value);
            0
        }
    }
}

/// A finite float, or `None` after recording `invalid value`.
fn float(v: &mut Validator, key: &str, value: &str) -> Option<f64> {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() => Some(x),
        _ => {
            invalid(v, key, value);
            None
        }
    }
}

/// A float in `[lo, hi]` with Knative's out-of-bounds message.
fn bounded(
    v: &mut Validator,
    annotations: &BTreeMap<String, String>,
    knob: &str,
    lo: f64,
    hi: f64,
) -> Option<f64> {
    let (key, value) = get(annotations, knob)?;
    let x = float(v, &key, value)?;
    if x < lo || x > hi {
        v.error(path(&key), format!("expected {lo} <= {value} <= {hi}"));
        return None;
    }
    Some(x)
}

/// A Go duration in `[0, 1h]` with second precision (scale-down delay, retention).
fn duration_0_1h(
    v: &mut Validator,
    annotations: &BTreeMap<String, String>,
    knob: &str,
    whole_seconds: bool,
) -> Option<Duration> {
    let (key, value) = get(annotations, knob)?;
    match parse_go_duration(value) {
        None => invalid(v, &key, value),
        Some(GoDuration::Negative) => v.error(
            path(&key),
            format!("expected 0s <= {value} <= {}", fmt_go_duration(WINDOW_MAX)),
        ),
        Some(GoDuration::Positive(d)) if d > WINDOW_MAX => v.error(
            path(&key),
            format!("expected 0s <= {value} <= {}", fmt_go_duration(WINDOW_MAX)),
        ),
        Some(GoDuration::Positive(d)) if whole_seconds && d.subsec_nanos() != 0 => v.error(
            path(&key),
            "must be specified with at most second precision",
        ),
        Some(GoDuration::Positive(d)) => return Some(d),
    }
    None
}

/// Builds a revision's scaling parameters from its annotations and `containerConcurrency`,
/// refusing what Knative refuses whatever the cluster's settings. `initial-scale: 0` is
/// accepted here: whether the cluster allows it is decided once, at apply time, by
/// [`validate_for_cluster`], so an object in the store keeps the scale it was admitted with.
pub fn scaling_from_annotations(
    annotations: &BTreeMap<String, String>,
    container_concurrency: u32,
) -> Result<RevisionScaling, Vec<ValidationError>> {
    let mut v = Validator::default();
    let mut s = RevisionScaling {
        container_concurrency,
        ..RevisionScaling::default()
    };

    // class: a value in Knative's domain must be one Knative knows.
    let class = get(annotations, "class");
    if let Some((key, value)) = &class
        && value.ends_with("autoscaling.knative.dev")
        && *value != KPA_CLASS
        && *value != HPA_CLASS
    {
        invalid(&mut v, key, value);
    }
    let is_kpa = class.as_ref().is_none_or(|(_, c)| *c == KPA_CLASS);

    scale_bounds(&mut v, annotations, &mut s);
    let has_target = float_knobs(&mut v, annotations, &mut s);
    windows(&mut v, annotations, &mut s);
    metric_and_policy(&mut v, annotations, &mut s, is_kpa);

    // Defaults that depend on other knobs: rps target 200; containerConcurrency caps.
    if s.metric == ScaleMetric::Rps && !has_target {
        s.target = 200.0;
    }
    if container_concurrency > 0 {
        s.target = if !has_target {
            f64::from(container_concurrency)
        } else {
            s.target.min(f64::from(container_concurrency))
        };
    }
    v.finish().map(|()| s)
}

/// min-scale, max-scale and activation-scale, and how they bound each other.
fn scale_bounds(
    v: &mut Validator,
    annotations: &BTreeMap<String, String>,
    s: &mut RevisionScaling,
) {
    s.min_scale = int_ge0(v, annotations, "min-scale");
    s.max_scale = int_ge0(v, annotations, "max-scale");
    if s.max_scale != 0 && s.max_scale < s.min_scale {
        v.error(
            format!(
                "{}, {}",
                path(&get(annotations, "max-scale").map_or(MAX_SCALE.into(), |(k, _)| k)),
                path(&get(annotations, "min-scale").map_or(MIN_SCALE.into(), |(k, _)| k)),
            ),
            format!(
                "max-scale={} is less than min-scale={}",
                s.max_scale, s.min_scale
            ),
        );
    }
    if let Some((key, value)) = get(annotations, "activation-scale") {
        match parse_i32(value) {
            Err(_) => invalid(v, &key, value),
            Ok(n) if i64::from(s.min_scale) > i64::from(n) => v.error(
                path(&key),
                format!(
                    "min-scale={} is greater than min-activate-scale={n}",
                    s.min_scale
                ),
            ),
            Ok(n) if s.max_scale != 0 && i64::from(s.max_scale) < i64::from(n) => v.error(
                path(&key),
                format!(
                    "max-scale={} is less than min-activate-scale={n}",
                    s.max_scale
                ),
            ),
            Ok(n) if n < 2 => v.error(
                path(&key),
                format!("min-activate-scale={n} must be greater than 1"),
            ),
            Ok(n) => s.activation_scale = n.unsigned_abs(),
        }
    }
}

/// The panic window and threshold, the target, target utilization and burst capacity;
/// whether a target was given.
fn float_knobs(
    v: &mut Validator,
    annotations: &BTreeMap<String, String>,
    s: &mut RevisionScaling,
) -> bool {
    if let Some(x) = bounded(v, annotations, "panic-window-percentage", 1.0, 100.0) {
        s.panic_window_percentage = x;
    }
    if let Some(x) = bounded(v, annotations, "panic-threshold-percentage", 110.0, 1000.0) {
        s.panic_threshold_percentage = x;
    }
    let target = get(annotations, "target");
    if let Some((key, value)) = &target
        && let Some(x) = float(v, key, value)
    {
        if x < 0.01 {
            v.error(path(key), format!("target {value} should be at least 0.01"));
        } else {
            s.target = x;
        }
    }
    if let Some(x) = bounded(v, annotations, "target-utilization-percentage", 1.0, 100.0) {
        s.target_utilization = x / 100.0;
    }
    if let Some((key, value)) = get(annotations, "target-burst-capacity") {
        match value.parse::<f64>() {
            Ok(x) if x.is_finite() && (x >= 0.0 || x == -1.0) => s.target_burst_capacity = x,
            _ => invalid(v, &key, value),
        }
    }

    target.is_some()
}

/// The stable window (6 s … 1 h, whole seconds; Knative reports it at the canonical key),
/// the scale-to-zero retention and the scale-down delay.
fn windows(v: &mut Validator, annotations: &BTreeMap<String, String>, s: &mut RevisionScaling) {
    if let Some((_, value)) = get(annotations, "window") {
        match parse_go_duration(value) {
            None => invalid(v, WINDOW, value),
            Some(GoDuration::Positive(d)) if (WINDOW_MIN..=WINDOW_MAX).contains(&d) => {
                if d.subsec_nanos() != 0 {
                    v.error(
                        path(WINDOW),
                        "must be specified with at most second precision",
                    );
                } else {
                    s.stable_window = d;
                }
            }
            Some(_) => v.error(
                path(WINDOW),
                format!(
                    "expected {} <= {value} <= {}",
                    fmt_go_duration(WINDOW_MIN),
                    fmt_go_duration(WINDOW_MAX)
                ),
            ),
        }
    }
    if let Some(d) = duration_0_1h(v, annotations, "scale-to-zero-pod-retention-period", false) {
        s.scale_to_zero_retention = d;
    }
    if let Some(d) = duration_0_1h(v, annotations, "scale-down-delay", true) {
        s.scale_down_delay = d;
    }
}

/// The metric (the KPA scales on concurrency or rps; other classes are left alone), the
/// aggregation algorithm, initial-scale and Sluice's scaling policy.
fn metric_and_policy(
    v: &mut Validator,
    annotations: &BTreeMap<String, String>,
    s: &mut RevisionScaling,
    is_kpa: bool,
) {
    if let Some((_, metric)) = get(annotations, "metric") {
        match (metric, is_kpa) {
            ("concurrency", _) => s.metric = ScaleMetric::Concurrency,
            ("rps", _) => s.metric = ScaleMetric::Rps,
            (_, true) => invalid(v, METRIC, metric),
            (_, false) => {}
        }
    }
    if is_kpa
        && let Some((key, value)) = get(annotations, "metric-aggregation-algorithm")
        && !matches!(
            value,
            "linear" | "weightedExponential" | "weightedExponentialAlt"
        )
    {
        invalid(v, &key, value);
    }

    // initial-scale.
    if let Some((key, value)) = get(annotations, "initial-scale") {
        match value.parse::<i64>() {
            Err(_) => invalid(v, &key, value),
            Ok(n) if n < 0 => v.error(
                format!("{} must be greater than 0", path(&key)),
                format!("invalid value: {value}"),
            ),
            Ok(n) => s.initial_scale = u32::try_from(n).unwrap_or(u32::MAX),
        }
    }

    // Sluice's policy.
    if let Some(value) = annotations.get(POLICY) {
        match value.as_str() {
            "kpa" => s.policy = ScalePolicy::Kpa,
            "pattern" => s.policy = ScalePolicy::Pattern,
            other => v.error(
                path(POLICY),
                format!("invalid value: {other} (expected kpa or pattern)"),
            ),
        }
    }
}

/// A parsed Go duration: negative ones are valid Go but out of every range here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoDuration {
    /// Zero or more.
    Positive(Duration),
    /// Less than zero.
    Negative,
}

/// Parses a Go `time.ParseDuration` string such as `60s`, `1m30s`, `1h`, `500ms`, `-1s`,
/// `0`. `None` when Go would refuse it.
pub fn parse_go_duration(text: &str) -> Option<GoDuration> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(GoDuration::Positive(Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(Duration::try_from_secs_f64(number * secs).ok()?)?;
    }
    Some(if negative && !total.is_zero() {
        GoDuration::Negative
    } else {
        GoDuration::Positive(total)
    })
}

/// Formats a whole-second duration as Go's `Duration.String` does (`6s`, `1m0s`, `1h0m0s`).
pub fn fmt_go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| {
                let key = if k.contains('/') {
                    (*k).to_owned()
                } else {
                    format!("{PREFIX}{k}")
                };
                (key, (*v).to_owned())
            })
            .collect()
    }

    fn errors(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        scaling_from_annotations(&ann(pairs), 0)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    fn one(path: &str, message: &str) -> Vec<(String, String)> {
        vec![(path.to_owned(), message.to_owned())]
    }

    #[test]
    fn defaults_match_knative() {
        let s = scaling_from_annotations(&BTreeMap::new(), 0).unwrap();
        assert_eq!(s.stable_window, Duration::from_secs(60));
        assert_eq!(s.target, 100.0);
        assert_eq!(s.effective_target(), 70.0);
        assert_eq!(s.min_scale, 0);
        assert_eq!(s.panic_threshold_percentage, 200.0);
        assert_eq!(s.target_burst_capacity, 211.0);
        assert_eq!(s.policy, ScalePolicy::Kpa);
    }

    #[test]
    fn every_knob_maps() {
        let s = scaling_from_annotations(
            &ann(&[
                ("min-scale", "1"),
                ("maxScale", "9"),
                ("initial-scale", "2"),
                ("activation-scale", "3"),
                ("target", "50"),
                ("target-utilization-percentage", "80"),
                ("target-burst-capacity", "-1"),
                ("panic-window-percentage", "20"),
                ("panic-threshold-percentage", "300"),
                ("window", "1m30s"),
                ("metric", "rps"),
                ("scale-down-delay", "15s"),
                ("scale-to-zero-pod-retention-period", "1m"),
                (POLICY, "pattern"),
            ]),
            0,
        )
        .unwrap();
        assert_eq!((s.min_scale, s.max_scale, s.initial_scale), (1, 9, 2));
        assert_eq!(s.activation_scale, 3);
        assert_eq!((s.target, s.target_utilization), (50.0, 0.8));
        assert_eq!(s.target_burst_capacity, -1.0);
        assert_eq!(s.panic_window_percentage, 20.0);
        assert_eq!(s.panic_threshold_percentage, 300.0);
        assert_eq!(s.stable_window, Duration::from_secs(90));
        assert_eq!(s.metric, ScaleMetric::Rps);
        assert_eq!(s.scale_down_delay, Duration::from_secs(15));
        assert_eq!(s.scale_to_zero_retention, Duration::from_secs(60));
        assert_eq!(s.policy, ScalePolicy::Pattern);
    }

    #[test]
    fn rps_default_target_and_container_concurrency_cap() {
        let s = scaling_from_annotations(&ann(&[("metric", "rps")]), 0).unwrap();
        assert_eq!(s.target, 200.0);
        let s = scaling_from_annotations(&BTreeMap::new(), 10).unwrap();
        assert_eq!(s.target, 10.0);
        let s = scaling_from_annotations(&ann(&[("target", "50")]), 10).unwrap();
        assert_eq!(s.target, 10.0);
    }

    #[test]
    fn window_errors_as_upstream() {
        let w = "metadata.annotations.autoscaling.knative.dev/window";
        assert_eq!(
            errors(&[("window", "5s")]),
            one(w, "expected 6s <= 5s <= 1h0m0s")
        );
        assert_eq!(
            errors(&[("window", "2h")]),
            one(w, "expected 6s <= 2h <= 1h0m0s")
        );
        assert_eq!(
            errors(&[("window", "6500ms")]),
            one(w, "must be specified with at most second precision")
        );
        assert_eq!(errors(&[("window", "soon")]), one(w, "invalid value: soon"));
        assert_eq!(errors(&[("window", "10")]), one(w, "invalid value: 10"));
    }

    #[test]
    fn percentages_and_targets_as_upstream() {
        assert_eq!(
            errors(&[("panic-threshold-percentage", "50")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/panic-threshold-percentage",
                "expected 110 <= 50 <= 1000"
            )
        );
        assert_eq!(
            errors(&[("panicWindowPercentage", "0.5")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/panicWindowPercentage",
                "expected 1 <= 0.5 <= 100"
            )
        );
        assert_eq!(
            errors(&[("target-utilization-percentage", "101")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/target-utilization-percentage",
                "expected 1 <= 101 <= 100"
            )
        );
        assert_eq!(
            errors(&[("target", "0")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/target",
                "target 0 should be at least 0.01"
            )
        );
        assert_eq!(
            errors(&[("target", "lots")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/target",
                "invalid value: lots"
            )
        );
        assert_eq!(
            errors(&[("target-burst-capacity", "-2")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/target-burst-capacity",
                "invalid value: -2"
            )
        );
    }

    #[test]
    fn scale_bounds_as_upstream() {
        assert_eq!(
            errors(&[("min-scale", "4"), ("max-scale", "3")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/max-scale, \
                 metadata.annotations.autoscaling.knative.dev/min-scale",
                "max-scale=3 is less than min-scale=4"
            )
        );
        assert_eq!(
            errors(&[("min-scale", "-1")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/min-scale",
                "expected 0 <= -1 <= 2147483647"
            )
        );
        assert_eq!(
            errors(&[("max-scale", "three")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/max-scale",
                "invalid value: three"
            )
        );
        assert_eq!(
            errors(&[("min-scale", "99999999999")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/min-scale",
                "expected 0 <= 99999999999 <= 2147483647"
            )
        );
        assert_eq!(
            errors(&[("activation-scale", "1")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/activation-scale",
                "min-activate-scale=1 must be greater than 1"
            )
        );
        assert_eq!(
            errors(&[("min-scale", "3"), ("activation-scale", "2")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/activation-scale",
                "min-scale=3 is greater than min-activate-scale=2"
            )
        );
    }

    #[test]
    fn zero_initial_scale_only_when_the_cluster_allows_it() {
        let upstream = ClusterConfig::default();
        let allowed = ClusterConfig {
            allow_zero_initial_scale: true,
        };
        for spelling in ["initial-scale", "initialScale"] {
            let zero = ann(&[(spelling, "0")]);
            let refused: Vec<(String, String)> = validate_for_cluster(&zero, &upstream)
                .unwrap_err()
                .into_iter()
                .map(|e| (e.path, e.message))
                .collect();
            assert_eq!(
                refused,
                one(
                    &format!(
                        "metadata.annotations.autoscaling.knative.dev/{spelling}=0 not allowed by cluster"
                    ),
                    "invalid value: 0"
                )
            );
            assert_eq!(validate_for_cluster(&zero, &allowed), Ok(()));
            // Once admitted, the revision starts at zero.
            assert_eq!(scaling_from_annotations(&zero, 0).unwrap().initial_scale, 0);
        }
        // Other values do not depend on the setting.
        for value in ["1", "3"] {
            let a = ann(&[("initial-scale", value)]);
            assert_eq!(validate_for_cluster(&a, &upstream), Ok(()));
            assert_eq!(validate_for_cluster(&BTreeMap::new(), &upstream), Ok(()));
        }
        assert_eq!(
            errors(&[("initial-scale", "-1")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/initial-scale must be greater than 0",
                "invalid value: -1"
            )
        );
    }

    #[test]
    fn durations_metric_class_policy() {
        assert_eq!(
            errors(&[("scale-down-delay", "2h")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/scale-down-delay",
                "expected 0s <= 2h <= 1h0m0s"
            )
        );
        assert_eq!(
            errors(&[("scale-down-delay", "1.5s")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/scale-down-delay",
                "must be specified with at most second precision"
            )
        );
        assert_eq!(
            errors(&[("scale-to-zero-pod-retention-period", "-1s")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/scale-to-zero-pod-retention-period",
                "expected 0s <= -1s <= 1h0m0s"
            )
        );
        assert_eq!(
            errors(&[("metric", "cpu")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/metric",
                "invalid value: cpu"
            )
        );
        // Under the HPA class, cpu is valid (and warned about: local mode has no HPA).
        let a = ann(&[("class", HPA_CLASS), ("metric", "cpu")]);
        assert!(scaling_from_annotations(&a, 0).is_ok());
        assert_eq!(annotation_warnings(&a).len(), 2);
        assert_eq!(
            errors(&[("class", "xpa.autoscaling.knative.dev")]),
            one(
                "metadata.annotations.autoscaling.knative.dev/class",
                "invalid value: xpa.autoscaling.knative.dev"
            )
        );
        assert_eq!(
            errors(&[(POLICY, "psychic")]),
            one(
                "metadata.annotations.autoscaling.sluice.dev/policy",
                "invalid value: psychic (expected kpa or pattern)"
            )
        );
    }

    #[test]
    fn bad_annotations_are_refused_at_apply_time() {
        let yaml = r#"
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  annotations:
    autoscaling.knative.dev/window: "5s"
    autoscaling.knative.dev/panic-threshold-percentage: "50"
    autoscaling.knative.dev/min-scale: "4"
    autoscaling.knative.dev/max-scale: "3"
    autoscaling.knative.dev/target: "ten"
spec:
  predictor:
    model:
      modelFormat: {name: sluice-mlp}
      storageUri: /models/iris
"#;
        let errors = crate::parse_manifests(
            yaml,
            "iris.yaml",
            std::path::Path::new("/"),
            &ClusterConfig::default(),
        )
        .unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let a = "metadata.annotations.autoscaling.knative.dev";
        let p = format!("iris.yaml: document 1: {a}");
        for want in [
            format!("{p}/max-scale, {a}/min-scale: max-scale=3 is less than min-scale=4"),
            format!("{p}/panic-threshold-percentage: expected 110 <= 50 <= 1000"),
            format!("{p}/target: invalid value: ten"),
            format!("{p}/window: expected 6s <= 5s <= 1h0m0s"),
        ] {
            assert!(shown.contains(&want), "{want}\n not in {shown:#?}");
        }
    }

    #[test]
    fn all_errors_reported_at_once() {
        let e = errors(&[("window", "5s"), ("panic-threshold-percentage", "50")]);
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn go_durations() {
        let p = |s| parse_go_duration(s);
        assert_eq!(
            p("500ms"),
            Some(GoDuration::Positive(Duration::from_millis(500)))
        );
        assert_eq!(
            p("1h"),
            Some(GoDuration::Positive(Duration::from_secs(3600)))
        );
        assert_eq!(
            p("1.5m"),
            Some(GoDuration::Positive(Duration::from_secs(90)))
        );
        assert_eq!(p("0"), Some(GoDuration::Positive(Duration::ZERO)));
        assert_eq!(p("-3s"), Some(GoDuration::Negative));
        assert_eq!(p("10"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("1x"), None);
        assert_eq!(fmt_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(fmt_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(fmt_go_duration(Duration::from_secs(6)), "6s");
    }
}
