//! Istio security policies in Kubernetes mode: every controller replica (like the CA it runs)
//! watches `AuthorizationPolicy` and `PeerAuthentication` objects cluster-wide, validates
//! each with the mesh's parser, and keeps the valid ones, versioned, for the CA to serve to
//! workloads ([`PolicySource`]). An invalid object is left out, logged, and reported as a
//! core/v1 Event on that object naming the field path.
//!
//! The CRDs (`authorizationpolicies.security.istio.io`, `peerauthentications.security.istio.io`)
//! come with Istio, or from `deploy/optional/istio-security-crds.yaml` where Istio is not
//! installed. When one is missing the controller warns once, naming it, and enforces no
//! policy of that kind until the CRD is installed; its watch keeps retrying (backoff up to
//! 30 s) and picks the kind up then, with no restart.

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
/// its field path. Warnings (fields kept but not acted on) are logged.
pub fn validate(kind: PolicyKind, object: &Value) -> Result<PolicyObject, String> {
    let (policy, warnings) = validate_with_warnings(kind, object)?;
    for w in warnings {
        tracing::warn!(
            kind = kind.name(),
            namespace = %policy.namespace,
            name = %policy.name,
            "{w}"
        );
    }
    Ok(policy)
}

/// [`validate`], returning the warnings instead of logging them.
pub fn validate_with_warnings(
    kind: PolicyKind,
    object: &Value,
) -> Result<(PolicyObject, Vec<String>), String> {
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
        Ok(warnings) => Ok((
            PolicyObject {
                kind: kind.name().to_owned(),
                namespace,
                name,
                manifest: text,
            },
            warnings,
        )),
        Err(e) => Err(e.to_string()),
    }
}

type Key = (String, String);

/// One object as the watcher saw it, validated.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `(namespace, name)`.
    pub key: Key,
    /// Its resourceVersion (an invalid one is reported once per version).
    pub resource_version: String,
    /// Its uid (for the Event's involvedObject).
    pub uid: Option<String>,
    /// The policy, or what is wrong with it (field paths).
    pub outcome: Result<PolicyObject, String>,
}

impl Seen {
    /// Validates a watched object.
    pub fn of(kind: PolicyKind, object: &DynamicObject) -> Self {
        let key = (
            object.metadata.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_default(),
        );
        let outcome = serde_json::to_value(object)
            .map_err(|e| e.to_string())
            .and_then(|v| validate(kind, &v));
        Self {
            key,
            resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
            uid: object.metadata.uid.clone(),
            outcome,
        }
    }
}

/// An invalid object to report with an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Its kind.
    pub kind: PolicyKind,
    /// `(namespace, name)`.
    pub key: Key,
    /// Its uid.
    pub uid: Option<String>,
    /// The Event's message: what is wrong, and what stays in force.
    pub message: String,
}

/// The valid policies of each kind, from watcher events. An object that turns invalid keeps
/// its last valid version in force (an edit with a typo must not lift a DENY, or open a
/// workload an ALLOW policy closed); one never valid is not enforced. Either way it is
/// reported, once per resourceVersion.
#[derive(Default)]
pub struct Tracker {
    /// Per kind: `None` until its first listing (or its CRD is known missing).
    kinds: BTreeMap<PolicyKind, Option<BTreeMap<Key, PolicyObject>>>,
    /// Relists in progress.
    relist: BTreeMap<PolicyKind, BTreeMap<Key, PolicyObject>>,
    /// `(kind, namespace, name, resourceVersion)` already reported invalid.
    reported: HashSet<(PolicyKind, String, String, String)>,
}

impl Tracker {
    /// The policy now in force for `key`, if any.
    fn in_force(&self, kind: PolicyKind, key: &Key) -> Option<&PolicyObject> {
        self.kinds.get(&kind)?.as_ref()?.get(key)
    }

    /// What to keep for an object seen now: its new valid version, else its last valid one.
    fn resolve(
        &mut self,
        kind: PolicyKind,
        seen: Seen,
        reports: &mut Vec<Invalid>,
    ) -> Option<PolicyObject> {
        match seen.outcome {
            Ok(policy) => Some(policy),
            Err(message) => {
                let kept = self.in_force(kind, &seen.key).cloned();
                let first = self.reported.insert((
                    kind,
                    seen.key.0.clone(),
                    seen.key.1.clone(),
                    seen.resource_version,
                ));
                if first {
                    let message = if kept.is_some() {
                        format!(
                            "this version is not enforced (the last valid one stays in force): {message}"
                        )
                    } else {
                        format!("not enforced: {message}")
                    };
                    reports.push(Invalid {
                        kind,
                        key: seen.key,
                        uid: seen.uid,
                        message,
                    });
                }
                kept
            }
        }
    }

    /// Applies one watcher event; returns the invalid objects to report.
    pub fn event(&mut self, kind: PolicyKind, event: Event<Seen>) -> Vec<Invalid> {
        let mut reports = Vec::new();
        match event {
            Event::Init => {
                self.relist.insert(kind, BTreeMap::new());
            }
            Event::InitApply(seen) => {
                let key = seen.key.clone();
                if let Some(policy) = self.resolve(kind, seen, &mut reports) {
                    self.relist.entry(kind).or_default().insert(key, policy);
                }
            }
            Event::InitDone => {
                let fresh = self.relist.remove(&kind).unwrap_or_default();
                self.kinds.insert(kind, Some(fresh));
            }
            Event::Apply(seen) => {
                let key = seen.key.clone();
                let policy = self.resolve(kind, seen, &mut reports);
                let map = self.kinds.entry(kind).or_default().get_or_insert_default();
                match policy {
                    Some(policy) => {
                        map.insert(key, policy);
                    }
                    None => {
                        map.remove(&key);
                    }
                }
            }
            Event::Delete(seen) => {
                let key = seen.key;
                if let Some(Some(map)) = self.kinds.get_mut(&kind) {
                    map.remove(&key);
                }
                self.reported
                    .retain(|(k, ns, n, _)| !(*k == kind && *ns == key.0 && *n == key.1));
            }
        }
        reports
    }

    /// The kind's CRD is not installed: none of it, known.
    pub fn missing(&mut self, kind: PolicyKind) {
        self.kinds.insert(kind, Some(BTreeMap::new()));
    }

    /// Every policy in force, once every kind has been listed; `None` before.
    pub fn snapshot(&self) -> Option<Vec<PolicyObject>> {
        if PolicyKind::ALL
            .iter()
            .any(|k| self.kinds.get(k).is_none_or(Option::is_none))
        {
            return None;
        }
        let mut all: Vec<PolicyObject> = self
            .kinds
            .values()
            .flatten()
            .flat_map(|m| m.values().cloned())
            .collect();
        all.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
        Some(all)
    }
}

/// The cluster's valid policies, followed by one watcher per kind.
pub struct PolicyWatch {
    publisher: PolicyPublisher,
    tracker: Mutex<Tracker>,
    client: Client,
}

impl PolicySource for PolicyWatch {
    fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.publisher.subscribe()
    }
}

impl PolicyWatch {
    /// Starts watching both kinds on `client`; policies of `root_namespace` apply mesh-wide.
    /// The snapshot stays at version 0 (the CA answers "not yet known") until both kinds
    /// have been listed once.
    pub fn start(client: Client, root_namespace: &str) -> Arc<Self> {
        let this = Arc::new(Self {
            publisher: PolicyPublisher::new(root_namespace),
            tracker: Mutex::new(Tracker::default()),
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

    /// Feeds the tracker under its lock, publishes a changed set, reports invalid objects.
    fn update(&self, kind: PolicyKind, f: impl FnOnce(&mut Tracker) -> Vec<Invalid>) {
        let (reports, snapshot) = {
            let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            let reports = f(&mut tracker);
            (reports, tracker.snapshot())
        };
        if let Some(all) = snapshot {
            let current = self.publisher.current();
            if current.version == 0 || current.objects != all {
                self.publisher.publish(all);
                let now = self.publisher.current();
                tracing::info!(
                    version = now.version,
                    policies = now.objects.len(),
                    "security policies changed"
                );
            }
        }
        for invalid in reports {
            let (namespace, name) = invalid.key.clone();
            tracing::warn!(kind = kind.name(), %namespace, %name, "{}", invalid.message);
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = record_invalid(client, &invalid).await {
                    tracing::warn!("recording the Event on {namespace}/{name}: {e}");
                }
            });
        }
    }

    async fn watch(self: Arc<Self>, kind: PolicyKind) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.api_resource());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut failing = false;
        // The CRD was missing: the watcher keeps retrying (backoff up to 30 s) and picks the
        // kind up when the CRD is installed, with no restart.
        let mut missing = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e))
                    if is_not_found(&e) =>
                {
                    if !missing {
                        tracing::warn!(
                            "CRD {} is not installed: no {} is enforced until it is (install \
                             Istio's CRDs or apply deploy/optional/istio-security-crds.yaml)",
                            kind.crd_name(),
                            kind.name()
                        );
                        self.update(kind, |t| {
                            t.missing(kind);
                            Vec::new()
                        });
                        missing = true;
                    }
                    continue;
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
            // The watcher announces each listing attempt (`Init`) before making it: only a
            // finished listing shows the CRD is there.
            if missing && matches!(event, Event::InitDone) {
                tracing::info!(
                    "CRD {} is installed now: enforcing {}",
                    kind.crd_name(),
                    kind.name()
                );
                missing = false;
            }
            let event = match event {
                Event::Init => Event::Init,
                Event::InitDone => Event::InitDone,
                Event::InitApply(o) => Event::InitApply(Seen::of(kind, &o)),
                Event::Apply(o) => Event::Apply(Seen::of(kind, &o)),
                Event::Delete(o) => Event::Delete(Seen::of(kind, &o)),
            };
            self.update(kind, |t| t.event(kind, event));
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A Warning Event on the policy object, naming what is wrong (as the store's Events are
/// written: core/v1, `generateName`, the object's uid when known).
async fn record_invalid(client: Client, invalid: &Invalid) -> Result<(), kube::Error> {
    let kind = invalid.kind;
    let (namespace, name) = (invalid.key.0.as_str(), invalid.key.1.as_str());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Event messages are bounded by the API server (1 KiB is safe).
    let mut message = invalid.message.clone();
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
            uid: invalid.uid.clone(),
            ..ObjectReference::default()
        },
        reason: Some(INVALID_REASON.to_owned()),
        message: Some(message),
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

    fn seen(name: &str, rv: &str, action: &str) -> Seen {
        let object = json!({
            "apiVersion": "security.istio.io/v1",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"action": action},
        });
        Seen {
            key: ("team-a".into(), name.into()),
            resource_version: rv.into(),
            uid: Some(format!("uid-{name}")),
            outcome: validate(PolicyKind::Authorization, &object),
        }
    }

    fn actions(t: &Tracker) -> Vec<(String, String)> {
        t.snapshot()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let v: Value = serde_json::from_str(&p.manifest).unwrap_or_default();
                (
                    p.name,
                    v["spec"]["action"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_set_is_known_once_both_kinds_are_listed_and_follows_changes() {
        let mut t = Tracker::default();
        let ap = PolicyKind::Authorization;
        t.event(ap, Event::Init);
        t.event(ap, Event::InitApply(seen("deny", "1", "DENY")));
        assert!(t.event(ap, Event::InitDone).is_empty());
        assert_eq!(t.snapshot(), None, "PeerAuthentication not listed yet");
        t.missing(PolicyKind::PeerAuthentication);
        assert_eq!(actions(&t), [("deny".to_owned(), "DENY".to_owned())]);
        t.event(ap, Event::Apply(seen("allow", "2", "ALLOW")));
        assert_eq!(actions(&t).len(), 2);
        t.event(ap, Event::Delete(seen("allow", "2", "ALLOW")));
        assert_eq!(actions(&t), [("deny".to_owned(), "DENY".to_owned())]);
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_version_and_is_reported_once() {
        let mut t = Tracker::default();
        let ap = PolicyKind::Authorization;
        t.missing(PolicyKind::PeerAuthentication);
        t.event(ap, Event::Init);
        t.event(ap, Event::InitApply(seen("deny", "1", "DENY")));
        t.event(ap, Event::InitDone);
        // A typo must not lift the DENY.
        let reports = t.event(ap, Event::Apply(seen("deny", "2", "DENNY")));
        assert_eq!(reports.len(), 1);
        assert!(
            reports[0].message.contains("last valid one stays in force")
                && reports[0].message.contains("spec.action"),
            "{}",
            reports[0].message
        );
        assert_eq!(reports[0].uid.as_deref(), Some("uid-deny"));
        assert_eq!(actions(&t), [("deny".to_owned(), "DENY".to_owned())]);
        // A relist sees the same invalid version: kept, not reported again.
        t.event(ap, Event::Init);
        assert!(
            t.event(ap, Event::InitApply(seen("deny", "2", "DENNY")))
                .is_empty()
        );
        t.event(ap, Event::InitDone);
        assert_eq!(actions(&t), [("deny".to_owned(), "DENY".to_owned())]);
        // A policy never valid is not enforced, and says so.
        let reports = t.event(ap, Event::Apply(seen("new", "3", "MAYBE")));
        assert!(
            reports[0].message.starts_with("not enforced: "),
            "{}",
            reports[0].message
        );
        assert_eq!(actions(&t).len(), 1);
        // Fixed: the new version is in force.
        t.event(ap, Event::Apply(seen("deny", "4", "ALLOW")));
        assert_eq!(actions(&t), [("deny".to_owned(), "ALLOW".to_owned())]);
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
