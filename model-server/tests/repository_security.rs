//! The model repository API cannot be used to read outside the repository (no `..`, no
//! symlink out, at the folder or at a file inside it), and its `load`/`unload` act only with
//! model control on: the API shares its port with inference, which the router exposes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use sluice_model_server::http::{AppState, router};
use sluice_model_server::{BatchConfig, ModelControl, Repository};
use sluice_queue::{Queue, QueueConfig};
use tokio::time::Instant;
use tower::ServiceExt;

fn iris_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model")
}

/// A repository folder: `iris` (a real copy), `escape` (a symlink to a model folder outside
/// the repository), `smuggle` (a real folder whose weights file links outside), `inside`
/// (a symlink to `iris`, staying inside); and a model folder `outside` beside the repository.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "sluice-repo-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let repo = root.join("repo");
        let copy = |to: &Path| {
            std::fs::create_dir_all(to).unwrap();
            for f in ["config.json", "model.safetensors"] {
                std::fs::copy(iris_dir().join(f), to.join(f)).unwrap();
            }
        };
        copy(&repo.join("iris"));
        copy(&root.join("outside"));
        std::os::unix::fs::symlink(root.join("outside"), repo.join("escape")).unwrap();
        std::fs::create_dir_all(repo.join("smuggle")).unwrap();
        std::fs::copy(
            iris_dir().join("config.json"),
            repo.join("smuggle/config.json"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            root.join("outside/model.safetensors"),
            repo.join("smuggle/model.safetensors"),
        )
        .unwrap();
        std::os::unix::fs::symlink(repo.join("iris"), repo.join("inside")).unwrap();
        Self { root }
    }

    fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn state(repository: Repository) -> Arc<AppState> {
    Arc::new(AppState {
        repository: Arc::new(repository),
        queue: Arc::new(Queue::new(
            QueueConfig {
                container_concurrency: 0,
                max_queued: None,
            },
            Instant::now(),
        )),
    })
}

async fn post(s: &Arc<AppState>, path: &str) -> (StatusCode, String) {
    let req = Request::post(path).body(Body::empty()).unwrap();
    let resp = router(s.clone(), 64 * 1024).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (
        status,
        json["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn load_never_reads_outside_the_repository() {
    let f = Fixture::new();
    let s = state(
        Repository::new(Some(f.repo()), std::env::temp_dir(), BatchConfig::default())
            .with_control(ModelControl::Explicit),
    );
    let (status, error) = post(&s, "/v2/repository/models/iris/load").await;
    assert_eq!(status, StatusCode::OK, "{error}");
    // A symlink inside the repository to another model of it is fine.
    let (status, error) = post(&s, "/v2/repository/models/inside/load").await;
    assert_eq!(status, StatusCode::OK, "{error}");

    // The model folder is a symlink out of the repository.
    let (status, error) = post(&s, "/v2/repository/models/escape/load").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert!(
        error.contains("leads outside the model repository"),
        "{error}"
    );
    // A real folder, but its weights file links out.
    let (status, error) = post(&s, "/v2/repository/models/smuggle/load").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    assert!(error.contains("model.safetensors"), "{error}");
    // Traversal in the name: encoded slashes and dots never leave the folder.
    for name in [
        "..%2Foutside",
        "..",
        "%2E%2E",
        "iris%2F..%2F..%2Foutside",
        "%2Ftmp",
    ] {
        let (status, error) = post(&s, &format!("/v2/repository/models/{name}/load")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}: {error}");
    }
    let index = s.repository.index();
    let names: Vec<&str> = index.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["inside", "iris"],
        "refused models never became slots"
    );
}

#[tokio::test]
async fn model_control_off_refuses_load_and_unload_and_keeps_serving() {
    let f = Fixture::new();
    let repository = Repository::new(Some(f.repo()), std::env::temp_dir(), BatchConfig::default());
    // What the server does at start (models loaded by the server itself are not requests).
    repository.load("iris").await.unwrap();
    let s = state(repository);
    for op in ["load", "unload"] {
        let (status, error) = post(&s, &format!("/v2/repository/models/iris/{op}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{op}: {error}");
        assert!(
            error.contains("model control is off")
                && error.contains("--model-control-mode explicit"),
            "{op}: {error}"
        );
    }
    assert!(s.repository.get("iris").is_ok(), "iris is still served");
    let req = Request::post("/v2/models/iris/infer")
        .body(Body::from(
            r#"{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.8,2.8,4.8,1.4]}]}"#,
        ))
        .unwrap();
    let resp = router(s.clone(), 64 * 1024).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
