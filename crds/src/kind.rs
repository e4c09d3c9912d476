//! The kinds Sluice stores, with the names a user may call them by.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stored kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// serving.kserve.io/v1beta1 InferenceService.
    InferenceService,
    /// serving.knative.dev/v1 Service.
    Service,
    /// serving.knative.dev/v1 Revision.
    Revision,
}

impl Kind {
    /// Every kind, in the order `get all` would list them.
    pub const ALL: [Kind; 3] = [Kind::InferenceService, Kind::Service, Kind::Revision];

    /// The `kind` field value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::InferenceService => "InferenceService",
            Kind::Service => "Service",
            Kind::Revision => "Revision",
        }
    }

    /// The `apiVersion` field value.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::InferenceService => "serving.kserve.io/v1beta1",
            Kind::Service | Kind::Revision => "serving.knative.dev/v1",
        }
    }

    /// The lower-case plural, as in REST paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::InferenceService => "inferenceservices",
            Kind::Service => "services",
            Kind::Revision => "revisions",
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            Kind::InferenceService => &["inferenceservice", "inferenceservices", "isvc", "isvcs"],
            Kind::Service => &["service", "services", "ksvc", "ksvcs", "kservice"],
            Kind::Revision => &["revision", "revisions", "rev", "revs"],
        }
    }

    /// Resolves a name a user typed (singular, plural or short, any case).
    pub fn from_user_name(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        let lower = lower.split_once('.').map_or(lower.as_str(), |(k, _)| k);
        Kind::ALL.into_iter().find(|k| k.aliases().contains(&lower))
    }

    /// Resolves an `apiVersion` + `kind` pair from a manifest.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_resolve() {
        for (name, kind) in [
            ("isvc", Kind::InferenceService),
            ("InferenceServices", Kind::InferenceService),
            ("inferenceservice.serving.kserve.io", Kind::InferenceService),
            ("ksvc", Kind::Service),
            ("service", Kind::Service),
            ("rev", Kind::Revision),
            ("revisions", Kind::Revision),
        ] {
            assert_eq!(Kind::from_user_name(name), Some(kind), "{name}");
        }
        assert_eq!(Kind::from_user_name("pod"), None);
    }

    #[test]
    fn types_resolve() {
        assert_eq!(
            Kind::from_type("serving.kserve.io/v1beta1", "InferenceService"),
            Some(Kind::InferenceService)
        );
        assert_eq!(
            Kind::from_type("serving.kserve.io/v1alpha1", "InferenceService"),
            None
        );
    }
}
