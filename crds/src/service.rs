//! Knative `Service` (serving.knative.dev/v1): an inlined Configuration (`spec.template`)
//! and Route (`spec.traffic`), with the revision template types they share, Knative's
//! defaults and validation (upstream messages, field paths).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Condition, ObjectMeta};
pub use crate::traffic::TrafficTarget;
use crate::traffic::{self, TrafficOwner};
use crate::validation::{Validator, check_object_name, dns1035_messages, go_list, out_of_bounds};

/// Knative's default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 300;
/// Knative's default `max-revision-timeout-seconds`.
pub const MAX_TIMEOUT_SECONDS: i64 = 600;
/// Knative's default `container-concurrency-max-limit`.
pub const MAX_CONTAINER_CONCURRENCY: i64 = 1000;
/// Knative's default name of a revision's only container.
pub const DEFAULT_CONTAINER_NAME: &str = "user-container";

const KEPT: &str = "kept, but not acted on by this build";
/// Pod-spec fields outside the typed ones that Sluice does act on.
const ACTED_ON: [&str; 1] = ["serviceAccountName"];

/// A Knative Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `Service`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: ServiceSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

/// `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The revision template; every change stamps a new revision.
    pub template: RevisionTemplate,
    /// Traffic targets; default: all to the latest ready revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
    /// Fields not interpreted, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `spec.template`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplate {
    /// Labels and annotations copied to each revision (annotations carry autoscaling
    /// knobs); `name` brings the revision's own name.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The revision spec.
    pub spec: RevisionSpec,
}

/// A revision's spec (also `spec.template.spec`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    /// Maximum in-flight requests per replica; 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<i64>,
    /// Request timeout in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    /// Longest wait for the first response byte (default: `timeoutSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_start_timeout_seconds: Option<i64>,
    /// Longest idle gap in a response (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
    /// The containers; local mode runs the first one's `command` + `args`.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Fields not interpreted, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image (shown, not run, in local mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Executable and leading arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Further arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// The serving port; a port named `h2c` means HTTP/2 cleartext.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// Fields not interpreted, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A container port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// `http1` (default) or `h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number (local mode picks a free port and passes it in `PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i64>,
    /// Fields not interpreted, preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// An environment variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
    /// Fields not interpreted (`valueFrom`), preserved.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl EnvVar {
    /// A plain `name=value` variable.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            extra: BTreeMap::new(),
        }
    }
}

/// `status.address`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressable {
    /// The URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// `Ready`, `ConfigurationsReady`, `RoutesReady`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Address (the URL, for clients in the same network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Traffic with concrete revision names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
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

impl Service {
    /// Knative's defaults: traffic, timeouts, concurrency, container name.
    pub fn set_defaults(&mut self) {
        traffic::set_defaults(&mut self.spec.traffic, TrafficOwner::Service);
        self.spec.template.set_defaults();
    }

    /// Validates a defaulted Service; every error names its field path.
    pub fn validate(&self) -> Result<(), Vec<crate::ValidationError>> {
        let mut v = Validator::default();
        check_object_name(&mut v, &self.metadata.name);
        crate::rollout::validate(&mut v, &self.metadata.annotations);
        crate::slo_rollout::validate(&mut v, &self.metadata.annotations);
        self.spec
            .template
            .validate(&mut v, "spec.template", &self.metadata.name);
        traffic::validate(
            &mut v,
            "spec.traffic",
            &self.spec.traffic,
            TrafficOwner::Service,
        );
        v.finish()
    }

    /// Fields kept as given but not acted on, as (path, message).
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut w: Vec<(String, String)> = self
            .spec
            .extra
            .keys()
            .map(|k| (format!("spec.{k}"), KEPT.to_owned()))
            .collect();
        w.extend(self.spec.template.warnings("spec.template"));
        w
    }
}

impl RevisionTemplate {
    /// Knative's revision defaults.
    pub fn set_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.timeout_seconds.get_or_insert(DEFAULT_TIMEOUT_SECONDS);
        spec.container_concurrency.get_or_insert(0);
        if let [only] = spec.containers.as_mut_slice() {
            only.name
                .get_or_insert_with(|| DEFAULT_CONTAINER_NAME.to_owned());
        }
    }

    /// Validates the template at `path` (`spec.template`) of a parent named `parent`.
    pub fn validate(&self, v: &mut Validator, path: &str, parent: &str) {
        let name = &self.metadata.name;
        if !name.is_empty() {
            let msgs = dns1035_messages(name);
            let prefix = format!("{parent}-");
            if !msgs.is_empty() {
                v.error(
                    format!("{path}.metadata.name"),
                    format!("invalid value: not a DNS 1035 label: {}", go_list(&msgs)),
                );
            } else if !name.starts_with(&prefix) {
                v.error(
                    format!("{path}.metadata.name"),
                    format!("invalid value: {name:?} must have prefix {prefix:?}"),
                );
            }
        }
        if let Err(errors) = crate::autoscaling::validate_annotations(&self.metadata.annotations) {
            for e in errors {
                v.error(format!("{path}.{}", e.path), e.message);
            }
        }
        let spec = &self.spec;
        let at = |field: &str| format!("{path}.spec.{field}");
        if let Some(cc) = spec.container_concurrency
            && !(0..=MAX_CONTAINER_CONCURRENCY).contains(&cc)
        {
            v.error(
                at("containerConcurrency"),
                out_of_bounds(cc, 0, MAX_CONTAINER_CONCURRENCY),
            );
        }
        if let Some(t) = spec.timeout_seconds
            && t != 0
            && !(0..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            v.error(
                at("timeoutSeconds"),
                out_of_bounds(t, 0, MAX_TIMEOUT_SECONDS),
            );
        }
        let timeout = spec
            .timeout_seconds
            .filter(|t| *t > 0)
            .unwrap_or(MAX_TIMEOUT_SECONDS);
        if let Some(t) = spec.response_start_timeout_seconds
            && t != 0
            && !(0..=timeout).contains(&t)
        {
            v.error(
                at("responseStartTimeoutSeconds"),
                out_of_bounds(t, 0, timeout),
            );
        }
        if let Some(t) = spec.idle_timeout_seconds
            && t != 0
            && !(0..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            v.error(
                at("idleTimeoutSeconds"),
                out_of_bounds(t, 0, MAX_TIMEOUT_SECONDS),
            );
        }
        if spec.containers.is_empty() {
            v.error(at("containers"), "missing field(s)");
        }
        for (i, c) in spec.containers.iter().enumerate() {
            if c.ports.len() > 1 {
                v.error(
                    format!("{path}.spec.containers[{i}].ports"),
                    "more than one container port is set",
                );
            }
            for (j, p) in c.ports.iter().enumerate() {
                if let Some(name) = p.name.as_deref()
                    && !["", "http1", "h2c"].contains(&name)
                {
                    v.error(
                        format!("{path}.spec.containers[{i}].ports[{j}].name"),
                        format!("invalid value: {name}: Port name must be one of h2c, http1"),
                    );
                }
            }
        }
    }

    /// Fields of the template kept but not acted on, as (path, message).
    pub fn warnings(&self, path: &str) -> Vec<(String, String)> {
        let mut w: Vec<(String, String)> = self
            .spec
            .extra
            .keys()
            // Acted on: the revision's workload identity (local mode's mesh issues
            // `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccountName>`).
            .filter(|k| !ACTED_ON.contains(&k.as_str()))
            .map(|k| (format!("{path}.spec.{k}"), KEPT.to_owned()))
            .collect();
        for (i, c) in self.spec.containers.iter().enumerate() {
            let at = format!("{path}.spec.containers[{i}]");
            if i > 0 {
                w.push((
                    at.clone(),
                    "kept, but local mode runs only the first container".to_owned(),
                ));
                continue;
            }
            if c.command.is_empty()
                && let Some(image) = &c.image
            {
                w.push((
                    format!("{at}.image"),
                    format!(
                        "local mode runs no images: {image:?} has no command, so the revision \
                         will not become ready (give {at}.command)"
                    ),
                ));
            }
            for k in c.extra.keys() {
                w.push((format!("{at}.{k}"), KEPT.to_owned()));
            }
            for (j, e) in c.env.iter().enumerate() {
                for k in e.extra.keys() {
                    w.push((format!("{at}.env[{j}].{k}"), KEPT.to_owned()));
                }
            }
        }
        w.extend(
            crate::autoscaling::annotation_warnings(&self.metadata.annotations)
                .into_iter()
                .map(|(p, m)| (format!("{path}.{p}"), m)),
        );
        w
    }
}

/// Knative's revision name for a configuration generation: `<config>-00001`.
pub fn revision_name(config: &str, generation: i64) -> String {
    format!("{config}-{generation:05}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let mut svc: Service = serde_yaml::from_str(yaml).unwrap();
        svc.set_defaults();
        svc.validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const HEAD: &str = "apiVersion: serving.knative.dev/v1\nkind: Service\n";

    #[test]
    fn defaults_follow_knative() {
        let mut svc: Service = serde_yaml::from_str(&format!(
            "{HEAD}metadata: {{name: hello}}\nspec:\n  template:\n    spec:\n      containers: [{{image: x}}]\n"
        ))
        .unwrap();
        svc.set_defaults();
        let spec = &svc.spec.template.spec;
        assert_eq!(
            (spec.timeout_seconds, spec.container_concurrency),
            (Some(300), Some(0))
        );
        assert_eq!(spec.containers[0].name.as_deref(), Some("user-container"));
        assert_eq!(svc.spec.traffic[0].latest_revision, Some(true));
        assert_eq!(svc.spec.traffic[0].percent, Some(100));
    }

    #[test]
    fn upstream_messages_with_field_paths() {
        let e = errors(&format!(
            "{HEAD}metadata: {{name: Hello}}\nspec:\n  template:\n    metadata: {{name: other-1}}\n    \
             spec:\n      containerConcurrency: -1\n      timeoutSeconds: 601\n      \
             responseStartTimeoutSeconds: 700\n      idleTimeoutSeconds: 601\n      containers: []\n"
        ));
        assert_eq!(
            e,
            [
                format!("metadata.name: Invalid value: \"Hello\": {}", crate::validation::DNS1035_MESSAGE),
                "spec.template.metadata.name: invalid value: \"other-1\" must have prefix \"Hello-\"".to_owned(),
                "spec.template.spec.containerConcurrency: expected 0 <= -1 <= 1000".to_owned(),
                "spec.template.spec.timeoutSeconds: expected 0 <= 601 <= 600".to_owned(),
                "spec.template.spec.responseStartTimeoutSeconds: expected 0 <= 700 <= 601".to_owned(),
                "spec.template.spec.idleTimeoutSeconds: expected 0 <= 601 <= 600".to_owned(),
                "spec.template.spec.containers: missing field(s)".to_owned(),
            ]
        );
    }

    #[test]
    fn unknown_fields_survive_and_are_reported() {
        let yaml = format!(
            "{HEAD}metadata: {{name: hello}}\nspec:\n  template:\n    spec:\n      \
             serviceAccountName: sa\n      containers:\n      - command: [x]\n        \
             readinessProbe: {{httpGet: {{path: /}}}}\n        env: [{{name: A, valueFrom: {{secretKeyRef: {{name: s}}}}}}]\n"
        );
        let svc: Service = serde_yaml::from_str(&yaml).unwrap();
        let back = serde_json::to_value(&svc).unwrap();
        assert_eq!(back["spec"]["template"]["spec"]["serviceAccountName"], "sa");
        assert_eq!(
            back["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
                ["name"],
            "s"
        );
        let paths: Vec<String> = svc.warnings().into_iter().map(|(p, _)| p).collect();
        // serviceAccountName is kept and acted on (the workload's mesh identity): no warning.
        assert_eq!(
            paths,
            [
                "spec.template.spec.containers[0].readinessProbe",
                "spec.template.spec.containers[0].env[0].valueFrom",
            ]
        );
    }

    #[test]
    fn revision_names_are_zero_padded() {
        assert_eq!(revision_name("iris-predictor", 1), "iris-predictor-00001");
        assert_eq!(revision_name("a", 123456), "a-123456");
    }
}
