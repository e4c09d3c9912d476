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
    /// serving.knative.dev/v1 Configuration.
    Configuration,
    /// serving.knative.dev/v1 Revision.
    Revision,
    /// serving.knative.dev/v1 Route.
    Route,
    /// serving.kserve.io/v1alpha1 ServingRuntime (namespaced).
    ServingRuntime,
    /// serving.kserve.io/v1alpha1 ClusterServingRuntime (cluster-scoped).
    ClusterServingRuntime,
}

impl Kind {
    /// Every kind, in the order `get all` would list them.
    pub const ALL: [Kind; 7] = [
        Kind::InferenceService,
        Kind::Service,
        Kind::Configuration,
        Kind::Revision,
        Kind::Route,
        Kind::ServingRuntime,
        Kind::ClusterServingRuntime,
    ];

    /// The `kind` field value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::InferenceService => "InferenceService",
            Kind::Service => "Service",
            Kind::Configuration => "Configuration",
            Kind::Revision => "Revision",
            Kind::Route => "Route",
            Kind::ServingRuntime => "ServingRuntime",
            Kind::ClusterServingRuntime => "ClusterServingRuntime",
        }
    }

    /// The `apiVersion` field value.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::InferenceService => "serving.kserve.io/v1beta1",
            Kind::Service | Kind::Configuration | Kind::Revision | Kind::Route => {
                "serving.knative.dev/v1"
            }
            Kind::ServingRuntime | Kind::ClusterServingRuntime => "serving.kserve.io/v1alpha1",
        }
    }

    /// The lower-case plural, as in REST paths.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::InferenceService => "inferenceservices",
            Kind::Service => "services",
            Kind::Configuration => "configurations",
            Kind::Revision => "revisions",
            Kind::Route => "routes",
            Kind::ServingRuntime => "servingruntimes",
            Kind::ClusterServingRuntime => "clusterservingruntimes",
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            Kind::InferenceService => &["inferenceservice", "inferenceservices", "isvc", "isvcs"],
            Kind::Service => &["service", "services", "ksvc", "ksvcs", "kservice"],
            Kind::Configuration => &["configuration", "configurations", "config", "cfg"],
            Kind::Revision => &["revision", "revisions", "rev", "revs"],
            Kind::Route => &["route", "routes", "rt"],
            Kind::ServingRuntime => &["servingruntime", "servingruntimes"],
            Kind::ClusterServingRuntime => &["clusterservingruntime", "clusterservingruntimes"],
        }
    }

    /// Whether objects of this kind have no namespace (stored under the empty one).
    pub fn cluster_scoped(self) -> bool {
        self == Kind::ClusterServingRuntime
    }

    /// The printed short form, as kubectl's `KIND.GROUP`: `inferenceservice.serving.kserve.io`.
    pub fn qualified(self) -> String {
        let group = self.api_version().split_once('/').map_or("", |(g, _)| g);
        format!("{}.{group}", self.name().to_ascii_lowercase())
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
