//! Istio `PeerAuthentication` (security.istio.io/v1beta1, also v1): which peer-authentication
//! mode a workload's port accepts.
//!
//! Resolution, most specific first: a policy in the workload's namespace whose selector
//! matches it (its `portLevelMtls` entry for the port, then its `mtls.mode`), the namespace's
//! policy without selector, the root namespace's policy without selector, then PERMISSIVE.
//! `UNSET` (or an absent mode) defers to the next level. Among several matching policies at
//! one level the first by name wins, and a warning says so.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::manifest::{self, ObjectMeta, Problems, Schema, ValidationError, WorkloadSelector};
use super::{DEFAULT_ROOT_NAMESPACE, Workload};
use crate::tls::PeerAuthMode;

/// The API versions accepted.
pub const API_VERSIONS: [&str; 2] = ["security.istio.io/v1beta1", "security.istio.io/v1"];
/// The kind.
pub const KIND: &str = "PeerAuthentication";

/// `mtls.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent level.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS or plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    fn resolved(self) -> Option<PeerAuthMode> {
        match self {
            Self::Unset => None,
            Self::Disable => Some(PeerAuthMode::Disable),
            Self::Permissive => Some(PeerAuthMode::Permissive),
            Self::Strict => Some(PeerAuthMode::Strict),
        }
    }
}

/// `{ mode: … }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Mtls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads (all of the namespace when absent).
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port.
    pub mtls: Option<Mtls>,
    /// Per-port overrides (keys are port numbers); needs a selector.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, Mtls>,
}

/// A validated `PeerAuthentication`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: PeerAuthenticationSpec,
}

fn spec_schema() -> Schema {
    let mtls = || Schema::object(vec![("mode", Schema::Any)]);
    Schema::object(vec![
        ("selector", Schema::selector()),
        ("mtls", mtls()),
        ("portLevelMtls", Schema::Map(Box::new(mtls()))),
    ])
}

impl PeerAuthentication {
    /// Parses and validates one manifest; returns it and its warnings.
    pub fn from_yaml(yaml: &str) -> Result<(Self, Vec<String>), ValidationError> {
        let (envelope, warnings) =
            manifest::parse::<PeerAuthenticationSpec>(yaml, KIND, &API_VERSIONS, spec_schema())?;
        let policy = Self {
            metadata: envelope.metadata,
            spec: envelope.spec.unwrap_or_default(),
        };
        policy.validate()?;
        Ok((policy, warnings))
    }

    /// `PeerAuthentication/<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!(
            "{KIND}/{}/{}",
            self.metadata.namespace(),
            self.metadata.name
        )
    }

    /// Checks names, port keys, and that per-port modes come with a selector.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::default();
        if self.metadata.name.is_empty() {
            p.push("metadata.name", "required");
        }
        if !self.spec.port_level_mtls.is_empty() && self.spec.selector.is_none() {
            p.push(
                "spec.portLevelMtls",
                "requires spec.selector (per-port modes apply to selected workloads only)",
            );
        }
        for port in self.spec.port_level_mtls.keys() {
            if super::authz::parse_port(port).is_none() {
                p.push(
                    format!("spec.portLevelMtls.{port}"),
                    "key is not a port (1-65535)",
                );
            }
        }
        p.finish(self.key())
    }
}

/// The peer-authentication policies in force.
#[derive(Clone, Debug)]
pub struct PeerAuthenticationSet {
    policies: Vec<PeerAuthentication>,
    root_namespace: String,
}

impl PeerAuthenticationSet {
    /// A set over validated `policies` (root namespace `istio-system`).
    pub fn new(mut policies: Vec<PeerAuthentication>) -> Self {
        policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Self {
            policies,
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }

    /// Changes the mesh-wide root namespace.
    pub fn with_root_namespace(mut self, namespace: &str) -> Self {
        self.root_namespace = namespace.to_owned();
        self
    }

    /// The mode for connections to `workload` on `port`.
    pub fn mode_for(&self, workload: &Workload, port: u16) -> PeerAuthMode {
        fn in_ns<'a>(
            policies: &'a [PeerAuthentication],
            ns: &'a str,
        ) -> impl Iterator<Item = &'a PeerAuthentication> {
            policies
                .iter()
                .filter(move |p| p.metadata.namespace() == ns)
        }
        let port_key = port.to_string();
        let workload_level = in_ns(&self.policies, &workload.namespace)
            .find(|p| {
                p.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| s.matches(workload))
            })
            .and_then(|p| {
                p.spec
                    .port_level_mtls
                    .get(&port_key)
                    .and_then(|m| m.mode.resolved())
                    .or_else(|| p.spec.mtls.and_then(|m| m.mode.resolved()))
            });
        let level_default = |ns: &str| {
            in_ns(&self.policies, ns)
                .find(|p| p.spec.selector.is_none())
                .and_then(|p| p.spec.mtls.and_then(|m| m.mode.resolved()))
        };
        workload_level
            .or_else(|| level_default(&workload.namespace))
            .or_else(|| level_default(&self.root_namespace))
            .unwrap_or_default()
    }

    /// Warnings: several namespace-wide policies in one namespace (only the first by name
    /// counts), and workload policies that select none of `workloads`.
    pub fn warnings(&self, workloads: &[Workload]) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen_default = std::collections::BTreeSet::new();
        for p in &self.policies {
            let ns = p.metadata.namespace();
            match &p.spec.selector {
                None if !seen_default.insert(ns.to_owned()) => out.push(format!(
                    "{}: another namespace-wide PeerAuthentication in {ns} comes first by name; this one is ignored",
                    p.key()
                )),
                Some(s) if !workloads.iter().any(|w| w.namespace == ns && s.matches(w)) => {
                    out.push(format!("{}: selects no known workload", p.key()))
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(yaml: &str) -> PeerAuthentication {
        PeerAuthentication::from_yaml(yaml).unwrap().0
    }

    #[test]
    fn resolution_goes_workload_port_then_workload_then_namespace_then_mesh() {
        let set = PeerAuthenticationSet::new(vec![
            pa(
                "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
            ),
            pa(
                "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: ns, namespace: legacy}\nspec: {mtls: {mode: PERMISSIVE}}\n",
            ),
            pa(
                "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: web, namespace: legacy}\nspec:\n  selector: {matchLabels: {app: web}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    \"9090\": {mode: DISABLE}\n",
            ),
        ]);
        let web = Workload::new("legacy", [("app", "web")]);
        let other = Workload::new("legacy", [("app", "db")]);
        let elsewhere = Workload::new("default", []);
        assert_eq!(set.mode_for(&web, 9090), PeerAuthMode::Disable);
        // UNSET on the workload policy defers to the namespace.
        assert_eq!(set.mode_for(&web, 8080), PeerAuthMode::Permissive);
        assert_eq!(set.mode_for(&other, 9090), PeerAuthMode::Permissive);
        assert_eq!(set.mode_for(&elsewhere, 8080), PeerAuthMode::Strict);
        assert_eq!(
            PeerAuthenticationSet::new(vec![]).mode_for(&elsewhere, 80),
            PeerAuthMode::Permissive
        );
    }

    #[test]
    fn refuses_bad_manifests_with_field_paths() {
        let err = PeerAuthentication::from_yaml(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {portLevelMtls: {\"http\": {mode: STRICT}}}\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.portLevelMtls", "spec.portLevelMtls.http"]);
        let err = PeerAuthentication::from_yaml(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {mtls: {mode: MAYBE}}\n",
        )
        .unwrap_err();
        assert_eq!(err.errors[0].path, "spec.mtls.mode");
        let err = PeerAuthentication::from_yaml(
            "apiVersion: security.istio.io/v2\nkind: PeerAuthentication\nmetadata: {name: x}\n",
        )
        .unwrap_err();
        assert_eq!(err.errors[0].path, "apiVersion");
    }

    #[test]
    fn refuses_unknown_spec_fields_warns_on_others_and_on_unknown_workloads() {
        let err = PeerAuthentication::from_yaml(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: a}\nspec:\n  mtls: {mode: STRICT, extra: 1}\n",
        )
        .unwrap_err();
        assert_eq!(err.errors[0].path, "spec.mtls.extra");
        let (policy, warnings) = PeerAuthentication::from_yaml(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: a, extra: 1}\nspec:\n  selector: {matchLabels: {app: ghost}}\n  mtls: {mode: STRICT}\n",
        )
        .unwrap();
        assert_eq!(
            warnings,
            ["metadata.extra: unknown field, kept but not acted on"]
        );
        let set = PeerAuthenticationSet::new(vec![policy]);
        assert_eq!(
            set.warnings(&[Workload::new("a", [("app", "web")])]),
            ["PeerAuthentication/a/x: selects no known workload"]
        );
    }
}
