//! The autoscaler's stat stream endpoint in Kubernetes mode: the leading controller's
//! `POST /v1/stats` (the StatReports of the routers' in-process activators, which scale
//! revisions from zero). With the mesh on it is served over mutual TLS (TLS 1.3): the
//! controller presents its own SVID and requires a client SVID of the mesh CA, so plaintext
//! and certificate-less clients are refused by the handshake; of the clients that complete
//! it, only the router's identity may post, any other principal gets 403 naming it. With
//! the mesh off it is plain HTTP, taken from anyone. The posting side is
//! `sluice_activator::stats_post`. Beside the stats, `POST /v1/outcomes` takes each
//! router's request outcomes per revision (`sluice_core::outcomes::RouterOutcomes`), which
//! the leader adds up for SLO-gated rollouts ([`OutcomesBoard`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use hyper_util::rt::TokioIo;
use sluice_core::StatReport;
use sluice_core::outcomes::{Counts, MAX_OUTCOME_REVISIONS, RevisionOutcome, RouterOutcomes};
use sluice_mesh::identity::SpiffeId;
use sluice_mesh::tls::{MeshAcceptor, PeerAuthMode, PeerInfo};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt as _;

/// Most StatReports one `POST /v1/stats` may carry.
pub const MAX_STATS_PER_POST: usize = 4096;
/// Largest `POST /v1/stats` body.
pub const MAX_STATS_BODY: usize = 1024 * 1024;
/// Connections the mTLS stats endpoint serves at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// Requests in flight on one HTTP/2 connection.
const MAX_STREAMS: u32 = 64;
/// Deadline for a request's headers (HTTP/1.1, also while a keep-alive connection idles).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list).
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The stats channel of the current term's autoscaler: `None` on a standby.
#[derive(Clone, Default)]
pub struct StatsSink {
    tx: Arc<std::sync::Mutex<Option<mpsc::Sender<StatReport>>>>,
    /// StatReports dropped because the autoscaler's queue was full, since start.
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
    /// What each router posted last of its request outcomes.
    pub outcomes: OutcomesBoard,
}

/// Routers whose outcomes the board keeps at once.
pub const MAX_ROUTERS: usize = 64;
/// A router's outcomes count while its last post is at most this old.
pub const OUTCOMES_FRESH: Duration = Duration::from_secs(30);

type Posted = (tokio::time::Instant, Vec<RevisionOutcome>);

/// The routers' latest request outcomes, by the router run (`source`) that posted them;
/// bounded to [`MAX_ROUTERS`] routers, each post to [`MAX_OUTCOME_REVISIONS`] revisions.
#[derive(Clone, Default)]
pub struct OutcomesBoard(Arc<std::sync::Mutex<BTreeMap<String, Posted>>>);

impl OutcomesBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Posted>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `posted` as its router's latest; refuses a new router past [`MAX_ROUTERS`].
    pub fn put(&self, posted: RouterOutcomes) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        let mut board = self.lock();
        board.retain(|_, (at, _)| now.duration_since(*at) <= OUTCOMES_FRESH);
        if !board.contains_key(&posted.source) && board.len() >= MAX_ROUTERS {
            return Err(format!(
                "outcomes from {MAX_ROUTERS} routers are kept already; {:?} is refused",
                posted.source
            ));
        }
        board.insert(posted.source, (now, posted.revisions));
        Ok(())
    }

    /// The fresh posts added up by (namespace, revision), and a name for the set of router
    /// runs they come from.
    pub fn merged(&self) -> (String, HashMap<(String, String), Counts>) {
        let now = tokio::time::Instant::now();
        let board = self.lock();
        let mut sources = Vec::new();
        let mut counts: HashMap<(String, String), Counts> = HashMap::new();
        for (source, (at, revisions)) in board.iter() {
            if now.duration_since(*at) > OUTCOMES_FRESH {
                continue;
            }
            sources.push(source.as_str());
            for r in revisions {
                counts
                    .entry((r.namespace.clone(), r.revision.clone()))
                    .or_default()
                    .add(&r.counts);
            }
        }
        (format!("routers:{}", sources.join(",")), counts)
    }
}

impl StatsSink {
    /// The current term's autoscaler channel (`None` once leadership is lost).
    pub fn set(&self, tx: Option<mpsc::Sender<StatReport>>) {
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    fn sender(&self) -> Option<mpsc::Sender<StatReport>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Who may post stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Posters {
    /// Anyone (plain HTTP: the mesh is off).
    Anyone,
    /// Only the mTLS peer with this identity (the router's).
    Only(SpiffeId),
}

#[derive(Clone)]
struct AppState {
    sink: StatsSink,
    posters: Posters,
}

/// The stats endpoint: `POST /v1/stats` with a JSON array of StatReports, from `posters`.
/// Over mTLS the connection's [`PeerInfo`] is in each request's extensions.
pub fn stats_app(sink: StatsSink, posters: Posters) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;

    axum::Router::new()
        .route("/v1/stats", post(accept))
        .route("/v1/outcomes", post(accept_outcomes))
        .layer(DefaultBodyLimit::max(MAX_STATS_BODY))
        .with_state(AppState { sink, posters })
}

/// Why `peer` may not post, if it may not.
fn refused(posters: &Posters, peer: Option<&PeerInfo>) -> Option<String> {
    let Posters::Only(allowed) = posters else {
        return None;
    };
    match peer.and_then(|p| p.identity.as_ref()) {
        Some(id) if id == allowed => None,
        Some(id) => Some(format!(
            "{id} may not post stats: the autoscaler takes them from {allowed} only (the router's ServiceAccount, --router-service-account)"
        )),
        None => Some(format!(
            "stats are taken over mutual TLS from {allowed} only; this connection has no client identity"
        )),
    }
}

async fn accept(State(state): State<AppState>, req: Request) -> (StatusCode, String) {
    // Who is asking comes first: a refused principal learns nothing about the body.
    if let Some(why) = refused(&state.posters, req.extensions().get::<PeerInfo>()) {
        tracing::warn!("stats refused: {why}");
        return (StatusCode::FORBIDDEN, why);
    }
    let reports = match axum::Json::<Vec<StatReport>>::from_request(req, &state).await {
        Ok(axum::Json(r)) => r,
        Err(e) => {
            return (
                e.status(),
                format!(
                    "the body must be a JSON array of StatReports: {}",
                    e.body_text()
                ),
            );
        }
    };
    if reports.len() > MAX_STATS_PER_POST {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} StatReports in one post; at most {MAX_STATS_PER_POST}",
                reports.len()
            ),
        );
    }
    let sink = &state.sink;
    let Some(tx) = sink.sender() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this controller is a standby: stats go to the leader".into(),
        );
    };
    let mut accepted = 0usize;
    let mut dropped = 0u64;
    for r in reports {
        match tx.try_send(r) {
            Ok(()) => accepted += 1,
            Err(_) => dropped += 1,
        }
    }
    if dropped > 0 {
        let total = sink
            .dropped
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed)
            + dropped;
        tracing::warn!(
            dropped,
            total,
            "the autoscaler's stats queue is full: StatReports dropped"
        );
    }
    (
        StatusCode::ACCEPTED,
        serde_json::json!({ "accepted": accepted, "dropped": dropped }).to_string(),
    )
}

async fn accept_outcomes(State(state): State<AppState>, req: Request) -> (StatusCode, String) {
    if let Some(why) = refused(&state.posters, req.extensions().get::<PeerInfo>()) {
        tracing::warn!("outcomes refused: {why}");
        return (StatusCode::FORBIDDEN, why);
    }
    let posted = match axum::Json::<RouterOutcomes>::from_request(req, &state).await {
        Ok(axum::Json(p)) => p,
        Err(e) => {
            return (
                e.status(),
                format!(
                    "the body must be a JSON RouterOutcomes {{source, revisions}}: {}",
                    e.body_text()
                ),
            );
        }
    };
    if posted.revisions.len() > MAX_OUTCOME_REVISIONS {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} revisions in one post; at most {MAX_OUTCOME_REVISIONS}",
                posted.revisions.len()
            ),
        );
    }
    if state.sink.sender().is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this controller is a standby: outcomes go to the leader".into(),
        );
    }
    match state.sink.outcomes.put(posted) {
        Ok(()) => (StatusCode::ACCEPTED, "{}".into()),
        Err(why) => (StatusCode::TOO_MANY_REQUESTS, why),
    }
}

/// Serves `app` on `listener` over mutual TLS: every connection must complete a TLS 1.3
/// handshake with a client SVID the acceptor's bundle verifies (`acceptor` built from
/// [`sluice_mesh::tls::MeshTls::server_config`]); the peer's [`PeerInfo`] goes into each
/// request's extensions. A connection is closed (gracefully) when its peer's certificate
/// expires, so a long-lived client reconnects with its renewed one. At most
/// [`MAX_CONNECTIONS`] at once. Runs until the task is dropped.
pub async fn serve_mtls(listener: TcpListener, app: axum::Router, acceptor: MeshAcceptor) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let builder = sluice_mesh::tls::bounded_server(HEADER_TIMEOUT, MAX_HEADER_BYTES, MAX_STREAMS);
    let builder = Arc::new(builder);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: log, pause briefly, keep serving.
                tracing::warn!("stats endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, limit = MAX_CONNECTIONS, "stats endpoint at its connection limit; closing");
            continue;
        };
        let (app, acceptor, builder) = (app.clone(), acceptor.clone(), builder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (stream, peer) = match acceptor.accept(tcp, PeerAuthMode::Strict).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::info!(%addr, "stats connection refused: {e}");
                    return;
                }
            };
            let expires = peer.peer_not_after;
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    app.clone().oneshot(req)
                });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let expiry = async {
                match expires {
                    Some(at) => {
                        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = expiry => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%addr, "stats connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    fn report(name: &str) -> StatReport {
        StatReport::poke(sluice_core::NamespacedName {
            namespace: "default".into(),
            name: name.into(),
        })
    }

    /// Serves `app` on a loopback port and posts `body` to its stats in plain HTTP.
    async fn post(app: axum::Router, body: &str) -> (u16, String) {
        post_to(app, "/v1/stats", body).await
    }

    /// Serves `app` on a loopback port and posts `body` to `path` in plain HTTP.
    async fn post_to(app: axum::Router, path: &str, body: &str) -> (u16, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, app).into_future());
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let response = client
            .request(
                http::Request::post(format!("http://{addr}{path}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_owned())))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        server.abort();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn outcomes(source: &str, revision: &str, requests: u64, errors: u64) -> String {
        serde_json::to_string(&RouterOutcomes {
            source: source.into(),
            revisions: vec![RevisionOutcome {
                namespace: "default".into(),
                revision: revision.into(),
                counts: Counts {
                    requests,
                    errors,
                    model_errors: 0,
                    latency_buckets: vec![requests, requests],
                },
            }],
        })
        .unwrap()
    }

    #[tokio::test]
    async fn the_leader_adds_up_the_routers_outcomes() {
        let sink = StatsSink::default();
        let app = || stats_app(sink.clone(), Posters::Anyone);
        let (status, body) = post_to(app(), "/v1/outcomes", &outcomes("a", "r1", 5, 1)).await;
        assert_eq!((status, body.contains("standby")), (503, true), "{body}");
        let (tx, _rx) = mpsc::channel(1);
        sink.set(Some(tx));
        for (source, requests) in [("a", 5), ("b", 7), ("a", 9)] {
            let (status, body) =
                post_to(app(), "/v1/outcomes", &outcomes(source, "r1", requests, 1)).await;
            assert_eq!(status, 202, "{body}");
        }
        // Router a's latest post replaces its earlier one; b's adds to it.
        let (source, counts) = sink.outcomes.merged();
        assert_eq!(source, "routers:a,b");
        let r1 = &counts[&("default".into(), "r1".into())];
        assert_eq!((r1.requests, r1.errors), (16, 2));
        assert_eq!(r1.latency_buckets, [16, 16]);

        let (status, body) = post_to(app(), "/v1/outcomes", r#"{"source": 1}"#).await;
        assert!((400..500).contains(&status), "{status} {body}");
        let many = RouterOutcomes {
            source: "c".into(),
            revisions: vec![RevisionOutcome::default(); MAX_OUTCOME_REVISIONS + 1],
        };
        let (status, body) = post_to(
            app(),
            "/v1/outcomes",
            &serde_json::to_string(&many).unwrap(),
        )
        .await;
        assert_eq!(status, 413, "{body}");
    }

    #[tokio::test]
    async fn only_the_leader_takes_stats_and_a_full_queue_drops_counted() {
        let report = serde_json::to_string(&vec![report("hello-00001")]).unwrap();
        let sink = StatsSink::default();
        let app = || stats_app(sink.clone(), Posters::Anyone);
        let (status, body) = post(app(), &report).await;
        assert_eq!((status, body.contains("standby")), (503, true), "{body}");

        let (tx, mut rx) = mpsc::channel(1);
        sink.set(Some(tx));
        let (status, body) = post(app(), &report).await;
        assert_eq!(status, 202, "{body}");
        let got = rx.recv().await.unwrap();
        assert_eq!(got.revision.name, "hello-00001");
        assert_eq!(got.request_count, 1);

        // The queue holds one: of two, one is dropped, and counted.
        let two = format!("[{0},{0}]", &report[1..report.len() - 1]);
        let (status, body) = post(app(), &two).await;
        assert_eq!(status, 202, "{body}");
        assert!(body.contains(r#""dropped":1"#), "{body}");
        assert_eq!(sink.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);

        let (status, body) = post(app(), r#"{"revision": 1}"#).await;
        assert!((400..500).contains(&status), "{status} {body}");
        assert!(body.contains("JSON array of StatReports"), "{body}");
    }
}
