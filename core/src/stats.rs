//! Per-revision load statistics, reported each second by queue layers and the activator.

use serde::{Deserialize, Serialize};

use crate::NamespacedName;

/// What one replica saw over one reporting period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeriodStats {
    /// Time-weighted average of in-flight requests.
    pub average_concurrency: f64,
    /// Of which: requests proxied by the activator.
    pub average_proxied_concurrency: f64,
    /// Requests that arrived.
    pub request_count: u64,
    /// Of which: proxied by the activator.
    pub proxied_request_count: u64,
    /// Requests in flight at the end of the period.
    pub in_flight: u64,
}

impl PeriodStats {
    /// The report this period makes for `revision`, measured by `source`.
    pub fn into_report(self, revision: NamespacedName, source: StatSource) -> StatReport {
        StatReport {
            revision,
            source,
            average_concurrency: self.average_concurrency,
            average_proxied_concurrency: self.average_proxied_concurrency,
            request_count: self.request_count,
            proxied_request_count: self.proxied_request_count,
        }
    }
}

/// Who measured a [`StatReport`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatSource {
    /// A replica's queue layer, named by its address or pod name.
    Replica(String),
    /// The activator (requests it is holding or proxying).
    Activator,
}

/// One second of load on one revision, as one source saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatReport {
    /// The revision measured.
    pub revision: NamespacedName,
    /// Who measured it.
    pub source: StatSource,
    /// Time-weighted average number of in-flight requests over the period.
    pub average_concurrency: f64,
    /// Of which: requests that came through the activator (counted there too).
    pub average_proxied_concurrency: f64,
    /// Requests that arrived during the period.
    pub request_count: u64,
    /// Of which: requests that came through the activator.
    pub proxied_request_count: u64,
}

impl StatReport {
    /// The immediate report the activator sends when a request arrives for a revision
    /// without capacity: one request waiting, so the autoscaler ticks at once.
    pub fn poke(revision: NamespacedName) -> Self {
        Self {
            revision,
            source: StatSource::Activator,
            average_concurrency: 1.0,
            average_proxied_concurrency: 0.0,
            request_count: 1,
            proxied_request_count: 0,
        }
    }

    /// The load this report adds to the revision-wide total, without counting twice what
    /// both the activator and a replica saw.
    pub fn own_concurrency(&self) -> f64 {
        match self.source {
            StatSource::Activator => self.average_concurrency,
            StatSource::Replica(_) => {
                (self.average_concurrency - self.average_proxied_concurrency).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_reports_subtract_proxied_share() {
        let r = StatReport {
            revision: NamespacedName::new("ns", "r"),
            source: StatSource::Replica("a".into()),
            average_concurrency: 3.0,
            average_proxied_concurrency: 1.0,
            request_count: 3,
            proxied_request_count: 1,
        };
        assert_eq!(r.own_concurrency(), 2.0);
        let poke = StatReport::poke(NamespacedName::new("ns", "r"));
        assert_eq!(poke.own_concurrency(), 1.0);
    }
}
