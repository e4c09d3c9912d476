//! Service → immutable Revisions, and the Service's status and traffic.

use std::collections::BTreeMap;

use sluice_crds::meta::find_condition;
use sluice_crds::revision::{
    CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, Revision, SERVICE_LABEL,
};
use sluice_crds::service::{Service, ServiceStatus, TrafficTarget, revision_name};
use sluice_crds::{Condition, ConditionStatus, Kind, ObjectMeta, OwnerReference};

/// The configuration generation a revision was stamped from.
pub fn revision_generation(rev: &Revision) -> i64 {
    rev.metadata
        .labels
        .get(CONFIGURATION_GENERATION_LABEL)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// Whether a revision's `Ready` condition is `True`.
pub fn revision_ready(rev: &Revision) -> bool {
    rev.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Ready"))
        .is_some_and(Condition::is_true)
}

/// The revision for the Service's current generation, unless it exists already.
pub fn revision_to_create(svc: &Service, existing: &[Revision]) -> Option<Revision> {
    let generation = svc.metadata.generation.unwrap_or(1);
    if existing
        .iter()
        .any(|r| revision_generation(r) == generation)
    {
        return None;
    }
    let name = svc.spec.template.metadata.name.clone();
    let name = Some(name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| revision_name(&svc.metadata.name, generation));
    let template = &svc.spec.template;
    let mut labels = template.metadata.labels.clone();
    labels.insert(SERVICE_LABEL.into(), svc.metadata.name.clone());
    labels.insert(CONFIGURATION_LABEL.into(), svc.metadata.name.clone());
    labels.insert(
        CONFIGURATION_GENERATION_LABEL.into(),
        generation.to_string(),
    );
    Some(Revision {
        api_version: Kind::Revision.api_version().into(),
        kind: Kind::Revision.name().into(),
        metadata: ObjectMeta {
            name,
            namespace: Some(svc.metadata.namespace().to_owned()),
            labels,
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![OwnerReference {
                api_version: Kind::Service.api_version().into(),
                kind: Kind::Service.name().into(),
                name: svc.metadata.name.clone(),
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: true,
            }],
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

/// The Service's status from its revisions (those labelled with its name).
pub fn service_status(svc: &Service, revisions: &[&Revision], url: &str) -> ServiceStatus {
    let mut by_generation: BTreeMap<i64, &Revision> = BTreeMap::new();
    for r in revisions {
        by_generation.insert(revision_generation(r), r);
    }
    let latest_created = by_generation.values().next_back().copied();
    let latest_ready = by_generation
        .values()
        .rev()
        .find(|r| revision_ready(r))
        .copied();

    let configurations = match latest_created {
        None => Condition::unknown(
            "ConfigurationsReady",
            "Creating",
            "creating the first revision",
        ),
        Some(rev) => match rev
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, "Ready"))
        {
            Some(c) if c.is_true() => Condition::ok("ConfigurationsReady"),
            Some(c) if c.status == ConditionStatus::False => Condition::failed(
                "ConfigurationsReady",
                "RevisionFailed",
                format!(
                    "Revision {:?} failed with message: {}",
                    rev.metadata.name,
                    c.message.clone().unwrap_or_default()
                ),
            ),
            _ => Condition::unknown(
                "ConfigurationsReady",
                "Deploying",
                format!(
                    "waiting for revision {:?} to become ready",
                    rev.metadata.name
                ),
            ),
        },
    };
    let traffic: Vec<TrafficTarget> = latest_ready
        .map(|r| TrafficTarget {
            revision_name: Some(r.metadata.name.clone()),
            latest_revision: Some(true),
            percent: Some(100),
            tag: None,
        })
        .into_iter()
        .collect();
    let routes = if traffic.is_empty() {
        Condition::unknown(
            "RoutesReady",
            "NoReadyRevision",
            "no revision is ready to receive traffic",
        )
    } else {
        Condition::ok("RoutesReady")
    };
    let ready = if !configurations.is_true() {
        configurations.renamed("Ready")
    } else if !routes.is_true() {
        routes.renamed("Ready")
    } else {
        Condition::ok("Ready")
    };
    ServiceStatus {
        conditions: vec![configurations, ready, routes],
        url: Some(url.to_owned()),
        traffic,
        latest_ready_revision_name: latest_ready.map(|r| r.metadata.name.clone()),
        latest_created_revision_name: latest_created.map(|r| r.metadata.name.clone()),
        observed_generation: svc.metadata.generation,
    }
}

#[cfg(test)]
mod tests {
    use sluice_crds::revision::RevisionStatus;
    use sluice_crds::service::{RevisionSpec, RevisionTemplate, ServiceSpec};

    use super::*;

    fn svc(generation: i64) -> Service {
        Service {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Service".into(),
            metadata: ObjectMeta {
                name: "hello".into(),
                namespace: Some("default".into()),
                generation: Some(generation),
                uid: Some("u".into()),
                ..ObjectMeta::default()
            },
            spec: ServiceSpec {
                template: RevisionTemplate {
                    metadata: ObjectMeta::default(),
                    spec: RevisionSpec::default(),
                },
                traffic: vec![],
            },
            status: None,
        }
    }

    fn with_ready(mut r: Revision, c: Condition) -> Revision {
        r.status = Some(RevisionStatus {
            conditions: vec![c],
            ..RevisionStatus::default()
        });
        r
    }

    #[test]
    fn stamps_one_revision_per_generation() {
        let first = revision_to_create(&svc(1), &[]).unwrap();
        assert_eq!(first.metadata.name, "hello-00001");
        assert!(revision_to_create(&svc(1), std::slice::from_ref(&first)).is_none());
        let second = revision_to_create(&svc(2), &[first]).unwrap();
        assert_eq!(second.metadata.name, "hello-00002");
        assert_eq!(second.metadata.labels[CONFIGURATION_GENERATION_LABEL], "2");
    }

    #[test]
    fn traffic_follows_latest_ready_and_failure_surfaces() {
        let r1 = with_ready(
            revision_to_create(&svc(1), &[]).unwrap(),
            Condition::ok("Ready"),
        );
        let r2 = with_ready(
            revision_to_create(&svc(2), &[]).unwrap(),
            Condition::failed("Ready", "ExitCode", "replica exited with exit status: 1"),
        );
        let status = service_status(&svc(2), &[&r1, &r2], "http://hello.default.localhost");
        assert_eq!(
            status.latest_created_revision_name.as_deref(),
            Some("hello-00002")
        );
        assert_eq!(
            status.latest_ready_revision_name.as_deref(),
            Some("hello-00001")
        );
        assert_eq!(
            status.traffic[0].revision_name.as_deref(),
            Some("hello-00001")
        );
        let ready = find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.status, ConditionStatus::False);
        assert!(ready.message.as_deref().unwrap().contains("exit status: 1"));
    }
}
