//! Knative `Revision` (serving.knative.dev/v1): an immutable snapshot of a template.

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::service::RevisionSpec;

/// Label naming a revision's Service.
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// Label naming a revision's Configuration.
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// Label carrying the Configuration generation a revision was stamped from.
pub const CONFIGURATION_GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";

/// A revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `Revision`.
    pub kind: String,
    /// Metadata (labels name the Service and Configuration).
    pub metadata: ObjectMeta,
    /// Frozen copy of the template's spec.
    pub spec: RevisionSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RevisionStatus>,
}

/// `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// `Ready`, `ResourcesAvailable`, `ContainerHealthy`, `Active`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Replicas running and ready.
    #[serde(default)]
    pub actual_replicas: u32,
    /// Replicas the autoscaler wants.
    #[serde(default)]
    pub desired_replicas: u32,
    /// Generation the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
