//! `sluice hello`: a sample user process for the queue sidecar. It answers `Hello
//! <TARGET>!` with what it knows of its revision and echoes the request (method, path,
//! version, headers); `?sleep_ms=N` makes it take that long (at most ten minutes). A
//! revision can be made faulty on purpose, to try SLO-gated rollouts: `fail_every` answers
//! every Nth request with a 500, `delay` slows every answer. A gRPC request (content type
//! `application/grpc`) is answered as a unary call of any method: its message is echoed
//! back with `grpc-status: 0` (a gRPC server behind the data plane, for benchmarks and
//! tests; a request body of more than [`MAX_GRPC_BODY`] bytes gets `RESOURCE_EXHAUSTED`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The largest gRPC request body echoed.
pub const MAX_GRPC_BODY: usize = 4 << 20;

/// What the sample says about itself.
#[derive(Clone, Debug, Default)]
pub struct Hello {
    /// Who it greets.
    pub target: String,
    /// Its Knative Service (`K_SERVICE`).
    pub service: String,
    /// Its revision (`K_REVISION`).
    pub revision: String,
    /// Every Nth request is answered 500 (0: none).
    pub fail_every: u64,
    /// Added to every answer.
    pub delay: Duration,
}

/// Serves `hello` on `listener` until `stop` resolves.
pub async fn serve(listener: TcpListener, hello: Hello, stop: impl Future<Output = ()>) {
    let hello = Arc::new((hello, AtomicU64::new(0)));
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("hello: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let hello = hello.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let hello = hello.clone();
                async move {
                    let (hello, served) = &*hello;
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    if hello.fail_every > 0 && n.is_multiple_of(hello.fail_every) {
                        let mut resp = Response::new(
                            Full::new(Bytes::from_static(
                                b"hello: failing on purpose (fail_every)\n",
                            ))
                            .boxed(),
                        );
                        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        return Ok::<_, Infallible>(resp);
                    }
                    if !hello.delay.is_zero() {
                        tokio::time::sleep(hello.delay).await;
                    }
                    Ok(answer(hello, req).await)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(hello: &Hello, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return grpc_echo(req).await;
    }
    let sleep_ms = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("sleep_ms="))
            .and_then(|v| v.parse::<u64>().ok())
    });
    if let Some(ms) = sleep_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    let mut text = format!("Hello {}!\n", hello.target);
    text.push_str(&format!("service: {}\n", hello.service));
    text.push_str(&format!("revision: {}\n", hello.revision));
    text.push_str(&format!("method: {}\n", req.method()));
    text.push_str(&format!(
        "path: {}\n",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    ));
    text.push_str(&format!("version: {:?}\n", req.version()));
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    for (k, v) in headers {
        text.push_str(&format!("header {k}: {v}\n"));
    }
    let mut resp = Response::new(Full::new(Bytes::from(text)).boxed());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Answers a gRPC unary call with its own request message (the length-prefixed frames
/// as sent) and `grpc-status: 0` in the trailers; an unreadable or too large body is
/// `INTERNAL` or `RESOURCE_EXHAUSTED` with no message.
async fn grpc_echo(req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
    let (status, body) = match Limited::new(req.into_body(), MAX_GRPC_BODY).collect().await {
        Ok(collected) => ("0", collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => ("8", Bytes::new()),
        Err(_) => ("13", Bytes::new()),
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let body = Full::new(body)
        .with_trailers(std::future::ready(Some(Ok(trailers))))
        .boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    /// A gRPC call over h2c, as a gRPC client sends it: the message comes back in the
    /// body and `grpc-status: 0` in the trailers.
    #[tokio::test]
    async fn a_grpc_call_is_echoed_with_status_ok_in_the_trailers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Hello::default(), std::future::pending()));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        // One length-prefixed message: not compressed, 5 bytes.
        let frame = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
        let req = Request::post(format!("http://{addr}/bench.Echo/Say"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(frame.clone()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/grpc"
        );
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), frame);
    }
}
