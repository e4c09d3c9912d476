//! Protocols through the router: HTTP/2 cleartext with bidirectional streaming and
//! trailers (what gRPC needs), and WebSocket-style upgrades tunnelled both ways.

#![allow(clippy::unwrap_used)]

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_proxy::{BoxError, ProxyBody, full_body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

/// Echoes every request data frame back as it arrives, then ends with gRPC-style trailers.
struct EchoWithTrailers {
    inner: Incoming,
    done: bool,
}

impl Body for EchoWithTrailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                self.done = true;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[tokio::test]
async fn h2c_bidirectional_streaming_with_trailers() {
    let up = replica(|req: Request<Incoming>| async move {
        assert_eq!(
            req.version(),
            Version::HTTP_2,
            "the replica is reached over HTTP/2"
        );
        assert_eq!(req.headers()["te"], "trailers");
        let mut resp = Response::new(
            EchoWithTrailers {
                inner: req.into_body(),
                done: false,
            }
            .boxed(),
        );
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        resp
    })
    .await;
    let h = start(single(&[up.addr], 0, T).build()).await;
    let client: Client<_, ChannelBody> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let req = Request::post(format!("http://{}/echo.Echo/Stream", h.addr))
        .header("host", HOST)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(ChannelBody(rx))
        .unwrap();
    tx.send(Bytes::from_static(b"one")).await.unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // Each message comes back before the next is sent: streaming both ways at once.
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "one"
    );
    tx.send(Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "two"
    );
    drop(tx);
    let rest = body.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap()["grpc-status"], "0");
}

/// A replica that echoes bytes on upgraded connections and answers "ok" otherwise.
async fn ws_echo() -> Replica {
    replica(|mut req: Request<Incoming>| async move {
        if req.headers().get("upgrade").is_none() {
            return Response::new(full_body("ok"));
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on_upgrade.await.unwrap());
            let mut buf = [0u8; 64];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                io.write_all(&buf[..n]).await.unwrap();
            }
        });
        let mut resp: Response<ProxyBody> = Response::new(full_body(""));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        resp
    })
    .await
}

/// Opens a WebSocket-style upgraded connection through the router; checks the 101.
async fn open_ws(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let up = ws_echo().await;
    let h = start(single(&[up.addr], 0, T).build()).await;
    let mut s = open_ws(h.addr).await;
    for msg in [&b"ping"[..], b"pong", b"bye"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_holds_its_concurrency_slot_until_it_closes() {
    let up = ws_echo().await;
    // cc = 1 through the activator, no queue: a second request while the socket is open
    // finds the revision full.
    let options = Options {
        max_queued: 0,
        ..Options::default()
    };
    let snap = single(&[up.addr], 1, T).activator("hello-00001", true);
    let h = start_with(snap.build(), options).await;
    let mut s = open_ws(h.addr).await;
    s.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).await.unwrap();
    let busy = get(h.addr, HOST).await;
    assert_eq!(
        busy.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        busy.body
    );
    drop(s);
    // Closing the socket ends the tunnel and frees the slot.
    loop {
        let ans = get(h.addr, HOST).await;
        if ans.status == StatusCode::OK {
            assert_eq!(ans.body, "ok");
            break;
        }
        assert_eq!(ans.status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::task::yield_now().await;
    }
}
