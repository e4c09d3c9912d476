//! Validation errors that name the field at fault.

use std::fmt;

/// One thing wrong with a manifest, at a field path such as `spec.predictor.minReplicas`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    /// Dotted path of the offending field.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// Collects every error of an object, so a user sees them all at once.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<ValidationError>,
}

impl Validator {
    /// Records an error at `path`.
    pub fn error(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.errors.push(ValidationError {
            path: path.to_string(),
            message: message.to_string(),
        });
    }

    /// Records an error unless `ok`.
    pub fn check(&mut self, ok: bool, path: impl fmt::Display, message: impl fmt::Display) {
        if !ok {
            self.error(path, message);
        }
    }

    /// The errors found, or `Ok` when there are none.
    pub fn finish(self) -> Result<(), Vec<ValidationError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// Whether `name` is a DNS-1035 label: lower-case alphanumerics and '-', starting with a
/// letter, ending with an alphanumeric, at most 63 characters.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns1035_label("iris"));
        assert!(is_dns1035_label("iris-v2"));
        assert!(!is_dns1035_label("2iris"));
        assert!(!is_dns1035_label("Iris"));
        assert!(!is_dns1035_label("iris-"));
        assert!(!is_dns1035_label(""));
        assert!(!is_dns1035_label(&"a".repeat(64)));
    }

    #[test]
    fn validator_collects_all_errors() {
        let mut v = Validator::default();
        v.check(true, "a", "fine");
        v.check(false, "spec.x", "bad x");
        v.error("spec.y", "bad y");
        let errors = v.finish().unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].to_string(), "spec.x: bad x");
    }
}
