//! KServe `InferenceService` (serving.kserve.io/v1beta1): the fields Sluice acts on today,
//! with everything else preserved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
use crate::validation::{Validator, is_dns1035_label};

/// The label KServe puts on everything an InferenceService owns (its component Services,
/// their Routes, Configurations and Revisions), naming it.
pub const INFERENCE_SERVICE_LABEL: &str = "serving.kserve.io/inferenceservice";

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
    /// A pre/post-processing component in front of the predictor: requests to the
    /// InferenceService's host reach it, and it calls the predictor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerSpec>,
    /// Fields not interpreted yet (e.g. `explainer`), preserved.
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
    /// Share of traffic for the latest revision while the last rolled-out one keeps the
    /// rest (tagged `prev`); absent = the latest takes all once ready; 0 = rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_traffic_percent: Option<i64>,
    /// Fields not interpreted yet, preserved (framework shorthands such as `sklearn`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `spec.transformer`: a pod-spec-like component (its first container runs behind
/// `sluice queue`) with the component extension fields of the predictor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransformerSpec {
    /// The user containers; local mode runs the first one.
    #[serde(default)]
    pub containers: Vec<crate::service::Container>,
    /// Lowest replica count; 0 allows scale to zero. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i64>,
    /// Highest replica count; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i64>,
    /// Autoscaling target per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target: Option<i64>,
    /// `concurrency` or `rps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_metric: Option<String>,
    /// Maximum in-flight requests per replica; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    /// Request timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Share of traffic for the latest transformer revision (as for the predictor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_traffic_percent: Option<i64>,
    /// Other pod-spec fields, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The component extension fields shared by the predictor and the transformer.
#[derive(Clone, Copy, Debug)]
pub struct ComponentFields<'a> {
    /// `minReplicas`.
    pub min_replicas: Option<i64>,
    /// `maxReplicas`.
    pub max_replicas: Option<i64>,
    /// `scaleTarget`.
    pub scale_target: Option<i64>,
    /// `scaleMetric`.
    pub scale_metric: Option<&'a str>,
    /// `containerConcurrency`.
    pub container_concurrency: Option<i64>,
    /// `timeout`.
    pub timeout: Option<i64>,
    /// `canaryTrafficPercent`.
    pub canary_traffic_percent: Option<i64>,
}

impl PredictorSpec {
    /// The component extension fields.
    pub fn fields(&self) -> ComponentFields<'_> {
        ComponentFields {
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            scale_target: self.scale_target,
            scale_metric: self.scale_metric.as_deref(),
            container_concurrency: self.container_concurrency,
            timeout: self.timeout,
            canary_traffic_percent: self.canary_traffic_percent,
        }
    }
}

impl TransformerSpec {
    /// The component extension fields.
    pub fn fields(&self) -> ComponentFields<'_> {
        ComponentFields {
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            scale_target: self.scale_target,
            scale_metric: self.scale_metric.as_deref(),
            container_concurrency: self.container_concurrency,
            timeout: self.timeout,
            canary_traffic_percent: self.canary_traffic_percent,
        }
    }
}

/// KServe's message for a component with no implementation (its `ExactlyOneErrorFor`).
pub const TRANSFORMER_EXACTLY_ONE: &str =
    "exactly one of [PodSpec] must be specified in TransformerSpec";

/// Checks the component extension fields under `path` (`spec.predictor`, `spec.transformer`).
fn validate_component(v: &mut Validator, path: &str, p: ComponentFields<'_>) {
    if let Some(min) = p.min_replicas {
        v.check(min >= 0, format!("{path}.minReplicas"), "must be >= 0");
    }
    if let Some(max) = p.max_replicas {
        v.check(max >= 0, format!("{path}.maxReplicas"), "must be >= 0");
        if let Some(min) = p.min_replicas {
            v.check(
                max == 0 || max >= min,
                format!("{path}.maxReplicas"),
                format!("{max} must be >= minReplicas ({min}) or 0 (unlimited)"),
            );
        }
    }
    if let Some(cc) = p.container_concurrency {
        v.check(
            (0..=1000).contains(&cc),
            format!("{path}.containerConcurrency"),
            format!("{cc} is outside [0, 1000]"),
        );
    }
    if let Some(pct) = p.canary_traffic_percent {
        v.check(
            (0..=100).contains(&pct),
            format!("{path}.canaryTrafficPercent"),
            crate::validation::out_of_bounds(pct, 0, 100),
        );
    }
    if let Some(t) = p.timeout {
        v.check(
            (1..=600).contains(&t),
            format!("{path}.timeout"),
            format!("{t} is outside [1, 600] seconds"),
        );
    }
    if let Some(target) = p.scale_target {
        v.check(target > 0, format!("{path}.scaleTarget"), "must be > 0");
    }
    if let Some(metric) = p.scale_metric {
        v.check(
            ["concurrency", "rps"].contains(&metric),
            format!("{path}.scaleMetric"),
            format!(
                "{metric:?}: local mode scales on concurrency or rps (cpu and memory \
                 need a Kubernetes HPA)"
            ),
        );
    }
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
    /// Address (the URL, for clients in the same network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<crate::service::Addressable>,
    /// `PredictorReady`, `IngressReady`, `Ready`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per-component status.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Generation the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The predictor model's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_status: Option<ModelStatus>,
}

/// `status.modelStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// `UpToDate`, `InProgress`, `BlockedByFailedLoad` or `InvalidSpec`.
    pub transition_status: String,
    /// Model states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<ModelRevisionStates>,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_info: Option<FailureInfo>,
    /// Copies of the model: ready ones (`totalCopies`) and recently failed ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<ModelCopies>,
}

/// `status.modelStatus.copies`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelCopies {
    /// Copies that failed to load recently.
    #[serde(default)]
    pub failed_copies: u32,
    /// Copies of the model (KServe counts the ready pods of the latest created revision).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total_copies: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `status.modelStatus.states`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRevisionStates {
    /// State of the model serving traffic (`Pending`, `Standby`, `Loading`, `Loaded`,
    /// `FailedToLoad`, or empty).
    #[serde(default)]
    pub active_model_state: String,
    /// State of the model being rolled out.
    #[serde(default)]
    pub target_model_state: String,
}

/// `status.modelStatus.lastFailureInfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureInfo {
    /// `ModelLoadFailed`, `NoSupportingRuntime`, `RuntimeNotRecognized`, `InvalidPredictorSpec`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    /// The last revision that had all the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_rolledout_revision: Option<String>,
    /// The rolled-out revision before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_rolledout_revision: Option<String>,
    /// The component Service's traffic (concrete revision names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<crate::traffic::TrafficTarget>,
    /// The component's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Annotation giving the predictor's `prev`/`latest` targets their own tag URLs.
pub const ENABLE_TAG_ROUTING: &str = "serving.kserve.io/enable-tag-routing";

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
        validate_component(&mut v, "spec.predictor", p.fields());
        if let Some(t) = &self.spec.transformer {
            if t.containers.is_empty() {
                v.error("spec.transformer", TRANSFORMER_EXACTLY_ONE);
            }
            validate_component(&mut v, "spec.transformer", t.fields());
        }
        if let Err(errors) = crate::autoscaling::validate_annotations(&self.metadata.annotations) {
            for e in errors {
                v.error(e.path, e.message);
            }
        }
        crate::slo_rollout::validate(&mut v, &self.metadata.annotations);
        if self
            .metadata
            .annotations
            .contains_key(crate::slo_rollout::STEPS)
        {
            for (path, canary) in [
                ("spec.predictor", p.canary_traffic_percent),
                (
                    "spec.transformer",
                    self.spec
                        .transformer
                        .as_ref()
                        .and_then(|t| t.canary_traffic_percent),
                ),
            ] {
                if canary.is_some() {
                    v.error(
                        format!("{path}.canaryTrafficPercent"),
                        format!(
                            "cannot be used with {:?}: the SLO-gated rollout moves the traffic \
                             itself (remove one of them)",
                            crate::slo_rollout::STEPS
                        ),
                    );
                }
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
        if let Some(t) = &self.spec.transformer {
            for key in t.extra.keys() {
                w.push((format!("spec.transformer.{key}"), KEPT.to_owned()));
            }
            for i in 1..t.containers.len() {
                w.push((
                    format!("spec.transformer.containers[{i}]"),
                    "kept, but local mode runs only the first container".to_owned(),
                ));
            }
        }
        let shorthand_in_use = self.spec.predictor.model.is_none();
        for key in self.spec.predictor.extra.keys() {
            if shorthand_in_use && FRAMEWORK_SHORTHANDS.contains(&key.as_str()) {
                continue;
            }
            w.push((format!("spec.predictor.{key}"), KEPT.to_owned()));
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
             transformer: {containers: [{command: [t], resources: {}}], minReplicas: 0}\n",
        );
        i.validate().unwrap();
        let back = serde_json::to_value(&i).unwrap();
        assert_eq!(
            back["spec"]["transformer"],
            serde_json::json!({"containers": [{"command": ["t"], "resources": {}}], "minReplicas": 0})
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
             transformer: {containers: [{command: [t]}, {command: [s]}], volumes: []}\n  \
             explainer: {}\n",
        );
        let paths: Vec<String> = i.warnings().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "spec.explainer",
                "spec.transformer.volumes",
                "spec.transformer.containers[1]",
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

    #[test]
    fn transformer_needs_a_container_and_valid_fields() {
        let i = isvc(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
             metadata: {name: iris}\nspec:\n  predictor:\n    \
             model: {modelFormat: {name: sluice-mlp}, storageUri: ./iris}\n  \
             transformer: {containers: [], timeout: 0, scaleMetric: cpu}\n",
        );
        let errors = i.validate().unwrap_err();
        let got: Vec<_> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got[0], ("spec.transformer", TRANSFORMER_EXACTLY_ONE));
        assert_eq!(
            got.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            [
                "spec.transformer",
                "spec.transformer.timeout",
                "spec.transformer.scaleMetric"
            ]
        );
    }
}
