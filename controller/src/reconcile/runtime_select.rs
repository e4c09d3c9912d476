//! Picks the serving runtime for a model by KServe's rules: a named runtime (namespaced
//! first, then cluster) must exist, be enabled and support the format; otherwise candidates
//! are enabled single-model runtimes with an `autoSelect` format of that name (and version,
//! when given) speaking the protocol, namespaced before cluster-scoped, higher priority first.

use sluice_crds::inference_service::ModelSpec;
use sluice_crds::runtime::{ServingRuntime, SupportedModelFormat};

/// Why no runtime was selected: the condition reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoRuntime {
    /// Condition reason (`NoSupportingRuntime`, `RuntimeNotRecognized`, `RuntimeDisabled`…).
    pub reason: &'static str,
    /// Condition message.
    pub message: String,
}

fn supports(f: &SupportedModelFormat, model: &ModelSpec) -> bool {
    f.name == model.model_format.name
        && match (&model.model_format.version, &f.version) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        }
}

fn speaks(rt: &ServingRuntime, protocol: &str) -> bool {
    rt.spec.protocol_versions.is_empty() || rt.spec.protocol_versions.iter().any(|p| p == protocol)
}

fn priority(rt: &ServingRuntime, model: &ModelSpec) -> i64 {
    rt.spec
        .supported_model_formats
        .iter()
        .filter(|f| f.auto_select == Some(true) && supports(f, model))
        .filter_map(|f| f.priority)
        .max()
        .unwrap_or(0)
}

/// Selects a runtime for `model` among `namespaced` (the ISVC's namespace) and `cluster`.
pub fn select<'a>(
    model: &ModelSpec,
    namespaced: &'a [ServingRuntime],
    cluster: &'a [ServingRuntime],
) -> Result<&'a ServingRuntime, NoRuntime> {
    let protocol = model.protocol_version.as_deref().unwrap_or("v1");
    let format = match &model.model_format.version {
        Some(v) => format!("{} (version {v})", model.model_format.name),
        None => model.model_format.name.clone(),
    };
    if let Some(name) = &model.runtime {
        let rt = namespaced
            .iter()
            .chain(cluster)
            .find(|r| &r.metadata.name == name)
            .ok_or_else(|| NoRuntime {
                reason: "RuntimeNotRecognized",
                message: format!(
                    "No ServingRuntimes or ClusterServingRuntimes with the name: {name}"
                ),
            })?;
        if rt.spec.disabled == Some(true) {
            return Err(NoRuntime {
                reason: "RuntimeDisabled",
                message: format!("specified runtime {name} is disabled"),
            });
        }
        if !rt
            .spec
            .supported_model_formats
            .iter()
            .any(|f| supports(f, model))
        {
            return Err(NoRuntime {
                reason: "NoSupportingRuntime",
                message: format!(
                    "specified runtime {name} does not support specified framework/version {format}"
                ),
            });
        }
        if !speaks(rt, protocol) {
            return Err(NoRuntime {
                reason: "NoSupportingRuntime",
                message: format!("specified runtime {name} does not support protocol {protocol}"),
            });
        }
        return Ok(rt);
    }
    let candidates = |group: &'a [ServingRuntime]| {
        let mut c: Vec<&'a ServingRuntime> = group
            .iter()
            .filter(|r| r.spec.disabled != Some(true) && r.spec.multi_model != Some(true))
            .filter(|r| {
                r.spec
                    .supported_model_formats
                    .iter()
                    .any(|f| f.auto_select == Some(true) && supports(f, model))
            })
            .filter(|r| speaks(r, protocol))
            .collect();
        // Stable: equal priorities keep name order.
        c.sort_by_key(|r| std::cmp::Reverse(priority(r, model)));
        c
    };
    candidates(namespaced)
        .into_iter()
        .chain(candidates(cluster))
        .next()
        .ok_or_else(|| NoRuntime {
            reason: "NoSupportingRuntime",
            message: format!(
                "No runtime found to support predictor with model type: {format} and protocol {protocol}"
            ),
        })
}

#[cfg(test)]
mod tests {
    use sluice_crds::inference_service::ModelFormat;
    use sluice_crds::runtime::builtin_runtime;

    use super::*;

    fn model(format: &str, runtime: Option<&str>) -> ModelSpec {
        ModelSpec {
            model_format: ModelFormat {
                name: format.into(),
                version: None,
            },
            runtime: runtime.map(str::to_owned),
            ..ModelSpec::default()
        }
    }

    fn runtime(name: &str, format: &str, priority: i64, auto: bool) -> ServingRuntime {
        let mut r = builtin_runtime();
        r.metadata.name = name.into();
        r.spec.containers[0].image = Some(format!("{name}:latest"));
        r.spec.supported_model_formats = vec![SupportedModelFormat {
            name: format.into(),
            version: None,
            auto_select: Some(auto),
            priority: Some(priority),
        }];
        r
    }

    #[test]
    fn namespaced_before_cluster_then_priority() {
        let cluster = vec![builtin_runtime(), runtime("c-sk", "sklearn", 9, true)];
        let ns = vec![
            runtime("low", "sklearn", 1, true),
            runtime("high", "sklearn", 2, true),
        ];
        assert_eq!(
            select(&model("sklearn", None), &ns, &cluster)
                .unwrap()
                .metadata
                .name,
            "high"
        );
        assert_eq!(
            select(&model("sklearn", None), &[], &cluster)
                .unwrap()
                .metadata
                .name,
            "c-sk"
        );
        assert_eq!(
            select(&model("sluice-mlp", None), &ns, &cluster)
                .unwrap()
                .metadata
                .name,
            "sluice-candle"
        );
    }

    #[test]
    fn auto_select_disabled_and_protocol_rules() {
        let cluster = vec![runtime("manual", "sklearn", 1, false)];
        let no = select(&model("sklearn", None), &[], &cluster).unwrap_err();
        assert_eq!(no.reason, "NoSupportingRuntime");
        // Named, it may be used even without autoSelect.
        assert!(select(&model("sklearn", Some("manual")), &[], &cluster).is_ok());
        let mut disabled = runtime("off", "sklearn", 1, true);
        disabled.spec.disabled = Some(true);
        assert!(
            select(
                &model("sklearn", None),
                &[],
                std::slice::from_ref(&disabled)
            )
            .is_err()
        );
        assert_eq!(
            select(&model("sklearn", Some("off")), &[], &[disabled])
                .unwrap_err()
                .reason,
            "RuntimeDisabled"
        );
        assert_eq!(
            select(&model("sklearn", Some("nope")), &[], &cluster)
                .unwrap_err()
                .reason,
            "RuntimeNotRecognized"
        );
        let mut grpc = model("sluice-mlp", None);
        grpc.protocol_version = Some("grpc-v2".into());
        assert_eq!(
            select(&grpc, &[], &[builtin_runtime()]).unwrap_err().reason,
            "NoSupportingRuntime"
        );
    }
}
