//! Parsing manifests: multi-document YAML → validated, defaulted objects.
//!
//! Every error names the source, the document (1-based) and the field path, so a user can
//! find the line at fault; a caller applies nothing unless the whole input parses.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::Kind;
use crate::autoscaling::{ClusterConfig, validate_for_cluster};
use crate::configuration::Configuration;
use crate::inference_service::InferenceService;
use crate::route::Route;
use crate::runtime::ServingRuntime;
use crate::service::Service;

/// One parsed, validated manifest document.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Its kind.
    pub kind: Kind,
    /// The normalized object (namespace defaulted, relative paths resolved).
    pub object: serde_json::Value,
    /// Which document of its source it was (1-based).
    pub document: usize,
    /// What it asks for that is kept but not acted on, as `source: document N: path: why`.
    pub warnings: Vec<String>,
}

/// Why a manifest was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// File name or other source label.
    pub source_name: String,
    /// 1-based document index within the source (0 when the YAML stream itself is broken).
    pub document: usize,
    /// Field path (`spec.predictor.model`), empty when the document as a whole is at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parses every document of `text`. `base_dir` (absolute) resolves relative `storageUri`s;
/// `config` is the cluster's autoscaler settings validation depends on.
/// Returns every error found, so that nothing is applied when anything is wrong.
pub fn parse_manifests(
    text: &str,
    source_name: &str,
    base_dir: &Path,
    config: &ClusterConfig,
) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = index + 1;
        let err = |path: &str, message: String| ManifestError {
            source_name: source_name.to_owned(),
            document,
            path: path.to_owned(),
            message,
        };
        let value = match serde_json::Value::deserialize(doc) {
            Ok(serde_json::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                errors.push(err("", format!("not valid YAML: {e}")));
                // A broken stream cannot be resynchronized reliably.
                break;
            }
        };
        match parse_document(value, base_dir, config) {
            Ok((kind, object, warnings)) => manifests.push(Manifest {
                kind,
                object,
                document,
                warnings: warnings
                    .into_iter()
                    .map(|(path, message)| err(&path, message).to_string())
                    .collect(),
            }),
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|(path, message)| err(&path, message)),
            ),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// Validates and defaults one object given as JSON (an edit of a stored object), as
/// [`parse_manifests`] does for a document; `metadata.resourceVersion` is kept.
pub fn parse_object(
    value: serde_json::Value,
    source_name: &str,
    base_dir: &Path,
    config: &ClusterConfig,
) -> Result<Manifest, Vec<ManifestError>> {
    let err = |path: String, message: String| ManifestError {
        source_name: source_name.to_owned(),
        document: 0,
        path,
        message,
    };
    match parse_document(value, base_dir, config) {
        Ok((kind, object, warnings)) => Ok(Manifest {
            kind,
            object,
            document: 1,
            warnings: warnings
                .into_iter()
                .map(|(p, m)| err(p, m).to_string())
                .collect(),
        }),
        Err(problems) => Err(problems.into_iter().map(|(p, m)| err(p, m)).collect()),
    }
}

type Problems = Vec<(String, String)>;

fn parse_document(
    value: serde_json::Value,
    base_dir: &Path,
    config: &ClusterConfig,
) -> Result<(Kind, serde_json::Value, Problems), Problems> {
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    let (api_version, kind_name) = (field("apiVersion"), field("kind"));
    if api_version.is_empty() || kind_name.is_empty() {
        return Err(vec![(
            String::new(),
            "not a manifest: apiVersion and kind are required".to_owned(),
        )]);
    }
    match Kind::from_type(api_version, kind_name) {
        Some(Kind::InferenceService) => {
            let mut isvc: InferenceService = typed(value)?;
            isvc.status = None;
            isvc.metadata.namespace = Some(isvc.metadata.namespace().to_owned());
            both(
                isvc.validate(),
                validate_for_cluster(&isvc.metadata.annotations, config),
                "",
            )?;
            if let Some(uri) = isvc
                .spec
                .predictor
                .model
                .as_mut()
                .and_then(|m| m.storage_uri.as_mut())
            {
                *uri = resolve_storage_uri(uri, base_dir);
            }
            Ok((Kind::InferenceService, reencode(&isvc)?, isvc.warnings()))
        }
        Some(Kind::Service) => {
            let mut svc: Service = typed(value)?;
            svc.status = None;
            svc.metadata.namespace = Some(svc.metadata.namespace().to_owned());
            svc.set_defaults();
            both(
                svc.validate(),
                validate_for_cluster(&svc.spec.template.metadata.annotations, config),
                "spec.template.",
            )?;
            Ok((Kind::Service, reencode(&svc)?, svc.warnings()))
        }
        Some(Kind::Configuration) => {
            let mut cfg: Configuration = typed(value)?;
            cfg.status = None;
            cfg.metadata.namespace = Some(cfg.metadata.namespace().to_owned());
            cfg.set_defaults();
            both(
                cfg.validate(),
                validate_for_cluster(&cfg.spec.template.metadata.annotations, config),
                "spec.template.",
            )?;
            Ok((Kind::Configuration, reencode(&cfg)?, cfg.warnings()))
        }
        Some(Kind::Route) => {
            let mut route: Route = typed(value)?;
            route.status = None;
            route.metadata.namespace = Some(route.metadata.namespace().to_owned());
            route.set_defaults();
            route.validate().map_err(problems)?;
            Ok((Kind::Route, reencode(&route)?, route.warnings()))
        }
        Some(Kind::ServingRuntime | Kind::ClusterServingRuntime) => {
            let kind = Kind::from_type(api_version, kind_name).unwrap_or(Kind::ServingRuntime);
            let mut rt: ServingRuntime = typed(value)?;
            rt.status = None;
            rt.metadata.namespace = if kind.cluster_scoped() {
                Some(String::new())
            } else {
                Some(rt.metadata.namespace().to_owned())
            };
            rt.validate().map_err(problems)?;
            Ok((kind, reencode(&rt)?, rt.warnings()))
        }
        Some(Kind::Revision) => Err(vec![(
            "kind".to_owned(),
            format!(
                "{api_version} Revision cannot be applied: Revisions are stamped by a \
                 Configuration or Service from its spec.template (apply one of those)"
            ),
        )]),
        None => Err(vec![(
            "kind".to_owned(),
            format!(
                "unknown kind {api_version} {kind_name} (known: serving.kserve.io/v1beta1 \
                 InferenceService, serving.kserve.io/v1alpha1 ServingRuntime and \
                 ClusterServingRuntime, serving.knative.dev/v1 Service, Configuration and Route)"
            ),
        )]),
    }
}

fn problems(errors: Vec<crate::ValidationError>) -> Problems {
    errors.into_iter().map(|e| (e.path, e.message)).collect()
}

/// An object's own validation and the cluster-dependent checks of the annotations at
/// `prefix` (`spec.template.` for a template's), all errors together.
fn both(
    own: Result<(), Vec<crate::ValidationError>>,
    cluster: Result<(), Vec<crate::ValidationError>>,
    prefix: &str,
) -> Result<(), Problems> {
    let mut all = own.err().map(problems).unwrap_or_default();
    all.extend(
        cluster
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (format!("{prefix}{}", e.path), e.message)),
    );
    if all.is_empty() { Ok(()) } else { Err(all) }
}

fn reencode(object: &impl serde::Serialize) -> Result<serde_json::Value, Problems> {
    serde_json::to_value(object)
        .map_err(|e| vec![(String::new(), format!("cannot re-encode: {e}"))])
}

fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Problems> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![(path, e.into_inner().to_string())]
    })
}

/// Resolves a relative plain path against `base_dir`; URIs and absolute paths pass through.
pub fn resolve_storage_uri(uri: &str, base_dir: &Path) -> String {
    if uri.contains("://") || Path::new(uri).is_absolute() {
        return uri.to_owned();
    }
    normalize(&base_dir.join(uri))
        .to_string_lossy()
        .into_owned()
}

/// Removes `.` and resolves `..` lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IRIS: &str = "apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
spec:
  predictor:
    model:
      modelFormat: {name: sluice-mlp}
      storageUri: ./iris/model
";

    #[test]
    fn parses_multi_document_and_resolves_paths() {
        let text = format!(
            "{IRIS}---\n---\n{}",
            IRIS.replace("name: iris\n", "name: iris2\n")
        );
        let got = parse_manifests(
            &text,
            "samples/iris.yaml",
            Path::new("/srv/samples"),
            &ClusterConfig::default(),
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].document, 1);
        assert_eq!(got[1].document, 3);
        assert_eq!(got[0].object["metadata"]["namespace"], "default");
        assert_eq!(
            got[0].object["spec"]["predictor"]["model"]["storageUri"],
            "/srv/samples/iris/model"
        );
        assert!(got[0].warnings.is_empty());
        let with_extra = IRIS.replace("  predictor:\n", "  predictor:\n    logger: {mode: all}\n");
        let got = parse_manifests(
            &with_extra,
            "c.yaml",
            Path::new("/"),
            &ClusterConfig::default(),
        )
        .unwrap();
        assert!(
            got[0].warnings[0].starts_with("c.yaml: document 1: spec.predictor.logger: kept"),
            "{:?}",
            got[0].warnings
        );
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let bad = IRIS.replace(
            "modelFormat: {name: sluice-mlp}",
            "modelFormat: {name: 7, x: 1}",
        );
        let text = format!(
            "{IRIS}---\n{}",
            bad.replace("storageUri: ./iris/model", "minReplicas: no")
        );
        let errors = parse_manifests(&text, "m.yaml", Path::new("/"), &ClusterConfig::default())
            .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 2);
        assert!(
            errors[0].path.starts_with("spec.predictor.model"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0]
                .to_string()
                .starts_with("m.yaml: document 2: spec.predictor.model")
        );
    }

    #[test]
    fn validation_errors_carry_paths() {
        let text = IRIS.replace("  predictor:\n", "  predictor:\n    minReplicas: -1\n");
        let errors = parse_manifests(&text, "m.yaml", Path::new("/"), &ClusterConfig::default())
            .unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "m.yaml: document 1: spec.predictor.minReplicas: must be >= 0"
        );
    }

    #[test]
    fn refuses_unknown_kinds_and_garbage() {
        let errors = parse_manifests(
            "apiVersion: v1\nkind: Pod\n",
            "p.yaml",
            Path::new("/"),
            &ClusterConfig::default(),
        )
        .unwrap_err();
        assert!(errors[0].message.contains("unknown kind v1 Pod"));
        let errors = parse_manifests(
            "a: [1, 2\n",
            "g.yaml",
            Path::new("/"),
            &ClusterConfig::default(),
        )
        .unwrap_err();
        assert!(errors[0].message.contains("not valid YAML"));
        let errors = parse_manifests(
            "just text\n",
            "t.yaml",
            Path::new("/"),
            &ClusterConfig::default(),
        )
        .unwrap_err();
        assert!(
            errors[0]
                .message
                .contains("apiVersion and kind are required")
        );
    }

    #[test]
    fn zero_initial_scale_follows_the_cluster_setting() {
        let isvc = IRIS.replace(
            "  name: iris\n",
            "  name: iris\n  annotations: {autoscaling.knative.dev/initial-scale: \"0\"}\n",
        );
        let ksvc = "apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: hello}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/initial-scale: \"0\"}
    spec:
      containers: [{image: hello}]
";
        let text = format!("{isvc}---\n{ksvc}");
        let errors: Vec<String> =
            parse_manifests(&text, "z.yaml", Path::new("/"), &ClusterConfig::default())
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect();
        let a =
            "metadata.annotations.autoscaling.knative.dev/initial-scale=0 not allowed by cluster";
        assert_eq!(
            errors,
            [
                format!("z.yaml: document 1: {a}: invalid value: 0"),
                format!("z.yaml: document 2: spec.template.{a}: invalid value: 0"),
            ]
        );
        let allowed = ClusterConfig {
            allow_zero_initial_scale: true,
        };
        let got = parse_manifests(&text, "z.yaml", Path::new("/"), &allowed).unwrap();
        assert_eq!(got.len(), 2);
        // Other errors are still reported next to the cluster's refusal.
        let both = isvc.replace("  predictor:\n", "  predictor:\n    minReplicas: -1\n");
        let errors = parse_manifests(&both, "b.yaml", Path::new("/"), &ClusterConfig::default())
            .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn storage_uris() {
        let base = Path::new("/a/b");
        assert_eq!(resolve_storage_uri("../m", base), "/a/m");
        assert_eq!(resolve_storage_uri("/abs/m", base), "/abs/m");
        assert_eq!(resolve_storage_uri("file:///x", base), "file:///x");
        assert_eq!(resolve_storage_uri("gs://bucket/m", base), "gs://bucket/m");
    }
}
