//! `KubeRuntime`: the `Runtime` on Kubernetes. A revision's replicas are the Pods of its
//! Deployment (server-side applied with `spec.replicas` = the scale decision, owned by the
//! Revision), selected by a Service of the same name; readiness comes from the Service's
//! EndpointSlices (ready endpoints), failures from the Deployment's conditions and from its
//! Pods' container statuses (CrashLoopBackOff, ImagePullBackOff, ...), all watched. Pods are the kubelet's (or kwok's) to run: stopping the controller stops no
//! replica.

pub mod manifest;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service as CoreService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use sluice_core::NamespacedName;
use tokio::sync::watch;

use super::{
    ModelStorage, ReplicaFailure, ReplicaSpec, RevisionRuntimeStatus, Runtime, RuntimeError,
};
use crate::store::kube::{FIELD_MANAGER, classify};
pub use manifest::{
    MANAGED_BY, Owner, PodMesh, PodTemplate, REPLICA_PORT, REVISION_LABEL, ROOT_CONFIGMAP, ROOT_KEY,
};

/// Deployments as replicas.
#[derive(Clone)]
pub struct KubeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    pod: PodTemplate,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    watchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// What the watchers saw, per revision.
    seen: HashMap<NamespacedName, Seen>,
    /// What was last applied, per revision (to skip applying the same again every pass).
    applied: HashMap<NamespacedName, (u32, ReplicaSpec)>,
    /// Revision uids (owner references), by revision.
    owners: HashMap<NamespacedName, String>,
    /// Why the last apply of a revision's objects failed (RBAC, API errors), until one
    /// succeeds: reported by `status`, so the Revision's condition names it.
    apply_failures: HashMap<NamespacedName, ReplicaFailure>,
    /// Namespaces whose mesh root ConfigMap this runtime applied.
    roots: std::collections::HashSet<String>,
}

#[derive(Default)]
struct Seen {
    /// Whether a Deployment exists.
    deployment: bool,
    /// Its `spec.replicas`.
    desired: Option<u32>,
    /// Pods created (`status.replicas`).
    replicas: u32,
    failure: Option<ReplicaFailure>,
    /// Ready endpoints, per EndpointSlice name.
    slices: HashMap<String, Vec<SocketAddr>>,
    /// Why Pods cannot run, per Pod name (only failing Pods).
    pod_failures: std::collections::BTreeMap<String, ReplicaFailure>,
}

impl Seen {
    fn is_empty(&self) -> bool {
        !self.deployment && self.slices.is_empty() && self.pod_failures.is_empty()
    }
}

impl std::fmt::Debug for KubeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRuntime")
            .field("pod", &self.inner.pod)
            .finish_non_exhaustive()
    }
}

fn revision_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<NamespacedName> {
    let name = meta.labels.as_ref()?.get(REVISION_LABEL)?;
    Some(NamespacedName::new(
        meta.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

fn selector() -> String {
    format!("{},{}={}", REVISION_LABEL, MANAGED_BY.0, MANAGED_BY.1)
}

/// Why a Deployment cannot make progress, from its conditions.
fn deployment_failure(d: &Deployment) -> Option<ReplicaFailure> {
    let conditions = d.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find_map(|c| {
        let failed = (c.type_ == "ReplicaFailure" && c.status == "True")
            || (c.type_ == "Progressing" && c.status == "False");
        failed.then(|| ReplicaFailure {
            reason: c.reason.clone().unwrap_or_else(|| c.type_.clone()),
            message: c.message.clone().unwrap_or_default(),
        })
    })
}

/// Container waiting reasons that mean a replica cannot start without a change (the
/// kubelet's): reported on the Revision's `Ready=False`, as Knative does.
const FAILING_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why a Pod's containers cannot run, from their statuses: a container waiting for one of
/// [`FAILING_WAITING_REASONS`] (with, for a crash loop, how its last run ended).
fn pod_failure(p: &Pod) -> Option<ReplicaFailure> {
    let status = p.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.into_iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        if !FAILING_WAITING_REASONS.contains(&reason) {
            return None;
        }
        let mut message = format!("container {:?} is waiting: {reason}", c.name);
        if let Some(m) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
            message.push_str(": ");
            message.push_str(m);
        }
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            message.push_str(&format!("; its last run exited with code {}", t.exit_code));
            if let Some(r) = t.reason.as_deref().filter(|r| !r.is_empty()) {
                message.push_str(&format!(" ({r})"));
            }
            if let Some(m) = t.message.as_deref().filter(|m| !m.is_empty()) {
                message.push_str(&format!(": {m}"));
            }
        }
        if c.restart_count > 0 {
            message.push_str(&format!(" after {} restarts", c.restart_count));
        }
        Some(ReplicaFailure {
            reason: reason.to_owned(),
            message,
        })
    })
}

/// The ready addresses of an EndpointSlice.
fn ready_addresses(s: &EndpointSlice) -> Vec<SocketAddr> {
    let port = s
        .ports
        .as_ref()
        .and_then(|p| p.iter().find_map(|p| p.port))
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(REPLICA_PORT);
    s.endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .filter_map(|e| e.addresses.first()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

impl KubeRuntime {
    /// A runtime on `client` whose Pods are made from `pod`. Starts its watchers.
    pub fn new(client: Client, pod: PodTemplate) -> Self {
        Self::start(client, pod, true)
    }

    /// Only the ready endpoints of revisions (EndpointSlices), for the router: `status`
    /// answers, `scale` would apply Deployments (which the router's RBAC forbids).
    pub fn endpoints_only(client: Client) -> Self {
        let pod = PodTemplate {
            image: String::new(),
            image_pull_policy: String::new(),
            service_account: String::new(),
            mesh: None,
        };
        Self::start(client, pod, false)
    }

    fn start(client: Client, pod: PodTemplate, deployments: bool) -> Self {
        let (changes, _) = watch::channel(0);
        let rt = Self {
            inner: Arc::new(Inner {
                client,
                pod,
                state: Mutex::default(),
                changes,
                watchers: Mutex::default(),
            }),
        };
        let mut watchers = vec![tokio::spawn(rt.clone().watch_slices())];
        if deployments {
            watchers.push(tokio::spawn(rt.clone().watch_deployments()));
            watchers.push(tokio::spawn(rt.clone().watch_pods()));
        }
        rt.inner
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(watchers);
        rt
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn watch_deployments(self) {
        let api: Api<Deployment> = Api::all(self.inner.client.clone());
        let config = watcher::Config::default().labels(&selector());
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut relist: Option<HashMap<NamespacedName, Deployment>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => tracing::warn!("watching Deployments failed, retrying: {e}"),
                Ok(Event::Apply(d)) => self.saw_deployment(&d),
                Ok(Event::Delete(d)) => {
                    if let Some(key) = revision_of(&d.metadata) {
                        self.saw_deployment_gone(&key);
                    }
                }
                Ok(Event::Init) => relist = Some(HashMap::new()),
                Ok(Event::InitApply(d)) => {
                    if let Some(key) = revision_of(&d.metadata) {
                        relist.get_or_insert_with(HashMap::new).insert(key, d);
                    }
                }
                Ok(Event::InitDone) => {
                    let fresh = relist.take().unwrap_or_default();
                    let gone: Vec<NamespacedName> = self
                        .state()
                        .seen
                        .iter()
                        .filter(|(k, s)| s.deployment && !fresh.contains_key(*k))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in gone {
                        self.saw_deployment_gone(&key);
                    }
                    for d in fresh.values() {
                        self.saw_deployment(d);
                    }
                }
            }
        }
    }

    fn saw_deployment(&self, d: &Deployment) {
        let Some(key) = revision_of(&d.metadata) else {
            return;
        };
        let desired = d
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .and_then(|r| u32::try_from(r).ok());
        let replicas = d
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        let failure = deployment_failure(d);
        {
            let mut state = self.state();
            // Someone else changed the replica count: apply ours again on the next pass.
            if state
                .applied
                .get(&key)
                .is_some_and(|(n, _)| Some(*n) != desired)
            {
                state.applied.remove(&key);
            }
            let seen = state.seen.entry(key).or_default();
            seen.deployment = true;
            seen.desired = desired;
            seen.replicas = replicas;
            seen.failure = failure;
        }
        self.bump();
    }

    fn saw_deployment_gone(&self, key: &NamespacedName) {
        {
            let mut state = self.state();
            state.applied.remove(key);
            if let Some(seen) = state.seen.get_mut(key) {
                seen.deployment = false;
                seen.desired = None;
                seen.replicas = 0;
                seen.failure = None;
                if seen.is_empty() {
                    state.seen.remove(key);
                }
            }
        }
        self.bump();
    }

    async fn watch_slices(self) {
        self.follow(
            Api::<EndpointSlice>::all(self.inner.client.clone()),
            "EndpointSlices",
            |seen| seen.slices.clear(),
            Self::saw_slice,
        )
        .await;
    }

    /// Follows `api` (the runtime's own objects only), handing each change to `saw`; after a
    /// re-list, `clear` forgets what this kind told about every revision before the fresh
    /// listing is replayed, so objects deleted while the watch was down are forgotten.
    async fn follow<K>(
        &self,
        api: Api<K>,
        what: &str,
        clear: fn(&mut Seen),
        saw: fn(&Self, &K, bool),
    ) where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let config = watcher::Config::default().labels(&selector());
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut relist: Option<Vec<K>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => tracing::warn!("watching {what} failed, retrying: {e}"),
                Ok(Event::Apply(o)) => saw(self, &o, false),
                Ok(Event::Delete(o)) => saw(self, &o, true),
                Ok(Event::Init) => relist = Some(Vec::new()),
                Ok(Event::InitApply(o)) => relist.get_or_insert_with(Vec::new).push(o),
                Ok(Event::InitDone) => {
                    let fresh = relist.take().unwrap_or_default();
                    {
                        let mut state = self.state();
                        state.seen.values_mut().for_each(clear);
                        state.seen.retain(|_, s| !s.is_empty());
                    }
                    for o in &fresh {
                        saw(self, o, false);
                    }
                    self.bump();
                }
            }
        }
    }

    fn saw_slice(&self, s: &EndpointSlice, deleted: bool) {
        let Some(key) = revision_of(&s.metadata) else {
            return;
        };
        let name = s.metadata.name.clone().unwrap_or_default();
        let changed = {
            let mut state = self.state();
            let seen = state.seen.entry(key.clone()).or_default();
            let before = seen.slices.get(&name).cloned();
            if deleted {
                seen.slices.remove(&name);
            } else {
                seen.slices.insert(name.clone(), ready_addresses(s));
            }
            let after = seen.slices.get(&name).cloned();
            if seen.is_empty() {
                state.seen.remove(&key);
            }
            before != after
        };
        if changed {
            self.bump();
        }
    }

    async fn watch_pods(self) {
        self.follow(
            Api::<Pod>::all(self.inner.client.clone()),
            "Pods",
            |seen| seen.pod_failures.clear(),
            Self::saw_pod,
        )
        .await;
    }

    fn saw_pod(&self, p: &Pod, deleted: bool) {
        let Some(key) = revision_of(&p.metadata) else {
            return;
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        let failure = if deleted { None } else { pod_failure(p) };
        let changed = {
            let mut state = self.state();
            let seen = state.seen.entry(key.clone()).or_default();
            let before = match failure {
                Some(f) => seen.pod_failures.insert(name, f.clone()) != Some(f),
                None => seen.pod_failures.remove(&name).is_some(),
            };
            if seen.is_empty() {
                state.seen.remove(&key);
            }
            before
        };
        if changed {
            self.bump();
        }
    }

    /// The uid of a revision (its Deployment's owner), from the spec (the Revision as the
    /// controller read it). A new uid under a known name is a revision deleted and created
    /// again: what was applied for the old one goes with it (garbage collection), so
    /// everything is applied again, owned by the new one (found on a real node: Deployments
    /// owned by the deleted revision, created and collected in a loop).
    fn owner(&self, spec: &ReplicaSpec) -> Result<Owner, RuntimeError> {
        let revision = &spec.revision;
        if spec.uid.is_empty() {
            return Err(RuntimeError::InvalidSpec {
                revision: revision.clone(),
                message: "the Revision has no uid to own its Deployment".into(),
            });
        }
        let mut state = self.state();
        if state.owners.get(revision) != Some(&spec.uid) {
            state.applied.remove(revision);
            state.owners.insert(revision.clone(), spec.uid.clone());
        }
        Ok(Owner {
            name: revision.name.clone(),
            uid: spec.uid.clone(),
        })
    }

    async fn apply<K>(
        &self,
        revision: &NamespacedName,
        resource: &str,
        body: serde_json::Value,
    ) -> Result<(), RuntimeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.apply_named::<K>(revision, &revision.name, resource, body)
            .await
    }

    /// Server-side applies `body` as `name` in the revision's namespace.
    async fn apply_named<K>(
        &self,
        revision: &NamespacedName,
        name: &str,
        resource: &str,
        body: serde_json::Value,
    ) -> Result<(), RuntimeError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.inner.client.clone(), &revision.namespace);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
        .map_err(|e| RuntimeError::Kube {
            revision: revision.clone(),
            source: classify("patch", resource.to_owned(), None, e),
        })
    }
    /// Applies a revision's Service (once) and Deployment.
    async fn apply_revision(&self, spec: &ReplicaSpec, replicas: u32) -> Result<(), RuntimeError> {
        let key = &spec.revision;
        let owner = self.owner(spec)?;
        let first = !self.state().applied.contains_key(key);
        if first {
            self.apply::<CoreService>(key, "services", manifest::service(spec, &owner))
                .await?;
        }
        // The mesh root the Pods mount, before their Deployment: once per namespace, and
        // again with each new revision (should someone have deleted it).
        if let Some(mesh) = &self.inner.pod.mesh
            && (first || !self.state().roots.contains(&key.namespace))
        {
            let body = manifest::root_config_map(&key.namespace, &mesh.root_pem);
            self.apply_named::<ConfigMap>(key, ROOT_CONFIGMAP, "configmaps", body)
                .await?;
            self.state().roots.insert(key.namespace.clone());
        }
        let deployment = manifest::deployment(spec, replicas, &owner, &self.inner.pod);
        self.apply::<Deployment>(key, "deployments.apps", deployment)
            .await?;
        tracing::debug!(revision = %key, replicas, "applied deployment");
        self.state()
            .applied
            .insert(key.clone(), (replicas, spec.clone()));
        Ok(())
    }

    /// Deletes a revision's Deployment and Service (in the background).
    fn remove_objects(&self, revision: &NamespacedName) {
        let client = self.inner.client.clone();
        let revision = revision.clone();
        // The Revision is gone: its Deployment and Service go too (the garbage collector
        // would also remove them through their owner reference; this is sooner).
        tokio::spawn(async move {
            let dp = DeleteParams::background();
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &revision.namespace);
            let services: Api<CoreService> = Api::namespaced(client, &revision.namespace);
            for result in [
                deployments.delete(&revision.name, &dp).await.map(|_| ()),
                services.delete(&revision.name, &dp).await.map(|_| ()),
            ] {
                if let Err(e) = result
                    && crate::store::kube::api_code(&e) != Some(404)
                {
                    tracing::warn!(%revision, "deleting the revision's replicas failed: {e}");
                }
            }
        });
    }
}

impl Runtime for KubeRuntime {
    async fn scale(&self, spec: &ReplicaSpec, replicas: u32) -> Result<(), RuntimeError> {
        let key = &spec.revision;
        if self.state().applied.get(key) == Some(&(replicas, spec.clone())) {
            return Ok(());
        }
        let result = self.apply_revision(spec, replicas).await;
        let changed = {
            let mut state = self.state();
            match &result {
                Ok(()) => state.apply_failures.remove(key).is_some(),
                Err(e) => {
                    let failure = ReplicaFailure {
                        reason: match e {
                            RuntimeError::Kube {
                                source: crate::store::kube::KubeError::Forbidden { .. },
                                ..
                            } => "Forbidden".to_owned(),
                            _ => "DeploymentFailed".to_owned(),
                        },
                        message: sluice_core::error_chain(e),
                    };
                    state.apply_failures.insert(key.clone(), failure.clone()) != Some(failure)
                }
            }
        };
        if changed {
            // The next pass writes it into the Revision's status.
            self.bump();
        }
        result
    }

    fn remove(&self, revision: &NamespacedName) {
        {
            let mut state = self.state();
            state.applied.remove(revision);
            state.owners.remove(revision);
            state.apply_failures.remove(revision);
        }
        self.remove_objects(revision);
    }

    fn status(&self, revision: &NamespacedName) -> RevisionRuntimeStatus {
        let state = self.state();
        let apply_failure = state.apply_failures.get(revision).cloned();
        let Some(seen) = state.seen.get(revision) else {
            return RevisionRuntimeStatus {
                failure: apply_failure,
                ..RevisionRuntimeStatus::default()
            };
        };
        let mut ready: Vec<SocketAddr> = seen.slices.values().flatten().copied().collect();
        ready.sort();
        ready.dedup();
        let created = seen.replicas.max(seen.desired.unwrap_or(0));
        RevisionRuntimeStatus {
            starting: created.saturating_sub(ready.len() as u32),
            // A Pod that cannot run says why more precisely than the Deployment (which
            // only times out on progress).
            failure: apply_failure.or_else(|| {
                if ready.is_empty() {
                    seen.pod_failures
                        .values()
                        .next()
                        .or(seen.failure.as_ref())
                        .cloned()
                } else {
                    None
                }
            }),
            ready,
        }
    }

    fn revisions(&self) -> Vec<NamespacedName> {
        self.state()
            .seen
            .iter()
            .filter(|(_, s)| s.deployment)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    async fn shutdown(&self) {
        // Replicas are Kubernetes': they keep serving while no controller runs.
        for w in self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            w.abort();
        }
    }

    fn model_storage(&self) -> ModelStorage {
        ModelStorage::Network
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    #[test]
    fn only_ready_endpoints_count() {
        let ep = |ip: &str, ready: bool| Endpoint {
            addresses: vec![ip.to_owned()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![ep("10.0.0.1", true), ep("10.0.0.2", false)],
            ports: Some(vec![EndpointPort {
                port: Some(8012),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(ready_addresses(&s), vec!["10.0.0.1:8012".parse().unwrap()]);
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hello-00001-abc", "namespace": "default"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_crash_loop_is_a_failure_with_the_last_exit() {
        let p = pod(serde_json::json!({
            "phase": "Running",
            "containerStatuses": [{
                "name": "sluice", "image": "sluice:test", "imageID": "", "ready": false,
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                    "message": "back-off 1m20s restarting failed container=sluice"}},
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}},
            }],
        }));
        let f = pod_failure(&p).unwrap();
        assert_eq!(f.reason, "CrashLoopBackOff");
        assert_eq!(
            f.message,
            "container \"sluice\" is waiting: CrashLoopBackOff: back-off 1m20s restarting \
             failed container=sluice; its last run exited with code 3 (Error) after 4 restarts"
        );
    }

    #[test]
    fn an_image_pull_back_off_is_a_failure_and_starting_is_not() {
        let waiting = |reason: &str| {
            pod(serde_json::json!({
                "phase": "Pending",
                "containerStatuses": [{
                    "name": "sluice", "image": "nope:1", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": "pull access denied"}},
                }],
            }))
        };
        let f = pod_failure(&waiting("ImagePullBackOff")).unwrap();
        assert_eq!(f.reason, "ImagePullBackOff");
        assert!(f.message.contains("pull access denied"), "{}", f.message);
        assert_eq!(pod_failure(&waiting("ContainerCreating")), None);
        assert_eq!(
            pod_failure(&pod(serde_json::json!({"phase": "Pending"}))),
            None
        );
        let running = pod(serde_json::json!({
            "phase": "Running",
            "containerStatuses": [{
                "name": "sluice", "image": "sluice:test", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}},
            }],
        }));
        assert_eq!(pod_failure(&running), None);
    }
}
