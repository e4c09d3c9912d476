//! Per-request routing: Host (or tag) → service → weighted revision → replica or activator.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, Response, Uri, header};
use hyper::body::Incoming;
use sluice_activator::Activator;
use sluice_core::replica::PROXY_HEADER;
use sluice_core::{HostRoute, NamespacedName, RoutingSnapshot};
use sluice_proxy::balance::Balancer;
use sluice_proxy::strip_internal_headers;
use sluice_proxy::timeouts::Timeouts;
use sluice_proxy::{Attempt, Forwarder, Outbound, ProxyBody, ProxyError, Retries, hold_response};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::headers::{ClientAddr, add_forwarded};
use crate::ingress::Scheme;

/// Header that picks a tagged revision on the service's own host.
pub const TAG_HEADER: &str = "knative-serving-tag";

/// Router settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterConfig {
    /// Largest request body forwarded (413 beyond); `None` = no limit, as Knative.
    pub max_body_bytes: Option<u64>,
}

/// The router. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Router {
    snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    activator: Arc<Activator>,
    forwarder: Forwarder,
    config: RouterConfig,
    /// Per-revision replica choice on the direct path.
    balancers: Mutex<HashMap<NamespacedName, Arc<Balancer>>>,
    /// xorshift state for traffic splits.
    rng: AtomicU64,
}

/// The host a request names (`Host`, else the URI's authority, as HTTP/2 sends it) and the
/// route it selects in `snapshot`: the host's own, or the tag route a `Knative-Serving-Tag`
/// header names on it. Everything the router reads from a request's head to place it
/// (public for `sluice-fuzz`, which feeds it arbitrary headers).
pub fn select_route<'s>(
    snapshot: &'s RoutingSnapshot,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(String, &'s HostRoute), ProxyError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .ok_or(ProxyError::MissingHost)?;
    let base = snapshot
        .route_for_host(&host)
        .ok_or_else(|| ProxyError::UnknownHost { host: host.clone() })?;
    // An unknown tag falls back to the service's own traffic split, as in Knative.
    let route = headers
        .get(TAG_HEADER)
        .and_then(|t| t.to_str().ok())
        .and_then(|tag| snapshot.route_for_tag(&host, tag.trim()))
        .unwrap_or(base);
    Ok((host, route))
}

/// Rewrites a client's request headers for the next hop, at the edge: this hop joins the
/// forwarding headers, and what only Sluice may say is dropped. `continued`: the ingress
/// already continued the trace as this hop's span (public for `sluice-fuzz`).
pub fn edge_headers(
    headers: &mut HeaderMap,
    client: Option<IpAddr>,
    scheme: &str,
    host: &str,
    continued: bool,
) {
    add_forwarded(headers, client, scheme, host);
    // Only the activator may say a request came through it (the queue layer's stats
    // count such requests apart); a client cannot.
    headers.remove(PROXY_HEADER);
    // Nor can a client speak for Sluice's hops: its `x-sluice-*` headers (an attestation
    // it made up or replays) go before the forwarder attaches the router's own.
    strip_internal_headers(headers);
    // The router is a hop of its own in the caller's trace (its ingress may have
    // continued the trace already, as the span it records).
    if !continued {
        sluice_mesh::trace::propagate(headers);
    }
}

impl Router {
    /// A router over `snapshot` that hands revisions without capacity to `activator`.
    pub fn new(
        snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
        activator: Arc<Activator>,
        forwarder: Forwarder,
    ) -> Self {
        Self::with_config(snapshot, activator, forwarder, RouterConfig::default())
    }

    /// A router with explicit settings.
    pub fn with_config(
        snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
        activator: Arc<Activator>,
        forwarder: Forwarder,
        config: RouterConfig,
    ) -> Self {
        Self {
            snapshot,
            activator,
            forwarder: forwarder.for_hop("router"),
            config,
            balancers: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// A router sharing this one's routes, activator, settings and retry budget, with its
    /// own connection pools (for one thread of a sharded server).
    pub fn for_shard(&self) -> Self {
        Self {
            snapshot: self.snapshot.clone(),
            activator: self.activator.clone(),
            forwarder: self.forwarder.with_fresh_pools(),
            config: self.config.clone(),
            balancers: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(self.next_random() | 1),
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

    fn balancer(&self, key: &NamespacedName) -> Arc<Balancer> {
        let mut map = self.balancers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get(key) {
            return b.clone();
        }
        // Forget revisions that left the routes, so the map stays as small as the table.
        let snapshot = self.snapshot.borrow().clone();
        map.retain(|k, _| snapshot.revisions.contains_key(k));
        let seed = self.next_random();
        map.entry(key.clone())
            .or_insert_with(|| Balancer::new(seed))
            .clone()
    }

    /// Routes one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        self.handle_noting(req, &mut None).await
    }

    /// Routes one request and notes the revision it was routed to in `routed` (the router
    /// hop's telemetry names it), without allocating more than the name.
    pub async fn handle_noting(
        &self,
        req: Request<Incoming>,
        routed: &mut Option<NamespacedName>,
    ) -> Response<ProxyBody> {
        match self.route(req, routed).await {
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

    async fn route(
        &self,
        req: Request<Incoming>,
        routed: &mut Option<NamespacedName>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let start = Instant::now();
        // The request keeps the snapshot it started with, whatever is published meanwhile.
        let snapshot = self.snapshot.borrow().clone();
        let (host, route) = select_route(&snapshot, req.headers(), req.uri())?;
        let roll = (self.next_random() % 100) as u32;
        let key = route
            .pick(roll)
            .ok_or_else(|| ProxyError::UnknownHost { host: host.clone() })?;
        *routed = Some(key.clone());
        let revision = snapshot
            .revisions
            .get(key)
            .ok_or_else(|| ProxyError::UnknownRevision(key.clone()))?;

        let continued = req
            .extensions()
            .get::<sluice_mesh::trace::Continued>()
            .is_some();
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
        let scheme = req.extensions().get::<Scheme>().map_or("http", |s| s.0);
        let mut out = Outbound::new(req, self.config.max_body_bytes)?;
        edge_headers(out.headers_mut(), client, scheme, &host, continued);

        if revision.activator_in_path || revision.endpoints.is_empty() {
            return Ok(self
                .activator
                .handle_routed(key, out, start, Some(snapshot.clone()))
                .await);
        }
        let timeouts = Timeouts::of(revision, snapshot.timeouts_for(key));
        let deadline = timeouts.response_deadline(start);
        let balancer = self.balancer(key);
        let mut retries = Retries::new(deadline, timeouts.idle);
        // A retry takes the revision's replicas as they are now (same revision, so the
        // request is not rerouted; the failed replica may be gone by then).
        let mut current = snapshot.clone();
        loop {
            let replicas = current.revisions.get(key).unwrap_or(revision);
            if retries.attempt() > 1
                && (replicas.activator_in_path || replicas.endpoints.is_empty())
            {
                // Scaled down meanwhile: the activator holds the retry until a replica is up.
                return Ok(self
                    .activator
                    .handle_routed(key, out, start, Some(current))
                    .await);
            }
            let lease = balancer
                .pick_any(replicas, retries.avoid())
                .ok_or_else(|| ProxyError::UnknownRevision(key.clone()))?;
            let endpoint = lease.addr();
            let refused = |endpoint| balancer.eject(endpoint);
            match self
                .forwarder
                .attempt(&mut retries, key, endpoint, &mut out, refused)
                .await
            {
                Attempt::Done(resp) => return Ok(hold_response(resp, lease)),
                Attempt::Failed(err) => return Err(err),
                Attempt::Retry => current = self.snapshot.borrow().clone(),
            }
        }
    }
}
