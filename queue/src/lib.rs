//! The queue layer: Knative's queue-proxy as a tower layer in front of one replica.
//!
//! It admits at most `containerConcurrency` requests at a time with a bounded wait queue
//! behind them (full → 503), measures time-weighted concurrency and request counts for the
//! autoscaler, answers readiness probes, and drains on shutdown. The model server links it
//! in-process; `sluice queue` runs it as a sidecar in front of a user process ([`sidecar`]),
//! which [`supervise`] starts, watches and stops with everything it forks ([`proctree`]).

pub mod hello;
mod layer;
pub mod mesh;
pub mod proctree;
pub mod sidecar;
mod stats;
pub mod supervise;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use layer::{QueueLayer, QueueService};
pub use sluice_core::PeriodStats;
pub use stats::StatsRecorder;

pub use sluice_core::replica::{PROBE_HEADER, PROBE_PATH, PROXY_HEADER, STATS_PATH};

/// Queue layer settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// At most this many requests run at once; 0 = unlimited.
    pub container_concurrency: u32,
    /// At most this many wait behind them; `None` = Knative's 10 × concurrency.
    pub max_queued: Option<usize>,
}

/// The shared state of one replica's queue layer.
#[derive(Debug)]
pub struct Queue {
    recorder: StatsRecorder,
    breaker: Option<Breaker>,
    draining: AtomicBool,
    idle: Notify,
}

#[derive(Debug)]
struct Breaker {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Why the queue layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueRejection {
    /// `containerConcurrency` requests are running and the wait queue is full.
    #[error("pending request queue full")]
    Full,
    /// The replica is shutting down.
    #[error("replica is draining")]
    Draining,
}

impl Queue {
    /// A queue layer state for one replica.
    pub fn new(config: QueueConfig, now: Instant) -> Self {
        let breaker = (config.container_concurrency > 0).then(|| {
            let cc = config.container_concurrency as usize;
            Breaker {
                running: Arc::new(Semaphore::new(cc)),
                waiting: AtomicUsize::new(0),
                max_waiting: config.max_queued.unwrap_or(10 * cc),
            }
        });
        Self {
            recorder: StatsRecorder::new(now),
            breaker,
            draining: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    /// The stats recorder (for per-second reports).
    pub fn recorder(&self) -> &StatsRecorder {
        &self.recorder
    }

    /// Answers a readiness probe: `(200, "queue")` when the app is ready and not draining.
    pub fn probe(&self, app_ready: bool) -> (u16, &'static str) {
        if self.draining.load(Ordering::Acquire) {
            (503, "draining")
        } else if app_ready {
            (200, "queue")
        } else {
            (503, "not ready")
        }
    }

    /// Starts draining: probes fail from now on; running requests go on.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.idle.notify_waiters();
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.recorder.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    async fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, QueueRejection> {
        let Some(b) = &self.breaker else {
            return Ok(None);
        };
        if let Ok(permit) = b.running.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        let waiting = b.waiting.fetch_add(1, Ordering::AcqRel);
        if waiting >= b.max_waiting {
            b.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueRejection::Full);
        }
        let permit = b.running.clone().acquire_owned().await;
        b.waiting.fetch_sub(1, Ordering::AcqRel);
        // The semaphore is never closed, so acquire cannot fail; map defensively anyway.
        permit.map(Some).map_err(|_| QueueRejection::Draining)
    }

    /// Admits one request (waiting for a slot if `containerConcurrency` are running, 503
    /// beyond the wait queue) and counts it until the returned guard is dropped.
    pub async fn enter(self: &Arc<Self>, proxied: bool) -> Result<Admitted, QueueRejection> {
        let permit = self.admit().await?;
        self.recorder.request_in(Instant::now(), proxied);
        Ok(Admitted {
            queue: self.clone(),
            proxied,
            _permit: permit,
        })
    }

    fn finished(&self, proxied: bool) {
        self.recorder.request_out(Instant::now(), proxied);
        if self.recorder.in_flight() == 0 {
            self.idle.notify_waiters();
        }
    }
}

/// A running request's slot in the queue layer; frees it (and counts the request done)
/// on drop.
#[derive(Debug)]
pub struct Admitted {
    queue: Arc<Queue>,
    proxied: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.queue.finished(self.proxied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_reflects_readiness_and_drain() {
        let q = Queue::new(
            QueueConfig {
                container_concurrency: 0,
                max_queued: None,
            },
            Instant::now(),
        );
        assert_eq!(q.probe(false), (503, "not ready"));
        assert_eq!(q.probe(true), (200, "queue"));
        q.start_drain();
        assert_eq!(q.probe(true), (503, "draining"));
        q.drained().await;
    }
}
