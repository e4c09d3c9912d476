//! `sluice hello`: a sample user process for the queue sidecar. It answers `Hello
//! <TARGET>!` with what it knows of its revision and echoes the request (method, path,
//! version, headers); `?sleep_ms=N` makes it take that long (at most ten minutes). A
//! revision can be made faulty on purpose, to try SLO-gated rollouts: `fail_every` answers
//! every Nth request with a 500, `delay` slows every answer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

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
                        let mut resp = Response::new(Full::new(Bytes::from_static(
                            b"hello: failing on purpose (fail_every)\n",
                        )));
                        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        return Ok::<_, std::convert::Infallible>(resp);
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

async fn answer(hello: &Hello, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
