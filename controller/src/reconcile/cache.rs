//! The controller's in-memory copy of the store, kept current by the store's watch stream,
//! and the scope of an incremental pass: the objects a change can affect.
//!
//! The cache holds exactly what the store holds (it is filled by one listing and then
//! updated object by object from change notifications), so it is bounded by the store.
//! A pass reads the cache instead of listing and decoding every object; an incremental
//! pass reconciles only the scope of the changed objects: their owner chain upward
//! (Revision → Configuration → Service → InferenceService, Route → Service), their
//! dependents downward (InferenceService → Services → Configuration + Route → Revisions),
//! and every Route that references a Configuration or Revision in scope (and what those
//! Routes reference), closed transitively, so every input of a status computed in the
//! pass is itself recomputed in the pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use sluice_crds::Kind;
use sluice_crds::revision::CONFIGURATION_LABEL;

/// `(kind, namespace, name)` of an object.
pub(super) type Key = (Kind, String, String);

/// Kinds the controller reads.
pub(super) const KINDS: [Kind; 7] = [
    Kind::ClusterServingRuntime,
    Kind::ServingRuntime,
    Kind::InferenceService,
    Kind::Service,
    Kind::Configuration,
    Kind::Route,
    Kind::Revision,
];

fn ns_name(raw: &Value) -> (String, String) {
    let meta = &raw["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Stored objects by kind, then `(namespace, name)` (the store's listing order), with the
/// reverse of `relatives`: for each object, the objects that name it (its children, the
/// Revisions of a Configuration, the Routes that route to it).
#[derive(Default)]
pub(super) struct Cache {
    objects: BTreeMap<Kind, BTreeMap<(String, String), Value>>,
    named_by: HashMap<(String, Kind, String), BTreeSet<(Kind, String)>>,
}

impl Cache {
    /// Replaces every object of `kind`.
    pub(super) fn fill(&mut self, kind: Kind, objects: Vec<Value>) {
        let old = self.objects.remove(&kind).unwrap_or_default();
        for ((ns, name), o) in &old {
            self.unindex(kind, ns, name, o);
        }
        let map: BTreeMap<(String, String), Value> =
            objects.into_iter().map(|o| (ns_name(&o), o)).collect();
        for ((ns, name), o) in &map {
            self.index(kind, ns, name, relatives(kind, o));
        }
        self.objects.insert(kind, map);
    }

    fn index(&mut self, kind: Kind, ns: &str, name: &str, relatives: Vec<(Kind, String)>) {
        for (k, n) in relatives {
            self.named_by
                .entry((ns.to_owned(), k, n))
                .or_default()
                .insert((kind, name.to_owned()));
        }
    }

    fn unindex(&mut self, kind: Kind, ns: &str, name: &str, raw: &Value) {
        for (k, n) in relatives(kind, raw) {
            let key = (ns.to_owned(), k, n);
            if let Some(set) = self.named_by.get_mut(&key) {
                set.remove(&(kind, name.to_owned()));
                if set.is_empty() {
                    self.named_by.remove(&key);
                }
            }
        }
    }

    /// Stores (or, with `None`, forgets) one object; returns the previous one.
    pub(super) fn put(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: Option<Value>,
    ) -> Option<Value> {
        let now = object.as_ref().map(|o| relatives(kind, o));
        let map = self.objects.entry(kind).or_default();
        let key = (namespace.to_owned(), name.to_owned());
        let old = match object {
            Some(o) => map.insert(key, o),
            None => map.remove(&key),
        };
        if let Some(o) = &old {
            self.unindex(kind, namespace, name, o);
        }
        if let Some(now) = now {
            self.index(kind, namespace, name, now);
        }
        old
    }

    /// `(namespace, name)` → `metadata.resourceVersion` of every cached object of `kind`.
    pub(super) fn versions(&self, kind: Kind) -> HashMap<(String, String), String> {
        self.objects
            .get(&kind)
            .into_iter()
            .flatten()
            .map(|(key, o)| {
                let version = o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                (key.clone(), version.to_owned())
            })
            .collect()
    }

    /// How many objects the cache holds.
    pub(super) fn len(&self) -> usize {
        self.objects.values().map(BTreeMap::len).sum()
    }

    /// One object.
    pub(super) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&kind)?
            .get(&(namespace.to_owned(), name.to_owned()))
    }

    /// All objects of a kind.
    pub(super) fn all(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        self.objects.get(&kind).into_iter().flat_map(|m| m.values())
    }

    /// The objects of `kind` in `scope` that exist, in listing order.
    pub(super) fn scoped(&self, kind: Kind, scope: &BTreeSet<Key>) -> Vec<Value> {
        let start = (kind, String::new(), String::new());
        scope
            .range(start..)
            .take_while(|(k, _, _)| *k == kind)
            .filter_map(|(k, ns, name)| self.get(*k, ns, name).cloned())
            .collect()
    }

    /// `changed` and everything its reconcile can read or write, transitively (see the
    /// module docs). Keys of deleted objects stay in the scope (their dependents are
    /// found by name).
    pub(super) fn closure(&self, changed: impl IntoIterator<Item = Key>) -> BTreeSet<Key> {
        let mut scope: BTreeSet<Key> = BTreeSet::new();
        let mut todo: Vec<Key> = changed.into_iter().collect();
        while let Some(key) = todo.pop() {
            if !scope.insert(key.clone()) {
                continue;
            }
            let (kind, ns, name) = &key;
            let mut add = |k: Kind, n: &str| {
                let next = (k, ns.clone(), n.to_owned());
                if !scope.contains(&next) {
                    todo.push(next);
                }
            };
            let this = self.get(*kind, ns, name);
            if let Some(raw) = this {
                for (k, n) in relatives(*kind, raw) {
                    add(k, &n);
                }
            }
            if *kind == Kind::Service {
                add(Kind::Configuration, name);
                add(Kind::Route, name);
            }
            // Children, a Configuration's Revisions, the Routes that route to it, the
            // Configurations that bring its name.
            if let Some(by) = self.named_by.get(&(ns.clone(), *kind, name.clone())) {
                for (k, n) in by {
                    add(*k, n);
                }
            }
        }
        scope
    }
}

/// Objects named by `raw` itself: its owners, its configuration (a Revision), what it
/// routes to (a Route), its brought revision name (a Configuration).
pub(super) fn relatives(kind: Kind, raw: &Value) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    let meta = &raw["metadata"];
    for owner in meta["ownerReferences"].as_array().into_iter().flatten() {
        let owner_kind = match owner["kind"].as_str() {
            Some(k) if k == Kind::InferenceService.name() => Kind::InferenceService,
            Some(k) if k == Kind::Service.name() => Kind::Service,
            Some(k) if k == Kind::Configuration.name() => Kind::Configuration,
            Some(k) if k == Kind::Route.name() => Kind::Route,
            _ => continue,
        };
        if let Some(n) = owner["name"].as_str() {
            out.push((owner_kind, n.to_owned()));
        }
    }
    match kind {
        Kind::Revision => {
            if let Some(cfg) = meta["labels"][CONFIGURATION_LABEL].as_str() {
                out.push((Kind::Configuration, cfg.to_owned()));
            }
        }
        Kind::Route => {
            if owned_by_kind(raw, Kind::Service)
                && let Some(n) = meta["name"].as_str()
            {
                out.push((Kind::Configuration, n.to_owned()));
            }
            for part in ["spec", "status"] {
                for t in raw[part]["traffic"].as_array().into_iter().flatten() {
                    if let Some(c) = t["configurationName"].as_str() {
                        out.push((Kind::Configuration, c.to_owned()));
                    }
                    if let Some(r) = t["revisionName"].as_str() {
                        out.push((Kind::Revision, r.to_owned()));
                    }
                }
            }
        }
        Kind::Configuration => {
            if let Some(n) = raw["spec"]["template"]["metadata"]["name"].as_str()
                && !n.is_empty()
            {
                out.push((Kind::Revision, n.to_owned()));
            }
        }
        _ => {}
    }
    out
}

fn owned_by_kind(raw: &Value, kind: Kind) -> bool {
    raw["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["kind"].as_str() == Some(kind.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, meta: Value, rest: Value) -> Value {
        let mut m = json!({"name": name, "namespace": "default"});
        if let (Some(m), Some(extra)) = (m.as_object_mut(), meta.as_object()) {
            m.extend(extra.clone());
        }
        let mut o = json!({"metadata": m});
        if let (Some(o), Some(extra)) = (o.as_object_mut(), rest.as_object()) {
            o.extend(extra.clone());
        }
        o
    }

    fn family(cache: &mut Cache, n: &str) {
        let svc = format!("{n}-predictor");
        let owner = |k: &str, name: &str| json!({"ownerReferences": [{"kind": k, "name": name}]});
        cache.put(
            Kind::InferenceService,
            "default",
            n,
            Some(obj(n, json!({}), json!({}))),
        );
        cache.put(
            Kind::Service,
            "default",
            &svc,
            Some(obj(&svc, owner("InferenceService", n), json!({}))),
        );
        cache.put(
            Kind::Configuration,
            "default",
            &svc,
            Some(obj(&svc, owner("Service", &svc), json!({}))),
        );
        cache.put(
            Kind::Route,
            "default",
            &svc,
            Some(obj(&svc, owner("Service", &svc), json!({}))),
        );
        let rev = format!("{svc}-00001");
        let mut meta = owner("Configuration", &svc);
        meta["labels"] = json!({CONFIGURATION_LABEL: svc});
        cache.put(
            Kind::Revision,
            "default",
            &rev,
            Some(obj(&rev, meta, json!({}))),
        );
    }

    #[test]
    fn closure_is_the_family_of_a_changed_object_and_nothing_else() {
        let mut cache = Cache::default();
        for n in ["a", "b", "c"] {
            family(&mut cache, n);
        }
        let want: BTreeSet<Key> = [
            (Kind::InferenceService, "a"),
            (Kind::Service, "a-predictor"),
            (Kind::Configuration, "a-predictor"),
            (Kind::Route, "a-predictor"),
            (Kind::Revision, "a-predictor-00001"),
        ]
        .into_iter()
        .map(|(k, n)| (k, "default".to_owned(), n.to_owned()))
        .collect();
        for start in &want {
            assert_eq!(cache.closure([start.clone()]), want, "from {start:?}");
        }
    }

    #[test]
    fn a_route_naming_another_configuration_joins_its_scope() {
        let mut cache = Cache::default();
        family(&mut cache, "a");
        family(&mut cache, "b");
        let route = obj(
            "split",
            json!({}),
            json!({"spec": {"traffic": [{"configurationName": "b-predictor", "percent": 100}]}}),
        );
        cache.put(Kind::Route, "default", "split", Some(route));
        let scope = cache.closure([(Kind::Revision, "default".into(), "b-predictor-00001".into())]);
        assert!(scope.contains(&(Kind::Route, "default".into(), "split".into())));
        assert!(!scope.iter().any(|(_, _, n)| n.starts_with("a")));
    }

    #[test]
    fn the_index_follows_updates_deletes_and_refills() {
        let mut cache = Cache::default();
        family(&mut cache, "a");
        family(&mut cache, "b");
        let split = |cfg: &str| {
            obj(
                "split",
                json!({}),
                json!({"spec": {"traffic": [{"configurationName": cfg, "percent": 100}]}}),
            )
        };
        let route = (Kind::Route, "default".to_owned(), "split".to_owned());
        let from = |n: &str| (Kind::Configuration, "default".to_owned(), n.to_owned());
        cache.put(Kind::Route, "default", "split", Some(split("b-predictor")));
        assert!(cache.closure([from("b-predictor")]).contains(&route));
        // Re-pointed: now in a's scope only.
        cache.put(Kind::Route, "default", "split", Some(split("a-predictor")));
        assert!(!cache.closure([from("b-predictor")]).contains(&route));
        assert!(cache.closure([from("a-predictor")]).contains(&route));
        // Deleted: in nobody's.
        cache.put(Kind::Route, "default", "split", None);
        assert!(!cache.closure([from("a-predictor")]).contains(&route));
        // A refill replaces the kind's edges.
        cache.fill(Kind::Route, vec![split("b-predictor")]);
        assert!(cache.closure([from("b-predictor")]).contains(&route));
        assert!(!cache.closure([from("a-predictor")]).contains(&route));
        let rev = (
            Kind::Revision,
            "default".to_owned(),
            "a-predictor-00001".to_owned(),
        );
        assert!(cache.closure([from("a-predictor")]).contains(&rev));
        cache.fill(Kind::Revision, vec![]);
        assert!(!cache.closure([from("a-predictor")]).contains(&rev));
    }

    #[test]
    fn deleted_keys_stay_in_scope() {
        let cache = Cache::default();
        let gone = (Kind::Route, "default".to_owned(), "x".to_owned());
        assert!(cache.closure([gone.clone()]).contains(&gone));
    }
}
