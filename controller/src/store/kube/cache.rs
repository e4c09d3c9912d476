//! The store's watchers: one kube-runtime watcher per kind keeps an in-memory copy of every
//! object (the reads of the controller's passes are served from it once a kind is synced)
//! and turns what changed into `Change` notifications.
//!
//! A watcher re-lists after any error it cannot resume from (with backoff); a re-list is
//! diffed against the copy, so objects created, changed or deleted while the connection was
//! down are all notified: no event is lost across an API server restart.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use kube::Api;
use kube::core::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use sluice_crds::Kind;
use tokio::sync::broadcast;

use super::resource::to_value;
use super::resource::{api_resource, classify, crd_name};
use crate::store::Change;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
type Key = (String, String);

/// Every watched object of every kind.
#[derive(Default)]
pub(super) struct Objects {
    kinds: RwLock<HashMap<Kind, KindObjects>>,
}

#[derive(Default)]
struct KindObjects {
    /// Whether one full listing has been seen (reads may be served from here).
    synced: bool,
    objects: HashMap<Key, Arc<Value>>,
    /// A re-list in progress: what it has seen so far.
    relist: Option<HashMap<Key, Arc<Value>>>,
}

fn key(v: &Value) -> Key {
    let m = &v["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn version(v: &Value) -> Option<&str> {
    v["metadata"]["resourceVersion"].as_str()
}

impl Objects {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Kind, KindObjects>> {
        self.kinds.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Kind, KindObjects>> {
        self.kinds.read().unwrap_or_else(|e| e.into_inner())
    }

    /// One object, if the kind is synced (`None` when it is not: ask the API).
    pub(super) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Option<Value>> {
        let kinds = self.read();
        let k = kinds.get(&kind).filter(|k| k.synced)?;
        Some(
            k.objects
                .get(&(namespace.to_owned(), name.to_owned()))
                .map(|v| (**v).clone()),
        )
    }

    /// The objects of a kind (in one namespace or all), if the kind is synced.
    pub(super) fn list(&self, kind: Kind, namespace: Option<&str>) -> Option<Vec<Value>> {
        let kinds = self.read();
        let k = kinds.get(&kind).filter(|k| k.synced)?;
        Some(
            k.objects
                .iter()
                .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                .map(|(_, v)| (**v).clone())
                .collect(),
        )
    }

    /// The uid of an object, if watched.
    pub(super) fn uid(&self, kind: Kind, namespace: &str, name: &str) -> Option<String> {
        let kinds = self.read();
        let v = kinds
            .get(&kind)?
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))?
            .clone();
        v["metadata"]["uid"].as_str().map(str::to_owned)
    }

    /// Applies one watcher event; returns the keys that changed.
    fn apply(&self, kind: Kind, event: Event<Value>) -> Vec<Key> {
        let mut kinds = self.write();
        let k = kinds.entry(kind).or_default();
        match event {
            Event::Apply(v) => {
                let key = key(&v);
                let changed = k
                    .objects
                    .get(&key)
                    .is_none_or(|old| version(old) != version(&v));
                k.objects.insert(key.clone(), Arc::new(v));
                if changed { vec![key] } else { vec![] }
            }
            Event::Delete(v) => {
                let key = key(&v);
                k.objects.remove(&key);
                vec![key]
            }
            Event::Init => {
                k.relist = Some(HashMap::new());
                vec![]
            }
            Event::InitApply(v) => {
                k.relist
                    .get_or_insert_with(HashMap::new)
                    .insert(key(&v), Arc::new(v));
                vec![]
            }
            Event::InitDone => {
                let fresh = k.relist.take().unwrap_or_default();
                let old_keys: HashSet<&Key> = k.objects.keys().collect();
                let mut changed: Vec<Key> = old_keys
                    .into_iter()
                    .filter(|key| !fresh.contains_key(*key))
                    .cloned()
                    .collect();
                for (key, v) in &fresh {
                    if k.objects
                        .get(key)
                        .is_none_or(|old| version(old) != version(v))
                    {
                        changed.push(key.clone());
                    }
                }
                k.objects = fresh;
                k.synced = true;
                changed
            }
        }
    }
}

/// Watches one kind until the process ends, feeding `objects` and `changes`.
pub(super) async fn watch_kind(
    api: Api<DynamicObject>,
    kind: Kind,
    objects: Arc<Objects>,
    changes: broadcast::Sender<Change>,
) {
    let _ = api_resource(kind);
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut stream = stream;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                let err = match e {
                    watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => {
                        classify("watch", crd_name(kind), Some(crd_name(kind)), e).to_string()
                    }
                    other => other.to_string(),
                };
                // Logged once per outage, not once per retry.
                if !failing {
                    tracing::warn!(%kind, "watch failed, retrying with backoff: {err}");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!(%kind, "watch resumed");
            failing = false;
        }
        let event = match event {
            Event::Apply(o) => to_value(o).map(Event::Apply),
            Event::Delete(o) => to_value(o).map(Event::Delete),
            Event::InitApply(o) => to_value(o).map(Event::InitApply),
            Event::Init => Some(Event::Init),
            Event::InitDone => Some(Event::InitDone),
        };
        let Some(event) = event else { continue };
        for (namespace, name) in objects.apply(kind, event) {
            let namespace = if namespace.is_empty() {
                "default".to_owned()
            } else {
                namespace
            };
            let _ = changes.send(Change {
                kind,
                namespace,
                name,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, rv: &str) -> Value {
        json!({"metadata": {"namespace": "default", "name": name, "resourceVersion": rv}})
    }

    #[test]
    fn a_relist_reports_what_changed_and_what_went_while_disconnected() {
        let o = Objects::default();
        assert_eq!(
            o.get(Kind::Route, "default", "a"),
            None,
            "unsynced reads go to the API"
        );
        o.apply(Kind::Route, Event::Init);
        o.apply(Kind::Route, Event::InitApply(obj("a", "1")));
        o.apply(Kind::Route, Event::InitApply(obj("b", "1")));
        let mut first = o.apply(Kind::Route, Event::InitDone);
        first.sort();
        assert_eq!(first.len(), 2);
        assert_eq!(o.get(Kind::Route, "default", "c"), Some(None));
        assert_eq!(
            o.apply(Kind::Route, Event::Apply(obj("a", "1"))),
            vec![],
            "same version"
        );
        // Disconnected: b changed, a was deleted, c was created; the re-list tells all three.
        o.apply(Kind::Route, Event::Init);
        o.apply(Kind::Route, Event::InitApply(obj("b", "2")));
        o.apply(Kind::Route, Event::InitApply(obj("c", "3")));
        let mut changed = o.apply(Kind::Route, Event::InitDone);
        changed.sort();
        let names: Vec<&str> = changed.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(o.get(Kind::Route, "default", "a"), Some(None));
        assert_eq!(
            o.list(Kind::Route, Some("default")).map(|l| l.len()),
            Some(2)
        );
    }
}
