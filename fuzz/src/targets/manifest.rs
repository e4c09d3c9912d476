//! Manifests: the multi-document YAML (or JSON) that `sluice apply`, `sluice up DIR` and the
//! admin API's `POST /v1/apply` parse with `sluice_crds::parse_manifests` (typed decoding,
//! defaulting and validation of Service, Configuration, Route, Revision, InferenceService
//! and the serving runtimes), and the single JSON object a `PUT` edit parses with
//! `parse_object`.

use std::path::Path;

use sluice_crds::autoscaling::ClusterConfig;
use sluice_crds::{ManifestError, parse_manifests, parse_object};

use super::target::{Target, text};

/// Keys and values of Knative and KServe manifests, and YAML's own syntax.
const DICTIONARY: &[&str] = &[
    "apiVersion: ",
    "kind: ",
    "serving.knative.dev/v1",
    "serving.kserve.io/v1beta1",
    "serving.kserve.io/v1alpha1",
    "Service",
    "Configuration",
    "Route",
    "Revision",
    "InferenceService",
    "ServingRuntime",
    "ClusterServingRuntime",
    "metadata:",
    "name: ",
    "namespace: ",
    "annotations:",
    "labels:",
    "spec:",
    "template:",
    "containers:",
    "image: ",
    "env:",
    "traffic:",
    "percent: ",
    "tag: ",
    "revisionName: ",
    "configurationName: ",
    "latestRevision: true",
    "predictor:",
    "transformer:",
    "model:",
    "modelFormat:",
    "storageUri: ",
    "minReplicas: ",
    "maxReplicas: ",
    "canaryTrafficPercent: ",
    "containerConcurrency: ",
    "timeoutSeconds: ",
    "autoscaling.knative.dev/window",
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/initial-scale",
    "autoscaling.knative.dev/target",
    "autoscaling.knative.dev/metric",
    "serving.knative.dev/rollout-duration",
    "\"60s\"",
    "\"0\"",
    "---\n",
    "\n  ",
    "- ",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "<<: ",
    "? ",
    "|\n",
    ">-\n",
    "{}",
    "[]",
    "null",
    "~",
    "\"\\u0000\"",
    "file:///",
    "../",
    "s3://",
];

/// `sluice apply -f FILE` / `POST /v1/apply` / `PUT /v1/{kind}/{ns}/{name}`.
pub const MANIFEST: Target = Target {
    name: "manifest",
    about: "Knative/KServe manifests: crds::parse_manifests (YAML stream, both cluster \
            configs) and, for JSON, crds::parse_object",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: super::target::nothing_to_prepare,
    run: |input| {
        let text = text(input);
        let base = Path::new("/fuzz/manifests");
        let mut out = String::new();
        for config in [
            ClusterConfig::default(),
            ClusterConfig {
                allow_zero_initial_scale: true,
            },
        ] {
            out += &errors(parse_manifests(&text, "fuzz.yaml", base, &config).map(|_| ()));
        }
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) {
            let config = ClusterConfig::default();
            out += &errors(parse_object(value, "fuzz.json", base, &config).map(|_| ()));
        }
        out
    },
};

fn errors(result: Result<(), Vec<ManifestError>>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(errors) => errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    }
}
