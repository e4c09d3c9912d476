//! The reconcilers over the real SQLite store and a scripted runtime: InferenceService →
//! Service → Revision → routes and status, a spec change rolling out blue-green, and a
//! failing revision surfacing its reason without taking traffic from the ready one.
//!
//! After the first full pass, the harness settles through the incremental path (the store's
//! change notifications into `reconcile_changes`, as the controller's loop does) and then
//! checks that a full pass over the store finds nothing left to change: incremental passes
//! reach the same state as full ones.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sluice_autoscaler::AutoscalerConfig;
use sluice_controller::admin::{ManifestFile, apply_files};
use sluice_controller::reconcile::{Controller, ControllerConfig};
use sluice_controller::runtime::{
    ReplicaFailure, ReplicaSpec, RevisionRuntimeStatus, Runtime, RuntimeError,
};
use sluice_controller::store::{Change, SqliteStore, Store};
use sluice_core::{NamespacedName, RoutingSnapshot};
use sluice_crds::Kind;
use tokio::sync::{broadcast, mpsc, watch};

/// Replicas asked for, and the command they run.
type Scaled = (u32, Vec<String>);

/// A runtime whose replicas become ready at once, except for commands it is told fail.
#[derive(Clone, Default)]
struct ScriptedRuntime {
    state: Arc<Mutex<HashMap<NamespacedName, Scaled>>>,
    failing_arg: Arc<Mutex<Option<String>>>,
}

impl ScriptedRuntime {
    fn addr(key: &NamespacedName, i: u32) -> SocketAddr {
        let port = 20000 + (key.name.len() as u16) * 10 + i as u16;
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Runtime for ScriptedRuntime {
    async fn scale(&self, spec: &ReplicaSpec, replicas: u32) -> Result<(), RuntimeError> {
        self.state
            .lock()
            .unwrap()
            .insert(spec.revision.clone(), (replicas, spec.command.clone()));
        Ok(())
    }

    fn remove(&self, revision: &NamespacedName) {
        self.state.lock().unwrap().remove(revision);
    }

    fn status(&self, revision: &NamespacedName) -> RevisionRuntimeStatus {
        let state = self.state.lock().unwrap();
        let Some((n, command)) = state.get(revision) else {
            return RevisionRuntimeStatus::default();
        };
        let failing = self.failing_arg.lock().unwrap().clone();
        if failing.is_some_and(|f| command.contains(&f)) {
            return RevisionRuntimeStatus {
                ready: vec![],
                starting: 0,
                failure: Some(ReplicaFailure {
                    reason: "ExitCode".into(),
                    message: "replica exited with exit status: 1: cannot load model".into(),
                }),
            };
        }
        RevisionRuntimeStatus {
            ready: (0..*n).map(|i| Self::addr(revision, i)).collect(),
            starting: 0,
            failure: None,
        }
    }

    fn revisions(&self) -> Vec<NamespacedName> {
        self.state.lock().unwrap().keys().cloned().collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        // Passes are driven by hand in these tests; nothing waits on changes.
        watch::channel(0).1
    }

    async fn shutdown(&self) {}
}

fn manifest(storage: &str) -> ManifestFile {
    ManifestFile {
        source: "iris.yaml".into(),
        base_dir: PathBuf::from("/models"),
        text: format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: iris}}\n\
             spec:\n  predictor:\n    model:\n      modelFormat: {{name: sluice-mlp}}\n      storageUri: {storage}\n"
        ),
    }
}

fn condition(obj: &Value, type_: &str) -> (String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or("").to_owned(),
        c["reason"].as_str().unwrap_or("").to_owned(),
    )
}

struct Harness {
    store: SqliteStore,
    runtime: ScriptedRuntime,
    controller: Controller<SqliteStore, ScriptedRuntime>,
    snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    changes: broadcast::Receiver<Change>,
    started: bool,
    dir: PathBuf,
    _stats: mpsc::Sender<sluice_core::StatReport>,
    _decisions: mpsc::Receiver<sluice_core::ScaleDecision>,
}

impl Harness {
    fn new(tag: &str) -> Harness {
        let dir =
            std::env::temp_dir().join(format!("sluice-reconcile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(&dir).unwrap();
        let changes = store.watch();
        let runtime = ScriptedRuntime::default();
        let (stats_tx, stats_rx) = mpsc::channel(8);
        let (dec_tx, dec_rx) = mpsc::channel(8);
        let (autoscaler, _) =
            sluice_autoscaler::spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
        let (snap_tx, snapshot) = watch::channel(Arc::new(RoutingSnapshot::default()));
        let controller = Controller::new(
            ControllerConfig {
                domain: "example.test".into(),
                url_port: None,
                resync: std::time::Duration::from_secs(1),
                revision_history: 2,
            },
            store.clone(),
            runtime.clone(),
            autoscaler,
            snap_tx,
        );
        Harness {
            store,
            runtime,
            controller,
            snapshot,
            changes,
            started: false,
            dir,
            _stats: stats_tx,
            _decisions: dec_rx,
        }
    }

    /// Change notifications since the last call (`None`: the receiver lagged).
    fn drain(&mut self) -> Option<Vec<Change>> {
        let mut out = Vec::new();
        loop {
            match self.changes.try_recv() {
                Ok(c) => out.push(c),
                Err(broadcast::error::TryRecvError::Lagged(_)) => return None,
                Err(_) => return Some(out),
            }
        }
    }

    /// Runs passes until nothing changes (at most a handful): a full pass the first time,
    /// incremental ones on the store's change notifications after that; then asserts that
    /// a full pass changes nothing more in the store or the routing snapshot.
    async fn settle(&mut self) {
        if !self.started {
            self.drain();
            self.controller.reconcile_all().await.unwrap();
            self.started = true;
        }
        for _ in 0..6 {
            match self.drain() {
                Some(changes) => self.controller.reconcile_changes(changes).await.unwrap(),
                None => self.controller.reconcile_all().await.unwrap(),
            }
        }
        assert_eq!(
            self.drain(),
            Some(vec![]),
            "incremental passes did not settle"
        );
        let before = self.snapshot.borrow().clone();
        self.controller.reconcile_all().await.unwrap();
        assert_eq!(
            self.drain(),
            Some(vec![]),
            "a full pass changed what incremental passes left"
        );
        assert_eq!(*self.snapshot.borrow().clone(), *before);
    }

    async fn get(&self, kind: Kind, name: &str) -> Value {
        self.store
            .get(kind, "default", name)
            .await
            .unwrap()
            .unwrap()
    }
}

impl Harness {
    /// A new controller over the same store and runtime, as after a controller restart
    /// (nothing carried over but what the store holds), on `clock`.
    fn restart(&mut self, clock: sluice_controller::reconcile::Clock) {
        let (stats_tx, stats_rx) = mpsc::channel(8);
        let (dec_tx, dec_rx) = mpsc::channel(8);
        let (autoscaler, _) =
            sluice_autoscaler::spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
        let (snap_tx, snapshot) = watch::channel(Arc::new(RoutingSnapshot::default()));
        self.controller = Controller::new(
            ControllerConfig {
                domain: "example.test".into(),
                url_port: None,
                resync: std::time::Duration::from_secs(1),
                revision_history: 2,
            },
            self.store.clone(),
            self.runtime.clone(),
            autoscaler,
            snap_tx,
        );
        self.controller.set_clock(clock);
        self.snapshot = snapshot;
        self._stats = stats_tx;
        self._decisions = dec_rx;
        self.started = false;
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn isvc_becomes_ready_and_rolls_out_blue_green() {
    let mut h = Harness::new("rollout");
    apply_files(&h.store, &[manifest("./v1")]).await.unwrap();
    h.settle().await;

    let isvc = h.get(Kind::InferenceService, "iris").await;
    assert_eq!(condition(&isvc, "Ready").0, "True", "{isvc:#}");
    assert_eq!(isvc["status"]["url"], "http://iris.default.example.test");
    assert_eq!(
        isvc["status"]["address"]["url"],
        "http://iris.default.example.test"
    );
    assert_eq!(
        isvc["status"]["components"]["predictor"]["latestReadyRevision"],
        "iris-predictor-00001"
    );
    let rev = h.get(Kind::Revision, "iris-predictor-00001").await;
    assert_eq!(rev["status"]["actualReplicas"], 1);
    assert_eq!(rev["status"]["desiredReplicas"], 1);
    assert!(
        rev["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&Value::from("/models/v1")),
        "relative storageUri resolved against the manifest folder: {rev:#}"
    );
    let snap = h.snapshot.borrow().clone();
    let route = snap.route_for_host("iris.default.example.test").unwrap();
    assert_eq!(route.targets[0].revision.name, "iris-predictor-00001");
    assert!(
        snap.route_for_host("iris-predictor.default.example.test")
            .is_some()
    );

    // A spec change stamps revision 2, which takes all traffic once ready.
    apply_files(&h.store, &[manifest("./v2")]).await.unwrap();
    h.settle().await;
    let svc = h.get(Kind::Service, "iris-predictor").await;
    assert_eq!(
        svc["status"]["latestCreatedRevisionName"],
        "iris-predictor-00002"
    );
    assert_eq!(
        svc["status"]["traffic"][0]["revisionName"],
        "iris-predictor-00002"
    );
    assert_eq!(svc["status"]["traffic"][0]["percent"], 100);
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        snap.route_for_host("iris.default.example.test")
            .unwrap()
            .targets[0]
            .revision
            .name,
        "iris-predictor-00002"
    );
    // The old revision, no longer routed, is scaled to zero.
    assert_eq!(
        h.runtime.state.lock().unwrap()[&NamespacedName::new("default", "iris-predictor-00001")].0,
        0
    );
}

#[tokio::test]
async fn failing_revision_reports_its_reason_and_keeps_traffic_on_the_ready_one() {
    let mut h = Harness::new("failure");
    apply_files(&h.store, &[manifest("./good")]).await.unwrap();
    h.settle().await;
    *h.runtime.failing_arg.lock().unwrap() = Some("/models/bad".into());
    apply_files(&h.store, &[manifest("./bad")]).await.unwrap();
    h.settle().await;

    let rev = h.get(Kind::Revision, "iris-predictor-00002").await;
    assert_eq!(
        condition(&rev, "Ready"),
        ("False".into(), "ExitCode".into())
    );
    let svc = h.get(Kind::Service, "iris-predictor").await;
    assert_eq!(
        condition(&svc, "Ready"),
        ("False".into(), "RevisionFailed".into())
    );
    assert_eq!(
        svc["status"]["traffic"][0]["revisionName"],
        "iris-predictor-00001"
    );
    let isvc = h.get(Kind::InferenceService, "iris").await;
    let ready = isvc["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("cannot load model"),
        "{ready}"
    );
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        snap.route_for_host("iris.default.example.test")
            .unwrap()
            .targets[0]
            .revision
            .name,
        "iris-predictor-00001"
    );
}

#[tokio::test]
async fn unsupported_format_is_not_ready_with_no_supporting_runtime() {
    let mut h = Harness::new("noruntime");
    let file = ManifestFile {
        source: "sklearn.yaml".into(),
        base_dir: PathBuf::from("/"),
        text: "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: sklearn-iris}\n\
               spec:\n  predictor:\n    sklearn:\n      storageUri: gs://seldon-models/sklearn/iris\n"
            .into(),
    };
    apply_files(&h.store, &[file]).await.unwrap();
    h.settle().await;
    let isvc = h.get(Kind::InferenceService, "sklearn-iris").await;
    assert_eq!(
        condition(&isvc, "Ready"),
        ("False".into(), "NoSupportingRuntime".into())
    );
    assert!(h.store.list(Kind::Service, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn first_revision_is_routed_through_the_activator_and_its_failure_is_carried() {
    let mut h = Harness::new("first");
    *h.runtime.failing_arg.lock().unwrap() = Some("/models/bad".into());
    apply_files(&h.store, &[manifest("./bad")]).await.unwrap();
    h.settle().await;
    let svc = h.get(Kind::Service, "iris-predictor").await;
    assert_eq!(
        svc["status"]["traffic"],
        Value::Null,
        "status traffic waits for a ready revision"
    );
    let snap = h.snapshot.borrow().clone();
    let route = snap
        .route_for_host("iris.default.example.test")
        .expect("the host is routed");
    let key = &route.targets[0].revision;
    assert_eq!(key.name, "iris-predictor-00001");
    let rev = &snap.revisions[key];
    assert!(rev.activator_in_path && rev.endpoints.is_empty());
    assert!(
        rev.unavailable
            .as_deref()
            .unwrap()
            .contains("cannot load model")
    );
}

fn text_file(source: &str, text: &str) -> ManifestFile {
    ManifestFile {
        source: source.into(),
        base_dir: PathBuf::from("/models"),
        text: text.into(),
    }
}

fn hello(target: &str, traffic: &str) -> ManifestFile {
    text_file(
        "hello.yaml",
        &format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: hello}}\nspec:\n  \
             template:\n    spec:\n      containers:\n      - command: [sluice, hello]\n        \
             env: [{{name: TARGET, value: {target}}}]\n{traffic}"
        ),
    )
}

async fn revision_names(h: &Harness) -> Vec<String> {
    h.store
        .list(Kind::Revision, None)
        .await
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn target_names(snap: &RoutingSnapshot, host: &str) -> Vec<(String, u32)> {
    snap.route_for_host(host)
        .unwrap_or_else(|| panic!("{host} is not routed: {:?}", snap.hosts.keys()))
        .targets
        .iter()
        .map(|t| (t.revision.name.clone(), t.percent))
        .collect()
}

#[tokio::test]
async fn knative_service_stamps_revisions_once_and_splits_traffic_with_tags() {
    let mut h = Harness::new("ksvc");
    let results = apply_files(&h.store, &[hello("v1", "")]).await.unwrap();
    assert_eq!(
        results[0].to_string(),
        "service.serving.knative.dev/hello created"
    );
    h.settle().await;

    let svc = h.get(Kind::Service, "hello").await;
    assert_eq!(condition(&svc, "Ready").0, "True", "{svc:#}");
    assert_eq!(svc["status"]["url"], "http://hello.default.example.test");
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00001");
    assert_eq!(
        svc["status"]["traffic"],
        serde_json::json!([{"revisionName": "hello-00001", "latestRevision": true, "percent": 100}])
    );
    let cfg = h.get(Kind::Configuration, "hello").await;
    assert_eq!(cfg["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(cfg["status"]["latestCreatedRevisionName"], "hello-00001");
    let route = h.get(Kind::Route, "hello").await;
    assert_eq!(condition(&route, "AllTrafficAssigned").0, "True");
    let rev = h.get(Kind::Revision, "hello-00001").await;
    assert_eq!(
        rev["spec"]["timeoutSeconds"], 300,
        "Knative's defaults: {rev:#}"
    );
    assert_eq!(rev["spec"]["containers"][0]["name"], "user-container");
    let command = h.runtime.state.lock().unwrap()[&NamespacedName::new("default", "hello-00001")]
        .1
        .clone();
    assert_eq!(&command[..2], ["sluice", "queue"], "{command:?}");
    assert!(command.ends_with(&["--".into(), "sluice".into(), "hello".into()]));

    // The same manifest again: nothing changes, no new revision.
    let results = apply_files(&h.store, &[hello("v1", "")]).await.unwrap();
    assert_eq!(
        results[0].to_string(),
        "service.serving.knative.dev/hello unchanged"
    );
    h.settle().await;
    assert_eq!(revision_names(&h).await, ["hello-00001"]);

    // A new template with a 50/50 split between tagged revisions.
    let split = "  traffic:\n  - {revisionName: hello-00001, percent: 50, tag: blue}\n  \
                 - {latestRevision: true, percent: 50, tag: green}\n";
    apply_files(&h.store, &[hello("v2", split)]).await.unwrap();
    h.settle().await;
    assert_eq!(revision_names(&h).await, ["hello-00001", "hello-00002"]);
    let svc = h.get(Kind::Service, "hello").await;
    assert_eq!(
        svc["status"]["traffic"],
        serde_json::json!([
            {"tag": "blue", "revisionName": "hello-00001", "latestRevision": false, "percent": 50,
             "url": "http://blue-hello.default.example.test"},
            {"tag": "green", "revisionName": "hello-00002", "latestRevision": true, "percent": 50,
             "url": "http://green-hello.default.example.test"},
        ])
    );
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        target_names(&snap, "hello.default.example.test"),
        [("hello-00001".into(), 50), ("hello-00002".into(), 50)]
    );
    assert_eq!(
        target_names(&snap, "blue-hello.default.example.test"),
        [("hello-00001".into(), 100)]
    );
    assert_eq!(
        target_names(&snap, "green-hello.default.example.test"),
        [("hello-00002".into(), 100)]
    );

    // A traffic-only change stamps no revision; a 0% tag keeps its own URL.
    let shift = "  traffic:\n  - {revisionName: hello-00001, percent: 0, tag: blue}\n  \
                 - {latestRevision: true, percent: 100}\n";
    apply_files(&h.store, &[hello("v2", shift)]).await.unwrap();
    h.settle().await;
    assert_eq!(revision_names(&h).await, ["hello-00001", "hello-00002"]);
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        target_names(&snap, "hello.default.example.test"),
        [("hello-00002".into(), 100)]
    );
    assert_eq!(
        target_names(&snap, "blue-hello.default.example.test"),
        [("hello-00001".into(), 100)]
    );

    // A broken template: latestRevision keeps following the latest *ready* revision.
    *h.runtime.failing_arg.lock().unwrap() = Some("broken".into());
    let broken = hello("v3", "")
        .text
        .replace("[sluice, hello]", "[sluice, hello, broken]");
    apply_files(&h.store, &[text_file("hello.yaml", &broken)])
        .await
        .unwrap();
    h.settle().await;
    let svc = h.get(Kind::Service, "hello").await;
    assert_eq!(svc["status"]["latestCreatedRevisionName"], "hello-00003");
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00002");
    assert_eq!(svc["status"]["traffic"][0]["revisionName"], "hello-00002");
    assert_eq!(
        condition(&svc, "Ready"),
        ("False".into(), "RevisionFailed".into())
    );
    let cfg = h.get(Kind::Configuration, "hello").await;
    assert_eq!(
        condition(&cfg, "Ready"),
        ("False".into(), "RevisionFailed".into())
    );
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        target_names(&snap, "hello.default.example.test"),
        [("hello-00002".into(), 100)]
    );

    // Deleting the Service deletes its Configuration, Route and Revisions.
    h.store
        .delete(Kind::Service, "default", "hello")
        .await
        .unwrap();
    h.settle().await;
    assert!(revision_names(&h).await.is_empty());
    assert!(h.store.list(Kind::Route, None).await.unwrap().is_empty());
    assert!(h.snapshot.borrow().hosts.is_empty());
}

#[tokio::test]
async fn brought_revision_names_are_used_and_an_image_without_command_is_not_ready() {
    let mut h = Harness::new("byo");
    let text = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
                template:\n    metadata: {name: web-blue}\n    spec:\n      containers:\n      \
                - image: ghcr.io/knative/helloworld-go:latest\n";
    let results = apply_files(&h.store, &[text_file("web.yaml", text)])
        .await
        .unwrap();
    assert!(
        results[0].warnings[0].contains("local mode runs no images"),
        "{:?}",
        results[0].warnings
    );
    h.settle().await;
    assert_eq!(revision_names(&h).await, ["web-blue"]);
    let rev = h.get(Kind::Revision, "web-blue").await;
    assert_eq!(
        condition(&rev, "Ready"),
        ("False".into(), "ContainerMissing".into())
    );
    let svc = h.get(Kind::Service, "web").await;
    let (status, reason) = condition(&svc, "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RevisionFailed")
    );
    let message = svc["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("ghcr.io/knative/helloworld-go:latest"),
        "{message}"
    );
    // Re-applied as is: still one revision.
    apply_files(&h.store, &[text_file("web.yaml", text)])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(revision_names(&h).await, ["web-blue"]);
}

#[tokio::test]
async fn invalid_documents_refuse_the_whole_file_with_upstream_messages() {
    let h = Harness::new("invalid");
    let good = manifest("./v1").text;
    let bad = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: hello}\nspec:\n  \
               template:\n    spec:\n      containerConcurrency: 5000\n      timeoutSeconds: 900\n      \
               containers: [{command: [x]}]\n  traffic:\n  - {latestRevision: true, percent: 60, tag: a}\n  \
               - {revisionName: hello-00001, percent: 30, tag: a}\n";
    let err = apply_files(
        &h.store,
        &[text_file("both.yaml", &format!("{good}---\n{bad}"))],
    )
    .await
    .unwrap_err()
    .to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "both.yaml: document 2: spec.template.spec.containerConcurrency: expected 0 <= 5000 <= 1000",
            "both.yaml: document 2: spec.template.spec.timeoutSeconds: expected 0 <= 900 <= 600",
            "both.yaml: document 2: spec.traffic[1].tag, spec.traffic[0].tag: Multiple definitions for \"a\"",
            "both.yaml: document 2: spec.traffic: Traffic targets sum to 90, want 100",
        ]
    );
    assert!(
        h.store
            .list(Kind::InferenceService, None)
            .await
            .unwrap()
            .is_empty()
    );
}

fn canary_isvc(storage: &str, canary: Option<i64>) -> ManifestFile {
    let canary = canary.map_or(String::new(), |p| {
        format!("    canaryTrafficPercent: {p}\n")
    });
    text_file(
        "iris.yaml",
        &format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: iris\n  \
             annotations: {{serving.kserve.io/enable-tag-routing: \"true\"}}\nspec:\n  predictor:\n{canary}    \
             model:\n      modelFormat: {{name: sluice-mlp}}\n      storageUri: {storage}\n"
        ),
    )
}

/// (revision, percent, tag, latestRevision) of the predictor's traffic.
type Split = Vec<(String, i64, Option<String>, bool)>;

async fn rollout_state(h: &Harness) -> (Split, String, String) {
    let isvc = h.get(Kind::InferenceService, "iris").await;
    let p = &isvc["status"]["components"]["predictor"];
    let traffic = p["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap().to_owned(),
                t["percent"].as_i64().unwrap(),
                t["tag"].as_str().map(str::to_owned),
                t["latestRevision"].as_bool().unwrap(),
            )
        })
        .collect();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        traffic,
        s(&p["latestRolledoutRevision"]),
        s(&p["previousRolledoutRevision"]),
    )
}

fn split(entries: &[(&str, i64, Option<&str>, bool)]) -> Split {
    entries
        .iter()
        .map(|(r, p, t, l)| ((*r).to_owned(), *p, t.map(str::to_owned), *l))
        .collect()
}

#[tokio::test]
async fn canary_promote_and_rollback_follow_kserve() {
    let mut h = Harness::new("canary");
    let (r1, r2, r3) = (
        "iris-predictor-00001",
        "iris-predictor-00002",
        "iris-predictor-00003",
    );

    // v1: blue-green, all traffic to the first revision, which is rolled out.
    apply_files(&h.store, &[canary_isvc("/m/v1", None)])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(
        rollout_state(&h).await,
        (
            split(&[(r1, 100, Some("latest"), true)]),
            r1.into(),
            String::new()
        )
    );

    // v2 at 10%: the latest gets 10, the rolled-out one 90 under `prev`.
    apply_files(&h.store, &[canary_isvc("/m/v2", Some(10))])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(
        rollout_state(&h).await,
        (
            split(&[
                (r2, 10, Some("latest"), true),
                (r1, 90, Some("prev"), false)
            ]),
            r1.into(),
            String::new()
        )
    );
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        target_names(&snap, "iris.default.example.test"),
        [(r2.into(), 10), (r1.into(), 90)]
    );
    assert_eq!(
        target_names(&snap, "prev-iris-predictor.default.example.test"),
        [(r1.into(), 100)]
    );
    assert_eq!(
        target_names(&snap, "latest-iris-predictor.default.example.test"),
        [(r2.into(), 100)]
    );

    // Promote: remove canaryTrafficPercent.
    apply_files(&h.store, &[canary_isvc("/m/v2", None)])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(
        rollout_state(&h).await,
        (
            split(&[(r2, 100, Some("latest"), true)]),
            r2.into(),
            r1.into()
        )
    );

    // v3 at 20%.
    apply_files(&h.store, &[canary_isvc("/m/v3", Some(20))])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(
        rollout_state(&h).await,
        (
            split(&[
                (r3, 20, Some("latest"), true),
                (r2, 80, Some("prev"), false)
            ]),
            r2.into(),
            r1.into()
        )
    );

    // Rollback: canaryTrafficPercent 0 pins everything to `prev`, with no new revision.
    apply_files(&h.store, &[canary_isvc("/m/v3", Some(0))])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(
        rollout_state(&h).await,
        (
            split(&[
                (r3, 0, Some("latest"), true),
                (r2, 100, Some("prev"), false)
            ]),
            r2.into(),
            r1.into()
        )
    );
    assert_eq!(revision_names(&h).await, [r1, r2, r3]);
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        target_names(&snap, "iris.default.example.test"),
        [(r2.into(), 100)]
    );
    let isvc = h.get(Kind::InferenceService, "iris").await;
    assert_eq!(
        isvc["status"]["modelStatus"]["transitionStatus"],
        "UpToDate"
    );
}

#[tokio::test]
async fn old_revisions_beyond_the_history_limit_are_deleted() {
    let mut h = Harness::new("gc");
    for v in 1..=6 {
        apply_files(&h.store, &[hello(&format!("v{v}"), "")])
            .await
            .unwrap();
        h.settle().await;
    }
    // Routed (00006) plus the two newest idle ones (history 2).
    assert_eq!(
        revision_names(&h).await,
        ["hello-00004", "hello-00005", "hello-00006"]
    );
}

#[tokio::test]
async fn every_upstream_kserve_sample_and_runtime_applies() {
    let mut h = Harness::new("upstream");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kserve");
    let mut runtimes = Vec::new();
    for entry in std::fs::read_dir(root.join("runtimes")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "kustomization.yaml" {
            continue; // kustomize's own file, not an API object
        }
        runtimes.push(text_file(
            &path.display().to_string(),
            &std::fs::read_to_string(&path).unwrap(),
        ));
    }
    assert_eq!(runtimes.len(), 15);
    apply_files(&h.store, &runtimes).await.unwrap();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(root.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    samples.sort();
    for path in samples {
        let file = text_file(
            &path.display().to_string(),
            &std::fs::read_to_string(&path).unwrap(),
        );
        apply_files(&h.store, &[file]).await.unwrap();
        h.settle().await;
    }
    // An image-based runtime is selected by KServe's rules (sklearn over v2: mlserver's
    // priority 2 beats sklearnserver's 1), and local mode says it cannot run it.
    let isvc = h.get(Kind::InferenceService, "sklearn-irisv2").await;
    assert_eq!(
        condition(&isvc, "Ready"),
        ("False".into(), "RuntimeNotRunnable".into())
    );
    let message = isvc["status"]["conditions"][2]["message"].as_str().unwrap();
    assert!(
        message.contains("\"kserve-mlserver\"") && message.contains("mlserver:replace"),
        "{message}"
    );
    let isvc = h.get(Kind::InferenceService, "my-model").await;
    assert!(
        isvc["status"]["conditions"][2]["message"]
            .as_str()
            .unwrap()
            .contains("\"kserve-openvino\" selected for model format \"tensorflow\""),
        "{isvc:#}"
    );
    let builtin = h
        .store
        .get(Kind::ClusterServingRuntime, "", "sluice-candle")
        .await
        .unwrap();
    assert!(builtin.is_some(), "the built-in runtime is listed");
}

#[tokio::test]
async fn deleting_one_of_two_isvcs_unroutes_and_stops_only_it() {
    let mut h = Harness::new("delete-one");
    let mut other = manifest("./v1");
    other.text = other.text.replace("{name: iris}", "{name: lily}");
    apply_files(&h.store, &[manifest("./v1"), other])
        .await
        .unwrap();
    h.settle().await;
    let hosts = |h: &Harness| {
        let mut hosts: Vec<String> = h.snapshot.borrow().hosts.keys().cloned().collect();
        hosts.sort();
        hosts
    };
    assert!(hosts(&h).contains(&"iris.default.example.test".to_owned()));
    assert!(hosts(&h).contains(&"lily.default.example.test".to_owned()));

    let deleted = h
        .store
        .delete(Kind::InferenceService, "default", "iris")
        .await
        .unwrap();
    assert!(deleted.len() >= 5, "{deleted:?}");
    h.settle().await;

    // Only lily's hosts and replicas are left, and nothing of iris was written back.
    assert!(
        hosts(&h).iter().all(|host| host.starts_with("lily")),
        "{:?}",
        hosts(&h)
    );
    assert!(!hosts(&h).is_empty());
    let running: Vec<String> = h.runtime.revisions().into_iter().map(|k| k.name).collect();
    assert_eq!(running, vec!["lily-predictor-00001".to_owned()]);
    for kind in [
        Kind::Service,
        Kind::Configuration,
        Kind::Route,
        Kind::Revision,
    ] {
        let left = h.store.list(kind, None).await.unwrap();
        assert!(
            left.iter()
                .all(|o| !o["metadata"]["name"].as_str().unwrap().starts_with("iris")),
            "{kind:?} of iris resurrected: {left:?}"
        );
    }
    let lily = h.get(Kind::InferenceService, "lily").await;
    assert_eq!(condition(&lily, "Ready").0, "True", "{lily:#}");
}

fn transformer_manifest(transformer: &str) -> ManifestFile {
    let mut m = manifest("./v1");
    m.text.push_str(transformer);
    m
}

#[tokio::test]
async fn transformer_fronts_the_predictor_and_goes_with_its_isvc() {
    let mut h = Harness::new("transformer");
    apply_files(
        &h.store,
        &[transformer_manifest(
            "  transformer:\n    minReplicas: 2\n    containerConcurrency: 4\n    containers:\n    \
             - command: [python, -m, image_transformer]\n      args: [--workers, '1']\n      \
             env: [{name: STAGE, value: pre}]\n",
        )],
    )
    .await
    .unwrap();
    h.settle().await;

    // Both component Services, owned by the InferenceService.
    let t = h.get(Kind::Service, "iris-transformer").await;
    assert_eq!(t["metadata"]["ownerReferences"][0]["name"], "iris");
    assert_eq!(t["metadata"]["labels"]["component"], "transformer");
    assert_eq!(
        t["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"],
        "2"
    );
    h.get(Kind::Service, "iris-predictor").await;

    // The transformer runs behind `sluice queue` with KServe's args to reach its predictor
    // through the router.
    let key = NamespacedName::new("default", "iris-transformer-00001");
    let (replicas, command) = h.runtime.state.lock().unwrap()[&key].clone();
    assert_eq!(replicas, 2);
    assert_eq!(
        command,
        [
            "sluice",
            "queue",
            "--container-concurrency",
            "4",
            "--timeout-seconds",
            "300",
            "--",
            "python",
            "-m",
            "image_transformer",
            "--workers",
            "1",
            "--model_name",
            "iris",
            "--predictor_host",
            "iris-predictor.default.example.test:80",
            "--protocol",
            "v1",
            "--http_port",
            "$(PORT)",
        ]
    );
    let rev = h.get(Kind::Revision, "iris-transformer-00001").await;
    let env = rev["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(env.contains(&serde_json::json!({"name": "STAGE", "value": "pre"})));
    assert!(env.contains(
        &serde_json::json!({"name": "PREDICTOR_HOST", "value": "iris-predictor.default.example.test:80"})
    ));

    // The top-level host routes to the transformer; the predictor keeps its own host.
    let snap = h.snapshot.borrow().clone();
    let top = snap.route_for_host("iris.default.example.test").unwrap();
    assert_eq!(top.targets.len(), 1);
    assert_eq!(top.targets[0].revision.name, "iris-transformer-00001");
    assert_eq!(
        snap.route_for_host("iris-predictor.default.example.test")
            .unwrap()
            .targets[0]
            .revision
            .name,
        "iris-predictor-00001"
    );

    // Status: both components, TransformerReady, Ready.
    let isvc = h.get(Kind::InferenceService, "iris").await;
    assert_eq!(condition(&isvc, "TransformerReady").0, "True", "{isvc:#}");
    assert_eq!(condition(&isvc, "PredictorReady").0, "True", "{isvc:#}");
    assert_eq!(condition(&isvc, "Ready").0, "True", "{isvc:#}");
    assert_eq!(isvc["status"]["url"], "http://iris.default.example.test");
    let tc = &isvc["status"]["components"]["transformer"];
    assert_eq!(tc["url"], "http://iris-transformer.default.example.test");
    assert_eq!(tc["latestCreatedRevision"], "iris-transformer-00001");
    assert_eq!(tc["latestReadyRevision"], "iris-transformer-00001");
    assert_eq!(tc["traffic"][0]["revisionName"], "iris-transformer-00001");
    assert_eq!(tc["traffic"][0]["percent"], 100);
    assert_eq!(
        isvc["status"]["components"]["predictor"]["latestReadyRevision"],
        "iris-predictor-00001"
    );

    // Deleting the InferenceService removes both components and their routes.
    h.store
        .delete(Kind::InferenceService, "default", "iris")
        .await
        .unwrap();
    h.settle().await;
    assert!(h.snapshot.borrow().hosts.is_empty());
    assert!(h.runtime.revisions().is_empty());
    for kind in [
        Kind::Service,
        Kind::Configuration,
        Kind::Route,
        Kind::Revision,
    ] {
        assert!(
            h.store.list(kind, None).await.unwrap().is_empty(),
            "{kind:?} left"
        );
    }
}

#[tokio::test]
async fn failing_transformer_keeps_the_isvc_not_ready_and_removing_it_deletes_its_service() {
    let mut h = Harness::new("transformer-fail");
    *h.runtime.failing_arg.lock().unwrap() = Some("broken_transformer".into());
    apply_files(
        &h.store,
        &[transformer_manifest(
            "  transformer:\n    containers:\n    - command: [broken_transformer]\n",
        )],
    )
    .await
    .unwrap();
    h.settle().await;
    let isvc = h.get(Kind::InferenceService, "iris").await;
    assert_eq!(condition(&isvc, "PredictorReady").0, "True", "{isvc:#}");
    assert_eq!(condition(&isvc, "TransformerReady").0, "False", "{isvc:#}");
    assert_eq!(condition(&isvc, "Ready").0, "False", "{isvc:#}");

    // Without the transformer the predictor takes the top-level host again.
    apply_files(&h.store, &[manifest("./v1")]).await.unwrap();
    h.settle().await;
    assert!(
        h.store
            .get(Kind::Service, "default", "iris-transformer")
            .await
            .unwrap()
            .is_none()
    );
    let isvc = h.get(Kind::InferenceService, "iris").await;
    assert_eq!(condition(&isvc, "Ready").0, "True", "{isvc:#}");
    assert!(isvc["status"]["components"].get("transformer").is_none());
    let snap = h.snapshot.borrow().clone();
    assert_eq!(
        snap.route_for_host("iris.default.example.test")
            .unwrap()
            .targets[0]
            .revision
            .name,
        "iris-predictor-00001"
    );
    assert!(
        snap.route_for_host("iris-transformer.default.example.test")
            .is_none()
    );
}

#[tokio::test]
async fn transformer_without_containers_is_refused_with_kserve_message() {
    let h = Harness::new("transformer-invalid");
    let err = apply_files(
        &h.store,
        &[transformer_manifest("  transformer:\n    containers: []\n")],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.transformer")
            && err.contains("exactly one of [PodSpec] must be specified in TransformerSpec"),
        "{err}"
    );
}

/// A Knative Service `hello` running `sluice hello` with `TARGET={target}` and the given
/// metadata annotations (YAML flow mapping entries).
fn annotated_hello(target: &str, annotations: &str) -> ManifestFile {
    text_file(
        "hello.yaml",
        &format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  \
             annotations: {{{annotations}}}\nspec:\n  template:\n    spec:\n      containers:\n      \
             - command: [sluice, hello]\n        env: [{{name: TARGET, value: {target}}}]\n"
        ),
    )
}

/// The Route's status traffic as (revision, percent, latestRevision).
async fn route_split(h: &Harness) -> Vec<(String, i64, bool)> {
    let route = h.get(Kind::Route, "hello").await;
    route["status"]["traffic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap().to_owned(),
                t["percent"].as_i64().unwrap(),
                t["latestRevision"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn rollout_duration_moves_traffic_in_steps_across_a_restart() {
    let mut h = Harness::new("rollout");
    let start = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let now = Arc::new(Mutex::new(start));
    let clock: sluice_controller::reconcile::Clock = {
        let now = now.clone();
        Arc::new(move || *now.lock().unwrap())
    };
    h.controller.set_clock(clock.clone());
    let rollout = "serving.knative.dev/rollout-duration: 380s";
    apply_files(&h.store, &[annotated_hello("v1", rollout)])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(route_split(&h).await, [("hello-00001".into(), 100, true)]);

    // A new template: revision 2 becomes ready and gets 1 % first.
    apply_files(&h.store, &[annotated_hello("v2", rollout)])
        .await
        .unwrap();
    h.settle().await;
    let host = "hello.default.example.test";
    let step = |a: i64, b: i64| {
        vec![
            ("hello-00001".to_owned(), a, true),
            ("hello-00002".to_owned(), b, true),
        ]
    };
    assert_eq!(route_split(&h).await, step(99, 1));
    assert_eq!(
        target_names(&h.snapshot.borrow(), host),
        [("hello-00001".into(), 99), ("hello-00002".into(), 1)]
    );
    let svc = h.get(Kind::Service, "hello").await;
    assert_eq!(svc["status"]["traffic"][1]["percent"], 1, "{svc:#}");

    // Each step is 380 s / 4 = 95 s after the previous; just before it, nothing moves.
    let advance = |secs: u64| *now.lock().unwrap() += std::time::Duration::from_secs(secs);
    advance(94);
    h.controller.reconcile_all().await.unwrap();
    h.settle().await;
    assert_eq!(route_split(&h).await, step(99, 1));
    advance(1);
    h.controller.reconcile_all().await.unwrap();
    h.settle().await;
    assert_eq!(route_split(&h).await, step(74, 26));
    advance(95);
    h.controller.reconcile_all().await.unwrap();
    h.settle().await;
    assert_eq!(route_split(&h).await, step(49, 51));
    assert_eq!(
        target_names(&h.snapshot.borrow(), host),
        [("hello-00001".into(), 49), ("hello-00002".into(), 51)]
    );

    // A restarted controller carries on from the state in the store.
    h.restart(clock.clone());
    h.settle().await;
    assert_eq!(route_split(&h).await, step(49, 51));
    assert_eq!(
        target_names(&h.snapshot.borrow(), host),
        [("hello-00001".into(), 49), ("hello-00002".into(), 51)]
    );
    advance(95);
    h.controller.reconcile_all().await.unwrap();
    h.settle().await;
    assert_eq!(route_split(&h).await, step(24, 76));
    advance(95);
    h.controller.reconcile_all().await.unwrap();
    h.settle().await;
    assert_eq!(route_split(&h).await, [("hello-00002".into(), 100, true)]);
    assert_eq!(
        target_names(&h.snapshot.borrow(), host),
        [("hello-00002".into(), 100)]
    );
    let route = h.get(Kind::Route, "hello").await;
    assert!(route["status"].get("rollout").is_none(), "{route:#}");

    // Without the annotation the next revision takes the whole share at once.
    apply_files(&h.store, &[annotated_hello("v3", "")])
        .await
        .unwrap();
    h.settle().await;
    assert_eq!(route_split(&h).await, [("hello-00003".into(), 100, true)]);
}

#[tokio::test]
async fn invalid_rollout_duration_is_refused_naming_the_annotation() {
    let h = Harness::new("rollout-invalid");
    let err = apply_files(
        &h.store,
        &[annotated_hello(
            "v1",
            "serving.knative.dev/rollout-duration: soon",
        )],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "metadata.annotations[\"serving.knative.dev/rollout-duration\"]: invalid value: \"soon\""
        ),
        "{err}"
    );
    assert!(h.store.list(Kind::Service, None).await.unwrap().is_empty());
}

/// On Kubernetes there is no defaulting webhook: `kubectl apply` stores a Service exactly as
/// written, without `spec.traffic` or the template's defaults. The controller applies
/// Knative's defaults as it reads it (found on a real node: the Route got no traffic and
/// stayed `NoReadyRevision` while its revision served).
#[tokio::test]
async fn a_service_stored_without_defaults_routes_all_traffic_to_its_latest_revision() {
    let mut h = Harness::new("undefaulted");
    let raw = serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [
            {"image": "example/hello", "command": ["sluice"], "args": ["hello"]}
        ]}}},
    });
    h.store.apply(vec![(Kind::Service, raw)]).await.unwrap();
    h.settle().await;

    let route = h.get(Kind::Route, "hello").await;
    assert_eq!(
        route["spec"]["traffic"],
        serde_json::json!([{"latestRevision": true, "percent": 100}]),
        "{route:#}"
    );
    assert_eq!(
        route["status"]["traffic"][0]["revisionName"], "hello-00001",
        "{route:#}"
    );
    let svc = h.get(Kind::Service, "hello").await;
    assert_eq!(condition(&svc, "Ready").0, "True", "{svc:#}");
    let rev = h.get(Kind::Revision, "hello-00001").await;
    assert_eq!(rev["spec"]["timeoutSeconds"], 300, "{rev:#}");
    assert_eq!(rev["spec"]["containerConcurrency"], 0, "{rev:#}");
}
