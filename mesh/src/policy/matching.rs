//! Istio's matching of policy values: strings (exact, `prefix*`, `*suffix`, and `*`, any
//! non-empty value) and IP addresses against CIDR blocks.

use std::net::IpAddr;

/// Whether `value` matches `pattern`.
pub fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// Whether `value` matches any of `patterns`.
pub fn any(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| matches(p, value))
}

/// Why `pattern` is not a valid Istio match pattern, if it is not.
pub fn invalid(pattern: &str) -> Option<&'static str> {
    if pattern.is_empty() {
        return Some("empty value");
    }
    let inner = pattern
        .strip_prefix('*')
        .unwrap_or(pattern)
        .strip_suffix('*')
        .unwrap_or_else(|| pattern.strip_prefix('*').unwrap_or(pattern));
    if pattern.len() > 1 && pattern.starts_with('*') && pattern.ends_with('*') {
        return Some("'*' may be at the start or the end, not both");
    }
    if inner.contains('*') {
        return Some("'*' is only allowed at the start or the end");
    }
    None
}

/// An IP address or CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_prefix_suffix_and_presence() {
        assert!(matches("/api", "/api"));
        assert!(!matches("/api", "/api/x"));
        assert!(matches("/api/*", "/api/x"));
        assert!(matches("*.json", "/a/b.json"));
        assert!(!matches("*.json", "/a/b.yaml"));
        assert!(matches("*", "anything"));
        assert!(!matches("*", ""));
    }

    #[test]
    fn validates_patterns() {
        assert_eq!(invalid("/a/*"), None);
        assert_eq!(invalid("*"), None);
        assert_eq!(invalid("*.x"), None);
        assert!(invalid("/a*b").is_some());
        assert!(invalid("*a*").is_some());
        assert!(invalid("").is_some());
    }
}
