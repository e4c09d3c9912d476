//! Route → concrete traffic: `latestRevision` targets resolve to their Configuration's
//! latest ready revision, named revisions must exist and be ready; tags get their own URL.

use std::collections::HashMap;

use sluice_crds::configuration::ConfigurationStatus;
use sluice_crds::revision::Revision;
use sluice_crds::route::{Route, RouteStatus};
use sluice_crds::service::{Addressable, TrafficTarget};
use sluice_crds::{Condition, ConditionStatus};

use sluice_crds::rollout::{ConfigurationRollout, RolloutStatus, rollout_duration};
use sluice_crds::slo_rollout::{RolloutAnalysis, RolloutPhase, slo_rollout};

use super::configuration::revision_ready;
use super::{rollout, slo_rollout};

/// What a route's resolution needs to know of the namespace.
pub struct RouteInputs<'a> {
    /// Configuration statuses by name.
    pub configurations: &'a HashMap<String, ConfigurationStatus>,
    /// Revisions by name.
    pub revisions: &'a HashMap<String, &'a Revision>,
    /// The configuration a target without `configurationName` follows (a Service's own).
    pub default_configuration: Option<&'a str>,
    /// The router's request counters, for SLO-gated rollouts (`None`: none to read).
    pub signals: Option<&'a slo_rollout::Signals>,
}

/// Builds `http://{host}` URLs.
pub trait UrlFor {
    /// The URL of `host`.
    fn url_for(&self, host: &str) -> String;
}

/// A tag's host: `{tag}-{route}.{namespace}.{domain}` given the route's host.
pub fn tag_host(tag: &str, route_host: &str) -> String {
    format!("{tag}-{route_host}")
}

fn failed(reason: &str, message: String) -> Condition {
    Condition::failed("AllTrafficAssigned", reason, message)
}

fn waiting(reason: &str, message: String) -> Condition {
    Condition::unknown("AllTrafficAssigned", reason, message)
}

/// The configuration a target follows (its own, or `default`, a Service's) and its tag.
fn followed<'t>(t: &'t TrafficTarget, default: Option<&'t str>) -> (&'t str, Option<&'t str>) {
    let configuration = t
        .configuration_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(default)
        .unwrap_or_default();
    (
        configuration,
        t.tag.as_deref().filter(|tag| !tag.is_empty()),
    )
}

/// Resolves one target to a revision name, or says why it cannot be.
fn resolve(target: &TrafficTarget, inputs: &RouteInputs<'_>) -> Result<String, Condition> {
    if let Some(name) = target.revision_name.as_deref().filter(|n| !n.is_empty()) {
        let Some(rev) = inputs.revisions.get(name) else {
            return Err(failed(
                "RevisionMissing",
                format!("Revision {name:?} referenced in traffic not found."),
            ));
        };
        if revision_ready(rev) {
            return Ok(name.to_owned());
        }
        let not_ready = rev
            .status
            .as_ref()
            .and_then(|s| sluice_crds::meta::find_condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.status == ConditionStatus::False);
        return Err(if not_ready {
            failed(
                "RevisionMissing",
                format!("Revision {name:?} failed to become ready."),
            )
        } else {
            waiting(
                "RevisionMissing",
                format!("Revision {name:?} is not yet ready."),
            )
        });
    }
    let (config, _) = followed(target, inputs.default_configuration);
    let Some(status) = inputs.configurations.get(config) else {
        return Err(failed(
            "ConfigurationMissing",
            format!("Configuration {config:?} referenced in traffic not found."),
        ));
    };
    if let Some(ready) = &status.latest_ready_revision_name {
        return Ok(ready.clone());
    }
    let config_failed = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::False);
    Err(if config_failed {
        failed(
            "RevisionMissing",
            format!("Configuration {config:?} does not have any ready Revision."),
        )
    } else {
        waiting(
            "RevisionMissing",
            format!("Configuration {config:?} is waiting for a Revision to become ready."),
        )
    })
}

/// The route's status at `now_ms` (wall-clock milliseconds since the Unix epoch, for
/// gradual rollouts; see `rollout`). Unresolvable traffic keeps the previous status traffic
/// (requests keep going where they went) and says why on `AllTrafficAssigned`.
pub fn route_status(
    route: &Route,
    inputs: &RouteInputs<'_>,
    host: &str,
    urls: &impl UrlFor,
    now_ms: i64,
) -> RouteStatus {
    let previous = route.status.clone().unwrap_or_default();
    // Validated when applied; a value that slipped through means "all at once".
    let duration = rollout_duration(&route.metadata.annotations).ok().flatten();
    let gated = slo_rollout(&route.metadata.annotations).ok().flatten();
    let mut analysis: Option<RolloutAnalysis> = None;
    let mut rollouts: Vec<ConfigurationRollout> = Vec::new();
    let mut traffic = Vec::with_capacity(route.spec.traffic.len());
    let mut problem = None;
    for t in &route.spec.traffic {
        match resolve(t, inputs) {
            Ok(revision) => {
                let url = t
                    .tag
                    .as_deref()
                    .filter(|tag| !tag.is_empty())
                    .map(|tag| urls.url_for(&tag_host(tag, host)));
                if let Some(config) = &gated
                    && t.latest_revision == Some(true)
                    && analysis.is_none()
                {
                    let gate = GateInputs {
                        route,
                        previous: &previous,
                        inputs,
                        config,
                        now_ms,
                    };
                    if let Some(state) = gate.plan(t, &revision) {
                        push_gated(&mut traffic, t, &state, url);
                        analysis = Some(state);
                        continue;
                    }
                }
                let state = (t.latest_revision == Some(true))
                    .then(|| rollout_of(t, &revision, &previous, inputs, duration, now_ms))
                    .flatten();
                if let Some(state) = state {
                    // The older revisions first (untagged: the tag's URL goes to the newest).
                    let (newest, older) = state.revisions.split_last().unzip();
                    for r in older.unwrap_or_default() {
                        traffic.push(TrafficTarget {
                            tag: None,
                            revision_name: Some(r.revision_name.clone()),
                            configuration_name: None,
                            latest_revision: Some(true),
                            percent: Some(r.percent),
                            url: None,
                        });
                    }
                    traffic.push(TrafficTarget {
                        tag: t.tag.clone(),
                        revision_name: Some(revision),
                        configuration_name: None,
                        latest_revision: t.latest_revision,
                        percent: newest.map(|r| r.percent),
                        url,
                    });
                    rollouts.push(state);
                    continue;
                }
                traffic.push(TrafficTarget {
                    tag: t.tag.clone(),
                    revision_name: Some(revision),
                    configuration_name: None,
                    latest_revision: t.latest_revision,
                    percent: t.percent,
                    url,
                });
            }
            Err(c) => {
                // A hard failure wins over a wait.
                if problem
                    .as_ref()
                    .is_none_or(|p: &Condition| p.status != ConditionStatus::False)
                {
                    problem = Some(c);
                }
            }
        }
    }
    let url = urls.url_for(host);
    let (assigned, traffic, rollout, analysis) = match problem {
        None => (
            Condition::ok("AllTrafficAssigned"),
            traffic,
            (!rollouts.is_empty()).then_some(RolloutStatus {
                configurations: rollouts,
            }),
            analysis,
        ),
        Some(c) => (
            c,
            previous.traffic,
            previous.rollout,
            previous.rollout_analysis,
        ),
    };
    let ingress = if traffic.is_empty() {
        Condition::unknown(
            "IngressReady",
            "NoReadyRevision",
            "no revision is ready to receive traffic",
        )
    } else {
        Condition::ok("IngressReady")
    };
    let ready = if !assigned.is_true() {
        assigned.renamed("Ready")
    } else if !ingress.is_true() {
        ingress.renamed("Ready")
    } else {
        Condition::ok("Ready")
    };
    let mut conditions = vec![assigned, ingress, ready];
    conditions.extend(analysis.as_ref().map(rollout_condition));
    RouteStatus {
        conditions,
        url: Some(url.clone()),
        address: Some(Addressable { url: Some(url) }),
        traffic,
        observed_generation: route.metadata.generation,
        rollout,
        rollout_analysis: analysis,
    }
}

/// `RolloutHealthy`: True once promoted, Unknown while judged, False when rolled back, each
/// with the rollout's message (the numbers behind the verdict).
pub fn rollout_condition(a: &RolloutAnalysis) -> Condition {
    match a.phase {
        RolloutPhase::Promoted => Condition {
            reason: Some("Promoted".into()),
            message: Some(a.message.clone()),
            ..Condition::ok("RolloutHealthy")
        },
        RolloutPhase::Progressing => {
            Condition::unknown("RolloutHealthy", "RolloutInProgress", a.message.clone())
        }
        RolloutPhase::RolledBack => {
            Condition::failed("RolloutHealthy", "RolledBack", a.message.clone())
        }
    }
}

/// What an SLO-gated target's plan needs beside the target.
struct GateInputs<'a> {
    route: &'a Route,
    previous: &'a RouteStatus,
    inputs: &'a RouteInputs<'a>,
    config: &'a sluice_crds::slo_rollout::SloRollout,
    now_ms: i64,
}

impl GateInputs<'_> {
    fn plan(&self, t: &TrafficTarget, latest: &str) -> Option<RolloutAnalysis> {
        let (configuration, tag) = followed(t, self.inputs.default_configuration);
        // Before any analysis: the revision the target's traffic went to (the newest entry
        // of a timed rollout, which is where its share was heading).
        let previous_revision = self
            .previous
            .traffic
            .iter()
            .rfind(|p| p.latest_revision == Some(true))
            .and_then(|p| p.revision_name.as_deref());
        let target = slo_rollout::Target {
            namespace: self.route.metadata.namespace(),
            configuration,
            tag,
            percent: t.percent.unwrap_or(100),
            latest,
            inference: self
                .route
                .metadata
                .labels
                .contains_key(sluice_crds::inference_service::INFERENCE_SERVICE_LABEL),
        };
        slo_rollout::plan(
            &target,
            self.previous.rollout_analysis.as_ref(),
            previous_revision,
            self.config,
            self.inputs.signals,
            self.now_ms,
        )
    }
}

/// The traffic of a target in an SLO-gated rollout: the baseline's share (untagged), then
/// the canary's (with the target's tag and URL; at 0 % after a rollback when tagged, so the
/// tag's URL still reaches it).
fn push_gated(
    traffic: &mut Vec<TrafficTarget>,
    t: &TrafficTarget,
    state: &RolloutAnalysis,
    url: Option<String>,
) {
    let canary = state.canary_percent();
    let baseline = state.percent - canary;
    if baseline > 0 {
        traffic.push(TrafficTarget {
            tag: None,
            revision_name: Some(state.baseline.clone()),
            configuration_name: None,
            latest_revision: Some(true),
            percent: Some(baseline),
            url: None,
        });
    }
    if canary > 0 || t.tag.as_deref().is_some_and(|tag| !tag.is_empty()) {
        traffic.push(TrafficTarget {
            tag: t.tag.clone(),
            revision_name: Some(state.canary.clone()),
            configuration_name: None,
            latest_revision: t.latest_revision,
            percent: Some(canary),
            url,
        });
    }
}

/// The rollout state of a resolved `latestRevision` target, from the route's previous status
/// (its rollout state, or else the revision the target's previous entry named).
fn rollout_of(
    t: &TrafficTarget,
    latest: &str,
    previous: &RouteStatus,
    inputs: &RouteInputs<'_>,
    duration: Option<std::time::Duration>,
    now_ms: i64,
) -> Option<ConfigurationRollout> {
    let (configuration, tag) = followed(t, inputs.default_configuration);
    let state = previous.rollout.as_ref().and_then(|r| {
        r.configurations
            .iter()
            .find(|c| c.configuration_name == configuration && c.tag.as_deref() == tag)
    });
    let previous_revision = previous
        .traffic
        .iter()
        .find(|p| {
            p.latest_revision == Some(true) && p.tag.as_deref().filter(|t| !t.is_empty()) == tag
        })
        .and_then(|p| p.revision_name.as_deref());
    let target = rollout::Target {
        configuration,
        tag,
        percent: t.percent.unwrap_or(100),
        latest,
    };
    rollout::plan(&target, state, previous_revision, duration, now_ms)
}

#[cfg(test)]
mod tests {
    use sluice_crds::ObjectMeta;
    use sluice_crds::revision::RevisionStatus;
    use sluice_crds::route::RouteSpec;
    use sluice_crds::service::RevisionSpec;

    use super::*;

    struct Plain;
    impl UrlFor for Plain {
        fn url_for(&self, host: &str) -> String {
            format!("http://{host}")
        }
    }

    fn rev(name: &str, ready: ConditionStatus) -> Revision {
        Revision {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Revision".into(),
            metadata: ObjectMeta {
                name: name.into(),
                ..ObjectMeta::default()
            },
            spec: RevisionSpec::default(),
            status: Some(RevisionStatus {
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: ready,
                    reason: None,
                    message: None,
                }],
                ..RevisionStatus::default()
            }),
        }
    }

    fn target(rev: Option<&str>, percent: i64, tag: Option<&str>) -> TrafficTarget {
        TrafficTarget {
            revision_name: rev.map(str::to_owned),
            latest_revision: Some(rev.is_none()),
            percent: Some(percent),
            tag: tag.map(str::to_owned),
            ..TrafficTarget::default()
        }
    }

    fn route(traffic: Vec<TrafficTarget>) -> Route {
        Route {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Route".into(),
            metadata: ObjectMeta {
                name: "hello".into(),
                ..ObjectMeta::default()
            },
            spec: RouteSpec {
                traffic,
                extra: Default::default(),
            },
            status: None,
        }
    }

    #[test]
    fn resolves_latest_named_and_tags() {
        let (r1, r2) = (
            rev("hello-00001", ConditionStatus::True),
            rev("hello-00002", ConditionStatus::True),
        );
        let revisions = HashMap::from([
            ("hello-00001".to_owned(), &r1),
            ("hello-00002".to_owned(), &r2),
        ]);
        let configurations = HashMap::from([(
            "hello".to_owned(),
            ConfigurationStatus {
                latest_ready_revision_name: Some("hello-00002".into()),
                ..ConfigurationStatus::default()
            },
        )]);
        let inputs = RouteInputs {
            configurations: &configurations,
            revisions: &revisions,
            default_configuration: Some("hello"),
            signals: None,
        };
        let r = route(vec![
            target(None, 10, Some("latest")),
            target(Some("hello-00001"), 90, Some("prev")),
        ]);
        let st = route_status(&r, &inputs, "hello.default.example.test", &Plain, 0);
        assert!(st.conditions.iter().all(Condition::is_true), "{st:?}");
        assert_eq!(st.traffic[0].revision_name.as_deref(), Some("hello-00002"));
        assert_eq!(st.traffic[0].latest_revision, Some(true));
        assert_eq!(
            st.traffic[0].url.as_deref(),
            Some("http://latest-hello.default.example.test")
        );
        assert_eq!(st.traffic[1].revision_name.as_deref(), Some("hello-00001"));
        assert_eq!(st.traffic[1].percent, Some(90));
    }

    #[test]
    fn missing_or_failed_targets_keep_previous_traffic() {
        let r1 = rev("hello-00001", ConditionStatus::False);
        let revisions = HashMap::from([("hello-00001".to_owned(), &r1)]);
        let configurations = HashMap::new();
        let inputs = RouteInputs {
            configurations: &configurations,
            revisions: &revisions,
            default_configuration: Some("hello"),
            signals: None,
        };
        let mut r = route(vec![target(Some("hello-00009"), 100, None)]);
        r.status = Some(RouteStatus {
            traffic: vec![target(Some("hello-00000"), 100, None)],
            ..RouteStatus::default()
        });
        let st = route_status(&r, &inputs, "h", &Plain, 0);
        assert_eq!(
            st.conditions[0].message.as_deref(),
            Some("Revision \"hello-00009\" referenced in traffic not found.")
        );
        assert_eq!(st.traffic[0].revision_name.as_deref(), Some("hello-00000"));
        let r = route(vec![target(Some("hello-00001"), 100, None)]);
        let st = route_status(&r, &inputs, "h", &Plain, 0);
        assert_eq!(st.conditions[0].status, ConditionStatus::False);
        assert!(st.traffic.is_empty());
    }

    #[test]
    fn a_route_with_the_annotation_splits_a_tagged_latest_target_in_steps() {
        let (r1, r2) = (
            rev("hello-00001", ConditionStatus::True),
            rev("hello-00002", ConditionStatus::True),
        );
        let revisions = HashMap::from([
            ("hello-00001".to_owned(), &r1),
            ("hello-00002".to_owned(), &r2),
        ]);
        let configurations = HashMap::from([(
            "cfg".to_owned(),
            ConfigurationStatus {
                latest_ready_revision_name: Some("hello-00002".into()),
                ..ConfigurationStatus::default()
            },
        )]);
        let inputs = RouteInputs {
            configurations: &configurations,
            revisions: &revisions,
            default_configuration: None,
            signals: None,
        };
        let mut latest = target(None, 50, Some("green"));
        latest.configuration_name = Some("cfg".into());
        let mut r = route(vec![target(Some("hello-00001"), 50, None), latest]);
        r.metadata
            .annotations
            .insert(sluice_crds::rollout::ROLLOUT_DURATION.into(), "40s".into());
        // Before: the latest target sent its 50 % to revision 1.
        r.status = Some(RouteStatus {
            traffic: vec![
                target(Some("hello-00001"), 50, None),
                TrafficTarget {
                    revision_name: Some("hello-00001".into()),
                    latest_revision: Some(true),
                    ..target(None, 50, Some("green"))
                },
            ],
            ..RouteStatus::default()
        });
        let shares = |st: &RouteStatus| -> Vec<(String, i64, Option<String>)> {
            st.traffic
                .iter()
                .map(|t| {
                    (
                        t.revision_name.clone().unwrap_or_default(),
                        t.percent.unwrap_or_default(),
                        t.tag.clone(),
                    )
                })
                .collect()
        };
        let green = |p1: i64, p2: i64| {
            vec![
                ("hello-00001".to_owned(), 50, None),
                ("hello-00001".to_owned(), p1, None),
                ("hello-00002".to_owned(), p2, Some("green".to_owned())),
            ]
        };
        let st = route_status(&r, &inputs, "h", &Plain, 0);
        assert_eq!(shares(&st), green(49, 1));
        assert_eq!(st.traffic[2].url.as_deref(), Some("http://green-h"));
        r.status = Some(st);
        let st = route_status(&r, &inputs, "h", &Plain, 10_000);
        assert_eq!(shares(&st), green(36, 14));
        r.status = Some(st);
        let st = route_status(&r, &inputs, "h", &Plain, 40_000);
        assert_eq!(
            shares(&st),
            [
                ("hello-00001".to_owned(), 50, None),
                ("hello-00002".to_owned(), 50, Some("green".to_owned())),
            ]
        );
        assert_eq!(st.rollout, None);
    }
}
