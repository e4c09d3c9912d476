//! Istio security policy manifests: what `sluice up` and a replica's hand-off load
//! (`PolicyDocuments::parse`, `partition`), and, for a policy set that parses, what the
//! mesh does with it per request (`AuthorizationEngine::evaluate`,
//! `PeerAuthenticationSet::mode_for`) and at load (the unmatched-selector warnings).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use sluice_mesh::identity::SpiffeId;
use sluice_mesh::policy::{
    AuthorizationEngine, PeerAuthenticationSet, PolicyDocuments, RequestAttributes, Workload,
    partition,
};

use super::target::{Target, text};

/// Keys and values of `AuthorizationPolicy` and `PeerAuthentication`.
const DICTIONARY: &[&str] = &[
    "apiVersion: security.istio.io/v1\n",
    "apiVersion: security.istio.io/v1beta1\n",
    "kind: AuthorizationPolicy\n",
    "kind: PeerAuthentication\n",
    "metadata:",
    "name: ",
    "namespace: ",
    "istio-system",
    "spec:",
    "selector:",
    "matchLabels:",
    "action: ",
    "ALLOW",
    "DENY",
    "AUDIT",
    "CUSTOM",
    "rules:",
    "from:",
    "to:",
    "when:",
    "source:",
    "operation:",
    "principals:",
    "notPrincipals:",
    "namespaces:",
    "notNamespaces:",
    "ipBlocks:",
    "notIpBlocks:",
    "remoteIpBlocks:",
    "requestPrincipals:",
    "methods:",
    "notMethods:",
    "paths:",
    "notPaths:",
    "hosts:",
    "ports:",
    "notPorts:",
    "key: ",
    "values:",
    "notValues:",
    "request.headers[",
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.port",
    "mtls:",
    "mode: ",
    "STRICT",
    "PERMISSIVE",
    "DISABLE",
    "UNSET",
    "portLevelMtls:",
    "provider:",
    "targetRef:",
    "cluster.local/ns/default/sa/",
    "10.0.0.0/8",
    "::1/128",
    "\"*\"",
    "\"/v2/*\"",
    "\"*.local\"",
    "GET",
    "8080",
    "---\n",
    "\n  - ",
    "\n    ",
    "[]",
    "{}",
];

/// A policy set loaded from manifest files.
pub const POLICY: Target = Target {
    name: "istio-policy",
    about: "AuthorizationPolicy/PeerAuthentication YAML: policy::partition, \
            PolicyDocuments::parse, then AuthorizationEngine::evaluate on three requests, \
            unmatched_policies, PeerAuthenticationSet::mode_for and warnings",
    dictionary: DICTIONARY,
    max_len: 16 * 1024,
    prepare: || caller().map(|_| ()),
    run: |input| {
        let text = text(input);
        let (policies, others) = partition(&text);
        let mut out = format!("{} {} ", policies.is_empty(), others.is_empty());
        let docs = match PolicyDocuments::parse(&text) {
            Ok(docs) => docs,
            Err(errors) => {
                for e in errors {
                    out += &e.to_string();
                }
                return out;
            }
        };
        out += &docs.warnings.join("; ");
        let web = Workload::new("default", [("app", "web")]);
        let engine = AuthorizationEngine::new(docs.authorization);
        let Ok(caller) = caller() else {
            return super::target::NO_FIXTURE.to_owned();
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        let requests = [
            (
                Some(caller),
                Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
                "GET",
                "/",
            ),
            (None, None, "POST", "/v2/models/iris/infer?x=1"),
            (Some(caller), None, "DELETE", "/admin/../secret"),
        ];
        for (source, source_ip, method, path) in requests {
            let decision = engine.evaluate(
                &web,
                &RequestAttributes {
                    source,
                    source_ip,
                    method,
                    path,
                    host: "web.default.svc.cluster.local:8080",
                    port: 8080,
                    headers: &headers,
                },
            );
            out += if decision.is_allowed() {
                "allow"
            } else {
                "deny"
            };
        }
        out += &engine
            .unmatched_policies(std::slice::from_ref(&web))
            .join("; ");
        let peer = PeerAuthenticationSet::new(docs.peer_authentication);
        out += &format!("{:?}", peer.mode_for(&web, 8080));
        out += &peer.warnings(std::slice::from_ref(&web)).join("; ");
        out
    },
};

fn caller() -> Result<&'static SpiffeId, String> {
    static CALLER: OnceLock<Result<SpiffeId, String>> = OnceLock::new();
    super::target::fixture(&CALLER, || {
        SpiffeId::new("cluster.local", "default", "client").map_err(|e| e.to_string())
    })
}
