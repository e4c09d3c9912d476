//! `KubeStore`: the `Store` on the Kubernetes API (Kubernetes mode).
//!
//! Objects are custom resources (`crds/yaml`) read and written through kube-rs as
//! `DynamicObject`s: `apply` is server-side apply under the field manager
//! `sluice-controller`; `update` is a replace carrying `resourceVersion` (409 →
//! `StoreError::Conflict`); statuses go through the status subresource; events are core/v1
//! Events on the object; `delete` is a background cascading delete (the garbage collector
//! of kube-controller-manager removes what the object owns, through owner references).
//!
//! What the API cannot give: `apply` of several objects is not one transaction. It is made
//! all-or-none as far as the API allows: every object is first applied as a dry run (the
//! API server validates and admits it), and only when all pass are they applied for real;
//! a failure between two real applies (the API server going away) leaves the earlier ones
//! written, and the controller's next pass converges from there.
//!
//! Once `start_watching` has run, reads of a kind are served from the watchers' copy after
//! its first full listing (see `cache`), so a pass costs no request per object.

mod cache;
mod resource;

use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde_json::Value;
use sluice_crds::Kind;
use tokio::sync::broadcast;

use super::{ApplyOutcome, Change, Event, Store, StoreError};
pub use resource::{FIELD_MANAGER, KubeError, api_resource, crd_name, namespaced};
pub(crate) use resource::{api_code, classify};

/// Requests a batch keeps in flight at once.
const PARALLEL: usize = 16;

/// The Kubernetes API as the store.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    field_manager: String,
    changes: broadcast::Sender<Change>,
    objects: Arc<cache::Objects>,
    watching: OnceLock<()>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("field_manager", &self.inner.field_manager)
            .finish_non_exhaustive()
    }
}

/// A client from the current kubeconfig, or the in-cluster service account.
pub async fn infer_client() -> Result<Client, KubeError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| KubeError::Infer(Box::new(e)))?;
    Client::try_from(config).map_err(|e| KubeError::Config(Box::new(e)))
}

/// A stored object from the API's: `managedFields` dropped (large, and the controller
/// never reads them).
pub(crate) fn to_value(o: DynamicObject) -> Option<Value> {
    let mut v = serde_json::to_value(o).ok()?;
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    Some(v)
}

fn from_value(kind: Kind, v: Value) -> Result<DynamicObject, StoreError> {
    let mut o: DynamicObject =
        serde_json::from_value(v).map_err(|e| StoreError::Malformed(format!("{kind}: {e}")))?;
    o.types = Some(kube::core::TypeMeta {
        api_version: kind.api_version().to_owned(),
        kind: kind.name().to_owned(),
    });
    Ok(o)
}

/// Runs `futures` with at most `PARALLEL` in flight, results in order.
async fn bounded<T, F: std::future::Future<Output = T>>(futures: Vec<F>) -> Vec<T> {
    futures_util::stream::iter(futures)
        .buffered(PARALLEL)
        .collect()
        .await
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v["metadata"][field].as_str()
}

impl KubeStore {
    /// A store on `client`, applying as `sluice-controller`.
    pub fn new(client: Client) -> Self {
        Self::with_field_manager(client, FIELD_MANAGER)
    }

    /// A store applying under another field manager (`sluice apply --kube` uses `sluice`).
    pub fn with_field_manager(client: Client, field_manager: &str) -> Self {
        let (changes, _) = broadcast::channel(16_384);
        Self {
            inner: Arc::new(Inner {
                client,
                field_manager: field_manager.to_owned(),
                changes,
                objects: Arc::default(),
                watching: OnceLock::new(),
            }),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Starts one watcher per kind (once; later calls do nothing). Their changes arrive on
    /// `watch()`, and reads are served from what they saw.
    pub fn start_watching(&self) {
        self.start_watching_kinds(&Kind::ALL);
    }

    /// Starts watchers for `kinds` only (a component whose RBAC allows no more), once.
    pub fn start_watching_kinds(&self, kinds: &[Kind]) {
        self.inner.watching.get_or_init(|| {
            for &kind in kinds {
                tokio::spawn(cache::watch_kind(
                    self.api(kind, None),
                    kind,
                    self.inner.objects.clone(),
                    self.inner.changes.clone(),
                ));
            }
        });
    }

    /// Checks that the CRD of every kind is installed (by API discovery), naming the first
    /// one missing.
    pub async fn check_crds(&self) -> Result<(), KubeError> {
        for kind in Kind::ALL {
            let found = match self
                .inner
                .client
                .list_api_group_resources(kind.api_version())
                .await
            {
                Ok(list) => list.resources.iter().any(|r| r.name == kind.plural()),
                Err(e) if api_code(&e) == Some(404) => false,
                Err(e) => {
                    return Err(classify(
                        "get",
                        format!("/apis/{}", kind.api_version()),
                        None,
                        e,
                    ));
                }
            };
            if !found {
                return Err(KubeError::MissingCrd {
                    crd: crd_name(kind),
                });
            }
        }
        Ok(())
    }

    /// The API of a kind in a namespace (all namespaces with `None`; cluster-scoped kinds
    /// ignore the namespace).
    fn api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = api_resource(kind);
        match namespace {
            Some(ns) if namespaced(kind) => {
                Api::namespaced_with(self.inner.client.clone(), ns, &ar)
            }
            _ => Api::all_with(self.inner.client.clone(), &ar),
        }
    }

    fn err(&self, verb: &'static str, kind: Kind, e: kube::Error) -> StoreError {
        StoreError::Kube(classify(verb, crd_name(kind), Some(crd_name(kind)), e))
    }

    /// Reads one object from the API (never from the watchers' copy).
    async fn get_fresh(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        match self.api(kind, Some(ns)).get_opt(name).await {
            Ok(o) => Ok(o.and_then(to_value)),
            Err(e) => Err(self.err("get", kind, e)),
        }
    }

    /// Whether the controlling owner named by `obj` exists with that uid.
    async fn owner_exists(&self, ns: &str, obj: &Value) -> Result<bool, StoreError> {
        let Some(owner) = obj["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
        else {
            return Ok(true);
        };
        let (Some(kind), Some(name), Some(uid)) = (
            owner["kind"].as_str(),
            owner["name"].as_str(),
            owner["uid"].as_str(),
        ) else {
            return Ok(true);
        };
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == kind) else {
            return Ok(true);
        };
        if let Some(known) = self.inner.objects.uid(kind, ns, name)
            && known == uid
        {
            return Ok(true);
        }
        let stored = self.get_fresh(kind, ns, name).await?;
        Ok(stored.as_ref().and_then(|s| meta_str(s, "uid")) == Some(uid))
    }

    /// The body of a server-side apply: type set, store-owned fields and status dropped.
    fn apply_body(kind: Kind, mut v: Value) -> Value {
        v["apiVersion"] = Value::from(kind.api_version());
        v["kind"] = Value::from(kind.name());
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        if let Some(m) = v["metadata"].as_object_mut() {
            for f in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "managedFields",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
            if namespaced(kind) {
                m.entry("namespace").or_insert(Value::from("default"));
            } else {
                m.remove("namespace");
            }
        }
        v
    }

    fn ns_of(kind: Kind, v: &Value) -> String {
        if namespaced(kind) {
            meta_str(v, "namespace").unwrap_or("default").to_owned()
        } else {
            String::new()
        }
    }

    /// Applies one object for real (skipped when its owner is gone), with its outcome.
    async fn apply_checked(
        &self,
        kind: Kind,
        body: &Value,
        live: bool,
    ) -> Result<ApplyOutcome, StoreError> {
        if !live {
            return Ok(ApplyOutcome::OwnerGone);
        }
        let ns = Self::ns_of(kind, body);
        let name = meta_str(body, "name").unwrap_or_default();
        // For the outcome only: the watchers' copy when there is one.
        let before = self.get(kind, &ns, name).await?;
        let after = self.apply_one(kind, body, false).await?;
        let rv = |v: &Value| meta_str(v, "resourceVersion").map(str::to_owned);
        Ok(match before {
            None => ApplyOutcome::Created,
            Some(b) if after.as_ref().and_then(rv) == rv(&b) => ApplyOutcome::Unchanged,
            Some(_) => ApplyOutcome::Configured,
        })
    }

    async fn apply_one(
        &self,
        kind: Kind,
        body: &Value,
        dry_run: bool,
    ) -> Result<Option<Value>, StoreError> {
        let ns = Self::ns_of(kind, body);
        let name = meta_str(body, "name").unwrap_or_default();
        let mut pp = PatchParams::apply(&self.inner.field_manager).force();
        if dry_run {
            pp = pp.dry_run();
        }
        match self
            .api(kind, Some(&ns))
            .patch(name, &pp, &Patch::Apply(body))
            .await
        {
            Ok(o) => Ok(to_value(o)),
            Err(e) => Err(self.err("patch", kind, e)),
        }
    }

    fn conflict(kind: Kind, obj: &Value, e: &kube::Error) -> Option<StoreError> {
        (api_code(e) == Some(409)).then(|| StoreError::Conflict {
            kind,
            namespace: meta_str(obj, "namespace").unwrap_or("default").to_owned(),
            name: meta_str(obj, "name").unwrap_or_default().to_owned(),
            have: meta_str(obj, "resourceVersion")
                .unwrap_or_default()
                .to_owned(),
            stored: "a newer one".to_owned(),
        })
    }

    fn not_found(kind: Kind, obj: &Value, e: &kube::Error) -> Option<StoreError> {
        (api_code(e) == Some(404) && !resource::is_missing_type(e)).then(|| StoreError::NotFound {
            kind,
            namespace: meta_str(obj, "namespace").unwrap_or("default").to_owned(),
            name: meta_str(obj, "name").unwrap_or_default().to_owned(),
        })
    }

    async fn write_status(
        &self,
        kind: Kind,
        object: &Value,
        status: Value,
    ) -> Result<Value, StoreError> {
        let mut body = object.clone();
        body["status"] = status;
        let ns = Self::ns_of(kind, &body);
        let name = meta_str(&body, "name").unwrap_or_default().to_owned();
        let o = from_value(kind, body)?;
        match self
            .api(kind, Some(&ns))
            .replace_status(&name, &PostParams::default(), &o)
            .await
        {
            Ok(o) => to_value(o).ok_or_else(|| StoreError::Malformed(format!("{kind} {name}"))),
            Err(e) => Err(Self::conflict(kind, object, &e)
                .or_else(|| Self::not_found(kind, object, &e))
                .unwrap_or_else(|| {
                    StoreError::Kube(classify(
                        "update",
                        format!("{}/status", crd_name(kind)),
                        Some(crd_name(kind)),
                        e,
                    ))
                })),
        }
    }

    async fn record_event(&self, e: Event) -> Result<(), StoreError> {
        let ns = if namespaced(e.kind) {
            e.namespace.clone()
        } else {
            "default".to_owned()
        };
        let uid =
            self.inner
                .objects
                .uid(e.kind, if namespaced(e.kind) { &ns } else { "" }, &e.name);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = CoreEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", e.name)),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(e.kind.api_version().to_owned()),
                kind: Some(e.kind.name().to_owned()),
                name: Some(e.name.clone()),
                namespace: namespaced(e.kind).then(|| ns.clone()),
                uid,
                ..ObjectReference::default()
            },
            reason: Some(e.reason),
            message: Some(e.message),
            type_: Some(e.type_),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(self.inner.field_manager.clone()),
                host: None,
            }),
            reporting_component: Some(self.inner.field_manager.clone()),
            ..CoreEvent::default()
        };
        let api: Api<CoreEvent> = Api::namespaced(self.inner.client.clone(), &ns);
        api.create(&PostParams::default(), &event)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Kube(classify("create", "events".into(), None, e)))
    }
}

impl Store for KubeStore {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        let ns = if namespaced(kind) { namespace } else { "" };
        if let Some(hit) = self.inner.objects.get(kind, ns, name) {
            return Ok(hit);
        }
        self.get_fresh(kind, namespace, name).await
    }

    async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Value>, StoreError> {
        let namespace = namespace.filter(|_| namespaced(kind));
        let mut items = match self.inner.objects.list(kind, namespace) {
            Some(items) => items,
            None => {
                let api = self.api(kind, namespace);
                let list = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| self.err("list", kind, e))?;
                list.items.into_iter().filter_map(to_value).collect()
            }
        };
        items.sort_by(|a, b| {
            (meta_str(a, "namespace"), meta_str(a, "name"))
                .cmp(&(meta_str(b, "namespace"), meta_str(b, "name")))
        });
        Ok(items)
    }

    async fn apply(&self, objects: Vec<(Kind, Value)>) -> Result<Vec<ApplyOutcome>, StoreError> {
        // Owners first: an object whose controlling owner is gone is not written.
        let mut planned = Vec::with_capacity(objects.len());
        for (kind, v) in objects {
            let ns = meta_str(&v, "namespace").unwrap_or("default").to_owned();
            let live = self.owner_exists(&ns, &v).await?;
            planned.push((kind, Self::apply_body(kind, v), live));
        }
        // Every object passes validation and admission before any is written.
        if planned.iter().filter(|(_, _, live)| *live).count() > 1 {
            let mut dry = Vec::new();
            for (kind, body, live) in &planned {
                if *live {
                    dry.push(self.apply_one(*kind, body, true));
                }
            }
            for r in bounded(dry).await {
                r?;
            }
        }
        let mut writes = Vec::new();
        for (kind, body, live) in &planned {
            writes.push(self.apply_checked(*kind, body, *live));
        }
        bounded(writes).await.into_iter().collect()
    }

    async fn update(&self, kind: Kind, object: Value) -> Result<(ApplyOutcome, Value), StoreError> {
        let ns = Self::ns_of(kind, &object);
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let sent_rv = meta_str(&object, "resourceVersion").map(str::to_owned);
        let o = from_value(kind, object.clone())?;
        match self
            .api(kind, Some(&ns))
            .replace(&name, &PostParams::default(), &o)
            .await
        {
            Ok(o) => {
                let v =
                    to_value(o).ok_or_else(|| StoreError::Malformed(format!("{kind} {name}")))?;
                let outcome = if meta_str(&v, "resourceVersion").map(str::to_owned) == sent_rv {
                    ApplyOutcome::Unchanged
                } else {
                    ApplyOutcome::Configured
                };
                Ok((outcome, v))
            }
            Err(e) => Err(Self::conflict(kind, &object, &e)
                .or_else(|| Self::not_found(kind, &object, &e))
                .unwrap_or_else(|| self.err("update", kind, e))),
        }
    }

    async fn update_status(
        &self,
        kind: Kind,
        object: &Value,
        status: Value,
    ) -> Result<Value, StoreError> {
        self.write_status(kind, object, status).await
    }

    async fn update_statuses(
        &self,
        writes: Vec<(Kind, Value, Value)>,
        events: Vec<Event>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut pending = Vec::with_capacity(writes.len());
        for (kind, object, status) in &writes {
            pending.push(self.write_status(*kind, object, status.clone()));
        }
        let results: Vec<Result<(), StoreError>> = bounded(pending)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()))
            .collect();
        self.record_events(events).await?;
        Ok(results)
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        let pending: Vec<_> = events.into_iter().map(|e| self.record_event(e)).collect();
        for r in bounded(pending).await {
            if let Err(e) = r {
                // An event is a courtesy: losing one never fails a reconcile pass.
                tracing::warn!(
                    "recording an event failed: {}",
                    sluice_core::error_chain(&e)
                );
            }
        }
        Ok(())
    }

    async fn events(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Event>, StoreError> {
        let ns = if namespaced(kind) {
            namespace
        } else {
            "default"
        };
        let api: Api<CoreEvent> = Api::namespaced(self.inner.client.clone(), ns);
        let selector = format!(
            "involvedObject.apiVersion={},involvedObject.kind={},involvedObject.name={name}",
            kind.api_version(),
            kind.name()
        );
        let list = api
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(|e| StoreError::Kube(classify("list", "events".into(), None, e)))?;
        let mut out: Vec<(String, Event)> = list
            .items
            .into_iter()
            .map(|e| {
                let time = e
                    .last_timestamp
                    .map(|t| t.0.to_string())
                    .or_else(|| e.event_time.map(|t| t.0.to_string()))
                    .or_else(|| e.metadata.creation_timestamp.map(|t| t.0.to_string()))
                    .unwrap_or_default();
                let rv = e.metadata.resource_version.unwrap_or_default();
                (
                    rv,
                    Event {
                        kind,
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        type_: e.type_.unwrap_or_default(),
                        reason: e.reason.unwrap_or_default(),
                        message: e.message.unwrap_or_default(),
                        time,
                    },
                )
            })
            .collect();
        // Oldest first: by time, then by the order the API server wrote them.
        out.sort_by(|(ra, a), (rb, b)| {
            (a.time.as_str(), ra.len(), ra.as_str()).cmp(&(b.time.as_str(), rb.len(), rb.as_str()))
        });
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Change>, StoreError> {
        let obj = serde_json::json!({"metadata": {"namespace": namespace, "name": name}});
        match self
            .api(kind, Some(namespace))
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(vec![Change {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }]),
            Err(e) => {
                Err(Self::not_found(kind, &obj, &e).unwrap_or_else(|| self.err("delete", kind, e)))
            }
        }
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }
}
