//! KServe `InferenceService` (serving.kserve.io/v1beta1): the fields Sluice acts on today,
//! with everything else preserved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::validation::{Validator, is_dns1035_label};

/// An InferenceService.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceService {
    /// `serving.kserve.io/v1beta1`.
    pub api_version: String,
    /// `InferenceService`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: InferenceServiceSpec,
    /// Observed state, written by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InferenceServiceStatus>,
}

/// `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// The model-serving component.
    pub predictor: PredictorSpec,
    /// Fields not interpreted yet (e.g. `transformer`), preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `spec.predictor`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PredictorSpec {
    /// The model to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Lowest replica count; 0 allows scale to zero. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i64>,
    /// Highest replica count; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i64>,
    /// Autoscaling target per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target: Option<i64>,
    /// `concurrency` or `rps` (`cpu`, `memory` need an HPA, which local mode lacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_metric: Option<String>,
    /// Maximum in-flight requests per replica; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    /// Request timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Fields not interpreted yet, preserved (framework shorthands such as `sklearn`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `spec.predictor.model`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Format of the model, e.g. `{name: sluice-mlp}`.
    pub model_format: ModelFormat,
    /// Runtime to use; chosen automatically when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Where the model lives (a folder path or `file://` URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_uri: Option<String>,
    /// `v1`, `v2`, `grpc-v1` or `grpc-v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// Container fields (`args`, `env`, `resources`…), preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `modelFormat`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFormat {
    /// Format name, e.g. `sluice-mlp`, `sklearn`.
    pub name: String,
    /// Optional format version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// Public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `PredictorReady`, `IngressReady`, `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per-component status.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Generation the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `status.components.<component>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Newest revision that became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision: Option<String>,
    /// Newest revision created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision: Option<String>,
    /// The component's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Older `spec.predictor.<framework>` keys KServe still accepts.
pub const FRAMEWORK_SHORTHANDS: &[&str] = &[
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "pmml",
    "lightgbm",
    "paddle",
    "huggingface",
];

/// Model formats the built-in candle runtime serves.
pub const BUILTIN_FORMATS: &[&str] = &["sluice-mlp", "bert"];

impl InferenceService {
    /// Validates the spec; every error names its field path.
    pub fn validate(&self) -> Result<(), Vec<crate::ValidationError>> {
        let mut v = Validator::default();
        let name = &self.metadata.name;
        v.check(
            is_dns1035_label(name),
            "metadata.name",
            format!(
                "{name:?} must be a DNS-1035 label (lower-case letters, digits and '-', \
                 starting with a letter, at most 63 characters)"
            ),
        );
        let p = &self.spec.predictor;
        match &p.model {
            None if self.framework_shorthand().is_some() => {}
            None => v.error(
                "spec.predictor.model",
                "required: give spec.predictor.model {modelFormat, storageUri} (or a framework \
                 shorthand such as spec.predictor.sklearn)",
            ),
            Some(model) => {
                v.check(
                    !model.model_format.name.is_empty(),
                    "spec.predictor.model.modelFormat.name",
                    "required",
                );
                if let Some(pv) = &model.protocol_version {
                    v.check(
                        ["v1", "v2", "grpc-v1", "grpc-v2"].contains(&pv.as_str()),
                        "spec.predictor.model.protocolVersion",
                        format!("{pv:?} is not one of v1, v2, grpc-v1, grpc-v2"),
                    );
                }
                if let Some(uri) = &model.storage_uri {
                    v.check(
                        !uri.is_empty(),
                        "spec.predictor.model.storageUri",
                        "must not be empty",
                    );
                }
            }
        }
        if let Some(min) = p.min_replicas {
            v.check(min >= 0, "spec.predictor.minReplicas", "must be >= 0");
        }
        if let Some(max) = p.max_replicas {
            v.check(max >= 0, "spec.predictor.maxReplicas", "must be >= 0");
            if let Some(min) = p.min_replicas {
                v.check(
                    max == 0 || max >= min,
                    "spec.predictor.maxReplicas",
                    format!("{max} must be >= minReplicas ({min}) or 0 (unlimited)"),
                );
            }
        }
        if let Some(cc) = p.container_concurrency {
            v.check(
                (0..=1000).contains(&cc),
                "spec.predictor.containerConcurrency",
                format!("{cc} is outside [0, 1000]"),
            );
        }
        if let Some(t) = p.timeout {
            v.check(
                (1..=600).contains(&t),
                "spec.predictor.timeout",
                format!("{t} is outside [1, 600] seconds"),
            );
        }
        if let Some(target) = p.scale_target {
            v.check(target > 0, "spec.predictor.scaleTarget", "must be > 0");
        }
        if let Some(metric) = &p.scale_metric {
            v.check(
                ["concurrency", "rps"].contains(&metric.as_str()),
                "spec.predictor.scaleMetric",
                format!(
                    "{metric:?}: local mode scales on concurrency or rps (cpu and memory \
                     need a Kubernetes HPA)"
                ),
            );
        }
        if let Err(errors) = crate::autoscaling::validate_annotations(&self.metadata.annotations) {
            for e in errors {
                v.error(e.path, e.message);
            }
        }
        v.finish()
    }

    /// Fields kept as given but not acted on by this build, as (path, message), so a user
    /// learns what an upstream manifest asks for that Sluice does not do yet.
    pub fn warnings(&self) -> Vec<(String, String)> {
        const KEPT: &str = "kept, but not acted on by this build";
        let mut w = Vec::new();
        for key in self.spec.extra.keys() {
            w.push((format!("spec.{key}"), KEPT.to_owned()));
        }
        let shorthand_in_use = self.spec.predictor.model.is_none();
        for key in self.spec.predictor.extra.keys() {
            if shorthand_in_use && FRAMEWORK_SHORTHANDS.contains(&key.as_str()) {
                continue;
            }
            let message = if key == "canaryTrafficPercent" {
                format!(
                    "{KEPT}: canary rollouts arrive with the control-plane work; a new revision takes all traffic once ready"
                )
            } else {
                KEPT.to_owned()
            };
            w.push((format!("spec.predictor.{key}"), message));
        }
        if let Some(model) = &self.spec.predictor.model {
            for key in model.extra.keys() {
                w.push((format!("spec.predictor.model.{key}"), KEPT.to_owned()));
            }
            if let Some(pv) = model.protocol_version.as_deref().filter(|pv| *pv != "v2") {
                w.push((
                    "spec.predictor.model.protocolVersion".to_owned(),
                    format!("{pv:?}: the built-in runtime serves the Open Inference Protocol (v2) over REST in this build"),
                ));
            }
        }
        w.extend(crate::autoscaling::annotation_warnings(
            &self.metadata.annotations,
        ));
        w
    }

    /// The model spec, when present.
    pub fn model(&self) -> Option<&ModelSpec> {
        self.spec.predictor.model.as_ref()
    }

    /// An older-style framework shorthand (`spec.predictor.sklearn: {storageUri}`), read as
    /// a model of that format.
    pub fn framework_shorthand(&self) -> Option<ModelSpec> {
        self.spec.predictor.extra.iter().find_map(|(key, value)| {
            if !FRAMEWORK_SHORTHANDS.contains(&key.as_str()) {
                return None;
            }
            let mut model: ModelSpec = serde_json::from_value(serde_json::json!({
                "modelFormat": {"name": key}
            }))
            .ok()?;
            model.storage_uri = value.get("storageUri")?.as_str().map(str::to_owned);
            model.protocol_version = value
                .get("protocolVersion")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            Some(model)
        })
    }

    /// The model to serve: `spec.predictor.model`, else a framework shorthand.
    pub fn effective_model(&self) -> Option<ModelSpec> {
        self.model().cloned().or_else(|| self.framework_shorthand())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isvc(yaml: &str) -> InferenceService {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn valid_iris_passes_and_unknown_fields_survive() {
        let i = isvc(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
             metadata: {name: iris}\nspec:\n  predictor:\n    minReplicas: 0\n    \
             model: {modelFormat: {name: sluice-mlp}, storageUri: ./iris, args: [--x]}\n  \
             transformer: {containers: []}\n",
        );
        i.validate().unwrap();
        let back = serde_json::to_value(&i).unwrap();
        assert_eq!(
            back["spec"]["transformer"],
            serde_json::json!({"containers": []})
        );
        assert_eq!(
            back["spec"]["predictor"]["model"]["args"],
            serde_json::json!(["--x"])
        );
    }

    #[test]
    fn framework_shorthand_reads_as_a_model() {
        let i = isvc(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
             metadata: {name: sklearn-iris}\nspec:\n  predictor:\n    sklearn:\n      \
             protocolVersion: v2\n      storageUri: gs://seldon-models/sklearn/iris\n",
        );
        i.validate().unwrap();
        let m = i.effective_model().unwrap();
        assert_eq!(m.model_format.name, "sklearn");
        assert_eq!(
            m.storage_uri.as_deref(),
            Some("gs://seldon-models/sklearn/iris")
        );
    }

    #[test]
    fn fields_not_acted_on_are_reported() {
        let i = isvc(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
             metadata: {name: iris}\nspec:\n  predictor:\n    canaryTrafficPercent: 10\n    \
             model: {modelFormat: {name: sluice-mlp}, storageUri: ./iris, args: [--x]}\n  \
             transformer: {containers: []}\n",
        );
        let paths: Vec<String> = i.warnings().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "spec.transformer",
                "spec.predictor.canaryTrafficPercent",
                "spec.predictor.model.args"
            ]
        );
    }

    #[test]
    fn errors_name_their_fields() {
        let i = isvc(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
             metadata: {name: Iris}\nspec:\n  predictor:\n    minReplicas: 3\n    \
             maxReplicas: 2\n    containerConcurrency: 5000\n",
        );
        let errors = i.validate().unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.name",
                "spec.predictor.model",
                "spec.predictor.maxReplicas",
                "spec.predictor.containerConcurrency"
            ]
        );
    }
}
