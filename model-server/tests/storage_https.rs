//! `storageUri: https://...`: a model folder served over TLS by a local server whose
//! certificate a test CA (made here with rcgen) signed. Trusting that CA through the
//! repository's CA file, the model downloads and loads; trusting another CA the handshake is
//! refused and the error says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sluice_model_server::storage::file_sha256;
use sluice_model_server::{BatchConfig, ModelSource, Repository};

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![server_cert.der().clone()], key)
    .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// Serves `samples/iris/model` (plus a `SHA256SUMS`) at `https://127.0.0.1:PORT/iris/`
/// until the returned sender is dropped or fired.
async fn serve(config: Arc<rustls::ServerConfig>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => accepted.unwrap().0,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    Ok::<_, std::convert::Infallible>(answer(req.uri().path()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://{addr}/iris"), stop)
}

fn answer(path: &str) -> hyper::Response<Full<Bytes>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/iris/model");
    let body = match path {
        "/iris/SHA256SUMS" => Some(
            ["config.json", "model.safetensors"]
                .iter()
                .map(|f| format!("{}  {f}\n", file_sha256(&src.join(f)).unwrap()))
                .collect::<String>()
                .into_bytes(),
        ),
        "/iris/config.json" => std::fs::read(src.join("config.json")).ok(),
        "/iris/model.safetensors" => std::fs::read(src.join("model.safetensors")).ok(),
        _ => None,
    };
    match body {
        Some(b) => hyper::Response::new(Full::new(Bytes::from(b))),
        None => hyper::Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    }
}

fn repository(cache: &std::path::Path, uri: &str, ca_file: Option<PathBuf>) -> Repository {
    let r = Repository::new(None, cache.to_owned(), BatchConfig::default()).with_ca_file(ca_file);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_download_trusts_the_given_ca_only() {
    let dir = std::env::temp_dir().join(format!("sluice-https-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    let test_pki = pki();
    std::fs::write(&ca_file, &test_pki.ca_pem).unwrap();
    let (uri, stop) = serve(test_pki.server).await;

    // Trusting another CA (and the system's roots), the server's certificate is refused.
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, pki().ca_pem).unwrap();
    let repo = repository(&dir.join("cache-untrusted"), &uri, Some(other_ca));
    let err = repo.load("iris").await.unwrap_err().to_string();
    assert!(
        err.contains("TLS handshake failed") && err.contains("invalid peer certificate"),
        "{err}"
    );
    assert!(repo.get("iris").is_err());

    // A CA file that does not exist is named.
    let repo = repository(
        &dir.join("cache-missing"),
        &uri,
        Some(dir.join("absent.pem")),
    );
    let err = repo.load("iris").await.unwrap_err().to_string();
    assert!(
        err.contains("CA file") && err.contains("absent.pem"),
        "{err}"
    );

    // With it, the folder downloads, verifies and loads.
    let repo = repository(&dir.join("cache"), &uri, Some(ca_file));
    repo.load("iris").await.unwrap();
    let served = repo.get("iris").unwrap();
    assert_eq!(served.model.metadata().inputs[0].shape, [-1, 4]);

    stop.send(()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
