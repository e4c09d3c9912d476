//! Traffic targets (`spec.traffic` of a Service or Route) with Knative's defaulting and
//! validation: one of `revisionName` / `latestRevision`, `percent` in [0, 100] summing to
//! 100, unique DNS-1035 tags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validation::{Validator, dns1035_messages, go_list, out_of_bounds};

/// One traffic target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    /// Tag with its own URL (`{tag}-{route}.{namespace}.{domain}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A named revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// A configuration whose latest ready revision gets the traffic (Routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    /// Follows the latest ready revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    /// Share of traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// The tag's URL (status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where a traffic list sits: inside a Service (which names its own configuration) or a Route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficOwner {
    /// `Service.spec.traffic`: `configurationName` is the Service's own, so it is disallowed.
    Service,
    /// `Route.spec.traffic`.
    Route,
}

/// Knative's defaults: an empty list in a Service is `[{latestRevision: true, percent: 100}]`;
/// an unset `latestRevision` is true exactly when no `revisionName` is given.
pub fn set_defaults(traffic: &mut Vec<TrafficTarget>, owner: TrafficOwner) {
    if traffic.is_empty() && owner == TrafficOwner::Service {
        traffic.push(TrafficTarget {
            latest_revision: Some(true),
            percent: Some(100),
            ..TrafficTarget::default()
        });
    }
    for t in traffic {
        if t.latest_revision.is_none() {
            t.latest_revision = Some(t.revision_name.as_deref().unwrap_or_default().is_empty());
        }
    }
}

/// Validates a (defaulted) traffic list at `path` (`spec.traffic`), with upstream's messages.
pub fn validate(v: &mut Validator, path: &str, traffic: &[TrafficTarget], owner: TrafficOwner) {
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sum = 0i64;
    for (i, t) in traffic.iter().enumerate() {
        let at = |field: &str| format!("{path}[{i}].{field}");
        let revision = t.revision_name.as_deref().unwrap_or_default();
        let configuration = t.configuration_name.as_deref().unwrap_or_default();
        if let Some(latest) = t.latest_revision {
            let pinned = !revision.is_empty();
            if pinned == latest {
                v.error(
                    at("latestRevision"),
                    format!(
                        "may not set revisionName {revision:?} when latestRevision is {latest}"
                    ),
                );
            }
        }
        match owner {
            TrafficOwner::Service if !configuration.is_empty() => {
                v.error(at("configurationName"), "must not set the field(s)");
            }
            _ if !revision.is_empty() && !configuration.is_empty() => v.error(
                format!("{path}[{i}].configurationName, {path}[{i}].revisionName"),
                "expected exactly one, got both",
            ),
            TrafficOwner::Route if revision.is_empty() && configuration.is_empty() => v.error(
                format!("{path}[{i}].configurationName, {path}[{i}].revisionName"),
                "expected exactly one, got neither",
            ),
            _ => {}
        }
        if let Some(p) = t.percent {
            if !(0..=100).contains(&p) {
                v.error(at("percent"), out_of_bounds(p, 0, 100));
            }
            sum += p;
        }
        if t.url.is_some() {
            v.error(at("url"), "must not set the field(s)");
        }
        let Some(tag) = t.tag.as_deref().filter(|t| !t.is_empty()) else {
            continue;
        };
        let msgs = dns1035_messages(tag);
        if !msgs.is_empty() {
            v.error(
                at("tag"),
                format!("invalid value: not a DNS 1035 label: {}", go_list(&msgs)),
            );
        }
        match tags.get(tag) {
            Some(first) => v.error(
                format!("{path}[{i}].tag, {path}[{first}].tag"),
                format!("Multiple definitions for {tag:?}"),
            ),
            None => {
                tags.insert(tag, i);
            }
        }
    }
    if sum != 100 {
        v.error(path, format!("Traffic targets sum to {sum}, want 100"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(
        rev: Option<&str>,
        latest: Option<bool>,
        percent: i64,
        tag: Option<&str>,
    ) -> TrafficTarget {
        TrafficTarget {
            revision_name: rev.map(str::to_owned),
            latest_revision: latest,
            percent: Some(percent),
            tag: tag.map(str::to_owned),
            ..TrafficTarget::default()
        }
    }

    fn errors(mut traffic: Vec<TrafficTarget>, owner: TrafficOwner) -> Vec<String> {
        set_defaults(&mut traffic, owner);
        let mut v = Validator::default();
        validate(&mut v, "spec.traffic", &traffic, owner);
        v.finish()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn defaults_follow_knative() {
        let mut t = Vec::new();
        set_defaults(&mut t, TrafficOwner::Service);
        assert_eq!(t, [target(None, Some(true), 100, None)]);
        let mut t = vec![target(Some("a-00001"), None, 100, None)];
        set_defaults(&mut t, TrafficOwner::Service);
        assert_eq!(t[0].latest_revision, Some(false));
    }

    #[test]
    fn upstream_messages() {
        assert_eq!(
            errors(vec![target(None, None, 90, None)], TrafficOwner::Service),
            ["spec.traffic: Traffic targets sum to 90, want 100"]
        );
        assert_eq!(
            errors(
                vec![
                    target(None, None, 50, Some("a")),
                    target(Some("s-00001"), None, 50, Some("a"))
                ],
                TrafficOwner::Service
            ),
            ["spec.traffic[1].tag, spec.traffic[0].tag: Multiple definitions for \"a\""]
        );
        assert_eq!(
            errors(
                vec![target(Some("s-00001"), Some(true), 100, None)],
                TrafficOwner::Service
            ),
            [
                "spec.traffic[0].latestRevision: may not set revisionName \"s-00001\" when latestRevision is true"
            ]
        );
        assert_eq!(
            errors(
                vec![target(None, Some(false), 100, None)],
                TrafficOwner::Service
            ),
            [
                "spec.traffic[0].latestRevision: may not set revisionName \"\" when latestRevision is false"
            ]
        );
        assert_eq!(
            errors(
                vec![target(None, None, 101, Some("Bad"))],
                TrafficOwner::Service
            ),
            [
                "spec.traffic[0].percent: expected 0 <= 101 <= 100",
                "spec.traffic[0].tag: invalid value: not a DNS 1035 label: [a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')]",
                "spec.traffic: Traffic targets sum to 101, want 100",
            ]
        );
        let mut cfg = target(None, Some(true), 100, None);
        cfg.configuration_name = Some("c".into());
        assert_eq!(
            errors(vec![cfg.clone()], TrafficOwner::Service),
            ["spec.traffic[0].configurationName: must not set the field(s)"]
        );
        assert!(errors(vec![cfg], TrafficOwner::Route).is_empty());
        assert_eq!(
            errors(
                vec![target(None, Some(true), 100, None)],
                TrafficOwner::Route
            ),
            [
                "spec.traffic[0].configurationName, spec.traffic[0].revisionName: expected exactly one, got neither"
            ]
        );
    }
}
