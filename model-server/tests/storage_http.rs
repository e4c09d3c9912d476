//! `storageUri: http://...`: a model folder served over HTTP with `SHA256SUMS` is downloaded
//! once into the cache, checksum-verified, and reused; a corrupted file is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use sluice_model_server::storage::file_sha256;
use sluice_model_server::{BatchConfig, ModelSource, Repository};

struct Files {
    corrupt: bool,
    weight_downloads: AtomicUsize,
}

async fn serve_file(
    State(f): State<Arc<Files>>,
    Path((_model, name)): Path<(String, String)>,
) -> Result<Vec<u8>, StatusCode> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
    if name == "SHA256SUMS" {
        let mut text = String::new();
        for file in ["config.json", "model.safetensors"] {
            text.push_str(&format!(
                "{}  {file}\n",
                file_sha256(&src.join(file)).unwrap()
            ));
        }
        return Ok(text.into_bytes());
    }
    let mut bytes = std::fs::read(src.join(&name)).map_err(|_| StatusCode::NOT_FOUND)?;
    if name == "model.safetensors" {
        f.weight_downloads.fetch_add(1, Ordering::SeqCst);
        if f.corrupt {
            bytes[100] ^= 0xff;
        }
    }
    Ok(bytes)
}

async fn start(corrupt: bool) -> (String, Arc<Files>, tokio::sync::oneshot::Sender<()>) {
    let files = Arc::new(Files {
        corrupt,
        weight_downloads: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/{model}/{name}", axum::routing::get(serve_file))
        .with_state(files.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .into_future(),
    );
    (format!("http://{addr}/iris"), files, tx)
}

fn repository(cache: &std::path::Path, uri: &str) -> Repository {
    let r = Repository::new(None, cache.to_owned(), BatchConfig::default());
    r.add(
        "iris",
        ModelSource {
            format: "sluice-mlp".into(),
            storage_uri: uri.to_owned(),
            batching: BatchConfig::default(),
        },
    );
    r
}

#[tokio::test]
async fn downloads_once_and_verifies_checksums() {
    let cache = std::env::temp_dir().join(format!("sluice-storage-test-{}", std::process::id()));
    let (uri, files, stop) = start(false).await;
    let repo = repository(&cache, &uri);
    repo.load("iris").await.unwrap();
    assert!(repo.get("iris").is_ok());
    // Reloading finds the cached files intact and does not fetch the weights again.
    repo.load("iris").await.unwrap();
    assert_eq!(files.weight_downloads.load(Ordering::SeqCst), 1);
    stop.send(()).unwrap();

    let (bad_uri, _files, stop) = start(true).await;
    let bad_cache = cache.join("bad");
    let repo = repository(&bad_cache, &bad_uri);
    let err = repo.load("iris").await.unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors: checksum") && err.contains("does not match SHA256SUMS"),
        "{err}"
    );
    assert!(repo.get("iris").is_err());
    stop.send(()).unwrap();
    std::fs::remove_dir_all(&cache).unwrap();
}
