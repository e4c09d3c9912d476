//! The JSON body of every error Sluice answers over HTTP (data plane, admin API, model
//! server): `{"error": "..."}`, plus `"errors": [...]` when several things were wrong.

use serde::{Deserialize, Serialize};

/// An HTTP error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people (the whole error chain at the edge).
    pub error: String,
    /// Each problem, when there were several (validation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl ErrorBody {
    /// A body saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
            errors: Vec::new(),
        }
    }

    /// With each of several problems listed.
    pub fn with_errors(mut self, errors: Vec<String>) -> Self {
        self.errors = errors;
        self
    }
}
