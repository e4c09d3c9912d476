//! Sluice's long-running processes, assembled from the planes: local mode (`sluice up`,
//! [`local`]), the controller and the router of Kubernetes mode ([`kube_controller`],
//! [`kube_router`]), the admin API's client and
//! the loopback admin API that `--kube` client commands talk through ([`admin_client`]).
//!
//! Each process takes one validated config (the `sluice` binary turns its flags into it),
//! starts, and hands back what it bound so the binary can say so; printing, signals and
//! exit codes stay with the binary.

pub mod admin_client;
pub mod kube_controller;
pub mod kube_router;
pub mod local;
pub mod manifests;

use std::time::Duration;

use sluice_mesh::otlp::SpanExporter;
use tokio::sync::watch;

/// Span export of a process's own hops.
#[derive(Clone)]
pub struct Spans {
    /// The exporter every hop of the process hands its spans to.
    pub exporter: SpanExporter,
    /// The collector's endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`), handed to replicas.
    pub endpoint: String,
}

/// One stop signal for every task of a process.
struct Stop {
    tx: watch::Sender<bool>,
}

impl Stop {
    fn new() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }

    /// Resolves once [`Stop::stop`] is called.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn stop(&self) {
        self.tx.send_replace(true);
    }
}

/// Gives the span exporter two seconds to send what it holds.
async fn flush(spans: Option<Spans>) {
    if let Some(Spans { exporter, endpoint }) = spans
        && tokio::time::timeout(Duration::from_secs(2), exporter.flush())
            .await
            .is_err()
    {
        tracing::warn!(%endpoint, "spans not exported before exit: the collector did not answer in 2 s");
    }
}
