//! Reading request outcomes per revision back from a hop's Istio metrics (the exposition
//! text is the contract, so a registry in-process and a scraped `/metrics` read the same):
//! requests, failures (5xx, or a gRPC status that means the server failed), the model's own
//! failures (500, gRPC INTERNAL or UNKNOWN) and the latency histogram.

use std::collections::HashMap;

use sluice_core::outcomes::{Counts, LATENCY_BOUNDS_MS};

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

/// The request outcomes in a text exposition of one hop's Istio metrics (the router's), by
/// the destination's namespace and revision.
pub fn outcomes(text: &str) -> HashMap<(String, String), Counts> {
    let bounds = &LATENCY_BOUNDS_MS;
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
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_label_values() {
        let text = "istio_requests_total{destination_workload_namespace=\"a\\\"b\",\
                    destination_revision=\"r\",response_code=\"200\"} 3\n";
        let s = outcomes(text);
        assert_eq!(s[&("a\"b".into(), "r".into())].requests, 3);
    }
}
