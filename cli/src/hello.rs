//! `sluice hello`: the sample user process for Knative Services in local mode.
//!
//! A small HTTP/1.1 + h2c server on `$PORT` (loopback) that answers `Hello <TARGET>!` and
//! then the facts a test or a curious user wants: the revision (`K_REVISION`), method,
//! path and request headers (Forwarded, X-Forwarded-*, traceparent…). `?sleep_ms=N`
//! delays the answer (at most ten minutes), to try timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::shutdown;

/// Flags of `sluice hello`.
#[derive(Args, Debug)]
pub(crate) struct HelloArgs {
    /// Port to serve on (set by the runtime, as Knative's contract says).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Who to greet.
    #[arg(long, env = "TARGET", default_value = "World")]
    target: String,
}

struct Facts {
    target: String,
    service: String,
    revision: String,
}

/// Serves until SIGTERM/SIGINT.
pub(crate) async fn run(args: HelloArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let facts = Arc::new(Facts {
        target: args.target,
        service: env("K_SERVICE"),
        revision: env("K_REVISION"),
    });
    eprintln!("hello: listening on {addr}");
    let stop = shutdown::signalled();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("hello: accept failed: {e}");
                    continue;
                }
            },
            () = &mut stop => return Ok(()),
        };
        let facts = facts.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let facts = facts.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&facts, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(facts: &Facts, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let sleep_ms = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("sleep_ms="))
            .and_then(|v| v.parse::<u64>().ok())
    });
    if let Some(ms) = sleep_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    let mut text = format!("Hello {}!\n", facts.target);
    text.push_str(&format!("service: {}\n", facts.service));
    text.push_str(&format!("revision: {}\n", facts.revision));
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
