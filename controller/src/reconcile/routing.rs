//! Builds the routing snapshot the data plane serves from.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sluice_core::{
    Endpoint, HostRoute, NamespacedName, ResponseTimeouts, RevisionRoute, RoutingSnapshot,
    ScaleDecision, WeightedTarget,
};
use sluice_crds::Kind;
use sluice_crds::revision::Revision;
use sluice_crds::service::TrafficTarget;

use sluice_crds::ConditionStatus;
use sluice_crds::meta::find_condition;

use super::revision;
use super::support::weighted;
use crate::runtime::Runtime;

/// `(host, service, targets)`: one host of the routing snapshot, from a Route (its host
/// and tag hosts) or an InferenceService (its top-level host).
pub(super) type HostEntry = (String, NamespacedName, Vec<WeightedTarget>);

/// The Route or InferenceService host entries come from.
pub(super) type Owner = (Kind, NamespacedName);

/// The host entries of one Route, in both modes (the controller's pass locally, the
/// router's watch on Kubernetes): `{tag}-{host}` to each tagged target, then `host` to
/// the Route's traffic or, while no revision has any (nothing ready yet), to `latest`, the
/// newest revision of its Service, which the activator holds requests for until it is
/// ready (rather than a 404 during the first deployment). The Route's own entry is last.
pub(super) fn route_host_entries(
    route: &NamespacedName,
    host: &str,
    traffic: &[TrafficTarget],
    latest: Option<&str>,
) -> Vec<HostEntry> {
    let ns = route.namespace.as_str();
    let mut entries: Vec<HostEntry> = traffic
        .iter()
        .filter_map(|t| {
            let tag = t.tag.as_deref().filter(|t| !t.is_empty())?;
            let revision = t.revision_name.as_ref()?;
            let target = WeightedTarget {
                revision: NamespacedName::new(ns, revision.clone()),
                percent: 100,
            };
            Some((
                super::route::tag_host(tag, host),
                route.clone(),
                vec![target],
            ))
        })
        .collect();
    let mut targets = weighted(ns, traffic);
    if targets.is_empty()
        && let Some(latest) = latest
    {
        targets.push(WeightedTarget {
            revision: NamespacedName::new(ns, latest),
            percent: 100,
        });
    }
    entries.push((host.to_owned(), route.clone(), targets));
    entries
}

/// Each host (route, tag, InferenceService) maps to its weighted targets; every revision
/// with traffic gets its endpoints. Where two entries name the same host, the later one
/// (in owner order) wins.
pub(super) fn build<'a>(
    hosts: impl Iterator<Item = &'a HostEntry> + Clone,
    revisions: &HashMap<NamespacedName, Revision>,
    runtime: &impl Runtime,
    decisions: &HashMap<NamespacedName, ScaleDecision>,
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
    let routed: HashSet<&NamespacedName> =
        hosts.flat_map(|(_, _, t)| t).map(|t| &t.revision).collect();
    for key in routed {
        let Some(rev) = revisions.get(key) else {
            continue;
        };
        let (route, timeouts) = revision_route(key, rev, runtime, decisions);
        if let Some(timeouts) = timeouts {
            snap.timeouts.insert(key.clone(), timeouts);
        }
        snap.revisions.insert(key.clone(), route);
    }
    snap
}

/// A routed revision's entry in the snapshot, and its response timeouts unless default.
fn revision_route(
    key: &NamespacedName,
    rev: &Revision,
    runtime: &impl Runtime,
    decisions: &HashMap<NamespacedName, ScaleDecision>,
) -> (RevisionRoute, Option<ResponseTimeouts>) {
    let mut endpoints: Vec<Endpoint> = runtime
        .status(key)
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
    let route = RevisionRoute {
        key: key.clone(),
        endpoints,
        container_concurrency: cc,
        timeout: revision::timeout(rev),
        activator_in_path: decisions.get(key).is_none_or(|d| d.activator_in_path),
        unavailable: unavailable(rev),
    };
    (
        route,
        (timeouts != ResponseTimeouts::default()).then_some(timeouts),
    )
}

/// The routing snapshot, kept current owner by owner and revision by revision, so that an
/// incremental pass updates the hosts and revisions it touched instead of rebuilding the
/// snapshot of every host (which cost more than the rest of a one-object pass with 1,000
/// Services). Equal to `build` over the same entries and revisions.
#[derive(Default)]
pub(super) struct RoutingState {
    entries: BTreeMap<Owner, Vec<HostEntry>>,
    /// The owners with an entry for each (lower-case) host.
    by_host: HashMap<String, BTreeSet<Owner>>,
    /// How many entries target each revision.
    routed: HashMap<NamespacedName, usize>,
    snap: RoutingSnapshot,
    /// Hosts and revisions whose snapshot entries may be stale.
    touched_hosts: BTreeSet<String>,
    touched_revisions: HashSet<NamespacedName>,
}

impl RoutingState {
    /// Replaces every entry (after a full pass) and rebuilds the snapshot.
    pub(super) fn reset(
        &mut self,
        entries: BTreeMap<Owner, Vec<HostEntry>>,
        revisions: &HashMap<NamespacedName, Revision>,
        runtime: &impl Runtime,
        decisions: &HashMap<NamespacedName, ScaleDecision>,
    ) {
        *self = RoutingState::default();
        for (owner, list) in entries {
            self.replace(owner, Some(list));
        }
        self.touched_hosts.clear();
        self.touched_revisions.clear();
        self.snap = build(
            self.entries.values().flatten(),
            revisions,
            runtime,
            decisions,
        );
    }

    /// Replaces one owner's entries (`None`: it has none now).
    pub(super) fn replace(&mut self, owner: Owner, entries: Option<Vec<HostEntry>>) {
        if let Some(old) = self.entries.remove(&owner) {
            for (host, _, targets) in &old {
                let host = host.to_ascii_lowercase();
                if let Some(owners) = self.by_host.get_mut(&host) {
                    owners.remove(&owner);
                    if owners.is_empty() {
                        self.by_host.remove(&host);
                    }
                }
                self.touched_hosts.insert(host);
                for t in targets {
                    if let Some(n) = self.routed.get_mut(&t.revision) {
                        *n -= 1;
                        if *n == 0 {
                            self.routed.remove(&t.revision);
                        }
                    }
                    self.touched_revisions.insert(t.revision.clone());
                }
            }
        }
        let Some(new) = entries else { return };
        for (host, _, targets) in &new {
            let host = host.to_ascii_lowercase();
            self.by_host
                .entry(host.clone())
                .or_default()
                .insert(owner.clone());
            self.touched_hosts.insert(host);
            for t in targets {
                *self.routed.entry(t.revision.clone()).or_default() += 1;
                self.touched_revisions.insert(t.revision.clone());
            }
        }
        self.entries.insert(owner, new);
    }

    /// Marks a revision whose status, replicas or scale decision may have changed.
    pub(super) fn touch_revision(&mut self, key: NamespacedName) {
        self.touched_revisions.insert(key);
    }

    /// Brings the snapshot's touched hosts and revisions up to date; returns whether the
    /// snapshot changed.
    pub(super) fn refresh(
        &mut self,
        revisions: &HashMap<NamespacedName, Revision>,
        runtime: &impl Runtime,
        decisions: &HashMap<NamespacedName, ScaleDecision>,
    ) -> bool {
        let mut changed = false;
        for host in std::mem::take(&mut self.touched_hosts) {
            // The last non-empty entry for the host, in owner order, as `build` does.
            let now = self.by_host.get(&host).and_then(|owners| {
                owners
                    .iter()
                    .filter_map(|o| self.entries.get(o))
                    .flatten()
                    .rev()
                    .find(|(h, _, t)| !t.is_empty() && h.eq_ignore_ascii_case(&host))
                    .map(|(_, service, targets)| HostRoute {
                        service: service.clone(),
                        targets: targets.clone(),
                    })
            });
            changed |= match now {
                Some(route) => {
                    if self.snap.hosts.get(&host) == Some(&route) {
                        false
                    } else {
                        self.snap.hosts.insert(host, route);
                        true
                    }
                }
                None => self.snap.hosts.remove(&host).is_some(),
            };
        }
        for key in std::mem::take(&mut self.touched_revisions) {
            let rev = revisions
                .get(&key)
                .filter(|_| self.routed.contains_key(&key));
            let (route, timeouts) = match rev {
                Some(rev) => {
                    let (route, timeouts) = revision_route(&key, rev, runtime, decisions);
                    (Some(route), timeouts)
                }
                None => (None, None),
            };
            if self.snap.revisions.get(&key) != route.as_ref() {
                changed = true;
                match route {
                    Some(route) => self.snap.revisions.insert(key.clone(), route),
                    None => self.snap.revisions.remove(&key),
                };
            }
            if self.snap.timeouts.get(&key) != timeouts.as_ref() {
                changed = true;
                match timeouts {
                    Some(t) => self.snap.timeouts.insert(key, t),
                    None => self.snap.timeouts.remove(&key),
                };
            }
        }
        changed
    }

    /// The snapshot.
    pub(super) fn snapshot(&self) -> &RoutingSnapshot {
        &self.snap
    }
}

/// The message of a `Ready=False` condition: the revision cannot serve.
fn unavailable(rev: &Revision) -> Option<String> {
    let ready = find_condition(&rev.status.as_ref()?.conditions, "Ready")?;
    (ready.status == ConditionStatus::False)
        .then(|| ready.message.clone().unwrap_or_else(|| "not ready".into()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::runtime::{LocalRuntime, LocalRuntimeConfig};

    fn rev(name: &str, timeout: i64) -> (NamespacedName, Revision) {
        let r: Revision = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"image": "x"}], "timeoutSeconds": timeout,
                     "responseStartTimeoutSeconds": 5}
        }))
        .unwrap();
        (NamespacedName::new("default", name), r)
    }

    /// The host-entry rule both modes share: tag hosts first, then the Route's own host,
    /// which falls back to the newest revision only while no revision has traffic.
    #[test]
    fn route_host_entries_tag_hosts_then_the_route_with_the_latest_as_fallback() {
        let route = NamespacedName::new("default", "hello");
        let host = "hello.default.example.com";
        let traffic: Vec<TrafficTarget> = serde_json::from_value(json!([
            {"revisionName": "hello-00001", "percent": 90},
            {"revisionName": "hello-00002", "percent": 10, "tag": "canary"},
            {"revisionName": "hello-00002", "percent": 0, "tag": ""}
        ]))
        .unwrap();
        let entries = route_host_entries(&route, host, &traffic, Some("hello-00003"));
        assert_eq!(
            entries,
            [
                entry(
                    "canary-hello.default.example.com",
                    "hello",
                    &[("hello-00002", 100)]
                ),
                entry(host, "hello", &[("hello-00001", 90), ("hello-00002", 10)]),
            ]
        );
        // Nothing routed yet: the newest revision, through the activator.
        let entries = route_host_entries(&route, host, &[], Some("hello-00003"));
        assert_eq!(entries, [entry(host, "hello", &[("hello-00003", 100)])]);
        let entries = route_host_entries(&route, host, &[], None);
        assert_eq!(entries, [entry(host, "hello", &[])]);
    }

    fn entry(host: &str, service: &str, targets: &[(&str, u32)]) -> HostEntry {
        (
            host.to_owned(),
            NamespacedName::new("default", service),
            targets
                .iter()
                .map(|(r, p)| WeightedTarget {
                    revision: NamespacedName::new("default", *r),
                    percent: *p,
                })
                .collect(),
        )
    }

    fn owner(kind: Kind, name: &str) -> Owner {
        (kind, NamespacedName::new("default", name))
    }

    #[test]
    fn updates_owner_by_owner_equal_a_rebuild_also_when_hosts_collide() {
        let runtime = LocalRuntime::new(LocalRuntimeConfig::new(PathBuf::from("/nonexistent")));
        let decisions = HashMap::new();
        let mut revisions: HashMap<NamespacedName, Revision> =
            [rev("a-1", 30), rev("a-2", 60), rev("b-1", 30)]
                .into_iter()
                .collect();
        let mut state = RoutingState::default();
        let mut all: BTreeMap<Owner, Vec<HostEntry>> = BTreeMap::new();
        let check = |state: &mut RoutingState,
                     all: &BTreeMap<Owner, Vec<HostEntry>>,
                     revisions: &HashMap<NamespacedName, Revision>| {
            state.refresh(revisions, &runtime, &decisions);
            let rebuilt = build(all.values().flatten(), revisions, &runtime, &decisions);
            assert_eq!(*state.snapshot(), rebuilt);
        };
        let mut set = |state: &mut RoutingState, o: Owner, e: Option<Vec<HostEntry>>| {
            match &e {
                Some(e) => all.insert(o.clone(), e.clone()),
                None => all.remove(&o),
            };
            state.replace(o, e);
            all.clone()
        };
        let a = owner(Kind::Route, "a");
        let b = owner(Kind::Route, "b");
        let isvc = owner(Kind::InferenceService, "a");
        let now = set(
            &mut state,
            a.clone(),
            Some(vec![
                entry("A.default.test", "a", &[("a-1", 100)]),
                entry("tag-a.default.test", "a", &[("a-2", 100)]),
            ]),
        );
        check(&mut state, &now, &revisions);
        // Another owner with the same host (case aside): the later owner wins, as in build.
        let now = set(
            &mut state,
            isvc.clone(),
            Some(vec![entry("a.default.test", "a", &[("b-1", 100)])]),
        );
        check(&mut state, &now, &revisions);
        assert_eq!(
            state.snapshot().hosts["a.default.test"].targets[0]
                .revision
                .name,
            "a-1",
            "Route sorts after InferenceService"
        );
        let now = set(
            &mut state,
            b.clone(),
            Some(vec![entry("a.default.test", "b", &[])]),
        );
        check(&mut state, &now, &revisions);
        // Targets move; a revision no longer routed leaves the snapshot.
        let now = set(
            &mut state,
            a.clone(),
            Some(vec![entry("a.default.test", "a", &[("a-2", 100)])]),
        );
        check(&mut state, &now, &revisions);
        assert!(
            !state
                .snapshot()
                .revisions
                .contains_key(&NamespacedName::new("default", "a-1"))
        );
        // A revision's spec changes (its timeouts follow); then it is deleted.
        revisions.insert(rev("a-2", 90).0, rev("a-2", 90).1);
        state.touch_revision(NamespacedName::new("default", "a-2"));
        check(&mut state, &now, &revisions);
        revisions.remove(&NamespacedName::new("default", "a-2"));
        state.touch_revision(NamespacedName::new("default", "a-2"));
        check(&mut state, &now, &revisions);
        // Owners go.
        let now = set(&mut state, a, None);
        check(&mut state, &now, &revisions);
        let now = set(&mut state, isvc, None);
        check(&mut state, &now, &revisions);
        assert!(state.snapshot().hosts.is_empty());
        let _ = set(&mut state, b, None);
    }
}
