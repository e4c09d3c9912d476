//! The autoscaler's stat stream in Kubernetes mode: the leading controller's
//! `POST /v1/stats` (the StatReports of the routers' in-process activators, which scale
//! revisions from zero), and the router's side that posts them.
//!
//! With the mesh on, the stream is mutual TLS (TLS 1.3): the controller presents its own SVID
//! (issued in-process by its CA) and requires a client SVID of the mesh CA, so plaintext and
//! certificate-less clients are refused by the handshake; of the clients that complete it,
//! only the router's identity (`spiffe://<td>/ns/<controller ns>/sa/<router sa>`) may post,
//! any other principal gets 403 naming it. The router checks that the server is the
//! controller's identity. With the mesh off the stream is plain HTTP, taken from anyone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_core::StatReport;
use sluice_mesh::identity::SpiffeId;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{
    ExpectedServer, MeshAcceptor, MeshConnector, MeshHttpConnector, PeerAuthMode, PeerInfo,
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt as _;

/// Most StatReports one `POST /v1/stats` may carry.
pub(super) const MAX_STATS_PER_POST: usize = 4096;
/// Largest `POST /v1/stats` body.
pub(super) const MAX_STATS_BODY: usize = 1024 * 1024;
/// Connections the mTLS stats endpoint serves at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// Requests in flight on one HTTP/2 connection.
const MAX_STREAMS: u32 = 64;
/// Deadline for a request's headers (HTTP/1.1, also while a keep-alive connection idles).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list).
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// StatReports the router holds for the autoscaler before the activator's are dropped.
pub(super) const STATS_QUEUE: usize = 1024;
/// Most StatReports the router sends in one post.
const STATS_BATCH: usize = 512;
/// How long one post to the autoscaler may take.
const STATS_POST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a refusal's body the router reads (to log why).
const MAX_REFUSAL_BYTES: usize = 4096;

/// The stats channel of the current term's autoscaler: `None` on a standby.
#[derive(Clone, Default)]
pub(super) struct StatsSink {
    tx: Arc<std::sync::Mutex<Option<mpsc::Sender<StatReport>>>>,
    pub(super) dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl StatsSink {
    pub(super) fn set(&self, tx: Option<mpsc::Sender<StatReport>>) {
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    fn sender(&self) -> Option<mpsc::Sender<StatReport>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Who may post stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Posters {
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
pub(super) fn stats_app(sink: StatsSink, posters: Posters) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    use axum::routing::post;

    axum::Router::new()
        .route("/v1/stats", post(accept))
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

/// Serves `app` on `listener` over mutual TLS: every connection must complete a TLS 1.3
/// handshake with a client SVID the acceptor's bundle verifies (`acceptor` built from
/// [`sluice_mesh::tls::MeshTls::server_config`]); the peer's [`PeerInfo`] goes into each
/// request's extensions. A connection is closed (gracefully) when its peer's certificate
/// expires, so a long-lived client reconnects with its renewed one. At most
/// [`MAX_CONNECTIONS`] at once. Runs until the task is dropped.
pub(super) async fn serve_mtls(listener: TcpListener, app: axum::Router, acceptor: MeshAcceptor) {
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

/// Where the router posts its activator's stats.
#[derive(Clone, Debug)]
pub(super) struct StatsTarget {
    /// `http://HOST:PORT/…/v1/stats`: the URI the (mesh) connector dials; over mTLS the mesh
    /// adds the TLS, as on every mesh hop.
    uri: http::Uri,
    /// The URL as configured (for logs).
    shown: String,
}

/// `BASE` → `BASE/v1/stats`: `https://` with the mesh on (the stream is mTLS), `http://`
/// with it off; a mismatch is refused naming `--autoscaler` and `--mesh`.
pub(super) fn stats_target(base: &str, mesh: bool) -> anyhow::Result<StatsTarget> {
    let shown = format!("{}/v1/stats", base.trim_end_matches('/'));
    let uri: http::Uri = shown
        .parse()
        .with_context(|| format!("--autoscaler {base:?} is not a URL"))?;
    let Some(host) = uri.host() else {
        bail!("--autoscaler {base:?}: the autoscaler's URL needs a host");
    };
    match (uri.scheme_str(), mesh) {
        (Some("http"), false) => Ok(StatsTarget { uri, shown }),
        (Some("https"), true) => {
            let port = uri.port_u16().unwrap_or(443);
            let path = uri.path_and_query().map_or("/v1/stats", |p| p.as_str());
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            let uri = format!("http://{host}:{port}{path}")
                .parse()
                .with_context(|| format!("--autoscaler {base:?}"))?;
            Ok(StatsTarget { uri, shown })
        }
        (Some("http"), true) => bail!(
            "--autoscaler {base:?}: with --mesh on the autoscaler's stat stream is mutual TLS: use https://HOST:PORT (or pass --mesh off for plain HTTP)"
        ),
        (Some("https"), false) => bail!(
            "--autoscaler {base:?}: https:// is the mesh's mutual TLS, which --mesh off turns off: use http://HOST:PORT (or --mesh on)"
        ),
        _ => bail!(
            "--autoscaler {base:?}: the autoscaler's URL must be https://HOST[:PORT] (--mesh on) or http://HOST[:PORT] (--mesh off)"
        ),
    }
}

/// The router's mTLS to the autoscaler: its mesh identity, and the controller's identity the
/// server must present.
#[derive(Clone, Debug)]
pub(super) struct StatsMesh {
    /// The router's outbound mesh (its SVID from the CA).
    pub(super) out: OutboundMesh,
    /// The controller's SPIFFE ID.
    pub(super) server: SpiffeId,
}

type StatsClient = Client<MeshHttpConnector, Full<Bytes>>;

/// A client with a fresh connection pool: plain HTTP, or mTLS as the router's current
/// identity to exactly the controller's.
fn stats_client(mesh: Option<&StatsMesh>) -> anyhow::Result<StatsClient> {
    let tls = match mesh {
        Some(m) => {
            let config = m
                .out
                .tls()
                .client_config(ExpectedServer::Exactly(m.server.clone()))
                .context("the router's TLS config for the autoscaler")?;
            let mut config = (*config).clone();
            // A resumed session would carry the certificate it was first made with.
            config.resumption = rustls::client::Resumption::disabled();
            Some(MeshConnector::new(Arc::new(config)))
        }
        None => None,
    };
    Ok(Client::builder(TokioExecutor::new()).build(MeshHttpConnector::new(tls)))
}

/// Posts the activator's StatReports to the autoscaler as they come (whatever is queued in
/// one post), until the activator stops; over mTLS with `mesh` (pooled connections are
/// dropped when the router's certificate rotates, so the controller sees the current one).
/// Reports that cannot be delivered are dropped and counted: stats are a stream, the next
/// second's replace them.
pub(super) async fn post_stats(
    target: Option<StatsTarget>,
    mesh: Option<StatsMesh>,
    mut rx: mpsc::Receiver<StatReport>,
) {
    let Some(target) = target else {
        tracing::warn!(
            "no --autoscaler: the activator's stats are dropped, and revisions at zero stay at zero"
        );
        while rx.recv().await.is_some() {}
        return;
    };
    let url = target.shown.as_str();
    let generation = || mesh.as_ref().map(|m| m.out.generation());
    let mut client = match stats_client(mesh.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%url, "the activator's stats are dropped: {e:#}");
            while rx.recv().await.is_some() {}
            return;
        }
    };
    let mut made_with = generation();
    let mut dropped = 0u64;
    let mut failing = false;
    let mut batch = Vec::with_capacity(STATS_BATCH);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < STATS_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let now = generation();
        if now != made_with {
            match stats_client(mesh.as_ref()) {
                Ok(c) => {
                    client = c;
                    made_with = now;
                }
                Err(e) => tracing::warn!(%url, "keeping the previous connections: {e:#}"),
            }
        }
        let result = post_batch(&client, &target.uri, &batch).await;
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(%url, dropped, "the autoscaler takes stats again");
                    failing = false;
                }
                tracing::debug!(%url, reports = batch.len(), "stats posted");
            }
            Err(e) => {
                dropped += batch.len() as u64;
                if !failing {
                    tracing::warn!(%url, dropped, "posting stats to the autoscaler failed, dropping them: {e:#}");
                    failing = true;
                }
            }
        }
    }
}

/// One post; a refusal's error names the status and what the autoscaler said.
async fn post_batch(
    client: &StatsClient,
    uri: &http::Uri,
    batch: &[StatReport],
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(batch)?;
    let request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| anyhow::anyhow!("{}", sluice_core::error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return anyhow::Ok(());
        }
        let text = Limited::new(response.into_body(), MAX_REFUSAL_BYTES)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        bail!("answered {status}: {text}")
    };
    tokio::time::timeout(STATS_POST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {STATS_POST_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_mesh::identity::{CertificateAuthority, RotatingSvid, SvidIssuer};
    use sluice_mesh::tls::MeshTls;

    fn report(name: &str) -> StatReport {
        StatReport::poke(sluice_core::NamespacedName {
            namespace: "default".into(),
            name: name.into(),
        })
    }

    #[test]
    fn the_autoscaler_url_follows_the_mesh() {
        let plain =
            stats_target("http://sluice-autoscaler.sluice-system.svc:8080/", false).unwrap();
        assert_eq!(
            plain.uri.to_string(),
            "http://sluice-autoscaler.sluice-system.svc:8080/v1/stats"
        );
        // Over mTLS the mesh connector dials an http:// URI and adds the TLS itself.
        let mtls = stats_target("https://sluice-autoscaler.sluice-system.svc:8080", true).unwrap();
        assert_eq!(
            mtls.uri.to_string(),
            "http://sluice-autoscaler.sluice-system.svc:8080/v1/stats"
        );
        assert_eq!(
            mtls.shown,
            "https://sluice-autoscaler.sluice-system.svc:8080/v1/stats"
        );
        assert_eq!(
            stats_target("https://a", true).unwrap().uri.to_string(),
            "http://a:443/v1/stats"
        );
        for (base, mesh, needle) in [
            ("http://a:1", true, "use https://"),
            ("https://a:1", false, "use http://"),
            ("ftp://a:1", true, "must be https://"),
            ("a b", false, "not a URL"),
        ] {
            let err = format!("{:#}", stats_target(base, mesh).unwrap_err());
            assert!(
                err.contains("--autoscaler") && err.contains(needle),
                "{base}: {err}"
            );
        }
    }

    /// Serves `app` on a loopback port and posts `body` to it in plain HTTP.
    async fn post(app: axum::Router, body: &str) -> (u16, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, app).into_future());
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let response = client
            .request(
                http::Request::post(format!("http://{addr}/v1/stats"))
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

    /// A mesh CA, and workloads' mTLS material from it.
    struct Mesh {
        ca: CertificateAuthority,
    }

    impl Mesh {
        fn new() -> Self {
            let (ca, _) = CertificateAuthority::generate(
                "cluster.local",
                Duration::from_secs(7200),
                Duration::from_secs(3600),
            )
            .unwrap();
            Self { ca }
        }

        fn id(sa: &str) -> SpiffeId {
            SpiffeId::new("cluster.local", "sluice-system", sa).unwrap()
        }

        fn tls(&self, sa: &str) -> MeshTls {
            let svid = self
                .ca
                .issue(&Self::id(sa), Duration::from_secs(3600))
                .unwrap();
            MeshTls::new(
                Arc::new(self.ca.trust_bundle().unwrap()),
                RotatingSvid::fixed(svid),
            )
        }

        /// The router's side, as `sa`, expecting the server to be `server`.
        fn client(&self, sa: &str, server: &str) -> StatsMesh {
            StatsMesh {
                out: OutboundMesh::new(self.tls(sa)).unwrap(),
                server: Self::id(server),
            }
        }
    }

    #[tokio::test]
    async fn over_mtls_only_the_routers_identity_posts_stats() {
        let mesh = Mesh::new();
        let sink = StatsSink::default();
        let (tx, mut rx) = mpsc::channel(16);
        sink.set(Some(tx));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = MeshAcceptor::new(mesh.tls("sluice-controller").server_config().unwrap());
        let app = stats_app(sink.clone(), Posters::Only(Mesh::id("sluice-router")));
        let server = tokio::spawn(serve_mtls(listener, app, acceptor));
        let target = stats_target(&format!("https://{addr}"), true).unwrap();

        // The router, through the activator's stat stream: delivered.
        let (stats_tx, stats_rx) = mpsc::channel(4);
        let poster = tokio::spawn(post_stats(
            Some(target.clone()),
            Some(mesh.client("sluice-router", "sluice-controller")),
            stats_rx,
        ));
        stats_tx.send(report("hello-00001")).await.unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got.revision.name, "hello-00001");
        drop(stats_tx);
        poster.await.unwrap();

        // Another workload of the same mesh completes the handshake and is refused, named.
        let batch = [report("hello-00002")];
        let intruder = stats_client(Some(&mesh.client("intruder", "sluice-controller"))).unwrap();
        let err = format!(
            "{:#}",
            post_batch(&intruder, &target.uri, &batch)
                .await
                .unwrap_err()
        );
        assert!(
            err.contains("403")
                && err.contains(
                    "spiffe://cluster.local/ns/sluice-system/sa/intruder may not post stats"
                )
                && err.contains("spiffe://cluster.local/ns/sluice-system/sa/sluice-router"),
            "{err}"
        );

        // The router does not post to a server that is not the controller's identity.
        let wrong = stats_client(Some(&mesh.client("sluice-router", "someone-else"))).unwrap();
        let err = format!(
            "{:#}",
            post_batch(&wrong, &target.uri, &batch).await.unwrap_err()
        );
        assert!(!err.contains("answered"), "{err}");

        // Plain HTTP is refused by the handshake: no HTTP answer at all.
        let plain = stats_client(None).unwrap();
        let err = format!(
            "{:#}",
            post_batch(&plain, &target.uri, &batch).await.unwrap_err()
        );
        assert!(!err.contains("answered"), "{err}");
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"POST /v1/stats HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n[]")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            assert!(
                !answer.starts_with(b"HTTP/"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }

        // TLS without a client certificate is refused too.
        let anonymous = MeshTls::anonymous_client_config(
            Arc::new(mesh.ca.trust_bundle().unwrap()),
            ExpectedServer::Exactly(Mesh::id("sluice-controller")),
        )
        .unwrap();
        let anonymous: StatsClient = Client::builder(TokioExecutor::new())
            .build(MeshHttpConnector::new(Some(MeshConnector::new(anonymous))));
        let err = format!(
            "{:#}",
            post_batch(&anonymous, &target.uri, &batch)
                .await
                .unwrap_err()
        );
        assert!(!err.contains("answered"), "{err}");

        // A certificate from another CA: refused by the handshake.
        let other = Mesh::new();
        let foreign = StatsMesh {
            out: OutboundMesh::new(other.tls("sluice-router")).unwrap(),
            server: Mesh::id("sluice-controller"),
        };
        let foreign = stats_client(Some(&foreign)).unwrap();
        let err = format!(
            "{:#}",
            post_batch(&foreign, &target.uri, &batch).await.unwrap_err()
        );
        assert!(!err.contains("answered"), "{err}");

        // Only the router's report came through.
        assert!(rx.try_recv().is_err());
        server.abort();
    }
}
