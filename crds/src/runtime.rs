//! KServe `ServingRuntime` and `ClusterServingRuntime` (serving.kserve.io/v1alpha1): which
//! model formats and protocols a server image supports; the InferenceService controller
//! picks one by KServe's rules. Sluice ships a built-in one for its own candle runtime.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::service::Container;
use crate::validation::{Validator, check_object_name};

/// Name of the built-in ClusterServingRuntime (Sluice's candle model-server).
pub const BUILTIN_RUNTIME: &str = "sluice-candle";
/// The image the built-in runtime names: it runs in-process as `sluice model-server`.
pub const BUILTIN_IMAGE: &str = "sluice";

/// A ServingRuntime or ClusterServingRuntime (same shape; the kind says its scope).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServingRuntime {
    /// `serving.kserve.io/v1alpha1`.
    pub api_version: String,
    /// `ServingRuntime` or `ClusterServingRuntime`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: ServingRuntimeSpec,
    /// Unused; kept for round trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServingRuntimeSpec {
    /// Formats this runtime serves.
    #[serde(default)]
    pub supported_model_formats: Vec<SupportedModelFormat>,
    /// Protocols it speaks (`v1`, `v2`, `grpc-v1`, `grpc-v2`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol_versions: Vec<String>,
    /// A disabled runtime is never selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Whether it serves many models per server (ModelMesh); never selected for a predictor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_model: Option<bool>,
    /// The server containers.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Fields not interpreted, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `spec.supportedModelFormats[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedModelFormat {
    /// Format name (`sklearn`, `sluice-mlp`…).
    pub name: String,
    /// Format version, if it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether an InferenceService that names no runtime may get this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_select: Option<bool>,
    /// Higher wins among candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

impl ServingRuntime {
    /// Validates; every error names its field path.
    pub fn validate(&self) -> Result<(), Vec<crate::ValidationError>> {
        let mut v = Validator::default();
        check_object_name(&mut v, &self.metadata.name);
        for (i, f) in self.spec.supported_model_formats.iter().enumerate() {
            v.check(
                !f.name.is_empty(),
                format!("spec.supportedModelFormats[{i}].name"),
                "Required value",
            );
            if let Some(p) = f.priority {
                v.check(
                    p >= 1,
                    format!("spec.supportedModelFormats[{i}].priority"),
                    format!("Invalid value: {p}: should be greater than zero"),
                );
            }
        }
        // KServe: two formats of the same name and version with auto-select must not
        // share a priority.
        let auto: Vec<_> = self
            .spec
            .supported_model_formats
            .iter()
            .filter(|f| f.auto_select == Some(true) && f.priority.is_some())
            .collect();
        for (i, a) in auto.iter().enumerate() {
            for b in &auto[i + 1..] {
                if a.name == b.name && a.version == b.version && a.priority == b.priority {
                    v.error(
                        "spec.supportedModelFormats",
                        format!(
                            "different priorities assigned for the same model format {}",
                            a.name
                        ),
                    );
                }
            }
        }
        for (i, pv) in self.spec.protocol_versions.iter().enumerate() {
            v.check(
                ["v1", "v2", "grpc-v1", "grpc-v2"].contains(&pv.as_str()),
                format!("spec.protocolVersions[{i}]"),
                format!("{pv:?} is not one of v1, v2, grpc-v1, grpc-v2"),
            );
        }
        v.finish()
    }

    /// Fields kept but not acted on.
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

    /// Whether it runs in local mode: only the built-in runtime does (no images are run).
    pub fn is_builtin(&self) -> bool {
        self.metadata.name == BUILTIN_RUNTIME
            && self.kind == "ClusterServingRuntime"
            && self
                .spec
                .containers
                .first()
                .and_then(|c| c.image.as_deref())
                == Some(BUILTIN_IMAGE)
    }

    /// The first container's image, if any.
    pub fn image(&self) -> Option<&str> {
        self.spec.containers.first()?.image.as_deref()
    }
}

/// The built-in ClusterServingRuntime: Sluice's candle model-server.
pub fn builtin_runtime() -> ServingRuntime {
    let format = |name: &str| SupportedModelFormat {
        name: name.to_owned(),
        version: None,
        auto_select: Some(true),
        priority: Some(1),
    };
    ServingRuntime {
        api_version: "serving.kserve.io/v1alpha1".into(),
        kind: "ClusterServingRuntime".into(),
        metadata: ObjectMeta {
            name: BUILTIN_RUNTIME.into(),
            namespace: Some(String::new()),
            ..ObjectMeta::default()
        },
        spec: ServingRuntimeSpec {
            supported_model_formats: vec![
                format("sluice-mlp"),
                format("bert"),
                format("safetensors"),
            ],
            protocol_versions: vec!["v1".into(), "v2".into()],
            containers: vec![Container {
                name: Some("kserve-container".into()),
                image: Some(BUILTIN_IMAGE.into()),
                command: vec!["sluice".into(), "model-server".into()],
                ..Container::default()
            }],
            ..ServingRuntimeSpec::default()
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_valid_and_recognized() {
        let b = builtin_runtime();
        b.validate().unwrap();
        assert!(b.is_builtin());
        let mut other = b.clone();
        other.spec.containers[0].image = Some("kserve/sklearnserver".into());
        assert!(!other.is_builtin());
    }

    #[test]
    fn priorities_must_be_positive() {
        let mut b = builtin_runtime();
        b.spec.supported_model_formats[0].priority = Some(0);
        let errors = b.validate().unwrap_err();
        assert_eq!(errors[0].path, "spec.supportedModelFormats[0].priority");
    }
}
