//! Host, tag and weighted routing, proxy headers and snapshot swaps, over real sockets.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::sync::Notify;

const T: Duration = Duration::from_secs(10);

fn split(a: &Replica, b: &Replica) -> Snap {
    Snap::default()
        .host(HOST, "hello", &[("hello-00001", 50), ("hello-00002", 50)])
        .host(
            "blue-hello.default.localhost",
            "hello",
            &[("hello-00001", 100)],
        )
        .host(
            "green-hello.default.localhost",
            "hello",
            &[("hello-00002", 100)],
        )
        .revision(revision("hello-00001", &[a.addr], 0, T))
        .revision(revision("hello-00002", &[b.addr], 0, T))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_fifty_split_lands_within_five_percent_over_2000_requests() {
    let (a, b) = (named("blue").await, named("green").await);
    let h = start(split(&a, &b).build()).await;
    let client = h1();
    let mut blue = 0;
    for _ in 0..2000 {
        let ans = send(&client, h.addr, HOST, "/", &[]).await;
        assert_eq!(ans.status, StatusCode::OK);
        if ans.body == "blue" {
            blue += 1;
        }
    }
    // ±5 % of 2,000 requests at 50 %: 900..=1100.
    assert!((900..=1100).contains(&blue), "blue got {blue} of 2000");
}

#[tokio::test]
async fn tag_hosts_and_tag_header_hit_their_revision() {
    let (a, b) = (named("blue").await, named("green").await);
    // green gets 0 % of the main host's traffic but still answers on its tag URL.
    let snap = Snap::default()
        .host(HOST, "hello", &[("hello-00001", 100), ("hello-00002", 0)])
        .host(
            "green-hello.default.localhost",
            "hello",
            &[("hello-00002", 100)],
        )
        .revision(revision("hello-00001", &[a.addr], 0, T))
        .revision(revision("hello-00002", &[b.addr], 0, T));
    let h = start(snap.build()).await;
    let client = h1();
    for _ in 0..20 {
        let main = send(&client, h.addr, HOST, "/", &[]).await;
        assert_eq!(main.body, "blue");
        let tagged = send(
            &client,
            h.addr,
            "green-hello.default.localhost:8080",
            "/",
            &[],
        )
        .await;
        assert_eq!(
            (tagged.status, tagged.body.as_str()),
            (StatusCode::OK, "green")
        );
        let header = send(
            &client,
            h.addr,
            HOST,
            "/",
            &[("Knative-Serving-Tag", "green")],
        )
        .await;
        assert_eq!(header.body, "green");
    }
    // An unknown tag falls back to the main split.
    let unknown = send(
        &client,
        h.addr,
        HOST,
        "/",
        &[("Knative-Serving-Tag", "nope")],
    )
    .await;
    assert_eq!(unknown.body, "blue");
}

#[tokio::test]
async fn proxy_headers_reach_the_replica() {
    let a = named("blue").await;
    let h = start(single(&[a.addr], 0, T).build()).await;
    let ans = send(
        &h1(),
        h.addr,
        "hello.default.localhost:8080",
        "/",
        &[
            ("x-forwarded-for", "10.1.2.3"),
            ("x-request-id", "abc"),
            ("k-proxy-request", "activator"),
        ],
    )
    .await;
    let echo = |h: &str| {
        ans.headers[format!("x-echo-{h}").as_str()]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(echo("x-forwarded-for"), "10.1.2.3, 127.0.0.1");
    assert_eq!(echo("x-forwarded-proto"), "http");
    assert_eq!(
        echo("forwarded"),
        "for=127.0.0.1;proto=http;host=\"hello.default.localhost:8080\""
    );
    assert_eq!(echo("x-request-id"), "abc");
    assert!(echo("traceparent").starts_with("00-"));
    assert_eq!(echo("host"), "hello.default.localhost:8080");
    assert!(
        !ans.headers.contains_key("x-echo-k-proxy-request"),
        "a client cannot pose as the activator"
    );
}

#[tokio::test]
async fn a_route_change_never_fails_or_misroutes_an_in_flight_request() {
    let release = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let (r, e) = (release.clone(), entered.clone());
    let slow = replica(move |req| {
        let (r, e) = (r.clone(), e.clone());
        async move {
            e.notify_one();
            r.notified().await;
            echo("old", &req)
        }
    })
    .await;
    let new = named("new").await;
    let h = start(single(&[slow.addr], 0, T).build()).await;
    let addr = h.addr;
    let pending = tokio::spawn(async move { get(addr, HOST).await });
    entered.notified().await;
    // Swap: the host now points at another revision, and the old one is gone.
    let swapped = Snap::default()
        .host(HOST, "hello", &[("hello-00002", 100)])
        .revision(revision("hello-00002", &[new.addr], 0, T));
    h.publish.send(swapped.build()).unwrap();
    assert_eq!(get(h.addr, HOST).await.body, "new");
    release.notify_one();
    let old = pending.await.unwrap();
    assert_eq!((old.status, old.body.as_str()), (StatusCode::OK, "old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_on_one_connection_are_balanced_per_request() {
    let (a, b) = (named("a").await, named("b").await);
    let h = start(single(&[a.addr, b.addr], 0, T).build()).await;
    let client = h2();
    let answers = futures_join(200, |_| {
        let client = client.clone();
        let addr = h.addr;
        async move { send(&client, addr, HOST, "/", &[]).await }
    })
    .await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    let on_a = answers.iter().filter(|x| x.body == "a").count();
    assert!(
        on_a > 0 && on_a < 200,
        "one HTTP/2 connection, both replicas: a got {on_a}"
    );
    assert!(b.seen.total.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn unknown_host_is_404_naming_it() {
    let h = start(Snap::default().build()).await;
    let ans = get(h.addr, "nope.default.localhost").await;
    assert_eq!(ans.status, StatusCode::NOT_FOUND);
    assert_eq!(
        json_error(&ans.body),
        "no service for host \"nope.default.localhost\""
    );
}

/// Runs `n` futures concurrently and collects their outputs in order.
async fn futures_join<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
