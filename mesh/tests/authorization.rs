//! `AuthorizationPolicy` parsing, validation and evaluation, one rule at a time, from the
//! upstream manifest shape (SEMANTICS.md §6).

#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderValue};
use sluice_mesh::identity::SpiffeId;
use sluice_mesh::policy::{
    AuthorizationEngine, AuthorizationPolicy, DENIED_BODY, Decision, RequestAttributes, Workload,
    denied_response,
};

fn policy(ns: &str, name: &str, spec: &str) -> AuthorizationPolicy {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    );
    let (p, warnings) = AuthorizationPolicy::from_yaml(&yaml).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    p
}

fn sa(ns: &str, name: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, name).unwrap()
}

struct Req {
    source: Option<SpiffeId>,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    port: u16,
    headers: HeaderMap,
    ip: Option<std::net::IpAddr>,
}

impl Req {
    fn from(source: Option<SpiffeId>) -> Self {
        Self {
            source,
            method: "GET",
            path: "/",
            host: "web.default.svc",
            port: 8080,
            headers: HeaderMap::new(),
            ip: None,
        }
    }

    fn attrs(&self) -> RequestAttributes<'_> {
        RequestAttributes {
            source: self.source.as_ref(),
            source_ip: self.ip,
            method: self.method,
            path: self.path,
            host: self.host,
            port: self.port,
            headers: &self.headers,
        }
    }
}

fn web() -> Workload {
    Workload::new("default", [("app", "web")])
}

fn allowed(engine: &AuthorizationEngine, req: &Req) -> bool {
    engine.evaluate(&web(), &req.attrs()).is_allowed()
}

#[test]
fn no_policy_allows_and_an_empty_spec_denies_everything() {
    let req = Req::from(Some(sa("default", "a")));
    assert!(allowed(&AuthorizationEngine::default(), &req));
    let (deny_all, _) = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: default}\nspec: {}\n",
    )
    .unwrap();
    let engine = AuthorizationEngine::new(vec![deny_all]);
    assert!(!allowed(&engine, &req));
    assert!(!allowed(&engine, &Req::from(None)));
}

#[test]
fn allow_admits_principal_a_and_refuses_b_and_plaintext() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "allow-a",
        "  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/a\"]\n",
    )]);
    assert!(allowed(&engine, &Req::from(Some(sa("default", "a")))));
    let denied = engine.evaluate(&web(), &Req::from(Some(sa("default", "b"))).attrs());
    assert!(matches!(denied, Decision::Deny { .. }));
    assert!(!allowed(&engine, &Req::from(None)));
}

#[test]
fn deny_beats_allow() {
    let engine = AuthorizationEngine::new(vec![
        policy("default", "allow-all", "  rules:\n  - {}\n"),
        policy(
            "default",
            "deny-b",
            "  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"*/sa/b\"]\n",
        ),
    ]);
    assert!(allowed(&engine, &Req::from(Some(sa("default", "a")))));
    let decision = engine.evaluate(&web(), &Req::from(Some(sa("default", "b"))).attrs());
    assert_eq!(
        decision,
        Decision::Deny {
            reason: "matched DENY policy AuthorizationPolicy/default/deny-b".into()
        }
    );
}

#[test]
fn a_deny_policy_alone_leaves_other_requests_allowed() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "deny-admin",
        "  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin/*\"]\n",
    )]);
    let mut req = Req::from(None);
    assert!(allowed(&engine, &req));
    req.path = "/admin/users?x=1";
    assert!(!allowed(&engine, &req));
}

#[test]
fn namespaces_and_not_namespaces() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "ns",
        "  rules:\n  - from:\n    - source:\n        namespaces: [\"prod-*\"]\n        notNamespaces: [\"prod-legacy\"]\n",
    )]);
    assert!(allowed(&engine, &Req::from(Some(sa("prod-eu", "x")))));
    assert!(!allowed(&engine, &Req::from(Some(sa("prod-legacy", "x")))));
    assert!(!allowed(&engine, &Req::from(Some(sa("dev", "x")))));
    assert!(!allowed(&engine, &Req::from(None)));
}

#[test]
fn not_principals_matches_what_is_not_listed_including_plaintext() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "deny-not-gateway",
        "  action: DENY\n  rules:\n  - from:\n    - source:\n        notPrincipals: [\"cluster.local/ns/ingress/sa/gateway\"]\n",
    )]);
    assert!(allowed(&engine, &Req::from(Some(sa("ingress", "gateway")))));
    assert!(!allowed(&engine, &Req::from(Some(sa("default", "a")))));
    assert!(!allowed(&engine, &Req::from(None)));
}

#[test]
fn principals_star_means_any_authenticated_peer() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "authn",
        "  rules:\n  - from:\n    - source:\n        principals: [\"*\"]\n",
    )]);
    assert!(allowed(&engine, &Req::from(Some(sa("x", "y")))));
    assert!(!allowed(&engine, &Req::from(None)));
}

#[test]
fn operations_methods_paths_ports_hosts() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "ops",
        "  rules:\n  - to:\n    - operation:\n        methods: [GET, HEAD]\n        paths: [\"/v2/models/*\", \"*/ready\"]\n        notPaths: [\"/v2/models/secret/*\"]\n        ports: [\"8080\"]\n        hosts: [\"WEB.default.svc\"]\n",
    )]);
    let mut req = Req::from(None);
    req.path = "/v2/models/iris/infer?verbose=1";
    assert!(allowed(&engine, &req));
    req.path = "/health/ready";
    assert!(allowed(&engine, &req));
    req.path = "/v2/models/secret/infer";
    assert!(!allowed(&engine, &req), "notPaths");
    req.path = "/v2/models/iris/infer";
    req.method = "POST";
    assert!(!allowed(&engine, &req), "methods");
    req.method = "GET";
    req.port = 9090;
    assert!(!allowed(&engine, &req), "ports");
    req.port = 8080;
    req.host = "other.default.svc";
    assert!(!allowed(&engine, &req), "hosts");
}

#[test]
fn one_from_and_one_to_must_match_and_every_when_must_hold() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "combo",
        "  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/a\"]}\n    - source: {namespaces: [\"ops\"]}\n    to:\n    - operation: {methods: [POST]}\n    when:\n    - key: request.headers[X-Tenant]\n      values: [\"acme\", \"globex\"]\n    - key: request.headers[x-debug]\n      notValues: [\"*\"]\n    - key: destination.port\n      values: [\"8080\"]\n",
    )]);
    let mut req = Req::from(Some(sa("default", "a")));
    req.method = "POST";
    req.headers
        .insert("x-tenant", HeaderValue::from_static("acme"));
    assert!(allowed(&engine, &req));
    req.source = Some(sa("ops", "anyone"));
    assert!(allowed(&engine, &req), "second from matches");
    req.source = Some(sa("default", "b"));
    assert!(!allowed(&engine, &req), "no from matches");
    req.source = Some(sa("default", "a"));
    req.headers.insert("x-debug", HeaderValue::from_static("1"));
    assert!(!allowed(&engine, &req), "notValues on a present header");
    req.headers.remove("x-debug");
    req.headers
        .insert("x-tenant", HeaderValue::from_static("initech"));
    assert!(!allowed(&engine, &req), "values");
    req.headers.remove("x-tenant");
    assert!(!allowed(&engine, &req), "values on a missing header");
}

#[test]
fn when_on_source_attributes_and_ip_blocks() {
    let engine = AuthorizationEngine::new(vec![policy(
        "default",
        "src",
        "  rules:\n  - from:\n    - source:\n        ipBlocks: [\"127.0.0.0/8\", \"::1\"]\n    when:\n    - key: source.namespace\n      values: [\"default\"]\n",
    )]);
    let mut req = Req::from(Some(sa("default", "a")));
    req.ip = Some("127.0.0.9".parse().unwrap());
    assert!(allowed(&engine, &req));
    req.ip = Some("::1".parse().unwrap());
    assert!(allowed(&engine, &req));
    req.ip = Some("10.1.2.3".parse().unwrap());
    assert!(!allowed(&engine, &req));
    req.ip = Some("127.0.0.1".parse().unwrap());
    req.source = Some(sa("other", "a"));
    assert!(!allowed(&engine, &req));
}

#[test]
fn selectors_namespaces_and_the_root_namespace() {
    let engine = AuthorizationEngine::new(vec![
        policy(
            "default",
            "only-db",
            "  selector:\n    matchLabels: {app: db}\n  rules: []\n",
        ),
        policy(
            "istio-system",
            "mesh-deny-evil",
            "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [evil]}\n",
        ),
        policy("elsewhere", "deny-all", "  {}\n"),
    ]);
    let db = Workload::new("default", [("app", "db")]);
    let req = Req::from(Some(sa("default", "a")));
    assert!(
        !engine.evaluate(&db, &req.attrs()).is_allowed(),
        "selected by only-db"
    );
    assert!(
        allowed(&engine, &req),
        "web is not selected by only-db nor in elsewhere"
    );
    assert!(
        !allowed(&engine, &Req::from(Some(sa("evil", "x")))),
        "root namespace applies mesh-wide"
    );
    assert_eq!(
        engine.unmatched_policies(&[web(), db]),
        ["AuthorizationPolicy/elsewhere/deny-all: selects no known workload"]
    );
}

#[test]
fn audit_is_accepted_with_a_warning_and_changes_nothing() {
    let (audit, warnings) = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: audit, futureField: 1}\nspec:\n  action: AUDIT\n  rules: [{}]\n",
    )
    .unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("metadata.futureField: unknown field"))
    );
    assert!(allowed(
        &AuthorizationEngine::new(vec![audit]),
        &Req::from(None)
    ));
}

#[test]
fn a_misspelled_field_in_a_rule_is_refused_not_dropped() {
    // `form` for `from`: dropped, it would turn "allow A" into "allow everyone".
    let err = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: default}\nspec:\n  action: ALLOW\n  rules:\n  - form:\n    - source: {principals: [\"cluster.local/ns/default/sa/a\"]}\n",
    )
    .unwrap_err();
    let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["spec.rules[0].form"]);
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn refuses_bad_manifests_with_field_paths() {
    let err = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad}\nspec:\n  action: CUSTOM\n  rules:\n  - from:\n    - source: {requestPrincipals: [\"*\"], principals: [\"a*b\"], ipBlocks: [\"10.0.0.0/40\"]}\n    to:\n    - operation: {ports: [\"http\", \"0\"]}\n    when:\n    - key: request.auth.claims[iss]\n      values: [x]\n    - key: request.headers[x]\n",
    )
    .unwrap_err();
    let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.action",
            "spec.rules[0].from[0].source.requestPrincipals",
            "spec.rules[0].from[0].source.principals[0]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "spec.rules[0].to[0].operation.ports[0]",
            "spec.rules[0].to[0].operation.ports[1]",
            "spec.rules[0].when[0].key",
            "spec.rules[0].when[1]",
        ]
    );
    assert!(
        err.to_string()
            .starts_with("AuthorizationPolicy/default/bad is invalid: spec.action: CUSTOM")
    );

    let wrong_type = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: t}\nspec:\n  rules:\n  - to:\n    - operation: {methods: GET}\n",
    )
    .unwrap_err();
    assert_eq!(
        wrong_type.errors[0].path,
        "spec.rules[0].to[0].operation.methods"
    );
    let version = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: v}\n",
    )
    .unwrap_err();
    assert_eq!(version.errors[0].path, "apiVersion");
    let kind = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: v}\n",
    )
    .unwrap_err();
    assert_eq!(kind.errors[0].path, "kind");
    let v1beta1 = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: v}\nspec: {}\n",
    );
    assert!(v1beta1.is_ok());
}

#[test]
fn denial_is_403_rbac_access_denied() {
    let response = denied_response();
    assert_eq!(response.status(), 403);
    assert_eq!(response.body(), "RBAC: access denied");
    assert_eq!(DENIED_BODY, "RBAC: access denied");
}
