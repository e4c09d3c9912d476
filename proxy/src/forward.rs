//! Forwarding one request to one replica over HTTP/1.1 (our own idle-connection stacks,
//! [`crate::h1pool`]) or a pooled HTTP/2 client.
//!
//! A request arriving over HTTP/2 (gRPC included) goes out over HTTP/2 prior knowledge, each
//! request on its own stream, so load is balanced per request, never per connection. Upgrades
//! (WebSocket) are tunnelled once the replica answers `101 Switching Protocols`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_core::NamespacedName;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{ConnectionSecurity, MeshHttpConnector, PeerInfo};
use tokio::time::timeout_at;

use crate::body::{AttemptBody, BoxError, ProxyBody, ReplayableBody, Tunnel, full_body};
use crate::error::{ProxyError, UpstreamError};
use crate::h1pool::H1Pool;
use crate::retry::RetryBudget;
use crate::timeouts::{Deadline, IdleBody};

/// Prefix of the request headers Sluice's hops use among themselves (the mesh's
/// `x-sluice-caller-attestation`). None of them is meant for a user process: the router
/// drops any that a client sends, and the replica gate drops them once they have been used.
pub const INTERNAL_HEADER_PREFIX: &str = "x-sluice-";

/// Removes every `x-sluice-*` header from `headers` (names are lower case in `http`);
/// returns how many distinct names were removed.
pub fn strip_internal_headers(headers: &mut HeaderMap) -> usize {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(INTERNAL_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in &internal {
        headers.remove(name);
    }
    internal.len()
}

/// Headers that describe one connection, not the request, and must not be forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Headers a client cannot get removed by naming them in `Connection` (hop-by-hop abuse):
/// the ones routing, framing, identity and tracing rely on.
const PROTECTED: [HeaderName; 9] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-for"),
];

/// A request ready to be sent, and sent again while no byte of its body has left.
#[derive(Debug)]
pub struct Outbound {
    method: Method,
    path: PathAndQuery,
    version: Version,
    headers: HeaderMap,
    body: ReplayableBody,
    upgrade: Option<OnUpgrade>,
    caller: PeerInfo,
}

impl Outbound {
    /// Takes a client request apart for forwarding: hop-by-hop headers go (an upgrade's
    /// `Upgrade` stays), a body over `max_body` bytes is refused.
    pub fn new<B>(req: Request<B>, max_body: Option<u64>) -> Result<Self, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        if let Some(limit) = max_body {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit) {
                return Err(ProxyError::PayloadTooLarge { limit });
            }
        }
        let upgrade_to = (parts.version == Version::HTTP_11
            && connection_has(&parts.headers, "upgrade"))
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
        let te_trailers = parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(&mut parts.headers);
        if te_trailers {
            // gRPC needs `te: trailers`; it is the one TE value HTTP/2 allows.
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // HTTP/2 carries the host in `:authority`; replicas (and HTTP/1.1) want `Host`.
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        // Who sent it, as the connection it arrived on authenticated them (a `PeerInfo`
        // extension set by the accept loop); a mesh hop attests it to the next one.
        let caller = parts.extensions.remove::<PeerInfo>().unwrap_or(PeerInfo {
            identity: None,
            security: ConnectionSecurity::None,
            peer_not_after: None,
        });
        let upgrade = match upgrade_to {
            Some(protocol) => {
                parts.headers.insert(header::UPGRADE, protocol);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                parts.extensions.remove::<OnUpgrade>()
            }
            None => None,
        };
        Ok(Self {
            method: parts.method,
            path: parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            version: parts.version,
            headers: parts.headers,
            body: ReplayableBody::new(body, max_body),
            upgrade,
            caller,
        })
    }

    /// The headers to send (for the router and activator to add theirs).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// The headers to send.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request path and query.
    pub fn path(&self) -> &str {
        self.path.as_str()
    }

    /// The HTTP version the request is sent with (the client's, unless changed).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sends over HTTP/2 (prior knowledge) or HTTP/1.1 whatever the client spoke: the queue
    /// layer speaks the user container's protocol (`h2c` port or not). An upgrade is kept
    /// only over HTTP/1.1.
    pub fn set_http2(&mut self, http2: bool) {
        if http2 {
            self.version = Version::HTTP_2;
            if self.upgrade.take().is_some() {
                self.headers.remove(header::UPGRADE);
                self.headers.remove(header::CONNECTION);
            }
        } else {
            self.version = Version::HTTP_11;
        }
    }

    /// Who sent the request (the peer of its incoming connection).
    pub fn caller(&self) -> &PeerInfo {
        &self.caller
    }

    /// Reads what is left of the request body (at most `limit` bytes more) and drops it, so
    /// that the sender has sent the whole body (and kept it for another attempt) before it
    /// reads the answer.
    pub async fn discard_body(&self, limit: usize) {
        let mut body = self.body.attempt();
        let mut read = 0;
        while read <= limit {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => return,
            }
        }
    }

    /// Whether another attempt may send this request (no byte of the body has left, or a
    /// small body left whole and was kept).
    pub fn replayable(&self) -> bool {
        self.body.replayable()
    }

    fn attempt(&self, endpoint: SocketAddr) -> Result<Request<AttemptBody>, ProxyError> {
        let mut req = Request::new(self.body.attempt());
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        if self.version == Version::HTTP_2 {
            let authority = Authority::try_from(endpoint.to_string())
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            *req.uri_mut() = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(self.path.clone())
                .build()
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            *req.version_mut() = Version::HTTP_2;
        } else {
            // HTTP/1.1 on a connection of our own: origin-form target, `Host` always set.
            *req.uri_mut() = Uri::from(self.path.clone());
            *req.version_mut() = Version::HTTP_11;
            if !req.headers().contains_key(header::HOST) {
                let host = HeaderValue::try_from(endpoint.to_string())
                    .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
                req.headers_mut().insert(header::HOST, host);
            }
        }
        Ok(req)
    }
}

/// Connections to replicas (HTTP/1.1 idle stacks, a pooled HTTP/2 client), plus the retry
/// budget every attempt draws on.
#[derive(Clone, Debug)]
pub struct Forwarder {
    h1: H1Pool,
    h2: H2Clients,
    budget: Arc<RetryBudget>,
    hop: &'static str,
    mesh: Option<OutboundMesh>,
    /// Whether a response marked [`UNPROCESSED_HEADER`] is taken as "not processed" (from a
    /// queue layer, yes; from a user process, never: see [`Forwarder::to_user_process`]).
    honour_unprocessed: bool,
}

/// The header a queue layer sets on its answer when it passed the request to nobody (its
/// user process refused the connection): the router or activator then tries another replica.
/// Only ever set by Sluice's queue layer; one from a user process is removed.
pub const UNPROCESSED_HEADER: &str = "x-sluice-unprocessed";

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    /// A forwarder with fresh connection pools and the default retry budget.
    pub fn new() -> Self {
        Self::with_budget(RetryBudget::default())
    }

    /// A forwarder with fresh connection pools and `budget`.
    pub fn with_budget(budget: RetryBudget) -> Self {
        Self {
            h1: H1Pool::default(),
            h2: H2Clients::new(None),
            budget: Arc::new(budget),
            hop: "activator",
            mesh: None,
            honour_unprocessed: true,
        }
    }

    /// A forwarder with its own connection pools but this one's retry budget and hop name:
    /// one per thread of a sharded server, so a connection is only ever used by the thread
    /// whose runtime drives it.
    pub fn with_fresh_pools(&self) -> Self {
        Self {
            h1: H1Pool::with_mesh(self.mesh.clone()),
            h2: H2Clients::new(self.mesh.as_ref()),
            budget: self.budget.clone(),
            hop: self.hop,
            mesh: self.mesh.clone(),
            honour_unprocessed: self.honour_unprocessed,
        }
    }

    /// Fresh pools whose connections are mTLS as `mesh`'s workload, and an attestation of
    /// the original caller on every request sent.
    pub fn with_mesh(mut self, mesh: OutboundMesh) -> Self {
        self.h1 = H1Pool::with_mesh(Some(mesh.clone()));
        self.h2 = H2Clients::new(Some(&mesh));
        self.mesh = Some(mesh);
        self
    }

    /// The outbound mesh, when connections are mTLS.
    pub fn mesh(&self) -> Option<&OutboundMesh> {
        self.mesh.as_ref()
    }

    /// The same pools, naming `hop` in timeout messages (`router`, `activator`, `queue`).
    pub fn for_hop(mut self, hop: &'static str) -> Self {
        self.hop = hop;
        self
    }

    /// For the queue layer's hop into its user process: [`UNPROCESSED_HEADER`] in a response
    /// is the user's, not Sluice's, so it is removed rather than believed (a user process
    /// must not make Sluice send a request it has processed a second time).
    pub fn to_user_process(mut self) -> Self {
        self.honour_unprocessed = false;
        self
    }

    /// The shared retry budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Whether a failed attempt may be retried on another replica, which is only when it
    /// cannot have had an effect: the connection failed (nothing was sent), or, for an
    /// idempotent method (RFC 9110 §9.2.2), the connection closed before any byte of a
    /// response; the body must be intact, and the budget must allow one more try.
    pub fn may_retry(&self, err: &ProxyError, out: &Outbound, attempt: u32) -> bool {
        let safe = err.is_connect_failure()
            || (matches!(err, ProxyError::Upstream { .. }) && is_idempotent(&out.method));
        safe && out.replayable() && attempt < self.budget.max_attempts && self.budget.withdraw()
    }

    /// Sends `out` to `endpoint`, waiting for the response to start until `deadline`; with
    /// `idle`, the response body fails after that long without a byte.
    pub async fn send(
        &self,
        revision: &NamespacedName,
        endpoint: SocketAddr,
        out: &mut Outbound,
        deadline: Deadline,
        idle: Option<std::time::Duration>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut req = out.attempt(endpoint)?;
        match &self.mesh {
            Some(mesh) => {
                let (mut parts, body) = req.into_parts();
                mesh.attest(&mut parts, &out.caller).map_err(|e| {
                    ProxyError::BadRequest(format!("cannot attest the caller: {e}"))
                })?;
                req = Request::from_parts(parts, body);
            }
            // A plaintext hop (the queue layer to its user process, or any hop with the mesh
            // off) carries no attestation: one is bound to the mTLS connection it arrived
            // on and was consumed there. Forwarded, it would reach whatever listens on the
            // other end, and a replica's mesh listener there refuses an attestation on a
            // connection without a verified peer (403).
            None => {
                req.headers_mut().remove(sluice_mesh::attestation::HEADER);
            }
        }
        self.budget.deposit();
        let sent = if out.version == Version::HTTP_2 {
            timeout_at(deadline.at, async {
                match self.h2.request(req).await {
                    Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed())),
                    Err(e) => Err(UpstreamError::from(e)),
                }
            })
            .await
        } else {
            timeout_at(deadline.at, async {
                match self.h1.request(endpoint, req).await {
                    Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed())),
                    Err(e) => Err(UpstreamError::from(e)),
                }
            })
            .await
        };
        let resp = match sent {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    hop: self.hop,
                    revision: revision.clone(),
                    kind: deadline.kind,
                    timeout: deadline.limit,
                });
            }
            Ok(Err(_)) if out.body.too_large() => {
                return Err(ProxyError::PayloadTooLarge {
                    limit: out.body_limit(),
                });
            }
            Ok(Err(source)) => {
                return Err(ProxyError::Upstream {
                    revision: revision.clone(),
                    endpoint,
                    source: Box::new(source),
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = out.upgrade.take()
        {
            let upgrade = parts.headers.get(header::UPGRADE).cloned();
            let replica_side = parts.extensions.remove::<OnUpgrade>();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = upgrade {
                parts.headers.insert(header::UPGRADE, protocol);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            let handle = tokio::spawn(tunnel(client_side, replica_side));
            parts.extensions.insert(Tunnel::new(handle));
            return Ok(Response::from_parts(parts, full_body(Bytes::new())));
        }
        strip_hop_by_hop(&mut parts.headers);
        if let Some(reason) = parts.headers.remove(UNPROCESSED_HEADER)
            && self.honour_unprocessed
        {
            return Err(ProxyError::Unprocessed {
                revision: revision.clone(),
                endpoint,
                reason: String::from_utf8_lossy(reason.as_bytes()).into_owned(),
            });
        }
        let body = match idle {
            Some(idle) => IdleBody::new(body, idle).boxed(),
            None => body,
        };
        Ok(Response::from_parts(parts, body))
    }

    /// One attempt of the retry loop every hop that picks replicas runs (the router on
    /// the direct path, the activator): sends `out` to `endpoint`. On a failure, a replica
    /// that refused the connection is handed to `refused` (most likely gone and not yet out
    /// of the routes: the balancer ejects it for a while), and the answer is
    /// [`Attempt::Retry`] when another replica may be tried ([`Forwarder::may_retry`]);
    /// `retries` then counts the attempt and remembers the replica to avoid. The caller
    /// picks the next replica from the revision's replicas as they are by then.
    pub async fn attempt(
        &self,
        retries: &mut Retries,
        revision: &NamespacedName,
        endpoint: SocketAddr,
        out: &mut Outbound,
        refused: impl FnOnce(SocketAddr),
    ) -> Attempt {
        let sent = self
            .send(revision, endpoint, out, retries.deadline, retries.idle)
            .await;
        match sent {
            Ok(resp) => Attempt::Done(resp),
            Err(err) => {
                if err.is_connect_failure() {
                    refused(endpoint);
                }
                if !self.may_retry(&err, out, retries.attempt) {
                    return Attempt::Failed(err);
                }
                tracing::debug!(%revision, %endpoint, "retrying: {}", sluice_core::error_chain(&err));
                retries.avoid = Some(endpoint);
                retries.attempt += 1;
                Attempt::Retry
            }
        }
    }
}

/// The state of one request's retry loop at one hop: the response deadline and idle
/// timeout every attempt shares, the attempt number, and the replica the last one failed
/// on.
#[derive(Clone, Copy, Debug)]
pub struct Retries {
    deadline: Deadline,
    idle: Option<std::time::Duration>,
    attempt: u32,
    avoid: Option<SocketAddr>,
}

impl Retries {
    /// Before the first attempt.
    pub fn new(deadline: Deadline, idle: Option<std::time::Duration>) -> Self {
        Self {
            deadline,
            idle,
            attempt: 1,
            avoid: None,
        }
    }

    /// The number of the attempt about to be made (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The replica the previous attempt failed on (pick another if there is one).
    pub fn avoid(&self) -> Option<SocketAddr> {
        self.avoid
    }
}

/// How one attempt of [`Forwarder::attempt`] ended.
#[derive(Debug)]
pub enum Attempt {
    /// The replica's response.
    Done(Response<ProxyBody>),
    /// A failure that another replica may be tried for.
    Retry,
    /// A failure to answer the client with.
    Failed(ProxyError),
}

impl Outbound {
    fn body_limit(&self) -> u64 {
        self.body.limit().unwrap_or(u64::MAX)
    }
}

type Pool = Client<MeshHttpConnector, AttemptBody>;

/// An HTTP/2 (prior knowledge) client with its own pool, mTLS when `mesh` is given (its
/// responses then carry the replica's [`UpstreamPeer`](sluice_mesh::tls::UpstreamPeer)).
fn h2_client(mesh: Option<&OutboundMesh>) -> Pool {
    let connector = MeshHttpConnector::new(mesh.map(|m| m.connector().clone()));
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

/// The pooled HTTP/2 client, per generation of this workload's certificate (as the
/// HTTP/1.1 stacks key their idle connections by it): after a rotation, the next request
/// builds a fresh client, so it and every later one go out on connections that present the
/// new certificate.
///
/// Only the current client is kept. The previous one is dropped at once, which aborts
/// nothing: a request in flight holds its own handle on that client's pool until its
/// response head arrives, and its HTTP/2 connection runs in a task of its own until its
/// last open stream ends (then it closes, since no pool can hand it out any more). Idle
/// connections of the old client close when it is dropped. So old connections live exactly
/// as long as the requests they carry.
#[derive(Clone, Debug)]
enum H2Clients {
    /// Plaintext: one client for the forwarder's life.
    Plain(Box<Pool>),
    /// mTLS: the client built for certificate generation `.0`.
    Mesh {
        mesh: OutboundMesh,
        current: Arc<Mutex<(u64, Pool)>>,
    },
}

impl H2Clients {
    fn new(mesh: Option<&OutboundMesh>) -> Self {
        match mesh {
            None => Self::Plain(Box::new(h2_client(None))),
            Some(mesh) => Self::Mesh {
                current: Arc::new(Mutex::new((mesh.generation(), h2_client(Some(mesh))))),
                mesh: mesh.clone(),
            },
        }
    }

    /// Sends `req` on the client of the current certificate generation.
    fn request(&self, req: Request<AttemptBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Self::Plain(client) => client.request(req),
            Self::Mesh { mesh, current } => {
                let generation = mesh.generation();
                let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                if current.0 != generation {
                    // Replacing the client drops the old one (see the type's docs).
                    *current = (generation, h2_client(Some(mesh)));
                }
                // `request` takes its own handle on the pool before the lock is released.
                current.1.request(req)
            }
        }
    }
}

/// Copies bytes both ways between an upgraded client connection and the replica's.
async fn tunnel(client: OnUpgrade, replica: Option<OnUpgrade>) {
    let Some(replica) = replica else {
        tracing::debug!("replica switched protocols without an upgradable connection");
        return;
    };
    match tokio::try_join!(client, replica) {
        Ok((client, replica)) => {
            let mut client = TokioIo::new(client);
            let mut replica = TokioIo::new(replica);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut replica).await {
                tracing::debug!("upgraded connection ended: {e}");
            }
        }
        Err(e) => tracing::debug!("upgrade failed: {e}"),
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names (but never a
/// protected one).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .filter(|name| !PROTECTED.contains(name))
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// Sets a header, replacing any value the client sent.
pub fn set_header(headers: &mut HeaderMap, name: &'static str, value: &'static str) {
    headers.insert(
        HeaderName::from_static(name),
        HeaderValue::from_static(value),
    );
}

#[cfg(test)]
mod tests {
    use http_body_util::Empty;

    use super::*;

    #[test]
    fn strips_every_internal_header_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert("x-sluice-caller-attestation", "v1.a.b".parse().unwrap());
        h.append("X-Sluice-Other", "1".parse().unwrap());
        h.append("x-sluice-other", "2".parse().unwrap());
        h.insert("x-sluicer", "kept".parse().unwrap());
        h.insert("x-request-id", "r-1".parse().unwrap());
        assert_eq!(strip_internal_headers(&mut h), 2);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-request-id", "x-sluicer"]);
        assert_eq!(strip_internal_headers(&mut h), 0);
    }

    #[test]
    fn strips_connection_named_headers_but_not_protected_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret, host, content-length"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("a.b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "host", "x-kept"]);
    }

    #[test]
    fn outbound_keeps_upgrade_and_te_trailers_only() {
        let req = Request::get("/ws")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::TE, "trailers")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let out = Outbound::new(req, None).unwrap();
        assert_eq!(out.headers()[header::UPGRADE], "websocket");
        assert_eq!(out.headers()[header::CONNECTION], "upgrade");
        assert_eq!(out.headers()[header::TE], "trailers");
        let req = Request::get("/")
            .header(header::UPGRADE, "websocket")
            .header(header::TE, "gzip")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let out = Outbound::new(req, None).unwrap();
        assert!(out.headers().get(header::UPGRADE).is_none());
        assert!(out.headers().get(header::TE).is_none());
    }

    #[test]
    fn declared_oversize_body_is_refused_up_front() {
        let req = Request::post("/")
            .header(header::CONTENT_LENGTH, "2048")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let err = Outbound::new(req, Some(1024)).unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn http2_authority_becomes_the_host_header() {
        let req = Request::get("http://hello.default.localhost/x?y=1")
            .version(Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let out = Outbound::new(req, None).unwrap();
        assert_eq!(out.headers()[header::HOST], "hello.default.localhost");
        let attempt = out.attempt("127.0.0.1:9".parse().unwrap()).unwrap();
        assert_eq!(attempt.uri(), "http://127.0.0.1:9/x?y=1");
        assert_eq!(attempt.version(), Version::HTTP_2);
    }
}
