//! Revision timeouts over real sockets: 200 when the response starts in time (even if it
//! then streams for longer), 504 naming the limit when it does not, idle cut-offs, and a
//! replica that closes early.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use sluice_core::ResponseTimeouts;
use sluice_proxy::ProxyBody;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A replica that never answers (accepts, reads the request, hangs).
async fn hanging() -> Replica {
    replica(|_req| async { std::future::pending::<Response<ProxyBody>>().await }).await
}

/// A replica that answers "a" at once, then "b" after `gap`, then ends.
async fn streaming(gap: Duration) -> Replica {
    replica(move |_req| async move {
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"a")).await.unwrap();
            // Behaviour under test, not synchronisation: the stream outlasts the timeout.
            tokio::time::sleep(gap).await;
            let _ = tx.send(Bytes::from_static(b"b")).await;
        });
        Response::new(ChannelBody(rx).boxed())
    })
    .await
}

#[tokio::test]
async fn response_starting_before_the_timeout_is_200() {
    let up = named("fast").await;
    let h = start(single(&[up.addr], 0, Duration::from_secs(5)).build()).await;
    let ans = get(h.addr, HOST).await;
    assert_eq!((ans.status, ans.body.as_str()), (StatusCode::OK, "fast"));
}

#[tokio::test]
async fn replica_that_accepts_then_hangs_is_504_naming_timeout_seconds() {
    let up = hanging().await;
    let h = start(single(&[up.addr], 0, ms(200)).build()).await;
    let ans = get(h.addr, HOST).await;
    assert_eq!(ans.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        json_error(&ans.body),
        "router request timeout: revision default/hello-00001 gave no response within 200ms (timeoutSeconds)"
    );
}

#[tokio::test]
async fn the_activator_path_names_its_timeout_too() {
    let up = hanging().await;
    let h = start(
        single(&[up.addr], 1, ms(200))
            .activator("hello-00001", true)
            .build(),
    )
    .await;
    let ans = get(h.addr, HOST).await;
    assert_eq!(ans.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        json_error(&ans.body).starts_with("activator request timeout"),
        "{}",
        ans.body
    );
}

#[tokio::test]
async fn streaming_that_starts_in_time_may_last_longer_than_the_timeout() {
    let up = streaming(ms(600)).await;
    let h = start(single(&[up.addr], 0, ms(300)).build()).await;
    let ans = get(h.addr, HOST).await;
    assert_eq!((ans.status, ans.body.as_str()), (StatusCode::OK, "ab"));
}

#[tokio::test]
async fn response_start_timeout_is_504_naming_it() {
    let up = hanging().await;
    let snap = single(&[up.addr], 0, Duration::from_secs(30)).timeouts(
        "hello-00001",
        ResponseTimeouts {
            response_start: Some(ms(150)),
            idle: None,
        },
    );
    let h = start(snap.build()).await;
    let ans = get(h.addr, HOST).await;
    assert_eq!(ans.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        json_error(&ans.body).ends_with("(responseStartTimeoutSeconds)"),
        "{}",
        ans.body
    );
}

#[tokio::test]
async fn idle_timeout_cuts_a_silent_stream() {
    let up = streaming(Duration::from_secs(3600)).await;
    let snap = single(&[up.addr], 0, Duration::from_secs(30)).timeouts(
        "hello-00001",
        ResponseTimeouts {
            response_start: None,
            idle: Some(ms(200)),
        },
    );
    let h = start(snap.build()).await;
    let req = http::Request::get(format!("http://{}/", h.addr))
        .header("host", HOST)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = h1().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "a");
    // Then nothing for longer than idleTimeoutSeconds: the stream is cut, not left open.
    let cut: Result<_, _> = body.collect().await;
    assert!(cut.is_err(), "the body should fail once idle");
}

#[tokio::test]
async fn replica_closing_early_is_502_naming_the_revision() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s); // closes before answering
        }
    });
    let h = start(single(&[addr], 0, Duration::from_secs(5)).build()).await;
    let ans = get(h.addr, HOST).await;
    assert_eq!(ans.status, StatusCode::BAD_GATEWAY);
    let err = json_error(&ans.body);
    assert!(
        err.starts_with(&format!(
            "upstream replica {addr} of revision default/hello-00001 failed"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_hanging_request_does_not_hold_up_others() {
    let hang = hanging().await;
    let fast = named("fast").await;
    let snap = Snap::default()
        .host(HOST, "hello", &[("hello-00001", 100)])
        .host("fast.default.localhost", "fast", &[("fast-00001", 100)])
        .revision(revision(
            "hello-00001",
            &[hang.addr],
            0,
            Duration::from_secs(30),
        ))
        .revision(revision(
            "fast-00001",
            &[fast.addr],
            0,
            Duration::from_secs(30),
        ));
    let h = start(snap.build()).await;
    let addr = h.addr;
    let stuck = tokio::spawn(async move { get(addr, HOST).await });
    for _ in 0..10 {
        assert_eq!(get(h.addr, "fast.default.localhost").await.body, "fast");
    }
    stuck.abort();
}
