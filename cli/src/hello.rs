//! `sluice hello`: the sample user process for Knative Services in local mode.
//!
//! A small HTTP/1.1 + h2c server on `$PORT` (loopback) that answers `Hello <TARGET>!` and
//! then the facts a test or a curious user wants: the revision (`K_REVISION`), method,
//! path and request headers (Forwarded, X-Forwarded-*, traceparent…). `?sleep_ms=N`
//! delays the answer (at most ten minutes), to try timeouts; `FAIL_EVERY=N` (every Nth
//! request answered 500) and `DELAY_MS` make a revision faulty on purpose, to try
//! SLO-gated rollouts. The server is
//! [`sluice_queue::hello`].

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use sluice_queue::hello::{self, Hello};
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
    /// Answer every Nth request with a 500 (0: never).
    #[arg(long, env = "FAIL_EVERY", default_value_t = 0)]
    fail_every: u64,
    /// Milliseconds added to every answer.
    #[arg(long, env = "DELAY_MS", default_value_t = 0)]
    delay_ms: u64,
}

/// Serves until SIGTERM/SIGINT.
pub(crate) async fn run(args: HelloArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let hello = Hello {
        target: args.target,
        service: env("K_SERVICE"),
        revision: env("K_REVISION"),
        fail_every: args.fail_every,
        delay: std::time::Duration::from_millis(args.delay_ms.min(600_000)),
    };
    eprintln!("hello: listening on {addr}");
    hello::serve(listener, hello, shutdown::signalled()).await;
    Ok(())
}
