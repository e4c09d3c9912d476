//! Configuration → immutable Revisions (`<config>-00001`… or the template's own name), and
//! the Configuration's status: latest created and latest ready revision.

use std::collections::BTreeMap;

use sluice_crds::configuration::{Configuration, ConfigurationStatus};
use sluice_crds::meta::find_condition;
use sluice_crds::revision::{
    CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, Revision, SERVICE_LABEL,
};
use sluice_crds::service::revision_name;
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
    ready_condition(rev).is_some_and(Condition::is_true)
}

fn ready_condition(rev: &Revision) -> Option<&Condition> {
    find_condition(&rev.status.as_ref()?.conditions, "Ready")
}

/// Whether `rev` was stamped by `cfg`.
pub fn owned_by(rev: &Revision, cfg: &Configuration) -> bool {
    rev.metadata.namespace() == cfg.metadata.namespace()
        && rev.metadata.labels.get(CONFIGURATION_LABEL) == Some(&cfg.metadata.name)
}

/// What the Configuration's current generation needs.
#[derive(Debug, PartialEq)]
pub enum Stamp {
    /// The revision exists already.
    Exists,
    /// This revision must be created.
    Create(Box<Revision>),
    /// The template brings a name that another revision (another generation) holds.
    NameTaken(String),
}

/// The revision for the Configuration's current generation, unless it exists already.
/// `all` holds every revision of the namespace (a brought name must be free).
pub fn revision_to_create(cfg: &Configuration, all: &[&Revision]) -> Stamp {
    let generation = cfg.metadata.generation.unwrap_or(1);
    let mine = |r: &&&Revision| owned_by(r, cfg);
    if all
        .iter()
        .filter(mine)
        .any(|r| revision_generation(r) == generation)
    {
        return Stamp::Exists;
    }
    let template = &cfg.spec.template;
    let name = Some(template.metadata.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| revision_name(&cfg.metadata.name, generation));
    if let Some(taken) = all.iter().find(|r| r.metadata.name == name) {
        // Same template re-applied under its brought name: nothing to do.
        return if owned_by(taken, cfg) && taken.spec == template.spec {
            Stamp::Exists
        } else {
            Stamp::NameTaken(name)
        };
    }
    let mut labels = template.metadata.labels.clone();
    if let Some(svc) = cfg.metadata.labels.get(SERVICE_LABEL) {
        labels.insert(SERVICE_LABEL.into(), svc.clone());
    }
    labels.insert(CONFIGURATION_LABEL.into(), cfg.metadata.name.clone());
    labels.insert(
        CONFIGURATION_GENERATION_LABEL.into(),
        generation.to_string(),
    );
    Stamp::Create(Box::new(Revision {
        api_version: Kind::Revision.api_version().into(),
        kind: Kind::Revision.name().into(),
        metadata: ObjectMeta {
            name,
            namespace: Some(cfg.metadata.namespace().to_owned()),
            labels,
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![OwnerReference {
                api_version: Kind::Configuration.api_version().into(),
                kind: Kind::Configuration.name().into(),
                name: cfg.metadata.name.clone(),
                uid: cfg.metadata.uid.clone().unwrap_or_default(),
                controller: true,
            }],
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }))
}

/// The Configuration's status from its revisions (`stamp_error` when its name is taken).
pub fn configuration_status(
    cfg: &Configuration,
    revisions: &[&Revision],
    stamp_error: Option<&str>,
) -> ConfigurationStatus {
    let mut by_generation: BTreeMap<i64, &Revision> = BTreeMap::new();
    for r in revisions.iter().filter(|r| owned_by(r, cfg)) {
        by_generation.insert(revision_generation(r), r);
    }
    let latest_created = by_generation.values().next_back().copied();
    let latest_ready = by_generation
        .values()
        .rev()
        .find(|r| revision_ready(r))
        .copied();
    let ready = match (stamp_error, latest_created) {
        (Some(name), _) => Condition::failed(
            "Ready",
            "RevisionFailed",
            format!(
                "Revision {name:?} already exists with another spec: change \
                 spec.template.metadata.name with the template"
            ),
        ),
        (None, None) => Condition::unknown("Ready", "Deploying", "creating the first revision"),
        (None, Some(rev)) => match ready_condition(rev) {
            Some(c) if c.is_true() => Condition::ok("Ready"),
            Some(c) if c.status == ConditionStatus::False => Condition::failed(
                "Ready",
                "RevisionFailed",
                format!(
                    "Revision {:?} failed with message: {}.",
                    rev.metadata.name,
                    c.message.clone().unwrap_or_default()
                ),
            ),
            _ => Condition::unknown(
                "Ready",
                "Deploying",
                format!(
                    "waiting for revision {:?} to become ready",
                    rev.metadata.name
                ),
            ),
        },
    };
    ConfigurationStatus {
        conditions: vec![ready],
        latest_ready_revision_name: latest_ready.map(|r| r.metadata.name.clone()),
        latest_created_revision_name: latest_created.map(|r| r.metadata.name.clone()),
        observed_generation: cfg.metadata.generation,
    }
}

#[cfg(test)]
mod tests {
    use sluice_crds::configuration::ConfigurationSpec;
    use sluice_crds::revision::RevisionStatus;
    use sluice_crds::service::{RevisionSpec, RevisionTemplate};

    use super::*;

    pub(crate) fn cfg(generation: i64, byo: &str) -> Configuration {
        Configuration {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Configuration".into(),
            metadata: ObjectMeta {
                name: "hello".into(),
                namespace: Some("default".into()),
                generation: Some(generation),
                uid: Some("u".into()),
                ..ObjectMeta::default()
            },
            spec: ConfigurationSpec {
                template: RevisionTemplate {
                    metadata: ObjectMeta {
                        name: byo.into(),
                        ..ObjectMeta::default()
                    },
                    spec: RevisionSpec {
                        timeout_seconds: Some(generation),
                        ..RevisionSpec::default()
                    },
                },
                extra: Default::default(),
            },
            status: None,
        }
    }

    fn created(stamp: Stamp) -> Revision {
        match stamp {
            Stamp::Create(r) => *r,
            other => panic!("expected a revision, got {other:?}"),
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
        let first = created(revision_to_create(&cfg(1, ""), &[]));
        assert_eq!(first.metadata.name, "hello-00001");
        assert_eq!(first.metadata.owner_references[0].kind, "Configuration");
        assert_eq!(revision_to_create(&cfg(1, ""), &[&first]), Stamp::Exists);
        let second = created(revision_to_create(&cfg(2, ""), &[&first]));
        assert_eq!(second.metadata.name, "hello-00002");
        assert_eq!(second.metadata.labels[CONFIGURATION_GENERATION_LABEL], "2");
    }

    #[test]
    fn brought_names_are_used_and_must_change_with_the_template() {
        let first = created(revision_to_create(&cfg(1, "hello-blue"), &[]));
        assert_eq!(first.metadata.name, "hello-blue");
        // The same template again under a new generation (e.g. a label edit): nothing new.
        let mut same = cfg(2, "hello-blue");
        same.spec.template.spec = first.spec.clone();
        assert_eq!(revision_to_create(&same, &[&first]), Stamp::Exists);
        // A changed template keeping the name is refused, not silently ignored.
        assert_eq!(
            revision_to_create(&cfg(3, "hello-blue"), &[&first]),
            Stamp::NameTaken("hello-blue".into())
        );
        let status = configuration_status(&cfg(3, "hello-blue"), &[&first], Some("hello-blue"));
        assert_eq!(status.conditions[0].status, ConditionStatus::False);
    }

    #[test]
    fn latest_ready_skips_a_failed_newer_revision() {
        let r1 = with_ready(
            created(revision_to_create(&cfg(1, ""), &[])),
            Condition::ok("Ready"),
        );
        let r2 = with_ready(
            created(revision_to_create(&cfg(2, ""), &[])),
            Condition::failed("Ready", "ExitCode", "replica exited with exit status: 1"),
        );
        let status = configuration_status(&cfg(2, ""), &[&r1, &r2], None);
        assert_eq!(
            status.latest_created_revision_name.as_deref(),
            Some("hello-00002")
        );
        assert_eq!(
            status.latest_ready_revision_name.as_deref(),
            Some("hello-00001")
        );
        let ready = &status.conditions[0];
        assert_eq!(ready.reason.as_deref(), Some("RevisionFailed"));
        assert!(ready.message.as_deref().unwrap().contains("exit status: 1"));
    }
}
