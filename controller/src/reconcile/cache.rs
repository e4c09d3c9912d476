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

use std::collections::{BTreeMap, BTreeSet};

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

/// Stored objects by kind, then `(namespace, name)` (the store's listing order).
#[derive(Default)]
pub(super) struct Cache {
    objects: BTreeMap<Kind, BTreeMap<(String, String), Value>>,
}

impl Cache {
    /// Replaces every object of `kind`.
    pub(super) fn fill(&mut self, kind: Kind, objects: Vec<Value>) {
        let map = objects.into_iter().map(|o| (ns_name(&o), o)).collect();
        self.objects.insert(kind, map);
    }

    /// Stores (or, with `None`, forgets) one object; returns the previous one.
    pub(super) fn put(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        object: Option<Value>,
    ) -> Option<Value> {
        let map = self.objects.entry(kind).or_default();
        let key = (namespace.to_owned(), name.to_owned());
        match object {
            Some(o) => map.insert(key, o),
            None => map.remove(&key),
        }
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

    /// Objects of a kind in one namespace.
    fn in_namespace<'a>(&'a self, kind: Kind, ns: &'a str) -> impl Iterator<Item = &'a Value> {
        self.objects.get(&kind).into_iter().flat_map(move |m| {
            m.range((ns.to_owned(), String::new())..)
                .take_while(move |((n, _), _)| n == ns)
                .map(|(_, v)| v)
        })
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
            match kind {
                Kind::InferenceService => {
                    for svc in self.in_namespace(Kind::Service, ns) {
                        if owned_by(svc, Kind::InferenceService, name) {
                            add(Kind::Service, &ns_name(svc).1);
                        }
                    }
                }
                Kind::Service => {
                    add(Kind::Configuration, name);
                    add(Kind::Route, name);
                }
                Kind::Configuration => {
                    for rev in self.in_namespace(Kind::Revision, ns) {
                        if rev["metadata"]["labels"][CONFIGURATION_LABEL].as_str()
                            == Some(name.as_str())
                        {
                            add(Kind::Revision, &ns_name(rev).1);
                        }
                    }
                    for route in self.in_namespace(Kind::Route, ns) {
                        if route_references(route, Kind::Configuration, name) {
                            add(Kind::Route, &ns_name(route).1);
                        }
                    }
                }
                Kind::Revision => {
                    for route in self.in_namespace(Kind::Route, ns) {
                        if route_references(route, Kind::Revision, name) {
                            add(Kind::Route, &ns_name(route).1);
                        }
                    }
                    for cfg in self.in_namespace(Kind::Configuration, ns) {
                        if cfg["spec"]["template"]["metadata"]["name"].as_str()
                            == Some(name.as_str())
                        {
                            add(Kind::Configuration, &ns_name(cfg).1);
                        }
                    }
                }
                _ => {}
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

fn owned_by(raw: &Value, kind: Kind, name: &str) -> bool {
    raw["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["kind"].as_str() == Some(kind.name()) && o["name"].as_str() == Some(name))
}

/// Whether a Route can route to the Configuration or Revision `name` (its own spec or
/// status traffic, or its Service's configuration).
fn route_references(route: &Value, kind: Kind, name: &str) -> bool {
    if kind == Kind::Configuration
        && route["metadata"]["name"].as_str() == Some(name)
        && owned_by_kind(route, Kind::Service)
    {
        return true;
    }
    let field = if kind == Kind::Configuration {
        "configurationName"
    } else {
        "revisionName"
    };
    ["spec", "status"].iter().any(|part| {
        route[part]["traffic"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t[field].as_str() == Some(name))
    })
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
    fn deleted_keys_stay_in_scope() {
        let cache = Cache::default();
        let gone = (Kind::Route, "default".to_owned(), "x".to_owned());
        assert!(cache.closure([gone.clone()]).contains(&gone));
    }
}
