//! InferenceService → its predictor Service, and the InferenceService's status.

use std::collections::BTreeMap;

use sluice_crds::autoscaling;
use sluice_crds::inference_service::{
    BUILTIN_FORMATS, ComponentStatus, InferenceService, InferenceServiceStatus,
};
use sluice_crds::meta::find_condition;
use sluice_crds::service::{Container, RevisionSpec, RevisionTemplate, Service, ServiceSpec};
use sluice_crds::{Condition, Kind, ObjectMeta, OwnerReference};

/// KServe's default `minReplicas`.
const DEFAULT_MIN_REPLICAS: i64 = 1;

/// The predictor Service's name: `<isvc>-predictor`.
pub fn predictor_name(isvc: &str) -> String {
    format!("{isvc}-predictor")
}

/// Why an InferenceService cannot get a predictor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoRuntime {
    /// Condition reason.
    pub reason: &'static str,
    /// Condition message.
    pub message: String,
}

/// The predictor Service for an InferenceService, or why there is none.
pub fn predictor_service(isvc: &InferenceService) -> Result<Service, NoRuntime> {
    let model = isvc.effective_model().ok_or_else(|| NoRuntime {
        reason: "InvalidSpec",
        message: "spec.predictor names no model".into(),
    })?;
    let format = model.model_format.name.as_str();
    if !BUILTIN_FORMATS.contains(&format) {
        return Err(NoRuntime {
            reason: "NoSupportingRuntime",
            message: format!(
                "no runtime supports model format {format:?}; the built-in candle runtime \
                 serves {}",
                BUILTIN_FORMATS.join(", ")
            ),
        });
    }
    if let Some(runtime) = model.runtime.as_ref().filter(|r| *r != "sluice-candle") {
        return Err(NoRuntime {
            reason: "RuntimeNotFound",
            message: format!("runtime {runtime:?} is not known (available: sluice-candle)"),
        });
    }
    let storage_uri = model.storage_uri.clone().ok_or_else(|| NoRuntime {
        reason: "InvalidSpec",
        message: "spec.predictor.model.storageUri is required by the sluice-candle runtime".into(),
    })?;
    let p = &isvc.spec.predictor;
    let meta = &isvc.metadata;

    // KServe maps component fields onto Knative autoscaling annotations.
    let mut annotations: BTreeMap<String, String> = meta.annotations.clone();
    let min = p.min_replicas.map(|m| m.to_string()).or_else(|| {
        (!annotations.contains_key(autoscaling::MIN_SCALE))
            .then(|| DEFAULT_MIN_REPLICAS.to_string())
    });
    if let Some(min) = min {
        annotations.insert(autoscaling::MIN_SCALE.into(), min);
    }
    if let Some(max) = p.max_replicas {
        annotations.insert(autoscaling::MAX_SCALE.into(), max.to_string());
    }
    if let Some(target) = p.scale_target {
        annotations.insert(autoscaling::TARGET.into(), target.to_string());
    }
    if let Some(metric) = &p.scale_metric {
        annotations.insert(autoscaling::METRIC.into(), metric.clone());
    }
    let cc = p.container_concurrency.unwrap_or(0);
    let container = Container {
        name: Some("kserve-container".into()),
        image: Some("sluice".into()),
        command: vec!["sluice".into(), "model-server".into()],
        args: vec![
            "--model-name".into(),
            meta.name.clone(),
            "--model-format".into(),
            format.to_owned(),
            "--storage-uri".into(),
            storage_uri,
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--container-concurrency".into(),
            cc.to_string(),
        ],
        ..Container::default()
    };
    let mut labels = meta.labels.clone();
    labels.insert(
        "serving.kserve.io/inferenceservice".into(),
        meta.name.clone(),
    );
    labels.insert("component".into(), "predictor".into());
    Ok(Service {
        api_version: Kind::Service.api_version().into(),
        kind: Kind::Service.name().into(),
        metadata: ObjectMeta {
            name: predictor_name(&meta.name),
            namespace: Some(meta.namespace().to_owned()),
            labels: labels.clone(),
            owner_references: vec![OwnerReference {
                api_version: Kind::InferenceService.api_version().into(),
                kind: Kind::InferenceService.name().into(),
                name: meta.name.clone(),
                uid: meta.uid.clone().unwrap_or_default(),
                controller: true,
            }],
            ..ObjectMeta::default()
        },
        spec: ServiceSpec {
            template: RevisionTemplate {
                metadata: ObjectMeta {
                    labels,
                    annotations,
                    ..ObjectMeta::default()
                },
                spec: RevisionSpec {
                    container_concurrency: Some(cc),
                    timeout_seconds: p.timeout,
                    containers: vec![container],
                    ..RevisionSpec::default()
                },
            },
            traffic: Vec::new(),
        },
        status: None,
    })
}

/// The InferenceService's status from its predictor Service (or the reason it has none).
pub fn isvc_status(
    isvc: &InferenceService,
    predictor: Result<Option<&Service>, &NoRuntime>,
    url: &str,
) -> InferenceServiceStatus {
    let generation = isvc.metadata.generation;
    let mut status = InferenceServiceStatus {
        url: None,
        conditions: Vec::new(),
        components: BTreeMap::new(),
        observed_generation: generation,
    };
    let predictor_ready = match predictor {
        Err(no) => Condition::failed("PredictorReady", no.reason, no.message.clone()),
        Ok(None) => Condition::unknown("PredictorReady", "Creating", "creating the predictor"),
        Ok(Some(svc)) => {
            let svc_status = svc.status.clone().unwrap_or_default();
            status.components.insert(
                "predictor".into(),
                ComponentStatus {
                    latest_ready_revision: svc_status.latest_ready_revision_name.clone(),
                    latest_created_revision: svc_status.latest_created_revision_name.clone(),
                    url: svc_status.url.clone(),
                },
            );
            match find_condition(&svc_status.conditions, "Ready") {
                Some(c) => c.renamed("PredictorReady"),
                None => {
                    Condition::unknown("PredictorReady", "Deploying", "waiting for the predictor")
                }
            }
        }
    };
    let routed = status
        .components
        .get("predictor")
        .is_some_and(|c| c.latest_ready_revision.is_some());
    let ingress = if routed {
        status.url = Some(url.to_owned());
        Condition::ok("IngressReady")
    } else {
        Condition::unknown(
            "IngressReady",
            "NoReadyRevision",
            "no revision is ready to route to",
        )
    };
    let ready = if predictor_ready.is_true() && ingress.is_true() {
        Condition::ok("Ready")
    } else if !predictor_ready.is_true() {
        predictor_ready.renamed("Ready")
    } else {
        ingress.renamed("Ready")
    };
    status.conditions = vec![ingress, predictor_ready, ready];
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isvc(extra: &str) -> InferenceService {
        serde_yaml::from_str(&format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
             metadata: {{name: iris, namespace: default, uid: u1}}\nspec:\n  predictor:\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn maps_component_fields_to_annotations_and_args() {
        let i = isvc(
            "    minReplicas: 0\n    maxReplicas: 3\n    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: /m\n",
        );
        let svc = predictor_service(&i).unwrap();
        assert_eq!(svc.metadata.name, "iris-predictor");
        let ann = &svc.spec.template.metadata.annotations;
        assert_eq!(ann[autoscaling::MIN_SCALE], "0");
        assert_eq!(ann[autoscaling::MAX_SCALE], "3");
        let c = &svc.spec.template.spec.containers[0];
        assert_eq!(c.command, ["sluice", "model-server"]);
        assert!(c.args.windows(2).any(|w| w == ["--storage-uri", "/m"]));
        assert_eq!(svc.metadata.owner_references[0].uid, "u1");
    }

    #[test]
    fn min_scale_annotation_is_kept_when_min_replicas_is_absent() {
        let mut i =
            isvc("    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: /m\n");
        assert_eq!(
            predictor_service(&i)
                .unwrap()
                .spec
                .template
                .metadata
                .annotations[autoscaling::MIN_SCALE],
            "1"
        );
        i.metadata
            .annotations
            .insert(autoscaling::MIN_SCALE.into(), "0".into());
        assert_eq!(
            predictor_service(&i)
                .unwrap()
                .spec
                .template
                .metadata
                .annotations[autoscaling::MIN_SCALE],
            "0"
        );
    }

    #[test]
    fn unsupported_format_is_no_supporting_runtime() {
        let i = isvc("    sklearn:\n      storageUri: gs://x\n");
        let no = predictor_service(&i).unwrap_err();
        assert_eq!(no.reason, "NoSupportingRuntime");
        let status = isvc_status(&i, Err(&no), "http://iris.default.localhost");
        let ready = find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("NoSupportingRuntime"));
        assert!(status.url.is_none());
    }
}
