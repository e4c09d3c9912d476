//! `sluice queue` as a library: the queue layer served on its own port in front of a user
//! process, proxying to it over HTTP/1.1 or h2c.
//!
//! It answers the readiness probe (`/healthz` with `K-Network-Probe: queue` → 200 `queue`
//! once the user process accepts connections), serves per-period stats for the autoscaler,
//! admits at most `containerConcurrency` requests at once with `10 × cc` waiting (503
//! beyond), enforces the revision's timeouts, and drains on shutdown.
//!
//! When its user process dies, the requests it had taken are lost with it (at most cc);
//! no other may be. A connection to it that breaks without a response is the first sign:
//! for [`SUSPECT_WINDOW`] after one, a request waits before it is sent until the process is
//! known dead ([`Sidecar::set_app_gone`]: then it is answered as not processed, and the
//! router or activator gives it to another replica) or the window passes (the process lives:
//! it is sent). Without that wait a request could go out on a connection whose close the
//! network stack had not yet delivered, and be lost too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use sluice_core::NamespacedName;
use sluice_mesh::inbound::InboundMesh;
use sluice_mesh::telemetry::HopTelemetry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::mesh::{METRICS_PATH, ReplicaGate, serve_replica};
use super::{
    PROBE_HEADER, PROBE_PATH, PROXY_HEADER, Queue, QueueConfig, QueueRejection, STATS_PATH,
};
use sluice_proxy::error_response;
use sluice_proxy::hold_response;
use sluice_proxy::shards::ShardStop;
use sluice_proxy::timeouts::Timeouts;
use sluice_proxy::{Forwarder, Outbound, ProxyBody, UNPROCESSED_HEADER, full_body};

/// Expands Kubernetes-style `$(VAR)` references in a container's command or argument, as
/// the kubelet does: `$(VAR)` becomes the variable's value when `lookup` knows it and stays
/// as written when it does not; `$$` is a literal `$` (so `$$(VAR)` stays `$(VAR)`).
/// This is how `args: ["--http_port", "$(PORT)"]` reaches a user process in local mode,
/// where the port is chosen only when the replica starts.
pub fn expand_env_refs(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
            && let Some(value) = lookup(&inner[..close])
        {
            out.push_str(&value);
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Settings of one sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarConfig {
    /// Admission limits.
    pub queue: QueueConfig,
    /// The revision's timeouts.
    pub timeouts: Timeouts,
    /// Speak HTTP/2 cleartext to the user process (its port is named `h2c`).
    pub h2c: bool,
    /// The revision served (for error messages), from `K_REVISION`.
    pub revision: NamespacedName,
}

/// How long after a connection to the user process broke without a response requests
/// wait to learn whether the process died (see the module's documentation).
pub const SUSPECT_WINDOW: Duration = Duration::from_millis(500);

/// The sidecar's shared state.
#[derive(Debug)]
pub struct Sidecar {
    config: SidecarConfig,
    queue: Arc<Queue>,
    app: SocketAddr,
    app_ready: AtomicBool,
    /// The user process has exited.
    app_gone: watch::Sender<bool>,
    /// Until when requests wait for word of the user process (set when a connection to it
    /// broke without a response).
    suspect_until: Mutex<Option<Instant>>,
    forwarder: Forwarder,
    gate: ReplicaGate,
}

impl Sidecar {
    /// A sidecar in front of the user process listening on `app`.
    pub fn new(config: SidecarConfig, app: SocketAddr) -> Arc<Self> {
        Self::with_mesh(config, app, None, None)
    }

    /// A sidecar that accepts under `mesh`'s peer authentication and enforces its policies,
    /// and records `telemetry` for every request.
    pub fn with_mesh(
        config: SidecarConfig,
        app: SocketAddr,
        mesh: Option<Arc<InboundMesh>>,
        telemetry: Option<HopTelemetry>,
    ) -> Arc<Self> {
        let queue = Arc::new(Queue::new(config.queue, Instant::now()));
        Arc::new(Self {
            gate: ReplicaGate::new(mesh, telemetry, queue.clone(), &config.revision.name),
            queue,
            config,
            app,
            app_ready: AtomicBool::new(false),
            app_gone: watch::Sender::new(false),
            suspect_until: Mutex::new(None),
            forwarder: Forwarder::new().for_hop("queue").to_user_process(),
        })
    }

    /// The queue layer state (for draining and stats).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// The user process accepts connections: probes pass from now on.
    pub fn set_app_ready(&self) {
        self.app_ready.store(true, Ordering::Release);
    }

    /// The user process has exited: nothing more is sent to it; requests are answered as
    /// not processed.
    pub fn set_app_gone(&self) {
        self.app_gone.send_replace(true);
    }

    /// Whether the user process is gone, waiting first (within the suspect window) for word
    /// of it when a connection to it has just broken.
    async fn app_gone(&self) -> bool {
        let mut gone = self.app_gone.subscribe();
        if *gone.borrow() {
            return true;
        }
        let until = *self.suspect_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = until
            && Instant::now() < until
        {
            let _ = tokio::time::timeout_at(until, gone.wait_for(|g| *g)).await;
        }
        *gone.borrow()
    }

    /// Serves one request: the probe, the stats, the metrics, or the user's request through
    /// authorization policy and the queue, recording its telemetry.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        self.gate.handle(req, |req| self.serve(req)).await
    }

    async fn serve(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path();
        if path == METRICS_PATH {
            return self.gate.metrics();
        }
        if path == PROBE_PATH && req.headers().contains_key(PROBE_HEADER) {
            let (code, body) = self.queue.probe(self.app_ready.load(Ordering::Acquire));
            let mut resp = Response::new(full_body(body));
            *resp.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return resp;
        }
        if path == STATS_PATH {
            let stats = self.queue.recorder().take_period(Instant::now());
            let mut resp = Response::new(full_body(serde_json::to_vec(&stats).unwrap_or_default()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return resp;
        }
        let start = Instant::now();
        let proxied = req
            .headers()
            .get(PROXY_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"activator"));
        let admitted = match self.queue.enter(proxied).await {
            Ok(a) => a,
            Err(rejection @ (QueueRejection::Full | QueueRejection::Draining)) => {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, &rejection.to_string());
            }
        };
        let mut out = match Outbound::new(req, None) {
            Ok(out) => out,
            Err(e) => return e.into_response(),
        };
        out.set_http2(self.config.h2c);
        if self.app_gone().await {
            return unprocessed(
                &mut out,
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "the user process has exited: the request was not sent to it",
                ),
                "the user process has exited",
            )
            .await;
        }
        let deadline = self.config.timeouts.response_deadline(start);
        let revision = &self.config.revision;
        match self
            .forwarder
            .send(
                revision,
                self.app,
                &mut out,
                deadline,
                self.config.timeouts.idle,
            )
            .await
        {
            // The slot stays taken until the whole response has been sent (or the
            // upgraded connection closes).
            Ok(resp) => hold_response(resp, admitted),
            Err(e) => {
                tracing::warn!(revision = %revision, "{}", sluice_core::error_chain(&e));
                // The user process refused the connection, or had closed the idle one the
                // request was to go on (it has exited): nothing was sent, so nothing was
                // processed, and the router or activator may give it to another replica.
                if e.is_connect_failure() {
                    return unprocessed(
                        &mut out,
                        e.into_response(),
                        "the user process's port refused or closed the connection",
                    )
                    .await;
                }
                // Broke under way: the process may be dying. Requests wait for word of it.
                if matches!(e, sluice_proxy::ProxyError::Upstream { .. }) {
                    *self.suspect_until.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now() + SUSPECT_WINDOW);
                }
                e.into_response()
            }
        }
    }
}

/// `resp`, marked as a request the user process never saw ([`UNPROCESSED_HEADER`] says
/// why), after the request's body has been taken in: the sender keeps a small body for
/// another attempt once it has sent all of it (bounded in size and time).
async fn unprocessed(
    out: &mut Outbound,
    mut resp: Response<ProxyBody>,
    why: &'static str,
) -> Response<ProxyBody> {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        out.discard_body(sluice_proxy::REPLAY_LIMIT),
    )
    .await;
    resp.headers_mut()
        .insert(UNPROCESSED_HEADER, HeaderValue::from_static(why));
    resp
}

/// Probes `addr` with a TCP connect every `interval` until it accepts.
pub async fn wait_until_accepting(addr: SocketAddr, interval: Duration) {
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Serves `sidecar` on `listener` on the caller's runtime until `shutdown` resolves, then
/// lets open requests finish (see [`serve_on_shards`]).
pub async fn serve(
    listener: TcpListener,
    sidecar: Arc<Sidecar>,
    shutdown: impl Future<Output = ()>,
) {
    serve_on_shards(listener, sidecar, 1, shutdown).await;
}

/// Serves `sidecar` on `listener` from `shards` threads, each with its own single-threaded
/// runtime ([`sluice_proxy::shards`]), until `shutdown` resolves; then each lets its open
/// requests finish. With a mesh, each connection is accepted under the peer-authentication mode in force
/// (the handshake runs in the connection's own task), and an mTLS connection is closed
/// gracefully when its peer's certificate expires, so the peer reconnects with a fresh one.
pub async fn serve_on_shards(
    listener: TcpListener,
    sidecar: Arc<Sidecar>,
    shards: usize,
    shutdown: impl Future<Output = ()>,
) {
    let serve_shard = move |_, listener, stop: ShardStop| {
        let mesh = sidecar.gate.mesh().cloned();
        let handler = move |req| {
            let sidecar = sidecar.clone();
            async move { sidecar.handle(req).await }
        };
        serve_replica(listener, mesh, handler, stop.stopped())
    };
    sluice_proxy::shards::serve_on_shards(listener, shards, "queue", serve_shard, shutdown).await;
}

#[cfg(test)]
mod expand_tests {
    use super::expand_env_refs;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_known_references_like_the_kubelet() {
        assert_eq!(expand_env_refs("$(PORT)", lookup), "8080");
        assert_eq!(
            expand_env_refs("--http_port=$(PORT)", lookup),
            "--http_port=8080"
        );
        assert_eq!(expand_env_refs("a$(EMPTY)b$(PORT)c", lookup), "ab8080c");
        assert_eq!(expand_env_refs("$(NOPE)", lookup), "$(NOPE)");
        assert_eq!(expand_env_refs("$$(PORT)", lookup), "$(PORT)");
        assert_eq!(
            expand_env_refs("cost $5 $$ $(PORT", lookup),
            "cost $5 $ $(PORT"
        );
        assert_eq!(expand_env_refs("plain", lookup), "plain");
    }
}
