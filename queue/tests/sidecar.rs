//! The queue-layer sidecar over real sockets: containerConcurrency holds at the user
//! process under 100 concurrent clients, the wait queue is bounded, h2c to the user process.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_core::NamespacedName;
use sluice_proxy::timeouts::Timeouts;
use sluice_queue::QueueConfig;
use sluice_queue::sidecar::{self, Sidecar, SidecarConfig};
use tokio::net::TcpListener;

#[derive(Default)]
struct Gauge {
    active: AtomicUsize,
    max: AtomicUsize,
}

/// A user process: answers "hi" after a short pause, counting concurrency.
async fn user_process(gauge: Arc<Gauge>, http2_only: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let gauge = gauge.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let gauge = gauge.clone();
                    async move {
                        let now = gauge.active.fetch_add(1, Ordering::SeqCst) + 1;
                        gauge.max.fetch_max(now, Ordering::SeqCst);
                        // Behaviour under test: work that takes a while.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        gauge.active.fetch_sub(1, Ordering::SeqCst);
                        let body = format!("hi over {:?}", req.version());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    }
                });
                let io = TokioIo::new(stream);
                if http2_only {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

async fn start_sidecar(app: SocketAddr, cc: u32, h2c: bool) -> SocketAddr {
    let sc = Sidecar::new(
        SidecarConfig {
            queue: QueueConfig {
                container_concurrency: cc,
                max_queued: None,
            },
            timeouts: Timeouts::request_only(Duration::from_secs(30)),
            h2c,
            revision: NamespacedName::new("default", "hello-00001"),
        },
        app,
    );
    sidecar::wait_until_accepting(app, Duration::from_millis(5)).await;
    sc.set_app_ready();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sidecar::serve(listener, sc, std::future::pending()));
    addr
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc1_user_process_never_sees_two_concurrent_requests_from_100_clients() {
    let gauge = Arc::new(Gauge::default());
    let app = user_process(gauge.clone(), false).await;
    let addr = start_sidecar(app, 1, false).await;
    let handles: Vec<_> = (0..100)
        .map(|_| tokio::spawn(get(addr, "/", &[])))
        .collect();
    let mut ok = 0;
    for h in handles {
        let (status, body) = h.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(body.contains("pending request queue full"), "{body}")
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1);
    assert_eq!(gauge.max.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn probe_and_h2c_to_the_user_process() {
    let gauge = Arc::new(Gauge::default());
    let app = user_process(gauge, true).await;
    let addr = start_sidecar(app, 0, true).await;
    assert_eq!(
        get(addr, "/healthz", &[("k-network-probe", "queue")]).await,
        (StatusCode::OK, "queue".to_owned())
    );
    // The client speaks HTTP/1.1; the user process only HTTP/2: the sidecar bridges.
    assert_eq!(
        get(addr, "/", &[]).await,
        (StatusCode::OK, "hi over HTTP/2.0".to_owned())
    );
}
