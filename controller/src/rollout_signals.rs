//! Where SLO-gated rollouts (`reconcile::slo_rollout`) read each revision's request outcomes:
//! the router hop's Istio metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`), which count every request the router sent to a
//! revision, whether it went straight to a replica or through the activator, as the
//! client saw it. The text exposition is the contract, so the same reading works on the
//! router's registry in-process (`sluice up`) and on a scraped `/metrics`.

use std::collections::HashMap;

use sluice_crds::slo_rollout::Counts;
use sluice_mesh::telemetry::Registry;

use crate::reconcile::slo_rollout::Signals;

/// A source of the router's request counters.
pub trait SignalSource: Send + Sync {
    /// The counters now.
    fn read(&self) -> Signals;
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
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            registry,
            source: format!("router-{}-{started}", std::process::id()),
        }
    }
}

impl SignalSource for RegistrySignals {
    fn read(&self) -> Signals {
        parse_exposition(&self.registry.encode(), &self.source)
    }
}

/// gRPC statuses that mean the server failed (as Istio's and Flagger's success rates count
/// them): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
const GRPC_FAILED: [&str; 6] = ["2", "4", "12", "13", "14", "15"];
/// Of those, the ones a model server answers when the model itself fails.
const GRPC_MODEL_FAILED: [&str; 2] = ["2", "13"];

/// One sample line: the metric name, its labels, its value.
fn sample(line: &str) -> Option<(&str, HashMap<&str, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some((name, HashMap::new(), value.trim().parse().ok()?));
        }
    };
    let mut labels = HashMap::new();
    let mut rest = rest;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            rest = after;
            break;
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim(), value);
        rest = &after[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The request counters in a text exposition of router-hop Istio metrics, by the
/// destination's namespace and revision.
pub fn parse_exposition(text: &str, source: &str) -> Signals {
    let bounds = Counts::bounds_ms();
    let mut counts: HashMap<(String, String), Counts> = HashMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let (Some(ns), Some(rev)) = (
            labels.get("destination_workload_namespace"),
            labels.get("destination_revision"),
        ) else {
            continue;
        };
        if rev == "unknown" || rev.is_empty() {
            continue;
        }
        let n = value.max(0.0) as u64;
        let entry = || (ns.clone(), rev.clone());
        match name {
            "istio_requests_total" => {
                let code = labels.get("response_code").map_or("", String::as_str);
                let grpc = labels
                    .get("grpc_response_status")
                    .map_or("", String::as_str);
                let c = counts.entry(entry()).or_default();
                c.requests += n;
                if code.starts_with('5') || GRPC_FAILED.contains(&grpc) {
                    c.errors += n;
                }
                if code == "500" || GRPC_MODEL_FAILED.contains(&grpc) {
                    c.model_errors += n;
                }
            }
            "istio_request_duration_milliseconds_bucket" => {
                let Some(le) = labels.get("le").and_then(|le| le.parse::<f64>().ok()) else {
                    continue;
                };
                let Some(i) = bounds.iter().position(|b| (b - le).abs() < 1e-9) else {
                    continue;
                };
                let c = counts.entry(entry()).or_default();
                c.latency_buckets.resize(bounds.len(), 0);
                c.latency_buckets[i] += n;
            }
            _ => {}
        }
    }
    Signals {
        source: source.to_owned(),
        counts,
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
            ex.labels.destination_revision = revision.into();
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
        assert_eq!(one.latency_buckets.len(), Counts::bounds_ms().len());
        assert_eq!(one.latency_buckets.last(), Some(&7));
        let two = &signals.counts[&("default".into(), "hello-00002".into())];
        assert_eq!((two.requests, two.errors, two.model_errors), (5, 3, 2));
        assert_eq!(signals.counts.len(), 2);
        assert!(signals.source.starts_with("router-"));
    }

    #[test]
    fn parses_escaped_label_values() {
        let text = "istio_requests_total{destination_workload_namespace=\"a\\\"b\",\
                    destination_revision=\"r\",response_code=\"200\"} 3\n";
        let s = parse_exposition(text, "x");
        assert_eq!(s.counts[&("a\"b".into(), "r".into())].requests, 3);
    }
}
