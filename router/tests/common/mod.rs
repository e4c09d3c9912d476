//! Shared harness for the router's integration tests: replicas as real hyper servers on
//! port 0, a router + activator over a routing snapshot the test publishes, and clients.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_activator::{Activator, ActivatorConfig};
use sluice_core::{
    Endpoint, HostRoute, NamespacedName, ResponseTimeouts, RevisionRoute, RoutingSnapshot,
    StatReport, WeightedTarget,
};
use sluice_proxy::{BoxError, Forwarder, ProxyBody, full_body};
use sluice_router::{Router, RouterConfig, ServeConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub const HOST: &str = "hello.default.localhost";

pub fn rev(name: &str) -> NamespacedName {
    NamespacedName::new("default", name)
}

/// What a replica saw.
#[derive(Default)]
pub struct Seen {
    /// `x-request-id`s of requests whose handler started.
    pub ids: Mutex<Vec<String>>,
    pub active: AtomicUsize,
    pub max_active: AtomicUsize,
    pub total: AtomicUsize,
}

/// A replica: a real HTTP/1.1 + h2c server on port 0.
pub struct Replica {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    server: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Stops accepting and drops every open connection (a killed process).
    pub fn kill(&self) {
        self.server.abort();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>
        + Send
        + Sync,
>;

/// A replica whose handler is `handler`; it counts concurrency and records request ids.
pub async fn replica<F, Fut>(handler: F) -> Replica
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    let server = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let seen = seen2.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let seen = seen.clone();
                    async move {
                        if let Some(id) = req.headers().get("x-request-id") {
                            seen.ids
                                .lock()
                                .unwrap()
                                .push(id.to_str().unwrap().to_owned());
                        }
                        seen.total.fetch_add(1, Ordering::SeqCst);
                        let now = seen.active.fetch_add(1, Ordering::SeqCst) + 1;
                        seen.max_active.fetch_max(now, Ordering::SeqCst);
                        let resp = handler(req).await;
                        seen.active.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Replica { addr, seen, server }
}

/// A replica answering `name` with the request's proxy headers echoed back.
pub async fn named(name: &'static str) -> Replica {
    replica(move |req| async move { echo(name, &req) }).await
}

/// A response whose body is `name` and whose headers echo the request's proxy headers.
pub fn echo(name: &str, req: &Request<Incoming>) -> Response<ProxyBody> {
    let mut resp = Response::new(full_body(name.to_owned()));
    for h in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
        "traceparent",
        "k-proxy-request",
        "host",
    ] {
        if let Some(v) = req.headers().get(h) {
            resp.headers_mut().insert(
                format!("x-echo-{h}").parse::<http::HeaderName>().unwrap(),
                v.clone(),
            );
        }
    }
    resp
}

/// A body the test feeds chunk by chunk.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// One revision's route.
pub fn revision(name: &str, endpoints: &[SocketAddr], cc: u32, timeout: Duration) -> RevisionRoute {
    RevisionRoute {
        key: rev(name),
        endpoints: endpoints
            .iter()
            .map(|addr| Endpoint { addr: *addr })
            .collect(),
        container_concurrency: cc,
        timeout,
        activator_in_path: false,
        unavailable: None,
    }
}

/// A snapshot builder.
#[derive(Default, Clone)]
pub struct Snap(pub RoutingSnapshot);

impl Snap {
    pub fn host(mut self, host: &str, service: &str, targets: &[(&str, u32)]) -> Self {
        self.0.hosts.insert(
            host.to_owned(),
            HostRoute {
                service: rev(service),
                targets: targets
                    .iter()
                    .map(|(r, percent)| WeightedTarget {
                        revision: rev(r),
                        percent: *percent,
                    })
                    .collect(),
            },
        );
        self
    }

    pub fn revision(mut self, route: RevisionRoute) -> Self {
        self.0.revisions.insert(route.key.clone(), route);
        self
    }

    pub fn timeouts(mut self, name: &str, t: ResponseTimeouts) -> Self {
        self.0.timeouts.insert(rev(name), t);
        self
    }

    pub fn activator(mut self, name: &str, in_path: bool) -> Self {
        self.0
            .revisions
            .get_mut(&rev(name))
            .unwrap()
            .activator_in_path = in_path;
        self
    }

    pub fn build(self) -> Arc<RoutingSnapshot> {
        Arc::new(self.0)
    }
}

/// One revision `hello-00001` serving HOST from `endpoints`.
pub fn single(endpoints: &[SocketAddr], cc: u32, timeout: Duration) -> Snap {
    Snap::default()
        .host(HOST, "hello", &[("hello-00001", 100)])
        .revision(revision("hello-00001", endpoints, cc, timeout))
}

pub struct Harness {
    pub addr: SocketAddr,
    pub publish: watch::Sender<Arc<RoutingSnapshot>>,
    pub stats: mpsc::Receiver<StatReport>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub struct Options {
    pub max_queued: usize,
    pub router: RouterConfig,
    pub serve: ServeConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_queued: 1000,
            router: RouterConfig::default(),
            serve: ServeConfig::default(),
        }
    }
}

pub async fn start(initial: Arc<RoutingSnapshot>) -> Harness {
    start_with(initial, Options::default()).await
}

pub async fn start_with(initial: Arc<RoutingSnapshot>, options: Options) -> Harness {
    let (publish, snapshot) = watch::channel(initial);
    let (stats_tx, stats) = mpsc::channel(1024);
    let activator = Arc::new(Activator::new(
        ActivatorConfig {
            max_queued_per_revision: options.max_queued,
            ..ActivatorConfig::default()
        },
        snapshot.clone(),
        stats_tx,
        Forwarder::new(),
    ));
    let router = Arc::new(Router::with_config(
        snapshot,
        activator,
        Forwarder::new(),
        options.router,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, router, options.serve, async {
        let _ = stopped.await;
    }));
    Harness {
        addr,
        publish,
        stats,
        _stop: stop,
    }
}

pub type H1Client = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn h1() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2() -> H1Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

pub async fn send(
    client: &H1Client,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(addr: SocketAddr, host: &str) -> Answer {
    send(&h1(), addr, host, "/", &[]).await
}

pub fn json_error(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["error"].as_str().unwrap().to_owned()
}

pub fn counts(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(format!("{} {}", a.status.as_u16(), a.body))
            .or_default() += 1;
    }
    m
}
