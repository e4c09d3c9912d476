//! The workload's side: a key generated here, a CSR with no SAN, the projected token read
//! fresh for every request (kubelet rotates it), and renewal at 40–50 % of each certificate's
//! life with retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{CERTIFICATES_PATH, CertificateRequest, CertificateResponse, ErrorBody};
use crate::identity::rotate::{RotationConfig, renew_with};
use crate::identity::svid::parse_pem;
use crate::identity::{RotatingSvid, Svid, TrustBundle, Usage};
use crate::tls::{ConnectError, ExpectedServer, MeshConnector, MeshTls};

/// Where a workload asks for its certificate (from env in Pods).
#[derive(Clone, Debug)]
pub struct RemoteCa {
    /// `host:port` of the CA.
    pub addr: String,
    /// The projected ServiceAccount token (audience [`super::TOKEN_AUDIENCE`]), re-read for
    /// every request.
    pub token_file: PathBuf,
    /// The roots the CA's own certificate must chain to (and the workload's peers').
    pub bundle: Arc<TrustBundle>,
}

/// A certificate could not be obtained from the CA (the message names what failed).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The token file could not be read or is empty.
    #[error("ServiceAccount token {path}: {message}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No TCP connection to the CA.
    #[error("CA unreachable at {addr}: {source}")]
    Connect {
        /// The CA's address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the CA failed (its certificate is not from the bundle, …).
    #[error("TLS with the CA at {addr}: {source}")]
    Handshake {
        /// The CA's address.
        addr: String,
        /// The cause.
        #[source]
        source: ConnectError,
    },
    /// The HTTP exchange failed or did not finish in time.
    #[error("HTTP with the CA at {addr}: {message}")]
    Http {
        /// The CA's address.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The CA refused the request.
    #[error("CA at {addr} answered {status}: {message}")]
    Status {
        /// The CA's address.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The CA's `error` text (or the body, when not the JSON error shape).
        message: String,
    },
    /// The CA's answer is not a usable certificate for our key.
    #[error("CA at {addr} answered an unusable certificate: {message}")]
    Response {
        /// The CA's address.
        addr: String,
        /// What is wrong with it.
        message: String,
    },
    /// Generating the key or the CSR failed.
    #[error("generating the key and CSR: {0}")]
    Key(String),
}

/// Deadline for the TCP connection to the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the TLS handshake and for the HTTP exchange, each.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read from the CA.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Longest token accepted from the file (projected tokens are about 1 KiB).
const MAX_TOKEN_BYTES: u64 = 16 * 1024;

/// Requests one certificate: a fresh P-256 key generated here (it never leaves the process),
/// a CSR with no SAN (the CA fills in the token's identity), the token read now. `ttl` asks
/// for a shorter life than the CA's default. The answer is verified against `ca.bundle` and
/// must certify our key.
pub async fn request_certificate(ca: &RemoteCa, ttl: Option<Duration>) -> Result<Svid, IssueError> {
    let token = read_token(&ca.token_file).await?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IssueError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| IssueError::Key(e.to_string()))?;
    let body = serde_json::to_vec(&CertificateRequest {
        csr,
        ttl_seconds: ttl.map(|t| t.as_secs().max(1)),
    })
    .map_err(|e| IssueError::Key(e.to_string()))?;
    let (status, answer) = exchange(ca, &token, body).await?;
    let http_error = |message: String| IssueError::Http {
        addr: ca.addr.clone(),
        message,
    };
    let unusable = |message: String| IssueError::Response {
        addr: ca.addr.clone(),
        message,
    };
    if status != StatusCode::OK {
        let message = match serde_json::from_slice::<ErrorBody>(&answer) {
            Ok(body) => body.error,
            Err(_) => String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned(),
        };
        return Err(IssueError::Status {
            addr: ca.addr.clone(),
            status: status.as_u16(),
            message,
        });
    }
    let answer: CertificateResponse = serde_json::from_slice(&answer)
        .map_err(|e| http_error(format!("answer is not a certificate response: {e}")))?;
    let leaf_pem = answer
        .certificate_chain
        .first()
        .ok_or_else(|| unusable("certificateChain is empty".into()))?;
    let leaf = parse_pem(leaf_pem)
        .map_err(|e| unusable(format!("certificateChain[0]: {e}")))?
        .into_iter()
        .find(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| CertificateDer::from(der))
        .ok_or_else(|| unusable("certificateChain[0]: no CERTIFICATE block".into()))?;
    let now = UnixTime::now();
    let id = ca
        .bundle
        .verify(&leaf, Usage::Server, now)
        .and_then(|id| ca.bundle.verify(&leaf, Usage::Client, now).map(|_| id))
        .map_err(|e| unusable(e.to_string()))?;
    let (_, parsed) = X509Certificate::from_der(&leaf).map_err(|e| unusable(e.to_string()))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(unusable(
            "the certificate is not for the key we sent".into(),
        ));
    }
    drop(parsed);
    let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
    Svid::from_verified(id, leaf, key_der).map_err(unusable)
}

/// Reads the token now: kubelet rewrites the file before the token expires.
async fn read_token(path: &Path) -> Result<String, IssueError> {
    let failed = |message: String| IssueError::Token {
        path: path.to_owned(),
        message,
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| failed(format!("unreadable: {e}")))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_string(&mut text)
        .await
        .map_err(|e| failed(format!("unreadable: {e}")))?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(failed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(failed("empty".into()));
    }
    Ok(token.to_owned())
}

/// One HTTPS `POST` to the CA; returns the status and the (bounded) body.
async fn exchange(
    ca: &RemoteCa,
    token: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), IssueError> {
    let config =
        MeshTls::anonymous_client_config(ca.bundle.clone(), ExpectedServer::AnyInTrustDomain)
            .map_err(|e| IssueError::Http {
                addr: ca.addr.clone(),
                message: e.to_string(),
            })?;
    let request = Request::post(CERTIFICATES_PATH)
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| IssueError::Http {
            addr: ca.addr.clone(),
            message: format!("building the request: {e}"),
        })?;
    https_exchange(
        &ca.addr,
        config,
        ca.bundle.trust_domain(),
        request,
        MAX_RESPONSE_BYTES,
        EXCHANGE_TIMEOUT,
    )
    .await
}

/// One HTTP/1.1 request to the CA at `addr` over TLS with `config` (the server must be an
/// SVID of `trust_domain`); `request` gets its `Host`. Returns the status and the body (at
/// most `limit` bytes), the request and answer within `deadline` after the handshake.
pub(crate) async fn https_exchange(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    trust_domain: &str,
    mut request: Request<Full<Bytes>>,
    limit: usize,
    deadline: Duration,
) -> Result<(StatusCode, Bytes), IssueError> {
    let http_error = |message: String| IssueError::Http {
        addr: addr.to_owned(),
        message,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| IssueError::Connect {
            addr: addr.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            ),
        })?
        .map_err(|source| IssueError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // This client speaks HTTP/1.1 only; say so in ALPN.
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (tls, server) = MeshConnector::new(Arc::new(config))
        .with_handshake_timeout(CONNECT_TIMEOUT.min(deadline))
        .connect(tcp)
        .await
        .map_err(|source| IssueError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    if server.trust_domain() != trust_domain {
        return Err(http_error(format!(
            "server identity {server} is outside trust domain {trust_domain}"
        )));
    }
    let host = http::HeaderValue::from_str(addr)
        .map_err(|_| http_error(format!("{addr:?} is not a valid Host header")))?;
    request.headers_mut().insert(HOST, host);
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http_error(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_error(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| http_error(format!("reading the answer: {e}")))?
            .to_bytes();
        drop(sender);
        driver.abort();
        Ok((status, body))
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| http_error(format!("no answer within {deadline:?}")))?
}

/// Requests the first SVID, then renews it at 40–50 % of its life (retrying failures with
/// `config.retry_min` doubling up to `config.retry_max`); the renewal task ends when every
/// holder of the returned [`RotatingSvid`] is gone. `config.ttl` is requested as the life
/// (the CA never issues longer than its own workload TTL).
pub async fn remote_identity(
    ca: RemoteCa,
    config: RotationConfig,
) -> Result<(RotatingSvid, JoinHandle<()>), IssueError> {
    let first = request_certificate(&ca, Some(config.ttl)).await?;
    tracing::info!(
        identity = %first.id(),
        ca = %ca.addr,
        not_after = ?first.not_after(),
        "certificate obtained from the mesh CA"
    );
    let (tx, rx) = watch::channel(Arc::new(first));
    let ttl = config.ttl;
    let ca = Arc::new(ca);
    let task = tokio::spawn(renew_with(config, tx, move || {
        let ca = ca.clone();
        async move { request_certificate(&ca, Some(ttl)).await }
    }));
    Ok((RotatingSvid::from_receiver(rx), task))
}
