//! Where SLO-gated rollouts (`reconcile::slo_rollout`) read each revision's request outcomes:
//! the router hop's Istio metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`), which count every request the router sent to a
//! revision, whether it went straight to a replica or through the activator, as the client
//! saw it. `sluice up` reads its router's registry in-process ([`RegistrySignals`]); on
//! Kubernetes each router posts its own to the leader's stats endpoint and the leader adds
//! them up ([`RoutersSignals`]).

use sluice_autoscaler::endpoint::OutcomesBoard;
use sluice_mesh::telemetry::Registry;
use sluice_mesh::telemetry::outcomes::outcomes;

use crate::reconcile::slo_rollout::Signals;

/// A source of the router's request counters.
pub trait SignalSource: Send + Sync {
    /// The counters now.
    fn read(&self) -> Signals;
}

/// A name unique to this process's run, for counters that start from zero with it.
pub fn run_source(what: &str) -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{what}-{}-{started}", std::process::id())
}

/// The router hop's registry in this process; its `source` is unique to the process, so a
/// restarted controller measures the current step again.
pub struct RegistrySignals {
    registry: Registry,
    source: String,
}

impl RegistrySignals {
    /// Reads `registry` (the router hop's, not the activator's: that would count the
    /// requests it holds twice).
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            source: run_source("router"),
        }
    }
}

impl SignalSource for RegistrySignals {
    fn read(&self) -> Signals {
        Signals {
            source: self.source.clone(),
            counts: outcomes(&self.registry.encode()),
        }
    }
}

/// The sum of what the routers posted lately (Kubernetes mode); the source names the
/// routers counted, so one restarting, joining or going quiet measures the step again.
pub struct RoutersSignals(pub OutcomesBoard);

impl SignalSource for RoutersSignals {
    fn read(&self) -> Signals {
        let (source, counts) = self.0.merged();
        Signals { source, counts }
    }
}

#[cfg(test)]
mod tests {
    use sluice_mesh::telemetry::{AccessLog, HopTelemetry};

    use super::*;

    #[test]
    fn reads_outcomes_per_revision_from_the_router_hop() {
        let registry = Registry::new();
        let hop = HopTelemetry::new(registry.clone(), "router", AccessLog::Off);
        let record = |revision: &str, status: u16, grpc: Option<u32>| {
            let req = http::Request::get("/").body(()).unwrap();
            let mut ex = hop.start(&req);
            ex.labels.destination_workload_namespace = "default".into();
            ex.labels.destination_revision = revision.to_owned().into();
            ex.labels.grpc_response_status = grpc;
            ex.finish(status, 0);
        };
        for _ in 0..7 {
            record("hello-00001", 200, None);
        }
        record("hello-00002", 200, None);
        record("hello-00002", 500, None);
        record("hello-00002", 503, None);
        record("hello-00002", 200, Some(13));
        record("hello-00002", 200, Some(5));
        record("unknown", 404, None);
        let signals = RegistrySignals::new(registry).read();
        let one = &signals.counts[&("default".into(), "hello-00001".into())];
        assert_eq!((one.requests, one.errors, one.model_errors), (7, 0, 0));
        assert_eq!(
            one.latency_buckets.len(),
            sluice_core::outcomes::LATENCY_BOUNDS_MS.len()
        );
        assert_eq!(one.latency_buckets.last(), Some(&7));
        let two = &signals.counts[&("default".into(), "hello-00002".into())];
        assert_eq!((two.requests, two.errors, two.model_errors), (5, 3, 2));
        assert_eq!(signals.counts.len(), 2);
        assert!(signals.source.starts_with("router-"));
    }
}
