//! Small pure helpers of a reconcile pass: comparing desired and stored objects, grouping
//! revisions, events for condition changes, initial replicas and weighted targets.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_core::{NamespacedName, WeightedTarget};
use sluice_crds::Kind;
use sluice_crds::autoscaling::scaling_from_annotations;
use sluice_crds::revision::Revision;
use sluice_crds::service::TrafficTarget;

use super::error::ReconcileError;
use crate::store::Event;

/// `(namespace, name)` of a stored object.
pub(super) fn key_of(v: &Value) -> (String, String) {
    let meta = &v["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

pub(super) fn by_key<'a>(
    objects: impl Iterator<Item = &'a Value>,
) -> HashMap<(String, String), &'a Value> {
    objects.map(|o| (key_of(o), o)).collect()
}

/// Whether applying `desired` would change the stored object (what the store's apply
/// compares: spec, labels, annotations, owner references).
pub(super) fn differs(desired: &Value, stored: Option<&Value>) -> bool {
    let Some(stored) = stored else { return true };
    desired.get("spec") != stored.get("spec")
        || ["labels", "annotations", "ownerReferences"]
            .iter()
            .any(|f| desired["metadata"].get(f) != stored["metadata"].get(f))
}

/// Revisions by (namespace, configuration label).
pub(super) fn group_by_config<'a>(
    revisions: impl Iterator<Item = &'a Revision>,
) -> HashMap<(&'a str, &'a str), Vec<&'a Revision>> {
    let mut out: HashMap<(&str, &str), Vec<&Revision>> = HashMap::new();
    for r in revisions {
        if let Some(cfg) = r
            .metadata
            .labels
            .get(sluice_crds::revision::CONFIGURATION_LABEL)
        {
            out.entry((r.metadata.namespace(), cfg.as_str()))
                .or_default()
                .push(r);
        }
    }
    out
}

pub(super) fn event(
    kind: Kind,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
    message: String,
) -> Event {
    Event {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        type_: type_.to_owned(),
        reason: reason.to_owned(),
        message,
        time: String::new(),
    }
}

/// An event when an object's `Ready` condition changes status or reason.
pub(super) fn ready_transition(kind: Kind, raw: &Value, status: &Value) -> Option<Event> {
    let ready = |st: &Value| {
        st["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
    };
    let new = ready(status)?;
    let old = ready(&raw["status"]);
    let same = old
        .as_ref()
        .is_some_and(|o| o["status"] == new["status"] && o["reason"] == new["reason"]);
    if same {
        return None;
    }
    let (type_, reason, message) = match new["status"].as_str() {
        Some("True") => ("Normal", "Ready".to_owned(), "became ready".to_owned()),
        Some("False") => (
            "Warning",
            new["reason"].as_str().unwrap_or("NotReady").to_owned(),
            new["message"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => return None,
    };
    let meta = &raw["metadata"];
    Some(event(
        kind,
        meta["namespace"].as_str().unwrap_or("default"),
        meta["name"].as_str().unwrap_or_default(),
        type_,
        &reason,
        message,
    ))
}

/// Replicas a revision starts with before the autoscaler decides: `initial-scale`, at least
/// `min-scale` (Knative's defaults: 1 and 0).
pub(super) fn initial_replicas(rev: &Revision) -> u32 {
    let cc = rev
        .spec
        .container_concurrency
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(0);
    scaling_from_annotations(&rev.metadata.annotations, cc)
        .map_or(1, |s| s.initial_scale.max(s.min_scale))
}

/// Status traffic → the data plane's weighted targets (one per revision, none at 0%).
pub(super) fn weighted(ns: &str, traffic: &[TrafficTarget]) -> Vec<WeightedTarget> {
    let mut out: Vec<WeightedTarget> = Vec::new();
    for t in traffic {
        let (Some(rev), Some(pct)) = (&t.revision_name, t.percent) else {
            continue;
        };
        let Ok(pct) = u32::try_from(pct) else {
            continue;
        };
        if pct == 0 {
            continue;
        }
        match out.iter_mut().find(|w| &w.revision.name == rev) {
            Some(w) => w.percent += pct,
            None => out.push(WeightedTarget {
                revision: NamespacedName::new(ns, rev.clone()),
                percent: pct,
            }),
        }
    }
    out
}

/// Milliseconds since the Unix epoch (0 before it).
pub(super) fn epoch_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn name_of(raw: &Value) -> &str {
    raw["metadata"]["name"].as_str().unwrap_or_default()
}

pub(super) fn decode<T: DeserializeOwned>(kind: Kind, raw: &Value) -> Result<T, ReconcileError> {
    // Deserialize from the borrowed tree: no copy of every object on every pass.
    T::deserialize(raw).map_err(|source| ReconcileError::Serde {
        kind,
        name: name_of(raw).to_owned(),
        source,
    })
}

/// The objects with Knative's defaults applied, as its defaulting webhook would have on the
/// way in. `sluice apply` defaults before it stores; on Kubernetes a `kubectl apply` stores
/// the manifest as written (Sluice has no admission webhook), so a Service without
/// `spec.traffic` must still mean all traffic to its latest revision. Idempotent.
pub(super) fn defaulted<T>(
    mut objects: Vec<(Value, T)>,
    set_defaults: fn(&mut T),
) -> Vec<(Value, T)> {
    for (_, t) in &mut objects {
        set_defaults(t);
    }
    objects
}

pub(super) fn encode(
    kind: Kind,
    name: &str,
    value: &impl Serialize,
) -> Result<Value, ReconcileError> {
    serde_json::to_value(value).map_err(|source| ReconcileError::Serde {
        kind,
        name: name.to_owned(),
        source,
    })
}
