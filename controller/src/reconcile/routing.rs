//! Builds the routing snapshot the data plane serves from.

use sluice_core::{
    Endpoint, HostRoute, NamespacedName, ResponseTimeouts, RevisionRoute, RoutingSnapshot,
    ScaleDecision, WeightedTarget,
};
use sluice_crds::revision::Revision;

use sluice_crds::ConditionStatus;
use sluice_crds::meta::find_condition;

use super::revision;
use crate::runtime::Runtime;

/// Each host (route, tag, InferenceService) maps to its weighted targets; every revision
/// with traffic gets its endpoints.
pub(super) fn build<'a>(
    hosts: impl Iterator<Item = &'a (String, NamespacedName, Vec<WeightedTarget>)> + Clone,
    revisions: &std::collections::HashMap<NamespacedName, Revision>,
    runtime: &impl Runtime,
    decisions: &std::collections::HashMap<NamespacedName, ScaleDecision>,
) -> RoutingSnapshot {
    let mut snap = RoutingSnapshot::default();
    for (host, service, targets) in hosts.clone() {
        if targets.is_empty() {
            continue;
        }
        snap.hosts.insert(
            host.to_ascii_lowercase(),
            HostRoute {
                service: service.clone(),
                targets: targets.clone(),
            },
        );
    }
    let routed: std::collections::HashSet<&NamespacedName> =
        hosts.flat_map(|(_, _, t)| t).map(|t| &t.revision).collect();
    for key in routed {
        let Some(rev) = revisions.get(key) else {
            continue;
        };
        let key = key.clone();
        let mut endpoints: Vec<Endpoint> = runtime
            .status(&key)
            .ready
            .into_iter()
            .map(|addr| Endpoint { addr })
            .collect();
        endpoints.sort();
        let cc = rev
            .spec
            .container_concurrency
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let timeouts = revision::response_timeouts(rev);
        if timeouts != ResponseTimeouts::default() {
            snap.timeouts.insert(key.clone(), timeouts);
        }
        snap.revisions.insert(
            key.clone(),
            RevisionRoute {
                key: key.clone(),
                endpoints,
                container_concurrency: cc,
                timeout: revision::timeout(rev),
                activator_in_path: decisions.get(&key).is_none_or(|d| d.activator_in_path),
                unavailable: unavailable(rev),
            },
        );
    }
    snap
}

/// The message of a `Ready=False` condition: the revision cannot serve.
fn unavailable(rev: &Revision) -> Option<String> {
    let ready = find_condition(&rev.status.as_ref()?.conditions, "Ready")?;
    (ready.status == ConditionStatus::False)
        .then(|| ready.message.clone().unwrap_or_else(|| "not ready".into()))
}
