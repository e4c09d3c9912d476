//! The reconcilers over the real SQLite store and a scripted runtime: InferenceService →
//! Service → Revision → routes and status, a spec change rolling out blue-green, and a
//! failing revision surfacing its reason without taking traffic from the ready one.

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
use sluice_controller::store::{SqliteStore, Store};
use sluice_core::{NamespacedName, RoutingSnapshot};
use sluice_crds::Kind;
use tokio::sync::{mpsc, watch};

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
            dir,
            _stats: stats_tx,
            _decisions: dec_rx,
        }
    }

    /// Runs passes until nothing changes (at most a handful).
    async fn settle(&mut self) {
        for _ in 0..6 {
            self.controller.reconcile_all().await.unwrap();
        }
    }

    async fn get(&self, kind: Kind, name: &str) -> Value {
        self.store
            .get(kind, "default", name)
            .await
            .unwrap()
            .unwrap()
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
