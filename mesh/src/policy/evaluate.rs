//! Evaluation of authorization policies for one request to one workload.
//!
//! Order (Istio's, SEMANTICS.md §6): the policies that apply are those in the workload's
//! namespace and in the root namespace whose selector matches (no selector: every workload).
//! Any matching DENY rule denies. Otherwise, if no ALLOW policy applies, the request is
//! allowed; if some do, it is allowed only when one of their rules matches. An ALLOW policy
//! with no rules (an empty spec) therefore denies everything.

use std::net::IpAddr;

use http::HeaderMap;

use super::authz::{
    Action, AuthorizationPolicy, Condition, ConditionKey, Operation, Rule, Source, parse_port,
};
use super::matching::IpBlock;
use super::{DEFAULT_ROOT_NAMESPACE, Workload, matching};
use crate::identity::SpiffeId;

/// What the evaluator knows about a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttributes<'a> {
    /// The verified caller (the mTLS peer, or the attested original caller behind the
    /// activator); `None` for plaintext.
    pub source: Option<&'a SpiffeId>,
    /// The peer's IP address, if known.
    pub source_ip: Option<IpAddr>,
    /// HTTP method.
    pub method: &'a str,
    /// Request path (a query string is ignored).
    pub path: &'a str,
    /// Host (authority) the request names.
    pub host: &'a str,
    /// The port the request arrived on.
    pub port: u16,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Allow,
    /// Refuse it with 403 `RBAC: access denied`.
    Deny {
        /// Why, for logs (never for the response body).
        reason: String,
    },
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// The authorization policies in force.
#[derive(Clone, Debug)]
pub struct AuthorizationEngine {
    policies: Vec<AuthorizationPolicy>,
    root_namespace: String,
}

impl Default for AuthorizationEngine {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl AuthorizationEngine {
    /// An engine over validated `policies`, with root namespace `istio-system`.
    pub fn new(policies: Vec<AuthorizationPolicy>) -> Self {
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

    fn applicable<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> {
        self.policies.iter().filter(move |p| {
            let ns = p.metadata.namespace();
            (ns == workload.namespace || ns == self.root_namespace)
                && p.spec.selector.as_ref().is_none_or(|s| s.matches(workload))
        })
    }

    /// Warnings for policies whose selector matches none of `workloads` (accepted, but
    /// probably a typo).
    pub fn unmatched_policies(&self, workloads: &[Workload]) -> Vec<String> {
        self.policies
            .iter()
            .filter(|p| {
                !workloads.iter().any(|w| {
                    let ns = p.metadata.namespace();
                    (ns == w.namespace || ns == self.root_namespace)
                        && p.spec.selector.as_ref().is_none_or(|s| s.matches(w))
                })
            })
            .map(|p| format!("{}: selects no known workload", p.key()))
            .collect()
    }

    /// Decides whether `request` may reach `workload`.
    pub fn evaluate(&self, workload: &Workload, request: &RequestAttributes<'_>) -> Decision {
        let mut allow_policies = 0usize;
        let mut allowed = false;
        for policy in self.applicable(workload) {
            let matched = policy.spec.rules.iter().any(|r| rule_matches(r, request));
            match policy.spec.action {
                Action::Deny if matched => {
                    return Decision::Deny {
                        reason: format!("matched DENY policy {}", policy.key()),
                    };
                }
                Action::Allow => {
                    allow_policies += 1;
                    allowed |= matched;
                }
                _ => {}
            }
        }
        if allow_policies == 0 || allowed {
            Decision::Allow
        } else {
            Decision::Deny {
                reason: format!("no rule of the {allow_policies} ALLOW policies matched"),
            }
        }
    }
}

fn rule_matches(rule: &Rule, req: &RequestAttributes<'_>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|f| source_matches(&f.source, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|t| operation_matches(&t.operation, req)))
        && rule.when.iter().all(|c| condition_holds(c, req))
}

/// A field constraint: absent or empty → no constraint; else some value must match.
fn field(list: &Option<Vec<String>>, hit: impl Fn(&str) -> bool) -> bool {
    match list {
        Some(values) if !values.is_empty() => values.iter().any(|v| hit(v)),
        _ => true,
    }
}

/// A negated field constraint: absent or empty → no constraint; else no value may match.
fn not_field(list: &Option<Vec<String>>, hit: impl Fn(&str) -> bool) -> bool {
    match list {
        Some(values) if !values.is_empty() => !values.iter().any(|v| hit(v)),
        _ => true,
    }
}

fn principal(req: &RequestAttributes<'_>) -> String {
    req.source.map(SpiffeId::principal).unwrap_or_default()
}

fn namespace<'a>(req: &RequestAttributes<'a>) -> &'a str {
    req.source.map(SpiffeId::namespace).unwrap_or("")
}

fn ip_hit(block: &str, ip: Option<IpAddr>) -> bool {
    ip.zip(IpBlock::parse(block))
        .is_some_and(|(ip, b)| b.contains(ip))
}

fn source_matches(s: &Source, req: &RequestAttributes<'_>) -> bool {
    let principal = principal(req);
    let ns = namespace(req);
    field(&s.principals, |p| matching::matches(p, &principal))
        && not_field(&s.not_principals, |p| matching::matches(p, &principal))
        && field(&s.namespaces, |p| matching::matches(p, ns))
        && not_field(&s.not_namespaces, |p| matching::matches(p, ns))
        && field(&s.ip_blocks, |b| ip_hit(b, req.source_ip))
        && not_field(&s.not_ip_blocks, |b| ip_hit(b, req.source_ip))
        && field(&s.remote_ip_blocks, |b| ip_hit(b, req.source_ip))
        && not_field(&s.not_remote_ip_blocks, |b| ip_hit(b, req.source_ip))
}

fn operation_matches(op: &Operation, req: &RequestAttributes<'_>) -> bool {
    let path = req.path.split('?').next().unwrap_or("");
    let host = req.host.to_ascii_lowercase();
    let host_hit = |p: &str| matching::matches(&p.to_ascii_lowercase(), &host);
    let port_hit = |p: &str| parse_port(p) == Some(req.port);
    field(&op.hosts, host_hit)
        && not_field(&op.not_hosts, host_hit)
        && field(&op.ports, port_hit)
        && not_field(&op.not_ports, port_hit)
        && field(&op.methods, |m| matching::matches(m, req.method))
        && not_field(&op.not_methods, |m| matching::matches(m, req.method))
        && field(&op.paths, |p| matching::matches(p, path))
        && not_field(&op.not_paths, |p| matching::matches(p, path))
}

fn condition_holds(c: &Condition, req: &RequestAttributes<'_>) -> bool {
    let Some(key) = ConditionKey::parse(&c.key) else {
        // Validation refuses unknown keys; an unvalidated one never matches.
        return false;
    };
    let values: Vec<String> = match &key {
        ConditionKey::Header(name) => req
            .headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect(),
        ConditionKey::SourcePrincipal => vec![principal(req)],
        ConditionKey::SourceNamespace => vec![namespace(req).to_owned()],
        ConditionKey::DestinationPort => vec![req.port.to_string()],
        ConditionKey::SourceIp | ConditionKey::RemoteIp => {
            req.source_ip.map(|ip| ip.to_string()).into_iter().collect()
        }
    };
    let hit = |pattern: &str| match key {
        ConditionKey::SourceIp | ConditionKey::RemoteIp => ip_hit(pattern, req.source_ip),
        _ => values.iter().any(|v| matching::matches(pattern, v)),
    };
    field(&c.values, hit) && not_field(&c.not_values, hit)
}
