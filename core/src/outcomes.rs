//! Request outcomes per revision as the router counted them: what SLO-gated rollouts judge
//! a canary by. In Kubernetes mode each router posts its own (`RouterOutcomes`) to the
//! leading controller beside its activator's stats.

use serde::{Deserialize, Serialize};

/// The latency histogram bounds, in milliseconds: Istio's
/// `istio_request_duration_milliseconds` buckets, which every hop records.
pub const LATENCY_BOUNDS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Most revisions one router's post may carry.
pub const MAX_OUTCOME_REVISIONS: usize = 2048;

/// Cumulative request outcomes of one revision, as the router counted them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests.
    pub requests: u64,
    /// Requests that failed (5xx, or a gRPC status that means the server failed).
    pub errors: u64,
    /// Failures the model itself answered (500, gRPC INTERNAL or UNKNOWN).
    pub model_errors: u64,
    /// Cumulative latency histogram, one count per bound of [`LATENCY_BOUNDS_MS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_buckets: Vec<u64>,
}

impl Counts {
    /// What was counted since `earlier` (a reading of the same counters); `None` when a
    /// counter went down (the counters restarted in between).
    pub fn since(&self, earlier: &Counts) -> Option<Counts> {
        let sub = |a: u64, b: u64| a.checked_sub(b);
        let latency_buckets = if earlier.latency_buckets.is_empty() {
            self.latency_buckets.clone()
        } else {
            if self.latency_buckets.len() != earlier.latency_buckets.len() {
                return None;
            }
            self.latency_buckets
                .iter()
                .zip(&earlier.latency_buckets)
                .map(|(a, b)| sub(*a, *b))
                .collect::<Option<Vec<u64>>>()?
        };
        Some(Counts {
            requests: sub(self.requests, earlier.requests)?,
            errors: sub(self.errors, earlier.errors)?,
            model_errors: sub(self.model_errors, earlier.model_errors)?,
            latency_buckets,
        })
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.model_errors += other.model_errors;
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (a, b) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *a += b;
        }
    }
}

/// One revision's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionOutcome {
    /// Its namespace.
    pub namespace: String,
    /// The revision.
    pub revision: String,
    /// Its counts since the router started.
    pub counts: Counts,
}

/// What one router posts: its counts, and which run of which router counted them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterOutcomes {
    /// Unique to the router process (a restarted router counts from zero again).
    pub source: String,
    /// Every revision it routed to.
    pub revisions: Vec<RevisionOutcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_bucket_by_bucket() {
        let mut a = Counts {
            requests: 2,
            errors: 1,
            model_errors: 0,
            latency_buckets: vec![1, 2],
        };
        a.add(&Counts {
            requests: 3,
            errors: 0,
            model_errors: 1,
            latency_buckets: vec![0, 1, 3],
        });
        assert_eq!((a.requests, a.errors, a.model_errors), (5, 1, 1));
        assert_eq!(a.latency_buckets, [1, 3, 3]);
        let earlier = Counts {
            requests: 1,
            errors: 1,
            model_errors: 0,
            latency_buckets: vec![0, 1, 1],
        };
        let d = a.since(&earlier).unwrap();
        assert_eq!(
            (d.requests, d.errors, d.latency_buckets),
            (4, 0, vec![1, 2, 2])
        );
        assert_eq!(earlier.since(&a), None, "a counter went down: restarted");
    }
}
