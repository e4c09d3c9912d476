//! The controller's own loop (`Controller::run`) over the real SQLite store, the real local
//! runtime and the real autoscaler, under paused time: an edit of one InferenceService
//! among many completes its whole chain (InferenceService → predictor Service →
//! Configuration + Route → new Revision → statuses back up) from the store's change
//! notifications alone, without any timer firing (no resync, no autoscaler tick), in
//! passes over that InferenceService's own objects only; and the controller then goes
//! quiet (its scale calls, which notify the runtime's watchers, do not start new passes
//! over every revision).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_autoscaler::AutoscalerConfig;
use sluice_controller::admin::{ManifestFile, apply_files_with};
use sluice_controller::reconcile::{Controller, ControllerConfig};
use sluice_controller::runtime::{LocalRuntime, LocalRuntimeConfig};
use sluice_controller::store::{Change, SqliteStore, Store};
use sluice_core::RoutingSnapshot;
use sluice_crds::Kind;
use sluice_crds::autoscaling::ClusterConfig;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

/// InferenceServices in the store.
const COUNT: usize = 40;
/// Objects of one InferenceService after one edit: itself, its predictor Service,
/// Configuration and Route, and two Revisions.
const FAMILY: u64 = 6;
/// The resync the chain must not wait for.
const RESYNC: Duration = Duration::from_secs(600);

/// An InferenceService at zero (`minReplicas: 0`, `initial-scale: "0"`, so it is Ready
/// without a replica); `target` changes its spec (so a new revision).
fn isvc(name: &str, target: Option<u32>) -> String {
    let target = target.map_or(String::new(), |t| format!("    scaleTarget: {t}\n"));
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: {name}\n\
         \x20 annotations: {{autoscaling.knative.dev/initial-scale: \"0\"}}\n\
         spec:\n  predictor:\n    minReplicas: 0\n{target}    model:\n\
         \x20     modelFormat: {{name: sluice-mlp}}\n      storageUri: /models/iris\n"
    )
}

fn file(text: String) -> ManifestFile {
    ManifestFile {
        source: "isvc.yaml".into(),
        base_dir: PathBuf::from("/"),
        text,
    }
}

/// Ready=True for `generation` (any generation without one).
fn ready(obj: &Value, generation: Option<i64>) -> bool {
    let st = &obj["status"];
    if generation.is_some_and(|g| st["observedGeneration"].as_i64() != Some(g)) {
        return false;
    }
    st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Waits, on the store's change notifications, until `done` holds for the listed
/// InferenceServices.
async fn until(
    store: &SqliteStore,
    changes: &mut broadcast::Receiver<Change>,
    done: impl Fn(&[Value]) -> bool,
) {
    loop {
        let items = store.list(Kind::InferenceService, None).await.unwrap();
        if done(&items) {
            return;
        }
        match changes.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => panic!("the store closed"),
        }
    }
}

/// Lets every task run until all wait on a timer (paused time advances only then), and
/// no further than 1 s of virtual time: far from the resync. A controller that never goes
/// quiet (as one did, rescanning every revision on each of its own scale calls) never
/// lets time advance, and the test hangs here.
async fn quiesce() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_isvc_edit_completes_from_notifications_alone_over_its_own_objects() {
    let dir = std::env::temp_dir().join(format!("sluice-incremental-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir).unwrap();
    // At zero no replica starts, so the program is never run.
    let runtime = LocalRuntime::new(LocalRuntimeConfig::new(PathBuf::from(
        "/nonexistent/sluice",
    )));
    let (_stats_tx, stats_rx) = mpsc::channel(8);
    let (dec_tx, dec_rx) = mpsc::channel(64);
    let (autoscaler, _) = sluice_autoscaler::spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
    let (snap_tx, _snapshot) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let controller = Controller::new(
        ControllerConfig {
            domain: "example.test".into(),
            url_port: None,
            resync: RESYNC,
            revision_history: 2,
        },
        store.clone(),
        runtime,
        autoscaler,
        snap_tx,
    );
    let stats = controller.stats();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(dec_rx, async {
        let _ = stop_rx.await;
    }));
    let cluster = ClusterConfig {
        allow_zero_initial_scale: true,
    };

    let mut changes = store.watch();
    let files: Vec<ManifestFile> = (0..COUNT)
        .map(|i| file(isvc(&format!("m-{i:03}"), None)))
        .collect();
    apply_files_with(&store, &files, &cluster).await.unwrap();
    until(&store, &mut changes, |items| {
        items.len() == COUNT && items.iter().all(|o| ready(o, None))
    })
    .await;
    quiesce().await;
    let before = stats.read();

    // Edit one: a new spec, so a new generation and a new revision.
    let name = "m-017";
    let generation = store
        .get(Kind::InferenceService, "default", name)
        .await
        .unwrap()
        .unwrap()["metadata"]["generation"]
        .as_i64()
        .unwrap()
        + 1;
    let edited_at = Instant::now();
    apply_files_with(&store, &[file(isvc(name, Some(100)))], &cluster)
        .await
        .unwrap();
    until(&store, &mut changes, |items| {
        items
            .iter()
            .any(|o| o["metadata"]["name"] == name && ready(o, Some(generation)))
    })
    .await;
    // No timer fired on the way: not the resync, not an autoscaler tick.
    assert_eq!(Instant::now(), edited_at, "the edit waited for a timer");
    let rev = store
        .get(
            Kind::Revision,
            "default",
            &format!("{name}-predictor-00002"),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        ready(&rev, None),
        "the new revision is Ready at zero: {rev}"
    );
    // Ready with no replica: the model is Pending, as KServe reports it with no pod.
    let edited = store
        .get(Kind::InferenceService, "default", name)
        .await
        .unwrap()
        .unwrap();
    let model = &edited["status"]["modelStatus"];
    assert_eq!(model["states"]["targetModelState"], "Pending", "{model}");
    assert_eq!(model["transitionStatus"], "InProgress", "{model}");

    quiesce().await;
    let after = stats.read();
    assert_eq!(
        after.full_passes, before.full_passes,
        "the edit needed a full pass"
    );
    let passes = after.passes - before.passes;
    let objects = after.objects - before.objects;
    // Each pass covered this InferenceService's objects and nothing else.
    assert!(
        objects <= passes * FAMILY,
        "{passes} passes over {objects} objects: more than the edited InferenceService's {FAMILY}"
    );
    // The edit's pass, the one for the new revision's first scale decision, and those on
    // the notifications of the controller's own writes; then quiet.
    assert!(
        (1..=6).contains(&passes),
        "{passes} passes for one edit: the controller does not go quiet"
    );

    stop_tx.send(()).unwrap();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn a_write_the_watch_missed_is_found_by_the_resync_without_a_full_pass() {
    let dir = std::env::temp_dir().join(format!("sluice-resync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir).unwrap();
    // A second connection to the same file: its writes notify nobody the controller hears.
    let behind_its_back = SqliteStore::open(&dir).unwrap();
    let runtime = LocalRuntime::new(LocalRuntimeConfig::new(PathBuf::from(
        "/nonexistent/sluice",
    )));
    let (_stats_tx, stats_rx) = mpsc::channel(8);
    let (dec_tx, dec_rx) = mpsc::channel(64);
    let (autoscaler, _) = sluice_autoscaler::spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
    let (snap_tx, _snapshot) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let resync = Duration::from_secs(1);
    let controller = Controller::new(
        ControllerConfig {
            domain: "example.test".into(),
            url_port: None,
            resync,
            revision_history: 2,
        },
        store.clone(),
        runtime,
        autoscaler,
        snap_tx,
    );
    let stats = controller.stats();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(dec_rx, async {
        let _ = stop_rx.await;
    }));
    let cluster = ClusterConfig {
        allow_zero_initial_scale: true,
    };
    let mut changes = store.watch();
    let files: Vec<ManifestFile> = (0..5)
        .map(|i| file(isvc(&format!("m-{i:03}"), None)))
        .collect();
    apply_files_with(&store, &files, &cluster).await.unwrap();
    until(&store, &mut changes, |items| {
        items.len() == 5 && items.iter().all(|o| ready(o, None))
    })
    .await;
    quiesce().await;
    let before = stats.read();

    let edited_at = Instant::now();
    apply_files_with(
        &behind_its_back,
        &[file(isvc("m-003", Some(100)))],
        &cluster,
    )
    .await
    .unwrap();
    // The controller's own status writes (through `store`) are what this waits on.
    until(&store, &mut changes, |items| {
        items
            .iter()
            .any(|o| o["metadata"]["name"] == "m-003" && ready(o, Some(2)))
    })
    .await;
    // No notification can carry that write (it went through another connection), so
    // whatever found it was a resync; a tick already due when the edit landed may find it
    // without the paused clock moving at all, so only the upper bound is checked.
    let waited = Instant::now() - edited_at;
    assert!(
        waited <= resync * 2,
        "found after {waited:?}: not by the next resync"
    );
    quiesce().await;
    let after = stats.read();
    assert_eq!(
        after.full_passes, before.full_passes,
        "the resync was a full pass"
    );
    // Only the edited InferenceService's objects were reconciled.
    assert!(after.objects - before.objects <= (after.passes - before.passes) * FAMILY);

    stop_tx.send(()).unwrap();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Knative Service at zero with a 4 s rollout duration; `target` changes its template.
fn rolled_service(target: &str) -> ManifestFile {
    file(format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  \
         annotations: {{serving.knative.dev/rollout-duration: 4s}}\nspec:\n  template:\n    \
         metadata:\n      annotations: {{autoscaling.knative.dev/initial-scale: \"0\"}}\n    \
         spec:\n      containers:\n      - command: [sluice, hello]\n        \
         env: [{{name: TARGET, value: {target}}}]\n"
    ))
}

/// The Route's status traffic as (revision, percent).
async fn route_split(store: &SqliteStore) -> Vec<(String, i64)> {
    let Some(route) = store.get(Kind::Route, "default", "hello").await.unwrap() else {
        return vec![];
    };
    route["status"]["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap_or_default().to_owned(),
                t["percent"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits, on the store's change notifications, until the Route's split is `want`.
async fn until_split(
    store: &SqliteStore,
    changes: &mut broadcast::Receiver<Change>,
    want: &[(&str, i64)],
) {
    let want: Vec<(String, i64)> = want.iter().map(|(r, p)| ((*r).to_owned(), *p)).collect();
    loop {
        if route_split(store).await == want {
            return;
        }
        match changes.recv().await {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => panic!("the store closed"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_loop_steps_a_gradual_rollout_on_its_resync_tick() {
    let dir = std::env::temp_dir().join(format!("sluice-rollout-loop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir).unwrap();
    let runtime = LocalRuntime::new(LocalRuntimeConfig::new(PathBuf::from(
        "/nonexistent/sluice",
    )));
    let (_stats_tx, stats_rx) = mpsc::channel(8);
    let (dec_tx, dec_rx) = mpsc::channel(64);
    let (autoscaler, _) = sluice_autoscaler::spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
    let (snap_tx, _snapshot) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let mut controller = Controller::new(
        ControllerConfig {
            domain: "example.test".into(),
            url_port: None,
            resync: Duration::from_secs(1),
            revision_history: 2,
        },
        store.clone(),
        runtime,
        autoscaler,
        snap_tx,
    );
    // The wall clock follows the paused tokio clock.
    let (wall0, t0) = (
        std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        Instant::now(),
    );
    controller.set_clock(Arc::new(move || wall0 + (Instant::now() - t0)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(dec_rx, async {
        let _ = stop_rx.await;
    }));
    let cluster = ClusterConfig {
        allow_zero_initial_scale: true,
    };
    let mut changes = store.watch();
    apply_files_with(&store, &[rolled_service("v1")], &cluster)
        .await
        .unwrap();
    until_split(&store, &mut changes, &[("hello-00001", 100)]).await;
    apply_files_with(&store, &[rolled_service("v2")], &cluster)
        .await
        .unwrap();
    until_split(
        &store,
        &mut changes,
        &[("hello-00001", 99), ("hello-00002", 1)],
    )
    .await;
    let started = Instant::now();
    // Each further step comes from the loop's own resync tick (nothing else changes).
    for (a, b) in [(74, 26), (49, 51), (24, 76)] {
        until_split(
            &store,
            &mut changes,
            &[("hello-00001", a), ("hello-00002", b)],
        )
        .await;
    }
    until_split(&store, &mut changes, &[("hello-00002", 100)]).await;
    let took = Instant::now() - started;
    assert!(
        took >= Duration::from_secs(4) && took <= Duration::from_secs(6),
        "the 4 s rollout took {took:?} of (paused) time"
    );

    stop_tx.send(()).unwrap();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
