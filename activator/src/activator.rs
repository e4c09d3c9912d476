//! The activator: holds requests for revisions without ready replicas and releases them
//! as replicas become ready.
//!
//! Each revision gets a bounded buffer; the first request to a revision at zero sends the
//! autoscaler an immediate stat so it scales up without waiting for its next tick. Waiting
//! counts against the revision's timeout. The activator also reports its own load every
//! second, so a revision with buffered requests is never scaled down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use sluice_core::{NamespacedName, RevisionRoute, RoutingSnapshot, StatReport, StatSource};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout_at};

use crate::error::ProxyError;
use crate::proxy::{Forwarder, ProxyBody, set_header};
use crate::queue::{PROXY_HEADER, StatsRecorder};

/// Activator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivatorConfig {
    /// Requests buffered per revision before new ones get 503.
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
}

#[derive(Debug)]
struct RevisionState {
    waiting: AtomicUsize,
    next: AtomicUsize,
    recorder: StatsRecorder,
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
            forwarder,
            revisions: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self, key: &NamespacedName) -> Arc<RevisionState> {
        let mut map = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        // The common case allocates nothing: the revision is known.
        if let Some(state) = map.get(key) {
            return state.clone();
        }
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(RevisionState {
                    waiting: AtomicUsize::new(0),
                    next: AtomicUsize::new(0),
                    recorder: StatsRecorder::new(Instant::now()),
                })
            })
            .clone()
    }

    /// Delivers `req` to a replica of `revision`, waiting for one if there is none.
    pub async fn handle(
        &self,
        revision: &NamespacedName,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        match self.try_handle(revision, req).await {
            Ok(resp) => resp,
            Err(err) => {
                tracing::warn!(
                    revision = %revision,
                    reason = err.metric_label(),
                    "{}",
                    sluice_core::error_chain(&err)
                );
                err.into_response()
            }
        }
    }

    async fn try_handle(
        &self,
        key: &NamespacedName,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let start = Instant::now();
        let snapshot = self.snapshot.borrow().clone();
        let route = snapshot
            .revisions
            .get(key)
            .ok_or_else(|| ProxyError::UnknownRevision(key.clone()))?;
        let deadline = start + route.timeout;
        let timed_out = || ProxyError::Timeout {
            revision: key.clone(),
            timeout: route.timeout,
        };
        let state = self.state(key);
        state.recorder.request_in(start, false);
        let _done = Done(&state.recorder);

        let (endpoint, cold) = match pick(route, &state) {
            Some(endpoint) => (endpoint, false),
            None => {
                // A revision whose replicas keep failing answers at once, without a wait.
                if let Some(err) = unavailable(key, route) {
                    return Err(err);
                }
                let _slot = Slot::reserve(&state, self.config.max_queued_per_revision).ok_or_else(
                    || ProxyError::QueueFull {
                        revision: key.clone(),
                        limit: self.config.max_queued_per_revision,
                    },
                )?;
                // Scale from zero now rather than at the autoscaler's next tick. A full
                // channel means the autoscaler already has reports queued; nothing is lost.
                let _ = self.stats.try_send(StatReport::poke(key.clone()));
                let endpoint = timeout_at(deadline, self.wait_for_endpoint(key, &state))
                    .await
                    .map_err(|_| timed_out())??;
                (endpoint, true)
            }
        };
        set_header(&mut req, PROXY_HEADER, "activator");
        let resp = timeout_at(deadline, self.forwarder.forward(key, endpoint, req))
            .await
            .map_err(|_| timed_out())??;
        if cold {
            tracing::info!(
                revision = %key,
                cold_start_ms = start.elapsed().as_millis() as u64,
                "cold start: request held by the activator answered after {:?}",
                start.elapsed()
            );
        }
        Ok(resp)
    }

    async fn wait_for_endpoint(
        &self,
        key: &NamespacedName,
        state: &RevisionState,
    ) -> Result<SocketAddr, ProxyError> {
        let mut rx = self.snapshot.clone();
        loop {
            {
                let snap = rx.borrow_and_update();
                let route = snap
                    .revisions
                    .get(key)
                    .ok_or_else(|| ProxyError::UnknownRevision(key.clone()))?;
                if let Some(endpoint) = pick(route, state) {
                    return Ok(endpoint);
                }
                // The replica started for this request failed: say why now.
                if let Some(err) = unavailable(key, route) {
                    return Err(err);
                }
            }
            if rx.changed().await.is_err() {
                // The publisher is gone: the process is shutting down.
                return Err(ProxyError::UnknownRevision(key.clone()));
            }
        }
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

/// Round robin over ready endpoints (the policies by `containerConcurrency` come later).
fn pick(route: &RevisionRoute, state: &RevisionState) -> Option<SocketAddr> {
    if route.endpoints.is_empty() {
        return None;
    }
    let i = state.next.fetch_add(1, Ordering::Relaxed) % route.endpoints.len();
    Some(route.endpoints[i].addr)
}

struct Done<'a>(&'a StatsRecorder);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.request_out(Instant::now(), false);
    }
}

/// A place in a revision's bounded buffer, given back on drop.
struct Slot<'a>(&'a RevisionState);

impl<'a> Slot<'a> {
    fn reserve(state: &'a RevisionState, limit: usize) -> Option<Self> {
        let prev = state.waiting.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            state.waiting.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            Some(Slot(state))
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_returned() {
        let state = RevisionState {
            waiting: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            recorder: StatsRecorder::new(Instant::now()),
        };
        let a = Slot::reserve(&state, 2).unwrap();
        let _b = Slot::reserve(&state, 2).unwrap();
        assert!(Slot::reserve(&state, 2).is_none());
        drop(a);
        assert!(Slot::reserve(&state, 2).is_some());
    }
}
