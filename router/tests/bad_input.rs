//! Bad input at the router: malformed HTTP, oversize heads and bodies, hop-by-hop abuse.
//! Each gets a clear status, and none of them disturbs other requests.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice_proxy::full_body;
use sluice_router::RouterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

/// Sends raw bytes and returns the status line of the answer.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn malformed_http_is_400_and_the_router_keeps_serving() {
    let up = named("ok").await;
    let h = start(single(&[up.addr], 0, T).build()).await;
    assert_eq!(
        raw(h.addr, b"GARBAGE\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        raw(h.addr, b"GET / HTTP/1.1\r\nHost hello\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(get(h.addr, HOST).await.body, "ok");
}

#[tokio::test]
async fn oversize_headers_are_431() {
    let up = named("ok").await;
    let h = start(single(&[up.addr], 0, T).build()).await;
    let big = "x".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\n\r\n");
    assert_eq!(
        raw(h.addr, req.as_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(get(h.addr, HOST).await.body, "ok");
}

#[tokio::test]
async fn oversize_bodies_are_413_where_configured() {
    // The replica reads the whole body, then answers with its length.
    let up = replica(|req| async move {
        let len = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        Response::new(full_body(len.to_string()))
    })
    .await;
    let options = Options {
        router: RouterConfig {
            max_body_bytes: Some(1024),
        },
        ..Options::default()
    };
    let h = start_with(single(&[up.addr], 0, T).build(), options).await;
    let client = h1();
    let post = |body: Vec<u8>, chunked: bool| {
        let mut req = http::Request::post(format!("http://{}/", h.addr)).header("host", HOST);
        if chunked {
            req = req.header("transfer-encoding", "chunked");
        }
        req.body(Full::new(Bytes::from(body))).unwrap()
    };
    // Declared too large: refused before anything is sent.
    let resp = client.request(post(vec![0; 4096], false)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        json_error(std::str::from_utf8(&body).unwrap()),
        "request body is larger than 1024 bytes"
    );
    // Chunked, no length given: cut off once it passes the limit.
    let resp = client.request(post(vec![0; 4096], true)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Within the limit: forwarded whole.
    let resp = client.request(post(vec![0; 1000], false)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "1000");
}

#[tokio::test]
async fn hop_by_hop_abuse_strips_only_what_is_allowed() {
    let up = replica(|req| async move {
        let names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        Response::new(full_body(names.join(",")))
    })
    .await;
    let h = start(single(&[up.addr], 0, T).build()).await;
    let ans = send(
        &h1(),
        h.addr,
        HOST,
        "/",
        &[
            (
                "connection",
                "keep-alive, x-secret, host, x-request-id, x-forwarded-for",
            ),
            ("x-secret", "1"),
            ("x-request-id", "keep-me"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ],
    )
    .await;
    let seen: Vec<&str> = ans.body.split(',').collect();
    assert!(!seen.contains(&"x-secret"), "{seen:?}");
    assert!(!seen.contains(&"proxy-authorization"), "{seen:?}");
    assert!(!seen.contains(&"connection"), "{seen:?}");
    for kept in [
        "host",
        "x-request-id",
        "x-forwarded-for",
        "forwarded",
        "traceparent",
    ] {
        assert!(seen.contains(&kept), "{kept} missing from {seen:?}");
    }
}

#[tokio::test]
async fn missing_host_is_400_and_unknown_host_404() {
    let h = start(Snap::default().build()).await;
    assert_eq!(
        raw(h.addr, b"GET / HTTP/1.0\r\n\r\n").await,
        "HTTP/1.0 400 Bad Request"
    );
    assert_eq!(
        raw(
            h.addr,
            b"GET / HTTP/1.1\r\nHost: who.default.localhost\r\n\r\n"
        )
        .await,
        "HTTP/1.1 404 Not Found"
    );
}

#[tokio::test]
async fn oversize_http2_header_lists_are_431_and_the_connection_keeps_serving() {
    let up = named("ok").await;
    let h = start(single(&[up.addr], 0, T).build()).await;
    let client = h2();
    let big = "x".repeat(100 * 1024);
    let req = http::Request::get(format!("http://{}/", h.addr))
        .header("host", HOST)
        .header("x-big", big.as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let ok = send(&client, h.addr, HOST, "/", &[]).await;
    assert_eq!(ok.body, "ok");
}
