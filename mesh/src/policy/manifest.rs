//! What the two policy kinds share: the manifest envelope, metadata, selectors, field-path
//! errors, and the unknown-field report (kept and warned about, never silently dropped).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Workload;

/// One thing wrong with a manifest, at a field path such as `spec.rules[0].to[1].operation.ports[0]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Where.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A manifest refused, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// `Kind/namespace/name` when known, else the kind.
    pub object: String,
    /// The problems, each with its field path.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid: ", self.object)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Name and namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ObjectMeta {
    /// Object name (required).
    #[serde(default)]
    pub name: String,
    /// Namespace (`default` when absent).
    #[serde(default)]
    pub namespace: Option<String>,
}

impl ObjectMeta {
    /// The namespace, `default` when absent.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// `spec.selector`: workloads whose labels include every `matchLabels` pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether `workload` carries every label.
    pub fn matches(&self, workload: &Workload) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| workload.labels.get(k) == Some(v))
    }
}

/// The envelope every manifest has.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope<S> {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<S>,
}

/// The known field names at each level, to report the unknown ones.
pub(crate) enum Schema {
    /// Any value.
    Any,
    /// An object with these fields.
    Object(Vec<(&'static str, Schema)>),
    /// A list of one shape.
    List(Box<Schema>),
    /// A map whose values have one shape.
    Map(Box<Schema>),
}

impl Schema {
    pub(crate) fn object(fields: Vec<(&'static str, Schema)>) -> Self {
        Self::Object(fields)
    }

    pub(crate) fn list(item: Schema) -> Self {
        Self::List(Box::new(item))
    }

    pub(crate) fn strings() -> Self {
        Self::list(Self::Any)
    }

    pub(crate) fn selector() -> Self {
        Self::object(vec![("matchLabels", Self::Map(Box::new(Self::Any)))])
    }

    /// Paths of fields this schema does not know.
    pub(crate) fn unknown_fields(
        &self,
        value: &serde_json::Value,
        path: &str,
        out: &mut Vec<String>,
    ) {
        match (self, value) {
            (Self::Object(fields), serde_json::Value::Object(map)) => {
                for (key, child) in map {
                    let child_path = join(path, key);
                    match fields.iter().find(|(name, _)| name == key) {
                        Some((_, schema)) => schema.unknown_fields(child, &child_path, out),
                        None => out.push(child_path),
                    }
                }
            }
            (Self::List(item), serde_json::Value::Array(items)) => {
                for (i, child) in items.iter().enumerate() {
                    item.unknown_fields(child, &format!("{path}[{i}]"), out);
                }
            }
            (Self::Map(item), serde_json::Value::Object(map)) => {
                for (key, child) in map {
                    item.unknown_fields(child, &join(path, key), out);
                }
            }
            _ => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Parses YAML into the envelope of kind `kind`, checking `apiVersion` against `versions`;
/// returns it and warnings for unknown fields.
pub(crate) fn parse<S: DeserializeOwned>(
    yaml: &str,
    kind: &str,
    versions: &[&str],
    spec_schema: Schema,
) -> Result<(Envelope<S>, Vec<String>), ValidationError> {
    let refuse = |path: &str, message: String| ValidationError {
        object: kind.to_owned(),
        errors: vec![FieldError {
            path: path.to_owned(),
            message,
        }],
    };
    let value: serde_json::Value = serde_yaml::from_str(yaml)
        .map_err(|e| refuse("<document>", format!("not valid YAML: {e}")))?;
    if !value.is_object() {
        return Err(refuse("<document>", "expected a mapping".into()));
    }
    let envelope: Envelope<S> = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        refuse(&path, e.into_inner().to_string())
    })?;
    match envelope.kind.as_deref() {
        Some(k) if k == kind => {}
        other => return Err(refuse("kind", format!("expected {kind}, found {other:?}"))),
    }
    match envelope.api_version.as_deref() {
        Some(v) if versions.contains(&v) => {}
        other => {
            return Err(refuse(
                "apiVersion",
                format!("unsupported {other:?}; expected one of {versions:?}"),
            ));
        }
    }
    let schema = Schema::object(vec![
        ("apiVersion", Schema::Any),
        ("kind", Schema::Any),
        (
            "metadata",
            Schema::object(vec![
                ("name", Schema::Any),
                ("namespace", Schema::Any),
                ("labels", Schema::Any),
                ("annotations", Schema::Any),
                ("uid", Schema::Any),
                ("resourceVersion", Schema::Any),
                ("generation", Schema::Any),
                ("creationTimestamp", Schema::Any),
                ("managedFields", Schema::Any),
            ]),
        ),
        ("spec", spec_schema),
        ("status", Schema::Any),
    ]);
    let mut unknown = Vec::new();
    schema.unknown_fields(&value, "", &mut unknown);
    // An unknown field inside `spec` is refused, not warned about: a misspelled condition
    // (`rules[].form` for `from`) would silently drop out of an ALLOW rule and admit everyone.
    // Elsewhere (metadata, the envelope) an unknown field changes nothing and is only reported.
    let (in_spec, elsewhere): (Vec<String>, Vec<String>) = unknown
        .into_iter()
        .partition(|p| p == "spec" || p.starts_with("spec.") || p.starts_with("spec["));
    if !in_spec.is_empty() {
        return Err(ValidationError {
            object: kind.to_owned(),
            errors: in_spec
                .into_iter()
                .map(|path| FieldError {
                    path,
                    message: "unknown field; refused because a security policy must mean \
                              exactly what it says"
                        .into(),
                })
                .collect(),
        });
    }
    let warnings = elsewhere
        .into_iter()
        .map(|p| format!("{p}: unknown field, kept but not acted on"))
        .collect();
    Ok((envelope, warnings))
}

/// Collects field errors while validating.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<FieldError>);

impl Problems {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn finish(self, object: String) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                object,
                errors: self.0,
            })
        }
    }
}
