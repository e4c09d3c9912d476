//! The routing snapshot: everything the router and activator need to place a request.
//!
//! The controller builds a whole new snapshot on every change and publishes it through a
//! watch channel; the data plane swaps it atomically, so a request keeps the snapshot it
//! started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::NamespacedName;

/// An immutable view of all routes and revisions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    /// Routes by lower-case host name (no port), e.g. `iris.default.localhost`.
    pub hosts: BTreeMap<String, HostRoute>,
    /// Every routable revision by key.
    pub revisions: BTreeMap<NamespacedName, RevisionRoute>,
    /// Response timeouts beyond `timeoutSeconds`, for revisions that set them
    /// (`responseStartTimeoutSeconds`, `idleTimeoutSeconds`); a revision missing here uses
    /// its `timeout` for the response start and has no idle limit.
    #[serde(default)]
    pub timeouts: BTreeMap<NamespacedName, ResponseTimeouts>,
}

/// A revision's optional response timeouts (Knative's `responseStartTimeoutSeconds` and
/// `idleTimeoutSeconds`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseTimeouts {
    /// Longest wait for the response to start; `None` = the revision's `timeout`.
    pub response_start: Option<Duration>,
    /// Longest time without a byte of the response body; `None` = no limit.
    pub idle: Option<Duration>,
}

/// Where the requests for one host go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRoute {
    /// The service (Knative Service or InferenceService) the host belongs to.
    pub service: NamespacedName,
    /// Weighted revision targets; weights sum to 100.
    pub targets: Vec<WeightedTarget>,
}

/// One revision and its share of a host's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedTarget {
    /// The revision receiving the traffic.
    pub revision: NamespacedName,
    /// Its share in percent.
    pub percent: u32,
}

/// A ready replica address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Socket address of the replica's serving port.
    pub addr: SocketAddr,
}

/// What the data plane knows of one revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevisionRoute {
    /// The revision.
    pub key: NamespacedName,
    /// Replicas that passed their readiness probe.
    pub endpoints: Vec<Endpoint>,
    /// Maximum concurrent requests per replica; 0 = unlimited.
    pub container_concurrency: u32,
    /// Request timeout (`timeoutSeconds`); time spent queued in the activator counts.
    pub timeout: Duration,
    /// Whether requests must go through the activator (at or near zero capacity).
    pub activator_in_path: bool,
    /// Why the revision cannot serve at all right now (its replicas keep failing); requests
    /// that find no ready replica fail fast with this instead of waiting.
    pub unavailable: Option<String>,
}

impl RoutingSnapshot {
    /// Looks a host up, ignoring case and any `:port` suffix.
    pub fn route_for_host(&self, host: &str) -> Option<&HostRoute> {
        let host = strip_port(host).to_ascii_lowercase();
        self.hosts.get(&host)
    }

    /// The route a `Knative-Serving-Tag: tag` header selects on `host`: the tag host
    /// `{tag}-{host}`, if it belongs to the same service.
    pub fn route_for_tag(&self, host: &str, tag: &str) -> Option<&HostRoute> {
        let base = self.route_for_host(host)?;
        let tagged = format!(
            "{}-{}",
            tag.to_ascii_lowercase(),
            strip_port(host).to_ascii_lowercase()
        );
        self.hosts
            .get(&tagged)
            .filter(|route| route.service == base.service)
    }

    /// The response timeouts of `revision` (defaults when it sets none).
    pub fn timeouts_for(&self, revision: &NamespacedName) -> ResponseTimeouts {
        self.timeouts.get(revision).copied().unwrap_or_default()
    }
}

/// Removes a `:port` suffix from a Host header value (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

impl HostRoute {
    /// Picks the target for a point `roll` in `[0, 100)`, walking the cumulative weights.
    pub fn pick(&self, roll: u32) -> Option<&NamespacedName> {
        let mut acc = 0;
        for target in &self.targets {
            acc += target.percent;
            if roll < acc {
                return Some(&target.revision);
            }
        }
        self.targets.last().map(|t| &t.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(weights: &[(&str, u32)]) -> HostRoute {
        HostRoute {
            service: NamespacedName::new("default", "svc"),
            targets: weights
                .iter()
                .map(|(name, percent)| WeightedTarget {
                    revision: NamespacedName::new("default", *name),
                    percent: *percent,
                })
                .collect(),
        }
    }

    #[test]
    fn host_lookup_ignores_port_and_case() {
        let mut snap = RoutingSnapshot::default();
        snap.hosts
            .insert("iris.default.localhost".into(), route(&[("a", 100)]));
        assert!(snap.route_for_host("IRIS.default.localhost:8080").is_some());
        assert!(snap.route_for_host("iris.default.localhost").is_some());
        assert!(snap.route_for_host("other.default.localhost").is_none());
    }

    #[test]
    fn tag_header_selects_the_tag_host_of_the_same_service() {
        let mut snap = RoutingSnapshot::default();
        snap.hosts
            .insert("svc.default.localhost".into(), route(&[("a", 100)]));
        snap.hosts
            .insert("canary-svc.default.localhost".into(), route(&[("b", 100)]));
        let mut other = route(&[("c", 100)]);
        other.service = NamespacedName::new("default", "other");
        snap.hosts.insert("x-svc.default.localhost".into(), other);
        let tagged = snap.route_for_tag("svc.default.localhost:8080", "Canary");
        assert_eq!(tagged.unwrap().targets[0].revision.name, "b");
        assert!(snap.route_for_tag("svc.default.localhost", "x").is_none());
        assert!(
            snap.route_for_tag("svc.default.localhost", "nope")
                .is_none()
        );
        assert!(
            snap.route_for_tag("nope.default.localhost", "canary")
                .is_none()
        );
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a.b:1"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
    }

    #[test]
    fn pick_walks_cumulative_weights() {
        let r = route(&[("a", 10), ("b", 90)]);
        assert_eq!(r.pick(0).unwrap().name, "a");
        assert_eq!(r.pick(9).unwrap().name, "a");
        assert_eq!(r.pick(10).unwrap().name, "b");
        assert_eq!(r.pick(99).unwrap().name, "b");
    }
}
