//! The activator under load, over real sockets: containerConcurrency is never exceeded,
//! overload and scale-from-zero bursts all answer 200, and a replica killed mid-load loses
//! no request that had not reached it.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::sync::{Notify, mpsc};

const T: Duration = Duration::from_secs(60);

/// A replica that takes `delay` per request (behaviour under test: slow work).
async fn slow(name: &'static str, delay: Duration) -> Replica {
    replica(move |req| async move {
        tokio::time::sleep(delay).await;
        echo(name, &req)
    })
    .await
}

async fn burst(addr: SocketAddr, n: usize, host: &'static str) -> Vec<Answer> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                let id = format!("req-{i}");
                send(&h1(), addr, host, "/", &[("x-request-id", id.as_str())]).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc1_never_sees_two_concurrent_requests_under_100_clients() {
    let replicas = [
        slow("a", Duration::from_millis(5)).await,
        slow("b", Duration::from_millis(5)).await,
    ];
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let h = start(single(&addrs, 1, T).activator("hello-00001", true).build()).await;
    let answers = burst(h.addr, 100, HOST).await;
    assert!(
        answers.iter().all(|a| a.status == StatusCode::OK),
        "{:?}",
        counts(&answers)
    );
    for r in &replicas {
        assert_eq!(r.seen.max_active.load(Ordering::SeqCst), 1);
    }
    let total: usize = replicas
        .iter()
        .map(|r| r.seen.total.load(Ordering::SeqCst))
        .sum();
    assert_eq!(total, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activator_overload_cc1_100_slow_requests_10_replicas_all_200() {
    let mut replicas = Vec::new();
    for _ in 0..10 {
        replicas.push(slow("r", Duration::from_millis(50)).await);
    }
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let h = start(single(&addrs, 1, T).activator("hello-00001", true).build()).await;
    let answers = burst(h.addr, 100, HOST).await;
    assert_eq!(
        counts(&answers).get("200 r"),
        Some(&100),
        "{:?}",
        counts(&answers)
    );
    for r in &replicas {
        assert!(r.seen.max_active.load(Ordering::SeqCst) <= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_from_zero_burst_of_500_all_200() {
    let mut h = start(single(&[], 0, T).activator("hello-00001", true).build()).await;
    let addr = h.addr;
    let pending = tokio::spawn(async move { burst(addr, 500, HOST).await });
    // The first request pokes the autoscaler at once.
    let poke = h.stats.recv().await.unwrap();
    assert_eq!(poke.revision, rev("hello-00001"));
    let a = named("a").await;
    let b = named("b").await;
    h.publish
        .send(
            single(&[a.addr, b.addr], 0, T)
                .activator("hello-00001", true)
                .build(),
        )
        .unwrap();
    let answers = pending.await.unwrap();
    let ok = answers
        .iter()
        .filter(|x| x.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 500, "{:?}", counts(&answers));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_activator_in_and_out_of_path_loses_nothing() {
    let a = slow("a", Duration::from_millis(2)).await;
    let h = start(single(&[a.addr], 2, T).build()).await;
    let addr = h.addr;
    let load = tokio::spawn(async move { burst(addr, 300, HOST).await });
    for i in 0..20 {
        h.publish
            .send(
                single(&[a.addr], 2, T)
                    .activator("hello-00001", i % 2 == 0)
                    .build(),
            )
            .unwrap();
        tokio::task::yield_now().await;
    }
    let answers = load.await.unwrap();
    assert_eq!(
        counts(&answers).get("200 a"),
        Some(&300),
        "{:?}",
        counts(&answers)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_loses_no_request() {
    // Replica A signals once it has served some requests; then it is killed (its listener
    // and every connection dropped at once, requests in its handler included).
    let served = Arc::new(AtomicUsize::new(0));
    let ready_to_kill = Arc::new(Notify::new());
    let (s, k) = (served.clone(), ready_to_kill.clone());
    let a = replica(move |req| {
        let (s, k) = (s.clone(), k.clone());
        async move {
            if s.fetch_add(1, Ordering::SeqCst) + 1 == 30 {
                k.notify_one();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            echo("a", &req)
        }
    })
    .await;
    let b = slow("b", Duration::from_millis(2)).await;
    let h = start(single(&[a.addr, b.addr], 0, T).build()).await;
    let addr = h.addr;
    // 20 clients, 20 requests each, ids unique.
    let (tx, mut rx) = mpsc::channel::<(String, Answer)>(512);
    for c in 0..20 {
        let tx = tx.clone();
        tokio::spawn(async move {
            let client = h1();
            for i in 0..20 {
                let id = format!("c{c}-{i}");
                let ans = send(&client, addr, HOST, "/", &[("x-request-id", id.as_str())]).await;
                tx.send((id, ans)).await.unwrap();
            }
        });
    }
    drop(tx);
    ready_to_kill.notified().await;
    a.kill();
    // The runtime notices soon after and drops A from the routes.
    h.publish.send(single(&[b.addr], 0, T).build()).unwrap();
    let mut answers = Vec::new();
    while let Some((_, ans)) = rx.recv().await {
        answers.push(ans);
    }
    // Connections refused are retried on B; GETs cut off at A (idempotent, no response
    // byte yet) are retried too: nothing is lost.
    assert_eq!(answers.len(), 400);
    let c = counts(&answers);
    assert_eq!(
        c.get("200 a").unwrap_or(&0) + c.get("200 b").unwrap_or(&0),
        400,
        "{c:?}"
    );
    assert!(a.seen.total.load(Ordering::SeqCst) >= 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_to_a_replica_that_refuses_connections_are_retried_with_their_body() {
    // One endpoint is dead (nothing listens there); the other echoes the body it got.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = replica(|req| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        http::Response::new(sluice_proxy::full_body(body))
    })
    .await;
    let h = start(single(&[dead, live.addr], 0, T).build()).await;
    let client = h1();
    for i in 0..20 {
        let payload = format!("order-{i}");
        let req = http::Request::post(format!("http://{}/", h.addr))
            .header("host", HOST)
            .body(http_body_util::Full::new(bytes::Bytes::from(
                payload.clone(),
            )))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, payload.as_bytes());
    }
    assert_eq!(live.seen.total.load(Ordering::SeqCst), 20);
}
