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
    serve_sidecar(sc, app).await
}

/// Serves `sc` (in front of `app`) once `app` accepts connections; returns its address.
async fn serve_sidecar(sc: Arc<Sidecar>, app: SocketAddr) -> SocketAddr {
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

/// A user process whose `/die` request breaks its connection without an answer (as a
/// process killed mid-request does); every other request gets "hi". Counts the requests
/// it saw.
async fn fragile_user_process(seen: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let die = req.uri().path() == "/die";
                    async move {
                        if die {
                            return Err("killed mid-request");
                        }
                        Ok(Response::new(Full::new(Bytes::from("hi"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// After a connection to the user process broke without an answer, a request waits for
/// word of the process before it is sent: told the process died, the sidecar answers it as
/// not processed (so the activator gives it to another replica) and never sends it; with
/// no such word, it is sent once the window passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_a_broken_connection_is_not_sent_to_a_process_that_died() {
    let seen = Arc::new(AtomicUsize::new(0));
    let app = fragile_user_process(seen.clone()).await;
    let config = SidecarConfig {
        queue: QueueConfig {
            container_concurrency: 4,
            max_queued: None,
        },
        timeouts: Timeouts::request_only(Duration::from_secs(30)),
        h2c: false,
        revision: NamespacedName::new("default", "hello-00001"),
    };

    // The process lives: after the wait, the request is served.
    let sc = Sidecar::new(config.clone(), app);
    let addr = serve_sidecar(sc.clone(), app).await;
    let (status, _) = get(addr, "/die", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        get(addr, "/ok", &[]).await,
        (StatusCode::OK, "hi".to_owned())
    );

    // The process died: the request waiting for word of it is answered as not processed.
    let sc = Sidecar::new(config, app);
    let addr = serve_sidecar(sc.clone(), app).await;
    let (status, _) = get(addr, "/die", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let before = seen.load(Ordering::SeqCst);
    let waiting = tokio::spawn(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::get(format!("http://{addr}/ok"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.request(req).await.unwrap()
    });
    // Admitted and waiting (the window is far longer than this takes).
    tokio::time::timeout(Duration::from_secs(5), async {
        while sc.queue().recorder().in_flight() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    sc.set_app_gone();
    let resp = waiting.await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(
        resp.headers()
            .contains_key(sluice_proxy::UNPROCESSED_HEADER),
        "{:?}",
        resp.headers()
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        before,
        "the request reached the process"
    );
}
