//! `autoscaling.knative.dev/*` annotations: parsing, defaulting and validation into the
//! [`RevisionScaling`] the autoscaler consumes.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::{RevisionScaling, ScaleMetric};

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

const MIN_WINDOW: Duration = Duration::from_secs(6);
const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// Knobs upstream has that this build accepts and keeps but does not act on yet.
const NOT_ACTED_ON: &[(&str, &str)] = &[
    (
        "panic-window-percentage",
        "panic mode arrives with the full KPA",
    ),
    (
        "panic-threshold-percentage",
        "panic mode arrives with the full KPA",
    ),
    (
        "scale-down-delay",
        "scale-down delay arrives with the full KPA",
    ),
    (
        "scale-to-zero-pod-retention-period",
        "pod retention arrives with the full KPA",
    ),
];

/// Warnings for annotations that are kept but not acted on (path, message).
pub fn annotation_warnings(annotations: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut warnings = Vec::new();
    for key in annotations.keys() {
        let Some(knob) = key.strip_prefix(PREFIX) else {
            continue;
        };
        if let Some((_, why)) = NOT_ACTED_ON.iter().find(|(k, _)| *k == knob) {
            warnings.push((
                format!("metadata.annotations[{key}]"),
                format!("kept, but not acted on by this build: {why}"),
            ));
        }
        if knob == "class" && annotations[key] != "kpa.autoscaling.knative.dev" {
            warnings.push((
                format!("metadata.annotations[{key}]"),
                format!(
                    "{:?} is not available in local mode; the KPA scales this revision",
                    annotations[key]
                ),
            ));
        }
    }
    warnings
}

/// Validates the autoscaling annotations of an object.
pub fn validate_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<(), Vec<ValidationError>> {
    scaling_from_annotations(annotations, 0).map(|_| ())
}

/// Builds a revision's scaling parameters from its annotations and `containerConcurrency`.
pub fn scaling_from_annotations(
    annotations: &BTreeMap<String, String>,
    container_concurrency: u32,
) -> Result<RevisionScaling, Vec<ValidationError>> {
    let mut v = Validator::default();
    let mut s = RevisionScaling {
        container_concurrency,
        ..RevisionScaling::default()
    };
    let path = |key: &str| format!("metadata.annotations[{key}]");

    for (key, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
        let knob = &key[PREFIX.len()..];
        let p = path(key);
        match knob {
            "min-scale" | "minScale" => int(&mut v, &p, value, 0, i32::MAX, |n| s.min_scale = n),
            "max-scale" | "maxScale" => int(&mut v, &p, value, 0, i32::MAX, |n| s.max_scale = n),
            "initial-scale" => int(&mut v, &p, value, 0, i32::MAX, |n| s.initial_scale = n),
            "activation-scale" => int(&mut v, &p, value, 1, i32::MAX, |n| s.activation_scale = n),
            "target" => float(&mut v, &p, value, 0.01, f64::MAX, |x| s.target = x),
            "target-utilization-percentage" => float(&mut v, &p, value, 1.0, 100.0, |x| {
                s.target_utilization = x / 100.0
            }),
            "panic-window-percentage" => float(&mut v, &p, value, 1.0, 100.0, |x| {
                s.panic_window_percentage = x
            }),
            "panic-threshold-percentage" => float(&mut v, &p, value, 110.0, 1000.0, |x| {
                s.panic_threshold_percentage = x
            }),
            "target-burst-capacity" => match value.trim().parse::<f64>() {
                Ok(x) if x >= 0.0 || x == -1.0 => s.target_burst_capacity = x,
                _ => v.error(&p, format!("{value:?} must be -1 or a number >= 0")),
            },
            "metric" => match value.as_str() {
                "concurrency" => s.metric = ScaleMetric::Concurrency,
                "rps" => s.metric = ScaleMetric::Rps,
                other => v.error(
                    &p,
                    format!("{other:?} is not a metric local mode scales on (concurrency, rps)"),
                ),
            },
            "window" => match parse_go_duration(value) {
                Some(d) if (MIN_WINDOW..=MAX_WINDOW).contains(&d) && d.subsec_nanos() == 0 => {
                    s.stable_window = d
                }
                Some(d) => v.error(
                    &p,
                    format!("expected 6s <= {} <= 1h, in whole seconds", fmt_duration(d)),
                ),
                None => v.error(&p, format!("{value:?} is not a duration such as 60s or 1m")),
            },
            // Knobs that exist upstream but are not acted on in this build are accepted.
            _ => {}
        }
    }
    if s.metric == ScaleMetric::Rps && !annotations.contains_key(TARGET) {
        s.target = 200.0;
    }
    if container_concurrency > 0 && !annotations.contains_key(TARGET) {
        s.target = f64::from(container_concurrency);
    } else if container_concurrency > 0 {
        s.target = s.target.min(f64::from(container_concurrency));
    }
    if s.max_scale > 0 && s.min_scale > s.max_scale {
        v.error(
            path(MIN_SCALE),
            format!(
                "min-scale ({}) must be <= max-scale ({})",
                s.min_scale, s.max_scale
            ),
        );
    }
    v.finish().map(|()| s)
}

fn int(v: &mut Validator, path: &str, value: &str, min: i32, max: i32, set: impl FnOnce(u32)) {
    match value.trim().parse::<i32>() {
        Ok(n) if (min..=max).contains(&n) => set(n.unsigned_abs()),
        Ok(n) => v.error(path, format!("expected {min} <= {n}")),
        Err(_) => v.error(path, format!("{value:?} is not an integer")),
    }
}

fn float(v: &mut Validator, path: &str, value: &str, min: f64, max: f64, set: impl FnOnce(f64)) {
    match value.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= min && x <= max => set(x),
        Ok(x) => v.error(path, format!("expected {min} <= {x} <= {max}")),
        Err(_) => v.error(path, format!("{value:?} is not a number")),
    }
}

/// Parses a Go-style duration such as `60s`, `1m30s`, `1h`, `500ms`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * secs).ok()?;
    }
    Some(total)
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_match_knative() {
        let s = scaling_from_annotations(&BTreeMap::new(), 0).unwrap();
        assert_eq!(s.stable_window, Duration::from_secs(60));
        assert_eq!(s.target, 100.0);
        assert_eq!(s.effective_target(), 70.0);
        assert_eq!(s.min_scale, 0);
    }

    #[test]
    fn container_concurrency_caps_target() {
        assert_eq!(
            scaling_from_annotations(&BTreeMap::new(), 10)
                .unwrap()
                .target,
            10.0
        );
        let s = scaling_from_annotations(&ann(&[("target", "50")]), 10).unwrap();
        assert_eq!(s.target, 10.0);
    }

    #[test]
    fn window_bounds_and_parse() {
        let s = scaling_from_annotations(&ann(&[("window", "1m30s")]), 0).unwrap();
        assert_eq!(s.stable_window, Duration::from_secs(90));
        let e = scaling_from_annotations(&ann(&[("window", "1s")]), 0).unwrap_err();
        assert_eq!(
            e[0].path,
            "metadata.annotations[autoscaling.knative.dev/window]"
        );
        assert_eq!(e[0].message, "expected 6s <= 1s <= 1h, in whole seconds");
        assert!(scaling_from_annotations(&ann(&[("window", "soon")]), 0).is_err());
    }

    #[test]
    fn scale_bounds_validated() {
        let s = scaling_from_annotations(&ann(&[("min-scale", "0"), ("max-scale", "3")]), 0);
        assert_eq!(s.unwrap().max_scale, 3);
        let e = scaling_from_annotations(&ann(&[("min-scale", "4"), ("max-scale", "3")]), 0);
        assert!(e.unwrap_err()[0].message.contains("must be <= max-scale"));
        let e = scaling_from_annotations(&ann(&[("min-scale", "-1")]), 0).unwrap_err();
        assert_eq!(e[0].message, "expected 0 <= -1");
    }

    #[test]
    fn knobs_not_acted_on_are_reported() {
        let w = annotation_warnings(&ann(&[
            ("panic-window-percentage", "20"),
            ("window", "60s"),
        ]));
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[0].0,
            "metadata.annotations[autoscaling.knative.dev/panic-window-percentage]"
        );
        assert!(w[0].1.starts_with("kept, but not acted on"));
        let w = annotation_warnings(&ann(&[("class", "hpa.autoscaling.knative.dev")]));
        assert!(w[0].1.contains("not available in local mode"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
