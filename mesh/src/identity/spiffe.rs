//! SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Only that Kubernetes-style shape is a Sluice workload identity; anything else is refused
//! with the reason, so a certificate or policy naming a malformed ID fails loudly.

use std::fmt;
use std::str::FromStr;

/// The trust domain used when none is configured (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit).
const MAX_LEN: usize = 2048;

/// Why a string is not a Sluice SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The scheme is not `spiffe://`.
    #[error("SPIFFE ID {0:?} does not start with spiffe://")]
    Scheme(String),
    /// The trust domain is empty or has characters outside `[a-z0-9._-]`.
    #[error(
        "SPIFFE ID {0:?} has an invalid trust domain (lowercase letters, digits, '.', '-', '_')"
    )]
    TrustDomain(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "SPIFFE ID {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Path(String),
    /// Longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long, more than 2048")]
    TooLong(usize),
}

/// A workload identity: trust domain, namespace and service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The ID as Istio's policies name it: without the `spiffe://` scheme
    /// (`cluster.local/ns/default/sa/sleep`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Checks a trust domain name: non-empty, `[a-z0-9._-]` only.
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_trust_domain(td) {
            return Err(SpiffeIdError::TrustDomain(s.to_owned()));
        }
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] if valid_segment(ns) && valid_segment(sa) => Ok(Self {
                trust_domain: td.to_owned(),
                namespace: (*ns).to_owned(),
                service_account: (*sa).to_owned(),
            }),
            _ => Err(SpiffeIdError::Path(s.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(
            SpiffeId::new("cluster.local", "default", "sleep").unwrap(),
            id
        );
    }

    #[test]
    fn refuses_malformed() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", "Scheme"),
            ("spiffe:///ns/a/sa/b", "TrustDomain"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "TrustDomain"),
            ("spiffe://cluster.local", "Path"),
            ("spiffe://cluster.local/ns/a", "Path"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "Path"),
            ("spiffe://cluster.local/ns//sa/b", "Path"),
            ("spiffe://cluster.local/ns/../sa/b", "Path"),
            ("spiffe://cluster.local/sa/b/ns/a", "Path"),
        ];
        for (input, kind) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err();
            assert!(format!("{err:?}").starts_with(kind), "{input}: {err:?}");
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2100));
        assert_eq!(
            long.parse::<SpiffeId>().unwrap_err(),
            SpiffeIdError::TooLong(long.len())
        );
    }
}
