//! InferenceService → its predictor Service (runtime chosen by KServe's rules, KServe's
//! canary traffic) and, with `spec.transformer`, its transformer Service (the user's
//! container behind `sluice queue`, told where the predictor is); and the
//! InferenceService's status: conditions, rolled-out revisions, traffic and `modelStatus`.

use std::collections::{BTreeMap, HashMap};

use sluice_crds::autoscaling;
use sluice_crds::inference_service::{
    ComponentFields, ComponentStatus, ENABLE_TAG_ROUTING, FailureInfo, InferenceService,
    InferenceServiceStatus, ModelCopies, ModelRevisionStates, ModelStatus,
};
use sluice_crds::meta::find_condition;
use sluice_crds::runtime::ServingRuntime;
use sluice_crds::service::{
    Container, RevisionSpec, RevisionTemplate, Service, ServiceSpec, ServiceStatus, TrafficTarget,
};
use sluice_crds::{Condition, ConditionStatus, Kind, ObjectMeta, OwnerReference};

use super::revision::IN_PROCESS_QUEUE_ANNOTATION;
use super::runtime_select;
pub use super::runtime_select::NoRuntime;
use crate::runtime::ModelStorage;

/// KServe's default `minReplicas`.
const DEFAULT_MIN_REPLICAS: i64 = 1;

/// The predictor Service's name: `<isvc>-predictor`.
pub fn predictor_name(isvc: &str) -> String {
    format!("{isvc}-predictor")
}

/// The transformer Service's name: `<isvc>-transformer`.
pub fn transformer_name(isvc: &str) -> String {
    format!("{isvc}-transformer")
}

/// The runtimes an InferenceService may choose from: its namespace's, and the cluster's.
pub struct Runtimes<'a> {
    /// ServingRuntimes by namespace.
    pub namespaced: &'a HashMap<String, Vec<ServingRuntime>>,
    /// ClusterServingRuntimes (the built-in one included).
    pub cluster: &'a [ServingRuntime],
    /// Which `storageUri`s the replicas can load.
    pub storage: ModelStorage,
}

/// What the model server is given for a `storageUri`, or why the replicas cannot load it:
/// `http(s)://` everywhere (the model server downloads it, checked against its
/// `SHA256SUMS`); a folder path or `file://` only where replicas run on this machine.
fn model_storage_uri(uri: &str, storage: ModelStorage) -> Result<String, NoRuntime> {
    let unsupported = |message: String| NoRuntime {
        reason: "UnsupportedStorageURI",
        message,
    };
    let path = match uri.split_once("://") {
        Some(("http" | "https", _)) => return Ok(uri.to_owned()),
        Some(("file", path)) => path,
        None => uri,
        Some((scheme, _)) => {
            return Err(unsupported(format!(
                "storageUri {uri:?} uses scheme {scheme:?}, which Sluice cannot fetch \
                 (give an http:// or https:// folder with a SHA256SUMS manifest{})",
                match storage {
                    ModelStorage::Local => ", a local folder or a file:// URI",
                    ModelStorage::Network => "",
                }
            )));
        }
    };
    match storage {
        ModelStorage::Local => Ok(path.to_owned()),
        ModelStorage::Network => Err(unsupported(format!(
            "storageUri {uri:?} is a path on the machine the manifest came from; a Pod on a \
             node cannot read it. Serve the model folder over http:// or https:// with a \
             SHA256SUMS manifest (as `sha256sum` writes it) and give that URL"
        ))),
    }
}

/// KServe's traffic for a component: with `canaryTrafficPercent` and a rolled-out revision,
/// the latest gets P% and the last rolled-out one the rest, tagged `prev`; otherwise the
/// latest gets everything. `latest` is tagged when tag routing is enabled.
pub fn component_traffic(isvc: &InferenceService) -> Vec<TrafficTarget> {
    traffic_for(
        isvc,
        "predictor",
        isvc.spec.predictor.canary_traffic_percent,
    )
}

/// [`component_traffic`] for the named component and its `canaryTrafficPercent`.
fn traffic_for(
    isvc: &InferenceService,
    component: &str,
    canary: Option<i64>,
) -> Vec<TrafficTarget> {
    let tagged = isvc
        .metadata
        .annotations
        .get(ENABLE_TAG_ROUTING)
        .is_some_and(|v| v == "true");
    let latest_tag = tagged.then(|| "latest".to_owned());
    let rolled_out = isvc
        .status
        .as_ref()
        .and_then(|s| s.components.get(component))
        .and_then(|c| c.latest_rolledout_revision.clone())
        .filter(|r| !r.is_empty());
    match (canary, rolled_out) {
        (Some(pct), Some(prev)) => {
            let mut t = vec![TrafficTarget {
                tag: latest_tag,
                latest_revision: Some(true),
                percent: Some(pct),
                ..TrafficTarget::default()
            }];
            if pct < 100 {
                t.push(TrafficTarget {
                    tag: Some("prev".into()),
                    revision_name: Some(prev),
                    latest_revision: Some(false),
                    percent: Some(100 - pct),
                    ..TrafficTarget::default()
                });
            }
            t
        }
        _ => vec![TrafficTarget {
            tag: latest_tag,
            latest_revision: Some(true),
            percent: Some(100),
            ..TrafficTarget::default()
        }],
    }
}

/// The predictor Service for an InferenceService, or why there is none.
pub fn predictor_service(
    isvc: &InferenceService,
    runtimes: &Runtimes<'_>,
) -> Result<Service, NoRuntime> {
    let model = isvc.effective_model().ok_or_else(|| NoRuntime {
        reason: "InvalidPredictorSpec",
        message: "spec.predictor names no model".into(),
    })?;
    let namespaced = runtimes
        .namespaced
        .get(isvc.metadata.namespace())
        .map_or(&[][..], Vec::as_slice);
    let runtime = runtime_select::select(&model, namespaced, runtimes.cluster)?;
    if !runtime.is_builtin() {
        return Err(NoRuntime {
            reason: "RuntimeNotRunnable",
            message: format!(
                "{} {:?} selected for model format {:?} runs image {:?}; local mode runs no \
                 images (the built-in ClusterServingRuntime {:?} serves sluice-mlp, safetensors \
                 and bert)",
                runtime.kind,
                runtime.metadata.name,
                model.model_format.name,
                runtime.image().unwrap_or_default(),
                sluice_crds::runtime::BUILTIN_RUNTIME,
            ),
        });
    }
    let storage_uri = model.storage_uri.clone().ok_or_else(|| NoRuntime {
        reason: "InvalidPredictorSpec",
        message: "spec.predictor.model.storageUri is required by the sluice-candle runtime".into(),
    })?;
    let storage = model_storage_uri(&storage_uri, runtimes.storage)?;
    let p = &isvc.spec.predictor;
    let meta = &isvc.metadata;
    let mut annotations = component_annotations(isvc, p.fields());
    annotations.insert(IN_PROCESS_QUEUE_ANNOTATION.into(), "true".into());
    let cc = p.container_concurrency.unwrap_or(0);
    let container = Container {
        name: Some("kserve-container".into()),
        image: runtime.image().map(str::to_owned),
        command: vec!["sluice".into(), "model-server".into()],
        args: vec![
            "--model-name".into(),
            meta.name.clone(),
            "--model-format".into(),
            model.model_format.name.clone(),
            "--storage-uri".into(),
            storage,
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--container-concurrency".into(),
            cc.to_string(),
        ],
        ..Container::default()
    };
    let labels = component_labels(isvc, "predictor");
    let mut template_labels = labels.clone();
    template_labels.insert(
        "serving.kserve.io/servingruntime".into(),
        runtime.metadata.name.clone(),
    );
    Ok(component_service(
        isvc,
        Component {
            name: predictor_name(&meta.name),
            labels,
            template_labels,
            annotations,
            container,
            traffic: component_traffic(isvc),
        },
        p.fields(),
    ))
}

/// The host:port a transformer reaches its predictor at: the predictor Service's own host
/// on the router (local mode has no cluster DNS; the router routes by `Host`).
pub fn predictor_host(isvc: &InferenceService, domain: &str, port: Option<u16>) -> String {
    let host = format!(
        "{}.{}.{domain}",
        predictor_name(&isvc.metadata.name),
        isvc.metadata.namespace()
    )
    .to_ascii_lowercase();
    format!("{host}:{}", port.unwrap_or(80))
}

/// The transformer Service (`<isvc>-transformer`) when `spec.transformer` is given: its
/// first container runs behind `sluice queue` like any Knative revision, with KServe's
/// `--model_name <isvc>`, `--predictor_host <predictor_host>`, `--protocol <predictor
/// protocol>` and `--http_port $(PORT)` appended unless given (and `PREDICTOR_HOST` in its
/// environment).
pub fn transformer_service(isvc: &InferenceService, predictor_host: &str) -> Option<Service> {
    let t = isvc.spec.transformer.as_ref()?;
    let mut container = t.containers.first().cloned().unwrap_or_default();
    if container.name.is_none() {
        container.name = Some("kserve-container".into());
    }
    let has = |c: &Container, flag: &str| {
        c.args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if !has(&container, "--model_name") {
        container
            .args
            .extend(["--model_name".to_owned(), isvc.metadata.name.clone()]);
    }
    if !has(&container, "--predictor_host") {
        container
            .args
            .extend(["--predictor_host".to_owned(), predictor_host.to_owned()]);
    }
    let protocol = isvc
        .effective_model()
        .and_then(|m| m.protocol_version)
        .unwrap_or_else(|| "v1".into());
    if !has(&container, "--protocol") {
        container.args.extend(["--protocol".to_owned(), protocol]);
    }
    // KServe passes the serving port too; locally it is chosen when the replica starts,
    // so the argument is the kubelet-style `$(PORT)` that `sluice queue` expands.
    if !has(&container, "--http_port") {
        container
            .args
            .extend(["--http_port".to_owned(), "$(PORT)".to_owned()]);
    }
    if !container.env.iter().any(|e| e.name == "PREDICTOR_HOST") {
        container.env.push(sluice_crds::service::EnvVar::new(
            "PREDICTOR_HOST",
            predictor_host,
        ));
    }
    let labels = component_labels(isvc, "transformer");
    Some(component_service(
        isvc,
        Component {
            name: transformer_name(&isvc.metadata.name),
            template_labels: labels.clone(),
            labels,
            annotations: component_annotations(isvc, t.fields()),
            container,
            traffic: traffic_for(isvc, "transformer", t.canary_traffic_percent),
        },
        t.fields(),
    ))
}

/// The prefix of the SLO-gated rollout's annotations (`sluice_crds::slo_rollout`).
const SLO_ROLLOUT_PREFIX: &str = "serving.sluice.dev/rollout-";

/// KServe maps component fields onto Knative autoscaling annotations.
fn component_annotations(
    isvc: &InferenceService,
    p: ComponentFields<'_>,
) -> BTreeMap<String, String> {
    let mut annotations: BTreeMap<String, String> = isvc.metadata.annotations.clone();
    annotations.remove(ENABLE_TAG_ROUTING);
    // The SLO-gated rollout's annotations go on the component Service (and so its Route),
    // not on the revision template: changing a gate is not a new revision.
    annotations.retain(|k, _| !k.starts_with(SLO_ROLLOUT_PREFIX));
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
    if let Some(metric) = p.scale_metric {
        annotations.insert(autoscaling::METRIC.into(), metric.to_owned());
    }
    annotations
}

/// The labels KServe puts on a component's Service.
fn component_labels(isvc: &InferenceService, component: &str) -> BTreeMap<String, String> {
    let mut labels = isvc.metadata.labels.clone();
    labels.insert(
        sluice_crds::inference_service::INFERENCE_SERVICE_LABEL.into(),
        isvc.metadata.name.clone(),
    );
    labels.insert("component".into(), component.into());
    labels
}

/// What differs between the predictor's and the transformer's Service.
struct Component {
    name: String,
    labels: BTreeMap<String, String>,
    template_labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    container: Container,
    traffic: Vec<TrafficTarget>,
}

/// A component's Service, owned by the InferenceService.
fn component_service(isvc: &InferenceService, c: Component, p: ComponentFields<'_>) -> Service {
    let meta = &isvc.metadata;
    let mut svc = Service {
        api_version: Kind::Service.api_version().into(),
        kind: Kind::Service.name().into(),
        metadata: ObjectMeta {
            name: c.name,
            namespace: Some(meta.namespace().to_owned()),
            labels: c.labels,
            annotations: meta
                .annotations
                .iter()
                .filter(|(k, _)| k.starts_with(SLO_ROLLOUT_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
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
                    labels: c.template_labels,
                    annotations: c.annotations,
                    ..ObjectMeta::default()
                },
                spec: RevisionSpec {
                    container_concurrency: Some(p.container_concurrency.unwrap_or(0)),
                    timeout_seconds: p.timeout,
                    containers: vec![c.container],
                    ..RevisionSpec::default()
                },
            },
            traffic: c.traffic,
            extra: BTreeMap::new(),
        },
        status: None,
    };
    svc.set_defaults();
    svc
}

/// KServe's rolled-out tracking: a revision is rolled out once it is the latest ready one
/// and has all the traffic; a rollback of a rolled-out revision restores the previous one.
fn propagate_rollout(component: &mut ComponentStatus, svc: &ServiceStatus) {
    let latest_ready = svc.latest_ready_revision_name.clone().unwrap_or_default();
    let latest_created = svc.latest_created_revision_name.clone().unwrap_or_default();
    let mut by_revision: HashMap<&str, i64> = HashMap::new();
    for t in &svc.traffic {
        if let Some(p) = t.percent {
            *by_revision
                .entry(t.revision_name.as_deref().unwrap_or_default())
                .or_default() += p;
        }
    }
    for t in &svc.traffic {
        if t.revision_name.as_deref() != Some(latest_ready.as_str())
            || latest_ready.is_empty()
            || t.latest_revision != Some(true)
        {
            continue;
        }
        let rolled_out = component
            .latest_rolledout_revision
            .clone()
            .unwrap_or_default();
        if rolled_out != latest_ready {
            if t.percent == Some(100) {
                component.previous_rolledout_revision = component.latest_rolledout_revision.take();
                component.latest_rolledout_revision = Some(latest_ready.clone());
            }
        } else if latest_ready == latest_created
            && t.percent.is_some_and(|p| p < 100)
            && by_revision.get(latest_ready.as_str()) == Some(&100)
            && component
                .previous_rolledout_revision
                .as_deref()
                .is_some_and(|p| !p.is_empty())
        {
            component.latest_rolledout_revision = component.previous_rolledout_revision.clone();
        }
    }
}

/// A component's status from its Service's status, carrying the rolled-out revisions
/// forward from the previous one.
fn component_status(previous: Option<&ComponentStatus>, svc: &ServiceStatus) -> ComponentStatus {
    let mut component = previous.cloned().unwrap_or_default();
    component.latest_created_revision = svc.latest_created_revision_name.clone();
    propagate_rollout(&mut component, svc);
    component.latest_ready_revision = svc.latest_ready_revision_name.clone();
    component.traffic = svc.traffic.clone();
    component.url = svc.url.clone();
    component
}

/// The replicas of the predictor's latest created revision: what KServe reads from that
/// revision's pods for `modelStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PredictorReplicas {
    /// Replicas that passed their readiness probe (KServe's ready pods).
    pub ready: u32,
    /// Replicas started and not ready yet: the model server is fetching and loading the
    /// model (KServe's pod with its storage initializer running).
    pub starting: u32,
    /// Why the last replica failed, while the runtime reports it (KServe's container
    /// terminated with an error or in CrashLoopBackOff).
    pub failure: Option<String>,
}

/// KServe's `modelStatus` (`PropagateModelStatus`, Knative mode), from the previous one,
/// the predictor Service's status, the replicas of its latest created revision, and
/// whether the InferenceService is Ready:
/// * no replica: `FailedToLoad` (`BlockedByFailedLoad`) when a condition of the Service is
///   False, else `Pending` (`InProgress`): also at zero replicas after scaling down, where
///   KServe keeps `activeModelState` (`Loaded` once loaded) and targets `Pending`;
/// * replicas starting, none ready (KServe's storage initializer running: Sluice's model
///   server fetches and loads the model before it is ready): `Loading` (`InProgress`), or
///   `FailedToLoad` with reason `ModelLoadFailed` while the runtime reports a failure;
/// * ready with the latest created revision the latest ready one: `Loaded` (`UpToDate`),
///   and `activeModelState` becomes `Loaded`;
/// * otherwise `FailedToLoad` after a failure, else `Pending` (`InProgress`).
///
/// `copies.totalCopies` counts the ready replicas (as KServe counts ready pods).
fn model_status(
    previous: Option<ModelStatus>,
    svc: &ServiceStatus,
    replicas: &PredictorReplicas,
    isvc_ready: bool,
) -> ModelStatus {
    let mut model = previous.unwrap_or_default();
    let target = |model: &mut ModelStatus, state: &str, failure: Option<FailureInfo>| {
        let states = model
            .states
            .get_or_insert_with(ModelRevisionStates::default);
        states.target_model_state = state.to_owned();
        model.transition_status = match state {
            "Loaded" => {
                states.active_model_state = "Loaded".to_owned();
                "UpToDate"
            }
            "FailedToLoad" => "BlockedByFailedLoad",
            _ => "InProgress",
        }
        .to_owned();
        if failure.is_some() {
            model.last_failure_info = failure;
        }
    };
    model.copies = Some(ModelCopies {
        failed_copies: 0,
        total_copies: replicas.ready,
    });
    let load_failed = |message: Option<String>| FailureInfo {
        reason: Some("ModelLoadFailed".into()),
        message,
    };
    let ready_condition = find_condition(&svc.conditions, "Ready");
    if replicas.ready == 0 && replicas.starting == 0 {
        if svc
            .conditions
            .iter()
            .any(|c| c.status == ConditionStatus::False)
        {
            let message = replicas
                .failure
                .clone()
                .or_else(|| ready_condition.and_then(|c| c.message.clone()));
            target(&mut model, "FailedToLoad", Some(load_failed(message)));
        } else {
            target(&mut model, "Pending", None);
        }
    } else if replicas.ready == 0 {
        // Replicas only starting: KServe's storage initializer running (Loading), or
        // failing (FailedToLoad).
        match &replicas.failure {
            Some(failure) => target(
                &mut model,
                "FailedToLoad",
                Some(load_failed(Some(failure.clone()))),
            ),
            None => target(&mut model, "Loading", None),
        }
    } else if isvc_ready && svc.latest_created_revision_name == svc.latest_ready_revision_name {
        target(&mut model, "Loaded", None);
    } else if let Some(failure) = &replicas.failure {
        target(
            &mut model,
            "FailedToLoad",
            Some(load_failed(Some(failure.clone()))),
        );
    } else {
        target(&mut model, "Pending", None);
    }
    model
}

/// The InferenceService's status from its predictor Service's status (or the reason it has
/// none) and the replicas of its latest created revision and, when `spec.transformer` is
/// given, its transformer Service's status (`None` while not created yet), carrying the
/// rolled-out revisions forward from its previous status. With a transformer, the
/// InferenceService's host routes to it, and `Ready` needs `TransformerReady` too.
pub fn isvc_status(
    isvc: &InferenceService,
    predictor: Result<Option<&ServiceStatus>, &NoRuntime>,
    replicas: &PredictorReplicas,
    transformer: Option<Option<&ServiceStatus>>,
    url: &str,
) -> InferenceServiceStatus {
    let previous = isvc.status.clone().unwrap_or_default();
    let mut status = InferenceServiceStatus {
        url: None,
        address: None,
        conditions: Vec::new(),
        components: BTreeMap::new(),
        observed_generation: isvc.metadata.generation,
        model_status: None,
    };
    let predictor_ready = match predictor {
        Err(no) => {
            // KServe's InvalidSpec: the target model cannot load.
            let mut model = previous.model_status.clone().unwrap_or_default();
            model
                .states
                .get_or_insert_with(ModelRevisionStates::default)
                .target_model_state = "FailedToLoad".into();
            model.transition_status = "InvalidSpec".into();
            model.last_failure_info = Some(FailureInfo {
                reason: Some(no.reason.to_owned()),
                message: Some(no.message.clone()),
            });
            status.model_status = Some(model);
            Condition::failed("PredictorReady", no.reason, no.message.clone())
        }
        Ok(None) => {
            let mut model = previous.model_status.clone().unwrap_or_default();
            model
                .states
                .get_or_insert_with(ModelRevisionStates::default)
                .target_model_state = "Pending".into();
            model.transition_status = "InProgress".into();
            status.model_status = Some(model);
            Condition::unknown("PredictorReady", "Creating", "creating the predictor")
        }
        Ok(Some(svc)) => {
            let component = component_status(previous.components.get("predictor"), svc);
            status.components.insert("predictor".into(), component);
            find_condition(&svc.conditions, "Ready").map_or_else(
                || Condition::unknown("PredictorReady", "Deploying", "waiting for the predictor"),
                |c| c.renamed("PredictorReady"),
            )
        }
    };
    let transformer_ready = transformer.map(|t| match t {
        None => Condition::unknown("TransformerReady", "Creating", "creating the transformer"),
        Some(svc) => {
            let component = component_status(previous.components.get("transformer"), svc);
            status.components.insert("transformer".into(), component);
            find_condition(&svc.conditions, "Ready").map_or_else(
                || {
                    Condition::unknown(
                        "TransformerReady",
                        "Deploying",
                        "waiting for the transformer",
                    )
                },
                |c| c.renamed("TransformerReady"),
            )
        }
    });
    // The top-level host routes to the transformer when there is one.
    let top = if transformer.is_some() {
        "transformer"
    } else {
        "predictor"
    };
    let routed = status
        .components
        .get(top)
        .is_some_and(|c| !c.traffic.is_empty());
    let ingress = if routed {
        status.url = Some(url.to_owned());
        status.address = Some(sluice_crds::service::Addressable {
            url: Some(url.to_owned()),
        });
        Condition::ok("IngressReady")
    } else {
        Condition::unknown(
            "IngressReady",
            "NoReadyRevision",
            "no revision is ready to route to",
        )
    };
    let not_ready = [
        Some(&predictor_ready),
        transformer_ready.as_ref(),
        Some(&ingress),
    ]
    .into_iter()
    .flatten()
    .find(|c| !c.is_true());
    let ready = not_ready.map_or_else(|| Condition::ok("Ready"), |c| c.renamed("Ready"));
    let isvc_ready = ready.is_true();
    status.conditions = vec![ingress, predictor_ready];
    status.conditions.extend(transformer_ready);
    status.conditions.push(ready);
    status.conditions.extend(rollout_healthy(
        predictor.ok().flatten(),
        transformer.flatten(),
    ));
    if let Ok(Some(svc)) = predictor {
        status.model_status = Some(model_status(
            previous.model_status.clone(),
            svc,
            replicas,
            isvc_ready,
        ));
    }
    status
}

/// `RolloutHealthy` of the components in an SLO-gated rollout, the least healthy one, its
/// message naming the component.
fn rollout_healthy(
    predictor: Option<&ServiceStatus>,
    transformer: Option<&ServiceStatus>,
) -> Option<Condition> {
    let rank = |c: &Condition| match c.status {
        ConditionStatus::False => 0,
        ConditionStatus::Unknown => 1,
        ConditionStatus::True => 2,
    };
    [("predictor", predictor), ("transformer", transformer)]
        .into_iter()
        .filter_map(|(name, svc)| {
            let c = find_condition(&svc?.conditions, "RolloutHealthy")?;
            let mut c = c.clone();
            c.message = c.message.map(|m| format!("{name}: {m}"));
            Some(c)
        })
        .min_by_key(rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rts() -> Runtimes<'static> {
        static NS: std::sync::OnceLock<HashMap<String, Vec<ServingRuntime>>> =
            std::sync::OnceLock::new();
        static CLUSTER: std::sync::OnceLock<Vec<ServingRuntime>> = std::sync::OnceLock::new();
        Runtimes {
            namespaced: NS.get_or_init(HashMap::new),
            cluster: CLUSTER.get_or_init(|| vec![sluice_crds::runtime::builtin_runtime()]),
            storage: ModelStorage::Local,
        }
    }

    fn isvc(extra: &str) -> InferenceService {
        serde_yaml::from_str(&format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n\
             metadata: {{name: iris, namespace: default, uid: u1}}\nspec:\n  predictor:\n{extra}"
        ))
        .unwrap()
    }

    /// The model server's `--storage-uri` argument of the predictor, or the refusal.
    fn storage_arg(uri: &str, storage: ModelStorage) -> Result<String, NoRuntime> {
        let i = isvc(&format!(
            "    model:\n      modelFormat: {{name: sluice-mlp}}\n      storageUri: {uri}\n"
        ));
        let svc = predictor_service(&i, &Runtimes { storage, ..rts() })?;
        let args = &svc.spec.template.spec.containers[0].args;
        let at = args.iter().position(|a| a == "--storage-uri").unwrap();
        Ok(args[at + 1].clone())
    }

    #[test]
    fn storage_uris_are_what_the_replicas_can_reach() {
        let url = "http://10.0.0.1:8000/iris/";
        for storage in [ModelStorage::Local, ModelStorage::Network] {
            assert_eq!(storage_arg(url, storage).unwrap(), url);
            let tls = "https://models.example/iris";
            assert_eq!(storage_arg(tls, storage).unwrap(), tls);
            let no = storage_arg("gs://bucket/iris", storage).unwrap_err();
            assert_eq!(no.reason, "UnsupportedStorageURI");
            assert!(no.message.contains("\"gs\""), "{}", no.message);
        }
        assert_eq!(
            storage_arg("./iris/model", ModelStorage::Local).unwrap(),
            "./iris/model"
        );
        assert_eq!(
            storage_arg("file:///m/iris", ModelStorage::Local).unwrap(),
            "/m/iris"
        );
        for path in ["./iris/model", "file:///m/iris", "/m/iris"] {
            let no = storage_arg(path, ModelStorage::Network).unwrap_err();
            assert_eq!(no.reason, "UnsupportedStorageURI");
            assert!(
                no.message.contains("a Pod on a node cannot read it")
                    && no.message.contains("http://")
                    && no.message.contains(path),
                "{}",
                no.message
            );
        }
    }

    #[test]
    fn maps_component_fields_to_annotations_and_args() {
        let i = isvc(
            "    minReplicas: 0\n    maxReplicas: 3\n    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: /m\n",
        );
        let svc = predictor_service(&i, &rts()).unwrap();
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
    fn transformer_gets_kserves_args_unless_given() {
        let mut i = isvc(
            "    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: /m\n      \
             protocolVersion: v2\n  transformer:\n    timeout: 30\n    containers:\n    \
             - command: [t]\n      args: [--predictor_host=elsewhere:1]\n",
        );
        assert!(transformer_service(&i, "h:1").is_some());
        let host = predictor_host(&i, "Example.Test", Some(8080));
        assert_eq!(host, "iris-predictor.default.example.test:8080");
        let svc = transformer_service(&i, &host).unwrap();
        assert_eq!(svc.metadata.name, "iris-transformer");
        assert_eq!(svc.metadata.owner_references[0].uid, "u1");
        let spec = &svc.spec.template.spec;
        assert_eq!(spec.timeout_seconds, Some(30));
        assert_eq!(
            spec.containers[0].args,
            [
                "--predictor_host=elsewhere:1",
                "--model_name",
                "iris",
                "--protocol",
                "v2",
                "--http_port",
                "$(PORT)"
            ]
        );
        assert!(
            !svc.spec
                .template
                .metadata
                .annotations
                .contains_key(IN_PROCESS_QUEUE_ANNOTATION),
            "the transformer runs behind sluice queue"
        );
        i.spec.transformer = None;
        assert!(transformer_service(&i, &host).is_none());
    }

    #[test]
    fn min_scale_annotation_is_kept_when_min_replicas_is_absent() {
        let mut i =
            isvc("    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: /m\n");
        assert_eq!(
            predictor_service(&i, &rts())
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
            predictor_service(&i, &rts())
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
        let no = predictor_service(&i, &rts()).unwrap_err();
        assert_eq!(no.reason, "NoSupportingRuntime");
        let status = isvc_status(
            &i,
            Err(&no),
            &PredictorReplicas::default(),
            None,
            "http://iris.default.localhost",
        );
        let ready = find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("NoSupportingRuntime"));
        assert!(status.url.is_none());
        let model = status.model_status.unwrap();
        assert_eq!(model.transition_status, "InvalidSpec");
        assert_eq!(
            model.last_failure_info.unwrap().reason.as_deref(),
            Some("NoSupportingRuntime")
        );
    }

    #[test]
    fn image_runtimes_and_remote_storage_are_conditions() {
        let mut sklearn = sluice_crds::runtime::builtin_runtime();
        sklearn.metadata.name = "kserve-sklearnserver".into();
        sklearn.spec.containers[0].image = Some("kserve-sklearnserver:replace".into());
        sklearn.spec.supported_model_formats[0].name = "sklearn".into();
        let cluster = vec![sluice_crds::runtime::builtin_runtime(), sklearn];
        let ns = HashMap::new();
        let runtimes = Runtimes {
            namespaced: &ns,
            cluster: &cluster,
            storage: ModelStorage::Local,
        };
        let no = predictor_service(&isvc("    sklearn:\n      storageUri: gs://x\n"), &runtimes)
            .unwrap_err();
        assert_eq!(no.reason, "RuntimeNotRunnable");
        assert!(
            no.message.contains("\"kserve-sklearnserver\"")
                && no.message.contains("kserve-sklearnserver:replace"),
            "{}",
            no.message
        );
        let no = predictor_service(
            &isvc(
                "    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: s3://b/m\n",
            ),
            &runtimes,
        )
        .unwrap_err();
        assert_eq!(no.reason, "UnsupportedStorageURI");
        let ok = predictor_service(
            &isvc(
                "    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: file:///m\n",
            ),
            &runtimes,
        )
        .unwrap();
        assert!(
            ok.spec.template.spec.containers[0]
                .args
                .contains(&"/m".to_owned())
        );
    }

    fn traffic(entries: &[(&str, bool, i64, Option<&str>)]) -> Vec<TrafficTarget> {
        entries
            .iter()
            .map(|(rev, latest, pct, tag)| TrafficTarget {
                revision_name: Some((*rev).to_owned()),
                latest_revision: Some(*latest),
                percent: Some(*pct),
                tag: tag.map(str::to_owned),
                ..TrafficTarget::default()
            })
            .collect()
    }

    fn svc_status(created: &str, ready: &str, t: Vec<TrafficTarget>) -> ServiceStatus {
        ServiceStatus {
            conditions: vec![Condition::ok("Ready")],
            traffic: t,
            latest_created_revision_name: Some(created.into()),
            latest_ready_revision_name: Some(ready.into()),
            ..ServiceStatus::default()
        }
    }

    fn model(
        status: &InferenceServiceStatus,
    ) -> (String, String, String, Option<String>, Option<u32>) {
        let m = status.model_status.clone().unwrap();
        let states = m.states.unwrap_or_default();
        (
            states.active_model_state,
            states.target_model_state,
            m.transition_status,
            m.last_failure_info.and_then(|f| f.reason),
            m.copies.map(|c| c.total_copies),
        )
    }

    fn with_status(mut i: InferenceService, status: InferenceServiceStatus) -> InferenceService {
        i.status = Some(status);
        i
    }

    #[test]
    fn model_status_follows_kserve_at_zero_loading_loaded_and_failed() {
        let url = "http://iris.default.localhost";
        let i = isvc("    model:\n      modelFormat: {name: sluice-mlp}\n");
        let routed = traffic(&[("iris-predictor-00001", true, 100, None)]);
        let svc = svc_status(
            "iris-predictor-00001",
            "iris-predictor-00001",
            routed.clone(),
        );
        let at = |ready: u32, starting: u32, failure: Option<&str>| PredictorReplicas {
            ready,
            starting,
            failure: failure.map(str::to_owned),
        };
        let s = |s: &str| s.to_owned();

        // Ready at zero from the start (scale to zero, initial scale 0): Ready, but the
        // model is Pending, not Loaded, as KServe reports with no pod.
        let zero = isvc_status(&i, Ok(Some(&svc)), &at(0, 0, None), None, url);
        assert!(find_condition(&zero.conditions, "Ready").unwrap().is_true());
        assert_eq!(
            model(&zero),
            (s(""), s("Pending"), s("InProgress"), None, Some(0))
        );
        // A replica starting: the model server fetches and loads the model.
        let loading = isvc_status(&i, Ok(Some(&svc)), &at(0, 1, None), None, url);
        assert_eq!(
            model(&loading),
            (s(""), s("Loading"), s("InProgress"), None, Some(0))
        );
        // Ready replicas of the latest revision: Loaded, up to date, copies counted.
        let loaded = isvc_status(&i, Ok(Some(&svc)), &at(2, 0, None), None, url);
        assert_eq!(
            model(&loaded),
            (s("Loaded"), s("Loaded"), s("UpToDate"), None, Some(2))
        );
        // Scaled back to zero: KServe keeps the active state and targets Pending.
        let i = with_status(i, loaded);
        let idle = isvc_status(&i, Ok(Some(&svc)), &at(0, 0, None), None, url);
        assert_eq!(
            model(&idle),
            (s("Loaded"), s("Pending"), s("InProgress"), None, Some(0))
        );
        // A new revision whose replica crashes: FailedToLoad, blocked, with the reason.
        let mut failing = svc_status("iris-predictor-00002", "iris-predictor-00001", routed);
        failing.conditions = vec![Condition::failed("Ready", "ExitCode", "exit status: 1")];
        let crashed = isvc_status(
            &i,
            Ok(Some(&failing)),
            &at(0, 1, Some("exit status: 1: cannot load model")),
            None,
            url,
        );
        assert_eq!(
            model(&crashed),
            (
                s("Loaded"),
                s("FailedToLoad"),
                s("BlockedByFailedLoad"),
                Some(s("ModelLoadFailed")),
                Some(0)
            )
        );
        // At zero with a False condition (no replica left): still FailedToLoad.
        let down = isvc_status(&i, Ok(Some(&failing)), &at(0, 0, None), None, url);
        let m = down.model_status.unwrap();
        assert_eq!(m.transition_status, "BlockedByFailedLoad");
        assert_eq!(
            m.last_failure_info.unwrap().message.as_deref(),
            Some("exit status: 1")
        );
        // Ready replicas of a revision not yet the latest ready one: Pending.
        let behind = svc_status("iris-predictor-00002", "iris-predictor-00001", vec![]);
        let pending = isvc_status(&i, Ok(Some(&behind)), &at(1, 0, None), None, url);
        assert_eq!(model(&pending).1, "Pending");
        // No predictor Service yet: Pending.
        let creating = isvc_status(&i, Ok(None), &at(0, 0, None), None, url);
        assert_eq!(model(&creating).2, "InProgress");
    }

    #[test]
    fn rollout_tracking_follows_kserve() {
        let mut c = ComponentStatus::default();
        propagate_rollout(
            &mut c,
            &svc_status("r1", "r1", traffic(&[("r1", true, 100, None)])),
        );
        assert_eq!(
            (
                c.latest_rolledout_revision.as_deref(),
                c.previous_rolledout_revision.as_deref()
            ),
            (Some("r1"), None)
        );
        // Canary at 10: r2 ready with 10% does not roll out.
        propagate_rollout(
            &mut c,
            &svc_status(
                "r2",
                "r2",
                traffic(&[
                    ("r2", true, 10, Some("latest")),
                    ("r1", false, 90, Some("prev")),
                ]),
            ),
        );
        assert_eq!(c.latest_rolledout_revision.as_deref(), Some("r1"));
        // While r3 is not ready yet, latest resolves to r2 (already rolled out): no rollback.
        let mut c2 = ComponentStatus {
            latest_rolledout_revision: Some("r2".into()),
            previous_rolledout_revision: Some("r1".into()),
            ..ComponentStatus::default()
        };
        propagate_rollout(
            &mut c2,
            &svc_status(
                "r3",
                "r2",
                traffic(&[("r2", true, 20, None), ("r2", false, 80, Some("prev"))]),
            ),
        );
        assert_eq!(c2.latest_rolledout_revision.as_deref(), Some("r2"));
        // Promotion.
        propagate_rollout(
            &mut c,
            &svc_status("r2", "r2", traffic(&[("r2", true, 100, None)])),
        );
        assert_eq!(
            (
                c.latest_rolledout_revision.as_deref(),
                c.previous_rolledout_revision.as_deref()
            ),
            (Some("r2"), Some("r1"))
        );
    }

    #[test]
    fn canary_traffic_needs_a_rolled_out_revision() {
        let mut i = isvc(
            "    canaryTrafficPercent: 10\n    model:\n      modelFormat: {name: sluice-mlp}\n      storageUri: /m\n",
        );
        assert_eq!(
            component_traffic(&i),
            traffic(&[])
                .into_iter()
                .chain([TrafficTarget {
                    latest_revision: Some(true),
                    percent: Some(100),
                    ..TrafficTarget::default()
                }])
                .collect::<Vec<_>>()
        );
        i.status = Some(InferenceServiceStatus {
            components: [(
                "predictor".to_owned(),
                ComponentStatus {
                    latest_rolledout_revision: Some("iris-predictor-00001".into()),
                    ..ComponentStatus::default()
                },
            )]
            .into(),
            ..InferenceServiceStatus::default()
        });
        i.metadata
            .annotations
            .insert(ENABLE_TAG_ROUTING.into(), "true".into());
        let t = component_traffic(&i);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].tag.as_deref(), t[0].latest_revision, t[0].percent),
            (Some("latest"), Some(true), Some(10))
        );
        assert_eq!(
            (
                t[1].tag.as_deref(),
                t[1].revision_name.as_deref(),
                t[1].percent
            ),
            (Some("prev"), Some("iris-predictor-00001"), Some(90))
        );
        i.spec.predictor.canary_traffic_percent = Some(100);
        assert_eq!(component_traffic(&i).len(), 1);
    }
}
