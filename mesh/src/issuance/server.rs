//! The CA's HTTPS service: one path, bounded bodies, headers, time and concurrency; one log
//! line per certificate issued (never the token).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::FromDer;

use super::policies::{POLICIES_PATH, PolicyService, PolicySource};
use super::{
    AuthError, CERTIFICATES_PATH, CertificateRequest, CertificateResponse, ErrorBody,
    MAX_BODY_BYTES, TokenAuthenticator,
};
use crate::identity::svid::pem_block;
use crate::identity::{
    CaError, CertificateAuthority, CsrError, RotatingSvid, RotationConfig, SpiffeId,
};
use crate::tls::MeshTls;

/// Connections served at once; more are closed at accept. Every replica holds one open
/// while it long-polls its policies, so this (with [`super::policies::MAX_WAITERS`], which
/// leaves room for certificate requests) bounds the replicas one CA replica follows.
const MAX_CONNECTIONS: usize = 2048;
/// Requests in flight on one HTTP/2 connection.
const MAX_STREAMS: u32 = 16;
/// Requests authenticated and signed at once over all connections; more wait their turn
/// (within the request deadline), so a burst cannot flood the token authenticator.
const MAX_IN_FLIGHT: usize = 64;
/// TLS handshake deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a request's headers (HTTP/1.1, also while a keep-alive connection idles).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole request: reading the body, authenticating, signing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list).
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct State {
    in_flight: Semaphore,
    ca: Arc<CertificateAuthority>,
    auth: Arc<dyn TokenAuthenticator>,
    bundle_pem: String,
    policies: Option<PolicyService>,
}

/// Serves the CA on `listener` over TLS 1.3 as `server_identity` (an SVID the CA issues to
/// itself and renews at 40–50 % of its life) until `shutdown` resolves; then stops accepting
/// and lets requests in flight finish (up to 10 s). Client certificates are not required:
/// callers authenticate with their ServiceAccount token. HTTP/1.1, and HTTP/2 by ALPN.
pub async fn serve(
    listener: TcpListener,
    ca: Arc<CertificateAuthority>,
    server_identity: SpiffeId,
    auth: Arc<dyn TokenAuthenticator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_policies(listener, ca, server_identity, auth, None, shutdown).await
}

/// [`serve`], and with `policies` also `GET` [`POLICIES_PATH`] (see
/// [`super::policies`]): a client presenting its SVID gets the policies that can apply to
/// its namespace. Client certificates stay optional on the port (a workload without one
/// asks for its first certificate by token); one presented must be an SVID of the CA.
pub async fn serve_with_policies(
    listener: TcpListener,
    ca: Arc<CertificateAuthority>,
    server_identity: SpiffeId,
    auth: Arc<dyn TokenAuthenticator>,
    policies: Option<Arc<dyn PolicySource>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bundle = ca.trust_bundle().map_err(std::io::Error::other)?;
    let (identity, renewal) = RotatingSvid::start(
        ca.clone(),
        server_identity.clone(),
        RotationConfig::new(ca.workload_ttl()),
    )
    .map_err(|e| std::io::Error::other(format!("CA server certificate: {e}")))?;
    let config = MeshTls::new(Arc::new(bundle), identity)
        .server_config_optional_client_auth()
        .map_err(std::io::Error::other)?;
    let acceptor = TlsAcceptor::from(config);
    let (stop_tx, stop_rx) = watch::channel(());
    let state = Arc::new(State {
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        bundle_pem: ca.root_pem(),
        ca,
        auth,
        policies: policies
            .as_deref()
            .map(|source| PolicyService::new(source).with_stop(stop_rx.clone())),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(addr = ?listener.local_addr().ok(), identity = %server_identity, "mesh CA serving");
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(error) => {
                // Out of descriptors and the like: keep serving what is open.
                tracing::warn!(%error, "mesh CA accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "mesh CA at its connection limit; closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(tcp, acceptor, state, stop).await {
                tracing::debug!(%peer, %error, "mesh CA connection ended");
            }
            drop(permit);
        });
    }
    drop(stop_tx);
    // Every connection holds a slot until it ends: all slots back = drained.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("mesh CA: requests still in flight after {DRAIN_TIMEOUT:?}; stopping");
    }
    renewal.abort();
    Ok(())
}

async fn connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut stop: watch::Receiver<()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| format!("TLS handshake did not complete within {HANDSHAKE_TIMEOUT:?}"))??;
    // The verifier checked a presented certificate is an SVID of the bundle.
    let caller: Option<Arc<SpiffeId>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| crate::identity::verify::peer_spiffe_id(leaf).ok())
        .map(Arc::new);
    let builder = crate::tls::bounded_server(HEADER_TIMEOUT, MAX_HEADER_BYTES, MAX_STREAMS);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(handle(req, &state, caller.as_deref()).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// A refusal: status and the `error` text.
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

async fn handle(
    req: Request<Incoming>,
    state: &State,
    caller: Option<&SpiffeId>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == POLICIES_PATH {
        return match &state.policies {
            // Bounded by its own long-poll limit, not the request deadline.
            Some(service) => service.handle(&req, caller).await,
            None => json(
                StatusCode::NOT_FOUND,
                &ErrorBody::new(format!("this CA serves no policies ({POLICIES_PATH})")),
            ),
        };
    }
    let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, issue(req, state)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request not completed within {REQUEST_TIMEOUT:?}"),
        )),
    };
    match outcome {
        Ok(body) => json(StatusCode::OK, &body),
        Err(Refusal(status, error)) => {
            tracing::info!(status = status.as_u16(), %error, "certificate request refused");
            let mut response = json(status, &ErrorBody::new(error));
            match status {
                StatusCode::METHOD_NOT_ALLOWED => {
                    response
                        .headers_mut()
                        .insert(ALLOW, HeaderValue::from_static("POST"));
                }
                StatusCode::UNAUTHORIZED => {
                    response.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer"),
                    );
                }
                _ => {}
            }
            response
        }
    }
}

async fn issue(req: Request<Incoming>, state: &State) -> Result<CertificateResponse, Refusal> {
    if req.uri().path() != CERTIFICATES_PATH {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {}; the CA serves POST {CERTIFICATES_PATH}",
                req.uri().path()
            ),
        ));
    }
    if req.method() != Method::POST {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} not allowed on {CERTIFICATES_PATH}; use POST",
                req.method()
            ),
        ));
    }
    let token = bearer_token(req.headers())?.to_owned();
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let _turn =
        state.in_flight.acquire().await.map_err(|_| {
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "the CA is shutting down")
        })?;
    let account = state.auth.authenticate(&token).await.map_err(|e| match e {
        AuthError::Rejected(why) => Refusal::new(
            StatusCode::UNAUTHORIZED,
            format!("Authorization: token refused: {why}"),
        ),
        AuthError::Unavailable(why) => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("token authenticator unavailable: {why}"),
        ),
    })?;
    drop(token);
    let id = account.spiffe_id(state.ca.trust_domain()).map_err(|e| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "ServiceAccount {}/{} is not a valid SPIFFE identity: {e}",
                account.namespace, account.name
            ),
        )
    })?;
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Refusal::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    let request: CertificateRequest =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!(" at {path}")
                };
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("body: not a certificate request{at}: {}", e.inner()),
                )
            })?;
    let ttl = request.ttl_seconds.map(Duration::from_secs);
    let leaf = state
        .ca
        .sign_csr(&request.csr, &id, ttl)
        .map_err(|e| csr_refusal(&e))?;
    log_issued(&id, &leaf);
    Ok(CertificateResponse {
        certificate_chain: vec![pem_block("CERTIFICATE", &leaf)],
        trust_bundle: vec![state.bundle_pem.clone()],
    })
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, Refusal> {
    let expected = "Authorization header: expected `Bearer <ServiceAccount token>`";
    let value = headers.get(AUTHORIZATION).ok_or_else(|| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "Authorization header missing; expected `Bearer <ServiceAccount token>`",
        )
    })?;
    let value = value
        .to_str()
        .map_err(|_| Refusal::new(StatusCode::UNAUTHORIZED, format!("{expected}, not ASCII")))?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| Refusal::new(StatusCode::UNAUTHORIZED, expected))?;
    if token.is_empty() {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            format!("{expected}; the token is empty"),
        ));
    }
    Ok(token)
}

fn too_large() -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body: larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn csr_refusal(error: &CsrError) -> Refusal {
    let status = match error {
        CsrError::IdentityMismatch { .. } => StatusCode::FORBIDDEN,
        CsrError::Malformed(_) | CsrError::BadSignature | CsrError::KeyType | CsrError::Ttl(_) => {
            StatusCode::BAD_REQUEST
        }
        CsrError::Issue(CaError::ForeignTrustDomain { .. }) => StatusCode::FORBIDDEN,
        CsrError::Issue(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Refusal::new(status, error.to_string())
}

fn log_issued(id: &SpiffeId, leaf: &[u8]) {
    match x509_parser::certificate::X509Certificate::from_der(leaf) {
        Ok((_, cert)) => tracing::info!(
            identity = %id,
            serial = %cert.raw_serial_as_string(),
            not_after = %cert.validity().not_after,
            "certificate issued"
        ),
        Err(_) => tracing::info!(identity = %id, "certificate issued"),
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
