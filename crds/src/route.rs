//! Knative `Route` (serving.knative.dev/v1): named traffic targets over revisions, with a
//! URL per route and per tag.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::service::Addressable;
use crate::traffic::{self, TrafficOwner, TrafficTarget};
use crate::validation::{Validator, check_object_name};

/// A Route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `Route`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    #[serde(default)]
    pub spec: RouteSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

/// `spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Traffic targets.
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
    /// Fields not interpreted, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// `AllTrafficAssigned`, `IngressReady`, `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Traffic with concrete revision names (tagged targets carry their URL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
    /// Generation the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Gradual rollouts in progress (`serving.knative.dev/rollout-duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
    /// The SLO-gated rollout of the `latestRevision` target (`serving.sluice.dev/rollout-*`),
    /// in progress or the last one's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_analysis: Option<crate::slo_rollout::RolloutAnalysis>,
}

impl Route {
    /// Knative's defaults.
    pub fn set_defaults(&mut self) {
        traffic::set_defaults(&mut self.spec.traffic, TrafficOwner::Route);
    }

    /// Validates a defaulted Route; every error names its field path.
    pub fn validate(&self) -> Result<(), Vec<crate::ValidationError>> {
        let mut v = Validator::default();
        check_object_name(&mut v, &self.metadata.name);
        crate::rollout::validate(&mut v, &self.metadata.annotations);
        crate::slo_rollout::validate(&mut v, &self.metadata.annotations);
        traffic::validate(
            &mut v,
            "spec.traffic",
            &self.spec.traffic,
            TrafficOwner::Route,
        );
        v.finish()
    }

    /// Fields kept as given but not acted on, as (path, message).
    pub fn warnings(&self) -> Vec<(String, String)> {
        self.spec
            .extra
            .keys()
            .map(|k| {
                (
                    format!("spec.{k}"),
                    "kept, but not acted on by this build".to_owned(),
                )
            })
            .collect()
    }
}
