//! Names of namespaced objects (services, revisions).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A `namespace/name` pair identifying a namespaced object, e.g. a revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamespacedName {
    /// The namespace, e.g. `default`.
    pub namespace: String,
    /// The object's name within its namespace.
    pub name: String,
}

/// A `namespace/name` string that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not of the form namespace/name")]
pub struct KeyError {
    input: String,
}

impl NamespacedName {
    /// Builds a key from its two parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(input: &str) -> Result<Self, KeyError> {
        match input.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(KeyError {
                input: input.to_owned(),
            }),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let key = NamespacedName::parse("default/iris-predictor-00001").unwrap();
        assert_eq!(key, NamespacedName::new("default", "iris-predictor-00001"));
        assert_eq!(key.to_string(), "default/iris-predictor-00001");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "a", "/b", "a/", "a/b/c"] {
            assert!(
                NamespacedName::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }
}
