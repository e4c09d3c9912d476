//! Knative `Configuration` (serving.knative.dev/v1): a revision template; every template
//! change stamps a new immutable Revision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::service::RevisionTemplate;
use crate::validation::{Validator, check_object_name};

/// A Configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `Configuration`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: ConfigurationSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ConfigurationStatus>,
}

/// `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    /// The revision template.
    pub template: RevisionTemplate,
    /// Fields not interpreted, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    /// `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Newest ready revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    /// Newest revision created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    /// Generation the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Configuration {
    /// Knative's defaults.
    pub fn set_defaults(&mut self) {
        self.spec.template.set_defaults();
    }

    /// Validates a defaulted Configuration; every error names its field path.
    pub fn validate(&self) -> Result<(), Vec<crate::ValidationError>> {
        let mut v = Validator::default();
        check_object_name(&mut v, &self.metadata.name);
        self.spec
            .template
            .validate(&mut v, "spec.template", &self.metadata.name);
        v.finish()
    }

    /// Fields kept as given but not acted on, as (path, message).
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut w: Vec<(String, String)> = self
            .spec
            .extra
            .keys()
            .map(|k| {
                (
                    format!("spec.{k}"),
                    "kept, but not acted on by this build".to_owned(),
                )
            })
            .collect();
        w.extend(self.spec.template.warnings("spec.template"));
        w
    }
}
