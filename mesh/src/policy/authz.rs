//! Istio `AuthorizationPolicy` (security.istio.io/v1, also served as v1beta1): types and
//! validation.
//!
//! Supported: `selector`, `action` ALLOW/DENY (AUDIT accepted with a warning and no effect
//! on access), `rules[].from[].source.{principals,notPrincipals,namespaces,notNamespaces,
//! ipBlocks,notIpBlocks,remoteIpBlocks,notRemoteIpBlocks}`,
//! `rules[].to[].operation.{hosts,notHosts,ports,notPorts,methods,notMethods,paths,notPaths}`
//! and `rules[].when[]` on `request.headers[…]`, `source.principal`, `source.namespace`,
//! `source.ip`, `remote.ip` and `destination.port`. Fields Sluice cannot enforce
//! (`requestPrincipals`, `CUSTOM`, `targetRef`s, other `when` keys) are refused with their
//! path rather than silently ignored: ignoring part of a security rule changes its meaning.

use serde::Deserialize;

use super::manifest::{self, ObjectMeta, Problems, Schema, ValidationError, WorkloadSelector};
use super::matching;

/// The API versions accepted.
pub const API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];
/// The kind.
pub const KIND: &str = "AuthorizationPolicy";

/// What a matching rule does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow matching requests; once any ALLOW policy selects a workload, others are denied.
    #[default]
    Allow,
    /// Deny matching requests (evaluated first).
    Deny,
    /// Record only; no effect on access.
    Audit,
    /// Delegate to an external authorizer (not supported).
    Custom,
}

/// `spec.rules[].from[].source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (`cluster.local/ns/default/sa/sleep`).
    pub principals: Option<Vec<String>>,
    /// Negated `principals`.
    pub not_principals: Option<Vec<String>>,
    /// JWT principals (not supported).
    pub request_principals: Option<Vec<String>>,
    /// Negated `requestPrincipals` (not supported).
    pub not_request_principals: Option<Vec<String>>,
    /// Peer namespaces (from the peer's SPIFFE ID).
    pub namespaces: Option<Vec<String>>,
    /// Negated `namespaces`.
    pub not_namespaces: Option<Vec<String>>,
    /// Peer IP addresses or CIDR blocks.
    pub ip_blocks: Option<Vec<String>>,
    /// Negated `ipBlocks`.
    pub not_ip_blocks: Option<Vec<String>>,
    /// Original client IP (same as `ipBlocks` here: Sluice sees no X-Forwarded-For trust chain).
    pub remote_ip_blocks: Option<Vec<String>>,
    /// Negated `remoteIpBlocks`.
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// `spec.rules[].to[].operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Host header values (case-insensitive).
    pub hosts: Option<Vec<String>>,
    /// Negated `hosts`.
    pub not_hosts: Option<Vec<String>>,
    /// Destination ports.
    pub ports: Option<Vec<String>>,
    /// Negated `ports`.
    pub not_ports: Option<Vec<String>>,
    /// HTTP methods.
    pub methods: Option<Vec<String>>,
    /// Negated `methods`.
    pub not_methods: Option<Vec<String>>,
    /// URL paths, without the query string.
    pub paths: Option<Vec<String>>,
    /// Negated `paths`.
    pub not_paths: Option<Vec<String>>,
}

/// `spec.rules[].from[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct From {
    /// The source to match.
    #[serde(default)]
    pub source: Source,
}

/// `spec.rules[].to[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct To {
    /// The operation to match.
    #[serde(default)]
    pub operation: Operation,
}

/// `spec.rules[].when[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The attribute, e.g. `request.headers[x-token]`.
    pub key: String,
    /// Values any of which must match.
    pub values: Option<Vec<String>>,
    /// Values none of which may match.
    pub not_values: Option<Vec<String>>,
}

/// `spec.rules[]`: matches when one `from`, one `to` and every `when` match (absent lists
/// match anything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Rule {
    /// Sources, any of which.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations, any of which.
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions, all of which.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Which workloads of the namespace (all when absent).
    pub selector: Option<WorkloadSelector>,
    /// ALLOW (default), DENY, AUDIT.
    #[serde(default)]
    pub action: Action,
    /// The rules; none means the policy matches nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Gateway-API targeting (not supported).
    pub target_ref: Option<serde_json::Value>,
    /// Gateway-API targeting (not supported).
    pub target_refs: Option<serde_json::Value>,
    /// CUSTOM provider (not supported).
    pub provider: Option<serde_json::Value>,
}

/// A validated `AuthorizationPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: AuthorizationPolicySpec,
}

/// A `when` key Sluice evaluates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConditionKey {
    Header(String),
    SourcePrincipal,
    SourceNamespace,
    SourceIp,
    RemoteIp,
    DestinationPort,
}

impl ConditionKey {
    pub(crate) fn parse(key: &str) -> Option<Self> {
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            return (!name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok())
                .then(|| Self::Header(name.to_ascii_lowercase()));
        }
        match key {
            "source.principal" => Some(Self::SourcePrincipal),
            "source.namespace" => Some(Self::SourceNamespace),
            "source.ip" => Some(Self::SourceIp),
            "remote.ip" => Some(Self::RemoteIp),
            "destination.port" => Some(Self::DestinationPort),
            _ => None,
        }
    }
}

fn spec_schema() -> Schema {
    let source = Schema::object(
        [
            "principals",
            "notPrincipals",
            "requestPrincipals",
            "notRequestPrincipals",
            "namespaces",
            "notNamespaces",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
        ]
        .into_iter()
        .map(|k| (k, Schema::strings()))
        .collect(),
    );
    let operation = Schema::object(
        [
            "hosts",
            "notHosts",
            "ports",
            "notPorts",
            "methods",
            "notMethods",
            "paths",
            "notPaths",
        ]
        .into_iter()
        .map(|k| (k, Schema::strings()))
        .collect(),
    );
    Schema::object(vec![
        ("selector", Schema::selector()),
        ("action", Schema::Any),
        ("targetRef", Schema::Any),
        ("targetRefs", Schema::Any),
        ("provider", Schema::Any),
        (
            "rules",
            Schema::list(Schema::object(vec![
                (
                    "from",
                    Schema::list(Schema::object(vec![("source", source)])),
                ),
                (
                    "to",
                    Schema::list(Schema::object(vec![("operation", operation)])),
                ),
                (
                    "when",
                    Schema::list(Schema::object(vec![
                        ("key", Schema::Any),
                        ("values", Schema::strings()),
                        ("notValues", Schema::strings()),
                    ])),
                ),
            ])),
        ),
    ])
}

impl AuthorizationPolicy {
    /// Parses and validates one manifest; returns the policy and its warnings.
    pub fn from_yaml(yaml: &str) -> Result<(Self, Vec<String>), ValidationError> {
        let (envelope, mut warnings) =
            manifest::parse::<AuthorizationPolicySpec>(yaml, KIND, &API_VERSIONS, spec_schema())?;
        let policy = Self {
            metadata: envelope.metadata,
            spec: envelope.spec.unwrap_or_default(),
        };
        policy.validate(&mut warnings)?;
        Ok((policy, warnings))
    }

    /// `AuthorizationPolicy/<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!(
            "{KIND}/{}/{}",
            self.metadata.namespace(),
            self.metadata.name
        )
    }

    /// Checks every field; adds warnings for what is accepted but has no effect.
    pub fn validate(&self, warnings: &mut Vec<String>) -> Result<(), ValidationError> {
        let mut p = Problems::default();
        if self.metadata.name.is_empty() {
            p.push("metadata.name", "required");
        }
        let spec = &self.spec;
        match spec.action {
            Action::Custom => p.push(
                "spec.action",
                "CUSTOM (external authorization) is not supported",
            ),
            Action::Audit => warnings.push(
                "spec.action: AUDIT is accepted but only recorded; it never changes access".into(),
            ),
            _ => {}
        }
        if spec.provider.is_some() {
            p.push("spec.provider", "not supported (CUSTOM action only)");
        }
        for (field, value) in [
            ("targetRef", &spec.target_ref),
            ("targetRefs", &spec.target_refs),
        ] {
            if value.is_some() {
                p.push(
                    format!("spec.{field}"),
                    "not supported; select workloads with spec.selector",
                );
            }
        }
        for (r, rule) in spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{r}]");
            for (f, from) in rule.from.iter().enumerate() {
                validate_source(&from.source, &format!("{at}.from[{f}].source"), &mut p);
            }
            for (t, to) in rule.to.iter().enumerate() {
                validate_operation(&to.operation, &format!("{at}.to[{t}].operation"), &mut p);
            }
            for (w, cond) in rule.when.iter().enumerate() {
                let path = format!("{at}.when[{w}]");
                match ConditionKey::parse(&cond.key) {
                    None if cond.key.is_empty() => p.push(format!("{path}.key"), "required"),
                    None => p.push(
                        format!("{path}.key"),
                        format!(
                            "unsupported key {:?} (supported: request.headers[<name>], \
                             source.principal, source.namespace, source.ip, remote.ip, \
                             destination.port)",
                            cond.key
                        ),
                    ),
                    Some(key) => {
                        let values = cond.values.iter().chain(cond.not_values.iter()).flatten();
                        for v in values {
                            if key == ConditionKey::DestinationPort && parse_port(v).is_none() {
                                p.push(format!("{path}.values"), format!("{v:?} is not a port"));
                            }
                            if matches!(key, ConditionKey::SourceIp | ConditionKey::RemoteIp)
                                && super::matching::IpBlock::parse(v).is_none()
                            {
                                p.push(
                                    format!("{path}.values"),
                                    format!("{v:?} is not an IP or CIDR"),
                                );
                            }
                        }
                    }
                }
                if cond.values.as_ref().is_none_or(Vec::is_empty)
                    && cond.not_values.as_ref().is_none_or(Vec::is_empty)
                {
                    p.push(path, "one of values or notValues is required");
                }
            }
        }
        p.finish(self.key())
    }
}

fn validate_source(source: &Source, at: &str, p: &mut Problems) {
    for (field, value) in [
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
    ] {
        if value.is_some() {
            p.push(
                format!("{at}.{field}"),
                "not supported: Sluice has no request (JWT) authentication",
            );
        }
    }
    for (field, value) in [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
    ] {
        patterns(value, &format!("{at}.{field}"), p);
    }
    for (field, value) in [
        ("ipBlocks", &source.ip_blocks),
        ("notIpBlocks", &source.not_ip_blocks),
        ("remoteIpBlocks", &source.remote_ip_blocks),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks),
    ] {
        for (i, v) in value.iter().flatten().enumerate() {
            if super::matching::IpBlock::parse(v).is_none() {
                p.push(
                    format!("{at}.{field}[{i}]"),
                    format!("{v:?} is not an IP or CIDR"),
                );
            }
        }
    }
}

fn validate_operation(op: &Operation, at: &str, p: &mut Problems) {
    for (field, value) in [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ] {
        patterns(value, &format!("{at}.{field}"), p);
    }
    for (field, value) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
        for (i, v) in value.iter().flatten().enumerate() {
            if parse_port(v).is_none() {
                p.push(
                    format!("{at}.{field}[{i}]"),
                    format!("{v:?} is not a port (1-65535)"),
                );
            }
        }
    }
}

fn patterns(value: &Option<Vec<String>>, at: &str, p: &mut Problems) {
    for (i, v) in value.iter().flatten().enumerate() {
        if let Some(why) = matching::invalid(v) {
            p.push(format!("{at}[{i}]"), format!("{v:?}: {why}"));
        }
    }
}

/// A port number 1–65535.
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}
