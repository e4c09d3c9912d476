//! Per-request routing: Host → service → weighted revision → replica or activator.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response, header};
use hyper::body::Incoming;
use sluice_activator::{Activator, Forwarder, ProxyBody, ProxyError};
use sluice_core::RoutingSnapshot;
use tokio::sync::watch;

/// The router. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Router {
    snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    activator: Arc<Activator>,
    forwarder: Forwarder,
    /// xorshift state for traffic splits and replica choice.
    rng: AtomicU64,
}

impl Router {
    /// A router over `snapshot` that hands revisions without capacity to `activator`.
    pub fn new(
        snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
        activator: Arc<Activator>,
        forwarder: Forwarder,
    ) -> Self {
        Self {
            snapshot,
            activator,
            forwarder,
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    fn next_random(&self) -> u64 {
        // A data race between two requests only makes two draws equal; weights still hold
        // on average, and no lock sits on the request path.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    /// Routes one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match self.route(req).await {
            Ok(resp) => resp,
            Err(err) => {
                tracing::debug!(
                    reason = err.metric_label(),
                    "{}",
                    sluice_core::error_chain(&err)
                );
                err.into_response()
            }
        }
    }

    async fn route(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        // The router is a hop of its own in the caller's trace.
        sluice_mesh::trace::propagate(req.headers_mut());
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .ok_or(ProxyError::MissingHost)?;
        // The request keeps the snapshot it started with, whatever is published meanwhile.
        let snapshot = self.snapshot.borrow().clone();
        let route = snapshot
            .route_for_host(&host)
            .ok_or_else(|| ProxyError::UnknownHost { host: host.clone() })?;
        let roll = (self.next_random() % 100) as u32;
        let key = route
            .pick(roll)
            .ok_or_else(|| ProxyError::UnknownHost { host: host.clone() })?;
        let revision = snapshot
            .revisions
            .get(key)
            .ok_or_else(|| ProxyError::UnknownRevision(key.clone()))?;
        if revision.activator_in_path || revision.endpoints.is_empty() {
            return Ok(self.activator.handle(key, req).await);
        }
        let i = (self.next_random() % revision.endpoints.len() as u64) as usize;
        let endpoint = revision.endpoints[i].addr;
        tokio::time::timeout(revision.timeout, self.forwarder.forward(key, endpoint, req))
            .await
            .map_err(|_| ProxyError::Timeout {
                revision: key.clone(),
                timeout: revision.timeout,
            })?
    }
}
