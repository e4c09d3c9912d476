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

/// Kubernetes' messages for a name that is not a DNS-1035 label (empty when it is one).
pub fn dns1035_messages(name: &str) -> Vec<&'static str> {
    let mut msgs = Vec::new();
    if name.len() > 63 {
        msgs.push("must be no more than 63 characters");
    }
    let b = name.as_bytes();
    let shape_ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !shape_ok {
        msgs.push(DNS1035_MESSAGE);
    }
    msgs
}

/// Kubernetes' explanation of a DNS-1035 label.
pub const DNS1035_MESSAGE: &str = "a DNS-1035 label must consist of lower case alphanumeric \
     characters or '-', start with an alphabetic character, and end with an alphanumeric \
     character (e.g. 'my-name',  or 'abc-123', regex used for validation is \
     '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Go's `fmt.Sprint` of a string slice: `[a b]`.
pub fn go_list(items: &[&str]) -> String {
    format!("[{}]", items.join(" "))
}

/// Knative's `ErrOutOfBoundsValue` message.
pub fn out_of_bounds(
    value: impl fmt::Display,
    lower: impl fmt::Display,
    upper: impl fmt::Display,
) -> String {
    format!("expected {lower} <= {value} <= {upper}")
}

/// Checks `metadata.name` as the Kubernetes API server does.
pub fn check_object_name(v: &mut Validator, name: &str) {
    if name.is_empty() {
        v.error(
            "metadata.name",
            "Required value: name or generateName is required",
        );
        return;
    }
    let msgs = dns1035_messages(name);
    if !msgs.is_empty() {
        v.error(
            "metadata.name",
            format!("Invalid value: {name:?}: {}", msgs.join(", ")),
        );
    }
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
    fn dns_messages_match_kubernetes() {
        assert!(dns1035_messages("a-1").is_empty());
        assert_eq!(dns1035_messages("1a"), [DNS1035_MESSAGE]);
        assert_eq!(dns1035_messages(&"a".repeat(64)).len(), 1);
        assert_eq!(out_of_bounds(700, 0, 600), "expected 0 <= 700 <= 600");
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
