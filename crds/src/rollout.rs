//! Knative's gradual rollout: the `serving.knative.dev/rollout-duration` annotation (on a
//! Service, copied to its Route, or on a Route) and the rollout state a Route keeps in its
//! status while a new latest revision takes over its target's share step by step.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::autoscaling::{GoDuration, parse_go_duration};
use crate::validation::Validator;

/// The annotation naming how long a rollout to a new latest revision takes.
pub const ROLLOUT_DURATION: &str = "serving.knative.dev/rollout-duration";

/// The annotation's field path, as errors name it.
pub fn rollout_duration_path() -> String {
    format!("metadata.annotations[{ROLLOUT_DURATION:?}]")
}

/// The rollout duration the annotations ask for: `Ok(None)` when absent or zero (traffic
/// moves at once), an error message when the value is not a non-negative Go duration.
pub fn rollout_duration(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<Duration>, String> {
    let Some(value) = annotations.get(ROLLOUT_DURATION) else {
        return Ok(None);
    };
    match parse_go_duration(value.trim()) {
        Some(GoDuration::Positive(d)) if d.is_zero() => Ok(None),
        Some(GoDuration::Positive(d)) => Ok(Some(d)),
        Some(GoDuration::Negative) => Err(format!(
            "invalid value: {value:?}: rollout duration must not be negative"
        )),
        None => Err(format!(
            "invalid value: {value:?}: not a duration (e.g. \"380s\", \"5m\")"
        )),
    }
}

/// Records an error at the annotation's path when its value is invalid.
pub fn validate(v: &mut Validator, annotations: &BTreeMap<String, String>) {
    if let Err(message) = rollout_duration(annotations) {
        v.error(rollout_duration_path(), message);
    }
}

/// `status.rollout` of a Route: one entry per `latestRevision` target being rolled out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The targets in rollout.
    #[serde(default)]
    pub configurations: Vec<ConfigurationRollout>,
}

/// The rollout of one `latestRevision` target (keyed by configuration and tag).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRollout {
    /// The configuration the target follows.
    pub configuration_name: String,
    /// The target's tag, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The target's whole share.
    pub percent: i64,
    /// Revisions with their current shares, oldest first; the last is the one rolled to.
    pub revisions: Vec<RolloutRevision>,
    /// When the rollout to the last revision started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// The rollout's duration in milliseconds.
    pub duration_ms: i64,
    /// Steps taken so far (0: the new revision has 1 %).
    pub steps_done: u32,
}

/// One revision's share during a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRevision {
    /// The revision.
    pub revision_name: String,
    /// Its share.
    pub percent: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(ROLLOUT_DURATION.to_owned(), value.to_owned())])
    }

    #[test]
    fn parses_durations_and_refuses_bad_ones_naming_the_annotation() {
        assert_eq!(rollout_duration(&BTreeMap::new()), Ok(None));
        assert_eq!(rollout_duration(&ann("0")), Ok(None));
        assert_eq!(rollout_duration(&ann("0s")), Ok(None));
        assert_eq!(
            rollout_duration(&ann("380s")),
            Ok(Some(Duration::from_secs(380)))
        );
        assert_eq!(
            rollout_duration(&ann("5m")),
            Ok(Some(Duration::from_secs(300)))
        );
        for bad in ["soon", "5", "-1m", ""] {
            let mut v = Validator::default();
            validate(&mut v, &ann(bad));
            let errors = v.finish().unwrap_err();
            assert_eq!(
                errors[0].path, "metadata.annotations[\"serving.knative.dev/rollout-duration\"]",
                "{bad}"
            );
        }
    }
}
