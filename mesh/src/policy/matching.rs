//! Istio's string matching for policy values: exact, `prefix*`, `*suffix`, and `*` (any
//! non-empty value).

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
