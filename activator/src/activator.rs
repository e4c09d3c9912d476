//! The activator: throttles requests to a revision's capacity (`containerConcurrency ×
//! ready replicas`), holds the rest in a bounded queue, and releases them as slots free up
//! or replicas become ready.
//!
//! The first request to a revision at zero sends the autoscaler an immediate stat so it
//! scales up without waiting for its next tick. Waiting counts against the revision's
//! timeout. A connection refused by a replica is retried on another (within the retry
//! budget). The activator also reports its own load every second, so a revision with
//! buffered requests is never scaled down.
//!
//! With telemetry, the activator is a hop of its own in the mesh's telemetry: Istio's
//! request metrics (reported as the source side of its hop to the replica, with the original
//! caller as source and the revision as destination), one access-log line and one span per
//! request (child of the caller's), and Knative's `revision_queue_depth` (requests at the
//! activator, waiting or being proxied) per revision.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Response;
use http_body_util::BodyExt as _;
use sluice_core::{NamespacedName, RevisionRoute, RoutingSnapshot, StatReport, StatSource};
use sluice_mesh::otlp::{SpanExporter, SpanKind, SpanRecord};
use sluice_mesh::telemetry::registry::{Family, Gauge};
use sluice_mesh::telemetry::{Exchange, HopTelemetry};
use sluice_mesh::tls::ConnectionSecurity;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout_at};

use sluice_core::replica::PROXY_HEADER;
use sluice_proxy::balance::{Acquired, Balancer, Lease, Refused, Ticket};
use sluice_proxy::timeouts::{Deadline, Timeouts};
use sluice_proxy::{
    Attempt, Forwarder, Outbound, ProxyBody, ProxyError, Retries, UpstreamPeer, hold_response,
    set_header,
};
use sluice_queue::StatsRecorder;

/// Activator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivatorConfig {
    /// Requests buffered per revision (waiting for a free replica slot) before new ones
    /// get 503.
    pub max_queued_per_revision: usize,
    /// How often the activator reports its own load to the autoscaler.
    pub stats_interval: Duration,
}

impl Default for ActivatorConfig {
    fn default() -> Self {
        Self {
            max_queued_per_revision: 1000,
            stats_interval: Duration::from_secs(1),
        }
    }
}

/// The activator. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Activator {
    config: ActivatorConfig,
    snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    stats: mpsc::Sender<StatReport>,
    forwarder: Forwarder,
    revisions: Mutex<HashMap<NamespacedName, Arc<RevisionState>>>,
    spans: Option<SpanExporter>,
    telemetry: Option<Telemetry>,
}

/// The activator's hop telemetry, and Knative's `revision_queue_depth` at the activator.
#[derive(Clone, Debug)]
struct Telemetry {
    hop: HopTelemetry,
    depth: Family<Gauge>,
}

#[derive(Debug)]
struct RevisionState {
    balancer: Arc<Balancer>,
    recorder: StatsRecorder,
    /// Whether the autoscaler was poked since the revision was last seen with replicas.
    poked: AtomicBool,
    /// This revision's `revision_queue_depth` at the activator, with telemetry.
    depth: Option<Arc<Gauge>>,
}

impl RevisionState {
    fn new(seed: u64, depth: Option<Arc<Gauge>>) -> Self {
        Self {
            balancer: Balancer::new(seed),
            recorder: StatsRecorder::new(Instant::now()),
            poked: AtomicBool::new(false),
            depth,
        }
    }

    /// Counts a request in (until its [`InFlight`] is dropped): in flight for the
    /// autoscaler, and in the queue depth (requests at the activator, waiting for a slot or
    /// being proxied).
    fn request_in(&self, now: Instant) {
        self.recorder.request_in(now, false);
        if let Some(depth) = &self.depth {
            depth.add(1.0);
        }
    }
}

/// Counts a request as in flight at the activator until dropped.
struct InFlight(Arc<RevisionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.recorder.request_out(Instant::now(), false);
        if let Some(depth) = &self.0.depth {
            depth.add(-1.0);
        }
    }
}

impl Activator {
    /// An activator reading routes from `snapshot` and reporting to `stats`.
    pub fn new(
        config: ActivatorConfig,
        snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
        stats: mpsc::Sender<StatReport>,
        forwarder: Forwarder,
    ) -> Self {
        Self {
            config,
            snapshot,
            stats,
            forwarder: forwarder.for_hop("activator"),
            revisions: Mutex::new(HashMap::new()),
            spans: None,
            telemetry: None,
        }
    }

    /// Also makes the activator a span of each request's trace, exported to `exporter`:
    /// the request is forwarded as the activator's child span, so the replica's span is the
    /// activator's child and the activator's is the router's.
    pub fn with_spans(mut self, exporter: SpanExporter) -> Self {
        if let Some(t) = self.telemetry.take() {
            self.telemetry = Some(Telemetry {
                hop: t.hop.with_spans(exporter.clone()),
                ..t
            });
        }
        self.spans = Some(exporter);
        self
    }

    /// Also records the activator's hop with `hop` (made with reporter name `activator`):
    /// Istio's request metrics, its access-log line and (when `hop` or
    /// [`Activator::with_spans`] exports spans) its span; and registers Knative's
    /// `revision_queue_depth` in `hop`'s registry, one series per revision
    /// (`pod_name="activator"`). `hop`'s registry should be the activator's own (or shared
    /// with hops that register no revision metrics), so the family is registered once.
    pub fn with_telemetry(mut self, hop: HopTelemetry) -> Self {
        let hop = match (&self.spans, hop.spans()) {
            (Some(exporter), None) => hop.with_spans(exporter.clone()),
            _ => hop,
        };
        self.telemetry = Some(Telemetry {
            depth: hop.registry().gauge(
                "revision_queue_depth",
                "The current number of items in the serving and waiting queue.",
                &sluice_mesh::telemetry::knative::REVISION_LABELS,
            ),
            hop,
        });
        self
    }

    fn state(&self, key: &NamespacedName) -> Arc<RevisionState> {
        let mut map = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        // The common case allocates nothing: the revision is known.
        if let Some(state) = map.get(key) {
            return state.clone();
        }
        let seed = map.len() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        // The activator knows the revision, not its service or configuration. A revision
        // forgotten and seen again gets the same series, whose count every request that
        // entered also leaves.
        let depth = self.telemetry.as_ref().and_then(|t| {
            t.depth.with(&[
                &key.namespace,
                "unknown",
                "unknown",
                &key.name,
                "activator",
                "activator",
            ])
        });
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(RevisionState::new(seed, depth)))
            .clone()
    }

    /// Starts recording `out`'s exchange, and forwards it as the activator's own span.
    fn start_exchange(
        &self,
        telemetry: &Telemetry,
        revision: &NamespacedName,
        out: &mut Outbound,
    ) -> Exchange {
        // The authority is the Host header's (the path is origin-form).
        let mut ex =
            telemetry
                .hop
                .start_head(out.method(), None, out.path(), out.version(), out.headers());
        ex.set_span(sluice_mesh::trace::propagate(out.headers_mut()));
        // The source side of the hop to the replica, as the router reports its own; the
        // source is the original caller (whom the activator attests to the replica).
        ex.set_source_side(out.caller().identity.as_ref());
        ex.labels.destination_workload = revision.name.clone().into();
        ex.labels.destination_workload_namespace = revision.namespace.clone().into();
        ex.labels.destination_revision = revision.name.clone().into();
        ex.entry.revision = revision.name.clone();
        let security = if self.forwarder.mesh().is_some() {
            ConnectionSecurity::MutualTls
        } else {
            ConnectionSecurity::None
        };
        ex.labels.connection_security_policy = security.label().into();
        ex.entry.connection_security_policy = security.label().to_owned();
        ex
    }

    /// Delivers `out` to a replica of `revision` within the revision's capacity, waiting
    /// (bounded) for a free slot; `start` is when the request arrived, and the wait counts
    /// against its timeout.
    pub async fn handle(
        &self,
        revision: &NamespacedName,
        out: Outbound,
        start: Instant,
    ) -> Response<ProxyBody> {
        self.handle_routed(revision, out, start, None).await
    }

    /// [`Activator::handle`] for a request the router sent to `revision` by its snapshot
    /// `routed`. Should a newer snapshot have dropped the revision meanwhile (its traffic moved
    /// on a moment ago), the request still goes to it, by `routed`'s entry, as it would had
    /// it reached a replica a moment earlier: the revision's replicas drain before they stop.
    pub async fn handle_routed(
        &self,
        revision: &NamespacedName,
        mut out: Outbound,
        start: Instant,
        routed: Option<Arc<RoutingSnapshot>>,
    ) -> Response<ProxyBody> {
        let mut exchange = self
            .telemetry
            .as_ref()
            .map(|t| self.start_exchange(t, revision, &mut out));
        let spans = self.spans.as_ref().filter(|_| exchange.is_none());
        let span = spans.map(|exporter| {
            let incoming = out
                .headers()
                .get(sluice_mesh::trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(sluice_mesh::trace::TraceParent::parse);
            let own = sluice_mesh::trace::propagate(out.headers_mut());
            let method = out.method().to_string();
            let path = out.path().to_owned();
            (exporter, incoming, own, method, path, SystemTime::now())
        });
        let mut upstream = None;
        let resp = match self
            .try_handle(revision, out, start, &mut upstream, routed)
            .await
        {
            Ok(resp) => {
                // The replica's identity, as the mTLS handshake verified it.
                if let Some(ex) = exchange.as_mut()
                    && let Some(UpstreamPeer(peer)) = resp.extensions().get::<UpstreamPeer>()
                {
                    ex.labels.destination_principal = peer.to_string().into();
                    ex.entry.destination_principal = peer.to_string();
                }
                resp
            }
            Err(err) => {
                if let Some(ex) = exchange.as_mut() {
                    ex.entry.response_flags = response_flags(&err).to_owned();
                }
                tracing::warn!(
                    revision = %revision,
                    reason = err.metric_label(),
                    "{}",
                    sluice_core::error_chain(&err)
                );
                err.into_response()
            }
        };
        if let Some((exporter, incoming, own, method, path, wall)) = span {
            // The span ends when the replica's response head is passed on (or the activator
            // answers itself), which covers the activator's wait for a replica.
            exporter.record(SpanRecord {
                trace_id: own.trace_id,
                span_id: own.parent_id,
                parent_span_id: incoming
                    .filter(|i| i.trace_id == own.trace_id)
                    .map(|i| i.parent_id),
                name: format!("activator {method}"),
                kind: SpanKind::Server,
                start: wall,
                end: SystemTime::now(),
                attributes: vec![
                    ("sluice.reporter".into(), "activator".into()),
                    ("http.request.method".into(), method),
                    ("url.path".into(), path),
                    ("sluice.revision".into(), revision.name.clone()),
                ],
                status_code: Some(resp.status().as_u16()),
            });
        }
        match exchange {
            Some(mut ex) => {
                if let Some(addr) = upstream {
                    ex.entry.upstream_host = addr.to_string();
                }
                ex.wrap(resp).map(|body| body.boxed())
            }
            None => resp,
        }
    }

    async fn try_handle(
        &self,
        key: &NamespacedName,
        mut out: Outbound,
        start: Instant,
        upstream: &mut Option<SocketAddr>,
        routed: Option<Arc<RoutingSnapshot>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut rx = self.snapshot.clone();
        let latest = rx.borrow_and_update().clone();
        let snapshot = match routed {
            Some(routed)
                if !latest.revisions.contains_key(key) && routed.revisions.contains_key(key) =>
            {
                routed
            }
            _ => latest,
        };
        let route = snapshot
            .revisions
            .get(key)
            .ok_or_else(|| ProxyError::UnknownRevision(key.clone()))?;
        let timeouts = Timeouts::of(route, snapshot.timeouts_for(key));
        let deadline = timeouts.response_deadline(start);
        let state = self.state(key);
        state.request_in(start);
        let in_flight = InFlight(state.clone());
        set_header(out.headers_mut(), PROXY_HEADER, "activator");

        let mut retries = Retries::new(deadline, timeouts.idle);
        let mut cold = false;
        // A retry takes the revision's replicas as they are now, not as they were when the
        // request arrived (the failed one may be gone by then).
        let mut current = snapshot.clone();
        loop {
            let route = current.revisions.get(key).unwrap_or(route);
            let lease = self
                .lease(
                    key,
                    route,
                    &state,
                    &mut rx,
                    deadline,
                    retries.avoid(),
                    &mut cold,
                )
                .await?;
            let endpoint = lease.addr();
            *upstream = Some(endpoint);
            let refused = |endpoint| state.balancer.eject(endpoint);
            match self
                .forwarder
                .attempt(&mut retries, key, endpoint, &mut out, refused)
                .await
            {
                Attempt::Done(resp) => {
                    if cold {
                        tracing::info!(
                            revision = %key,
                            cold_start_ms = start.elapsed().as_millis() as u64,
                            "cold start: request held by the activator answered after {:?}",
                            start.elapsed()
                        );
                    }
                    // The slot and the in-flight count last until the body is sent (or
                    // the upgraded connection closes).
                    return Ok(hold_response(resp, (lease, in_flight)));
                }
                Attempt::Failed(err) => return Err(err),
                Attempt::Retry => current = self.snapshot.borrow().clone(),
            }
        }
    }

    /// A lease on a replica slot, waiting for one until `deadline` if none is free.
    #[allow(clippy::too_many_arguments)]
    async fn lease(
        &self,
        key: &NamespacedName,
        route: &RevisionRoute,
        state: &RevisionState,
        rx: &mut watch::Receiver<Arc<RoutingSnapshot>>,
        deadline: Deadline,
        avoid: Option<std::net::SocketAddr>,
        cold: &mut bool,
    ) -> Result<Lease, ProxyError> {
        // A revision whose replicas keep failing answers at once, without a wait.
        if route.endpoints.is_empty()
            && let Some(err) = unavailable(key, route)
        {
            return Err(err);
        }
        let max = self.config.max_queued_per_revision;
        let ticket = match state.balancer.acquire(route, max, avoid) {
            Ok(Acquired::Now(lease)) => {
                state.poked.store(false, Ordering::Relaxed);
                return Ok(lease);
            }
            Ok(Acquired::Queued(ticket)) => ticket,
            Err(Refused::QueueFull) => {
                return Err(ProxyError::QueueFull {
                    revision: key.clone(),
                    limit: max,
                });
            }
        };
        *cold = true;
        // Scale from zero now rather than at the autoscaler's next tick (once per cold
        // spell). A full channel means the autoscaler already has reports queued.
        if route.endpoints.is_empty() && !state.poked.swap(true, Ordering::Relaxed) {
            let _ = self.stats.try_send(StatReport::poke(key.clone()));
        }
        let timed_out = || ProxyError::Timeout {
            hop: "activator",
            revision: key.clone(),
            kind: deadline.kind,
            timeout: deadline.limit,
        };
        let lease = timeout_at(deadline.at, wait(key, state, rx, ticket))
            .await
            .map_err(|_| timed_out())??;
        // A replica took it: the cold spell is over, and the next one pokes again. (Reset
        // only on an immediate lease before, a revision whose one request per cold spell
        // was always queued waited for the autoscaler's tick from its second cold start on:
        // ~1 s in local mode, seen by bench/cold-start.)
        state.poked.store(false, Ordering::Relaxed);
        Ok(lease)
    }

    /// Reports the activator's load per revision every `stats_interval`, until `stats`
    /// closes. Forgets revisions that left the routing snapshot.
    pub async fn run_stats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.stats_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let states: Vec<_> = {
                let snapshot = self.snapshot.borrow().clone();
                let mut map = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
                map.retain(|k, s| snapshot.revisions.contains_key(k) || s.recorder.in_flight() > 0);
                map.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
            };
            for (key, state) in states {
                let period = state.recorder.take_period(now);
                if period.request_count == 0 && period.average_concurrency == 0.0 {
                    continue;
                }
                let report = StatReport {
                    revision: key,
                    source: StatSource::Activator,
                    average_concurrency: period.average_concurrency,
                    average_proxied_concurrency: 0.0,
                    request_count: period.request_count,
                    proxied_request_count: 0,
                };
                if self.stats.send(report).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Envoy's response flag for a response the activator made itself.
fn response_flags(err: &ProxyError) -> &'static str {
    match err {
        // Upstream overflow: the revision's buffer is full.
        ProxyError::QueueFull { .. } => "UO",
        // No healthy upstream: the revision's replicas keep failing.
        ProxyError::Unavailable { .. } => "UH",
        // No route: the revision is not (any longer) known.
        ProxyError::UnknownRevision(_) | ProxyError::UnknownHost { .. } => "NR",
        ProxyError::Timeout { .. } => "UT",
        ProxyError::Upstream { source, .. } if source.is_connect() => "UF",
        ProxyError::Upstream { .. } => "UC",
        // The replica's queue layer could not reach its user process: as a connect failure.
        ProxyError::Unprocessed { .. } => "UF",
        // The request itself was refused (the status code says why).
        ProxyError::MissingHost
        | ProxyError::BadRequest(_)
        | ProxyError::PayloadTooLarge { .. } => "",
    }
}

/// The error for a revision that cannot serve, if it cannot.
fn unavailable(key: &NamespacedName, route: &RevisionRoute) -> Option<ProxyError> {
    route
        .unavailable
        .as_ref()
        .map(|reason| ProxyError::Unavailable {
            revision: key.clone(),
            reason: reason.clone(),
        })
}

/// Waits for `ticket` to be handed a lease, taking in every new snapshot meanwhile (new
/// replicas free slots for the queue at once).
async fn wait(
    key: &NamespacedName,
    state: &RevisionState,
    rx: &mut watch::Receiver<Arc<RoutingSnapshot>>,
    mut ticket: Ticket,
) -> Result<Lease, ProxyError> {
    loop {
        tokio::select! {
            lease = &mut ticket => {
                // The balancer never drops a live waiter's sender without sending.
                return lease.map_err(|_| ProxyError::UnknownRevision(key.clone()));
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    // The publisher is gone: the process is shutting down.
                    return Err(ProxyError::UnknownRevision(key.clone()));
                }
                let snap = rx.borrow_and_update().clone();
                let Some(route) = snap.revisions.get(key) else {
                    // Traffic moved on while this request waited: its revision's replicas
                    // drain before they stop, so it waits on for one of their slots (bounded
                    // by its deadline), unless the revision has none.
                    if state.balancer.replicas() == 0 {
                        return Err(ProxyError::UnknownRevision(key.clone()));
                    }
                    continue;
                };
                // The replica started for this request failed: say why now.
                if route.endpoints.is_empty()
                    && let Some(err) = unavailable(key, route)
                {
                    return Err(err);
                }
                state.balancer.sync(route);
            }
        }
    }
}
