//! Istio security policies in Kubernetes mode: every controller replica (like the CA it runs)
//! watches `AuthorizationPolicy` and `PeerAuthentication` objects cluster-wide, validates
//! each with the mesh's parser, and keeps the valid ones, versioned, for the CA to serve to
//! workloads ([`PolicySource`]). An invalid object is left out, logged, and reported as a
//! core/v1 Event on that object naming the field path.
//!
//! The CRDs (`authorizationpolicies.security.istio.io`, `peerauthentications.security.istio.io`)
//! come with Istio, or from `deploy/optional/istio-security-crds.yaml` where Istio is not
//! installed. When one is missing the controller warns once, naming it, and enforces no
//! policy of that kind; a CRD installed later is picked up when the controller restarts.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_mesh::issuance::{PolicyObject, PolicyPublisher, PolicySnapshot, PolicySource};
use sluice_mesh::policy::{AuthorizationPolicy, PeerAuthentication, authz, peer_auth};
use tokio::sync::watch;

use crate::store::kube::FIELD_MANAGER;

/// The API group of Istio's security policies.
pub const GROUP: &str = "security.istio.io";
/// The Event reason of a policy the controller refuses.
pub const INVALID_REASON: &str = "InvalidPolicy";

/// One of the two policy kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `AuthorizationPolicy` (watched as v1).
    Authorization,
    /// `PeerAuthentication` (watched as v1beta1, served by every Istio release and ours).
    PeerAuthentication,
}

impl PolicyKind {
    /// Both kinds.
    pub const ALL: [Self; 2] = [Self::Authorization, Self::PeerAuthentication];

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Authorization => authz::KIND,
            Self::PeerAuthentication => peer_auth::KIND,
        }
    }

    /// The resource's plural.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Authorization => "authorizationpolicies",
            Self::PeerAuthentication => "peerauthentications",
        }
    }

    /// The version watched and written.
    pub fn version(self) -> &'static str {
        match self {
            Self::Authorization => "v1",
            Self::PeerAuthentication => "v1beta1",
        }
    }

    /// The CRD that serves the kind.
    pub fn crd_name(self) -> String {
        format!("{}.{GROUP}", self.plural())
    }

    /// The kind named by a manifest's `kind`.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// The API resource (for `Api<DynamicObject>`).
    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, self.version(), self.name()),
            self.plural(),
        )
    }
}

/// What the manifest of one object is, once trimmed to what the parser reads: `apiVersion`,
/// `kind`, `metadata.{name,namespace}` and `spec` (server-added metadata is not the user's
/// and would only be warned about).
pub fn trimmed_manifest(kind: PolicyKind, object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut out = json!({
        "apiVersion": object["apiVersion"].as_str().map_or_else(
            || format!("{GROUP}/{}", kind.version()),
            str::to_owned
        ),
        "kind": kind.name(),
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
        },
    });
    if let Some(spec) = object.get("spec").filter(|s| !s.is_null()) {
        out["spec"] = spec.clone();
    }
    out
}

/// Validates one object with the mesh's parser: the policy to serve, or every problem with
/// its field path.
pub fn validate(kind: PolicyKind, object: &Value) -> Result<PolicyObject, String> {
    let manifest = trimmed_manifest(kind, object);
    let text = serde_json::to_string(&manifest).map_err(|e| e.to_string())?;
    let namespace = manifest["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let checked = match kind {
        PolicyKind::Authorization => AuthorizationPolicy::from_yaml(&text).map(|(_, w)| w),
        PolicyKind::PeerAuthentication => PeerAuthentication::from_yaml(&text).map(|(_, w)| w),
    };
    match checked {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!(kind = kind.name(), %namespace, %name, "{w}");
            }
            Ok(PolicyObject {
                kind: kind.name().to_owned(),
                namespace,
                name,
                manifest: text,
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

type Key = (String, String);

#[derive(Default)]
struct State {
    /// Per kind: `None` until its first listing (or its CRD is known missing).
    kinds: BTreeMap<PolicyKind, Option<BTreeMap<Key, PolicyObject>>>,
    /// Relists in progress.
    relist: BTreeMap<PolicyKind, BTreeMap<Key, PolicyObject>>,
    /// `(kind, namespace, name, resourceVersion)` already reported invalid.
    reported: HashSet<(PolicyKind, String, String, String)>,
}

/// The cluster's valid policies, followed by one watcher per kind.
pub struct PolicyWatch {
    publisher: PolicyPublisher,
    state: Mutex<State>,
    client: Client,
}

impl PolicySource for PolicyWatch {
    fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.publisher.subscribe()
    }
}

impl PolicyWatch {
    /// Starts watching both kinds on `client`; policies of `root_namespace` apply mesh-wide.
    /// The snapshot stays at version 0 (the CA answers "not yet synced") until both kinds
    /// have been listed once.
    pub fn start(client: Client, root_namespace: &str) -> Arc<Self> {
        let this = Arc::new(Self {
            publisher: PolicyPublisher::new(root_namespace),
            state: Mutex::new(State::default()),
            client,
        });
        for kind in PolicyKind::ALL {
            tokio::spawn(this.clone().watch(kind));
        }
        this
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.publisher.current()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes when every kind is known and something changed.
    fn publish(&self, state: &State) {
        if state.kinds.len() < PolicyKind::ALL.len() || state.kinds.values().any(Option::is_none) {
            return;
        }
        let all: Vec<PolicyObject> = state
            .kinds
            .values()
            .flatten()
            .flat_map(|m| m.values().cloned())
            .collect();
        let current = self.publisher.current();
        if current.version > 0 && current.objects.len() == all.len() && {
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| {
                (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name))
            });
            sorted == current.objects
        } {
            return;
        }
        self.publisher.publish(all);
        tracing::info!(
            version = self.publisher.current().version,
            policies = self.publisher.current().objects.len(),
            "security policies changed"
        );
    }

    /// Validates an object; an invalid one is reported (once per resourceVersion).
    fn check(&self, kind: PolicyKind, object: &DynamicObject) -> Option<(Key, PolicyObject)> {
        let value = serde_json::to_value(object).ok()?;
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        match validate(kind, &value) {
            Ok(policy) => Some(((namespace, name), policy)),
            Err(message) => {
                let rv = object.metadata.resource_version.clone().unwrap_or_default();
                let first =
                    self.lock()
                        .reported
                        .insert((kind, namespace.clone(), name.clone(), rv));
                if first {
                    tracing::warn!(
                        kind = kind.name(),
                        %namespace,
                        %name,
                        "policy refused, not enforced: {message}"
                    );
                    let client = self.client.clone();
                    let uid = object.metadata.uid.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            record_invalid(client, kind, &namespace, &name, uid, &message).await
                        {
                            tracing::warn!("recording the Event on {namespace}/{name}: {e}");
                        }
                    });
                }
                None
            }
        }
    }

    fn key_of(object: &DynamicObject) -> Key {
        (
            object.metadata.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_default(),
        )
    }

    async fn watch(self: Arc<Self>, kind: PolicyKind) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.api_resource());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e))
                    if is_not_found(&e) =>
                {
                    tracing::warn!(
                        "CRD {} is not installed: no {} is enforced (install Istio's CRDs or \
                         apply deploy/optional/istio-security-crds.yaml, then restart the controller)",
                        kind.crd_name(),
                        kind.name()
                    );
                    let mut state = self.lock();
                    state.kinds.insert(kind, Some(BTreeMap::new()));
                    self.publish(&state);
                    return;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            kind = kind.name(),
                            "policy watch failed, retrying with backoff: {e}"
                        );
                    }
                    failing = true;
                    continue;
                }
            };
            if failing {
                tracing::info!(kind = kind.name(), "policy watch resumed");
                failing = false;
            }
            match event {
                Event::Init => {
                    self.lock().relist.insert(kind, BTreeMap::new());
                }
                Event::InitApply(o) => {
                    let checked = self.check(kind, &o);
                    if let Some((key, policy)) = checked {
                        self.lock()
                            .relist
                            .entry(kind)
                            .or_default()
                            .insert(key, policy);
                    }
                }
                Event::InitDone => {
                    let mut state = self.lock();
                    let fresh = state.relist.remove(&kind).unwrap_or_default();
                    state.kinds.insert(kind, Some(fresh));
                    self.publish(&state);
                }
                Event::Apply(o) => {
                    let key = Self::key_of(&o);
                    let checked = self.check(kind, &o);
                    let mut state = self.lock();
                    let map = state.kinds.entry(kind).or_default().get_or_insert_default();
                    match checked {
                        Some((key, policy)) => {
                            map.insert(key, policy);
                        }
                        // Changed into an invalid policy: no longer enforced.
                        None => {
                            map.remove(&key);
                        }
                    }
                    self.publish(&state);
                }
                Event::Delete(o) => {
                    let key = Self::key_of(&o);
                    let mut state = self.lock();
                    if let Some(Some(map)) = state.kinds.get_mut(&kind) {
                        map.remove(&key);
                    }
                    state
                        .reported
                        .retain(|(k, ns, n, _)| !(*k == kind && ns == &key.0 && n == &key.1));
                    self.publish(&state);
                }
            }
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A Warning Event on the policy object, naming what is wrong (as the store's Events are
/// written: core/v1, `generateName`, the object's uid when known).
async fn record_invalid(
    client: Client,
    kind: PolicyKind,
    namespace: &str,
    name: &str,
    uid: Option<String>,
    message: &str,
) -> Result<(), kube::Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Event messages are bounded by the API server (1 KiB is safe).
    let mut message = message.to_owned();
    if message.len() > 1024 {
        let mut end = 1021;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    let event = CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(format!("{GROUP}/{}", kind.version())),
            kind: Some(kind.name().to_owned()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid,
            ..ObjectReference::default()
        },
        reason: Some(INVALID_REASON.to_owned()),
        message: Some(format!("not enforced: {message}")),
        type_: Some("Warning".to_owned()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some(FIELD_MANAGER.to_owned()),
            host: None,
        }),
        reporting_component: Some(FIELD_MANAGER.to_owned()),
        ..CoreEvent::default()
    };
    let api: Api<CoreEvent> = Api::namespaced(client, namespace);
    api.create(&PostParams::default(), &event).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_metadata_is_trimmed_and_field_paths_name_what_is_wrong() {
        let object = json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "a", "namespace": "team-a", "uid": "u", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["x"]}}]}]},
        });
        let policy = validate(PolicyKind::Authorization, &object).unwrap();
        assert_eq!(
            (policy.namespace.as_str(), policy.name.as_str()),
            ("team-a", "a")
        );
        assert!(
            !policy.manifest.contains("managedFields"),
            "{}",
            policy.manifest
        );
        let bad = json!({
            "apiVersion": "security.istio.io/v1",
            "metadata": {"name": "b", "namespace": "team-a"},
            "spec": {"action": "MAYBE"},
        });
        let error = validate(PolicyKind::Authorization, &bad).unwrap_err();
        assert!(error.contains("spec.action"), "{error}");
        let peer = json!({
            "apiVersion": "security.istio.io/v1beta1",
            "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {"mtls": {"mode": "STRICT"}},
        });
        assert!(validate(PolicyKind::PeerAuthentication, &peer).is_ok());
    }

    #[test]
    fn kinds_name_their_crds() {
        assert_eq!(
            PolicyKind::Authorization.crd_name(),
            "authorizationpolicies.security.istio.io"
        );
        assert_eq!(
            PolicyKind::from_kind("PeerAuthentication"),
            Some(PolicyKind::PeerAuthentication)
        );
    }
}
