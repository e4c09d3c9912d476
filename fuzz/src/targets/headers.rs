//! Request heads: what the ingress router reads from a request's headers to place and
//! forward it, what a replica's policy enforcement reads (the attestation header, the
//! request binding, header conditions), and what the admin listener's guard checks.
//!
//! The input is a request head: the first line `METHOD URI [HTTP/2]`, then one
//! `name: value` header per line. Lines that are not a valid header are skipped, as hyper
//! refuses such requests before any of this code sees them.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use http_body_util::Empty;
use rustls::pki_types::UnixTime;
use sluice_core::{HostRoute, NamespacedName, RoutingSnapshot, WeightedTarget};
use sluice_mesh::attestation::AttestationVerifier;
use sluice_mesh::enforce::Enforcer;
use sluice_mesh::guard::{AdminToken, HostNames, ListenerGuard};
use sluice_mesh::identity::{CaConfig, CertificateAuthority, SpiffeId};
use sluice_mesh::inbound::is_internal;
use sluice_mesh::policy::{AuthorizationEngine, AuthorizationPolicy, Workload};
use sluice_mesh::tls::{ConnectionSecurity, PeerInfo};
use sluice_proxy::Outbound;
use sluice_router::{edge_headers, select_route};

use super::target::{Target, outcome};

/// Header names and values the code looks at.
const DICTIONARY: &[&str] = &[
    "\nhost: ",
    "\nknative-serving-tag: ",
    "\nforwarded: ",
    "\nx-forwarded-for: ",
    "\nx-forwarded-proto: ",
    "\ntraceparent: ",
    "\ntracestate: ",
    "\nx-request-id: ",
    "\nx-sluice-caller-attestation: ",
    "\nx-sluice-proxy: ",
    "\nk-network-probe: ",
    "\nconnection: ",
    "\nupgrade: ",
    "\nte: ",
    "\ncontent-length: ",
    "\ntransfer-encoding: ",
    "\norigin: ",
    "\nauthorization: ",
    "\ncookie: ",
    "\nsec-fetch-site: ",
    "\ncontent-type: ",
    "\nx-user: ",
    "hello.default.localhost",
    "hello-split.default.localhost:8080",
    "blue",
    "preview",
    "localhost",
    "127.0.0.1",
    "[::1]:8081",
    "http://localhost:8081",
    "null",
    "Bearer ",
    "sluice-admin-token=",
    "application/json",
    "application/yaml",
    "cross-site",
    "trailers",
    "keep-alive, upgrade",
    "websocket",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "m1.",
    "v1.",
    "eyJ",
    "/login?token=",
    "/healthz",
    "/sluice/",
    " HTTP/2",
    ":",
    ", ",
    ";",
    "=",
    "\"",
];

/// The ingress: route selection, forwarding headers, and the replica's enforcement.
pub const INGRESS: Target = Target {
    name: "ingress-headers",
    about: "request heads at the ingress and the replica: router::select_route (Host, \
            :authority, Knative-Serving-Tag), activator Outbound::new (Content-Length, \
            Connection/Upgrade, TE, hop-by-hop), router::edge_headers (Forwarded, \
            X-Forwarded-*, x-sluice-* stripping, traceparent/x-request-id), \
            inbound::is_internal, Enforcer::check_with (the attestation header, policy \
            header conditions)",
    dictionary: DICTIONARY,
    max_len: 8 * 1024,
    prepare: || replica().map(|_| ()),
    run: |input| {
        let Some(head) = Head::parse(input) else {
            return "not a request head".to_owned();
        };
        let mut out = String::new();
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = head.uri.clone();
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers.clone();
        match select_route(snapshot(), &head.headers, &head.uri) {
            Ok((host, route)) => {
                out += &format!("{:?} {:?}", route.pick(0), route.pick(99));
                match Outbound::new(request, Some(1 << 20)) {
                    Ok(mut outbound) => {
                        let client = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
                        edge_headers(outbound.headers_mut(), client, "http", &host, false);
                        out += &format!("{}", outbound.headers().len());
                    }
                    Err(e) => out += &e.to_string(),
                }
            }
            Err(e) => out += &e.to_string(),
        }
        let parts = {
            let mut request = Request::new(());
            *request.method_mut() = head.method;
            *request.uri_mut() = head.uri;
            *request.headers_mut() = head.headers;
            request.into_parts().0
        };
        out += &is_internal(&parts).to_string();
        let Ok((enforcer, engine, activator)) = replica() else {
            return super::target::NO_FIXTURE.to_owned();
        };
        for peer in [activator, &plaintext()] {
            out += &outcome(&enforcer.check_with(engine, &parts, peer, None, UnixTime::now()));
        }
        out
    },
};

/// The admin listener's guard (the same one in front of metrics and stats).
pub const GUARD: Target = Target {
    name: "admin-guard",
    about: "request heads at the admin listener: guard::ListenerGuard::check (Host, Origin, \
            Sec-Fetch-Site, bearer token or cookie, /login?token=, Content-Type), for a \
            loopback listener and for one reached through a Kubernetes Service",
    dictionary: DICTIONARY,
    max_len: 8 * 1024,
    prepare: || guards().map(|_| ()),
    run: |input| {
        let Some(head) = Head::parse(input) else {
            return "not a request head".to_owned();
        };
        let Ok((local, cluster)) = guards() else {
            return super::target::NO_FIXTURE.to_owned();
        };
        let mut out = String::new();
        for guard in [local, cluster] {
            out += &match guard.check(&head.method, &head.uri, &head.headers) {
                None => "pass".to_owned(),
                Some(refusal) => format!("{} {}", refusal.status(), refusal.body()),
            };
        }
        out
    },
};

/// A request head decoded from fuzz bytes.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    fn parse(input: &[u8]) -> Option<Head> {
        let mut lines = input
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let first = std::str::from_utf8(lines.next()?).ok()?;
        let mut words = first.split(' ');
        let method = Method::from_bytes(words.next()?.as_bytes()).ok()?;
        let uri: Uri = words.next()?.parse().ok()?;
        let version = match words.next() {
            Some("HTTP/2") => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = line[colon + 1..].trim_ascii();
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        Some(Head {
            method,
            uri,
            version,
            headers,
        })
    }
}

/// The samples' routes: `hello`, and `hello-split` with its `blue`, `green` and `preview`
/// tag hosts.
fn snapshot() -> &'static RoutingSnapshot {
    static SNAPSHOT: OnceLock<RoutingSnapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let route = |service: &str, targets: &[(&str, u32)]| HostRoute {
            service: NamespacedName::new("default", service),
            targets: targets
                .iter()
                .map(|(revision, percent)| WeightedTarget {
                    revision: NamespacedName::new("default", *revision),
                    percent: *percent,
                })
                .collect(),
        };
        let mut snapshot = RoutingSnapshot::default();
        for (host, service, targets) in [
            (
                "hello.default.localhost",
                "hello",
                &[("hello-00001", 100)][..],
            ),
            (
                "hello-split.default.localhost",
                "hello-split",
                &[("hello-blue-00001", 50), ("hello-green-00001", 50)],
            ),
            (
                "blue-hello-split.default.localhost",
                "hello-split",
                &[("hello-blue-00001", 100)],
            ),
            (
                "green-hello-split.default.localhost",
                "hello-split",
                &[("hello-green-00001", 100)],
            ),
            (
                "preview-hello-split.default.localhost",
                "hello-split",
                &[("hello-green-00002", 100)],
            ),
        ] {
            snapshot.hosts.insert(host.into(), route(service, targets));
        }
        snapshot
    })
}

/// A plaintext client.
fn plaintext() -> PeerInfo {
    PeerInfo {
        identity: None,
        security: ConnectionSecurity::None,
        peer_not_after: None,
    }
}

/// A replica's enforcement point as `sluice up` builds it with the mesh on: the mesh CA's
/// bundle, the activator trusted to attest callers, and a policy with header conditions;
/// and the activator's mTLS peer info. The CA is made once, in a temporary folder removed
/// right after.
type Replica = (Enforcer, AuthorizationEngine, PeerInfo);

fn replica() -> Result<&'static Replica, String> {
    static REPLICA: OnceLock<Result<Replica, String>> = OnceLock::new();
    super::target::fixture(&REPLICA, || {
        let activator_id =
            SpiffeId::new("cluster.local", "default", "activator").map_err(|e| e.to_string())?;
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-ca-{}", std::process::id()));
        let ca = CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", &dir))
            .map_err(|e| format!("a mesh CA in {}: {e}", dir.display()));
        let bundle = ca.and_then(|ca| {
            ca.trust_bundle()
                .map_err(|e| format!("the CA's trust bundle: {e}"))
        });
        let _ = std::fs::remove_dir_all(&dir);
        let bundle = Arc::new(bundle?);
        let (policy, _) = AuthorizationPolicy::from_yaml(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: web, namespace: default}\nspec:\n  rules:\n  \
             - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/a\"]}\n    \
             to:\n    - operation: {methods: [GET, POST], paths: [\"/v2/*\"]}\n    \
             when:\n    - key: request.headers[x-user]\n      values: [\"alice\", \"b*\"]\n",
        )
        .map_err(|e| format!("the fuzz target's policy: {e}"))?;
        let engine = AuthorizationEngine::new(vec![policy]);
        let enforcer = Enforcer::new(
            Workload::new("default", [("app", "web")]),
            8080,
            engine.clone(),
            Some(AttestationVerifier::new(bundle, [activator_id.clone()])),
        );
        let activator = PeerInfo {
            identity: Some(activator_id),
            security: ConnectionSecurity::MutualTls,
            peer_not_after: None,
        };
        Ok((enforcer, engine, activator))
    })
}

/// The admin API's guard on a loopback address with a token, and one reached through a
/// Kubernetes Service (`.svc` names).
fn guards() -> Result<&'static (ListenerGuard, ListenerGuard), String> {
    static GUARDS: OnceLock<Result<(ListenerGuard, ListenerGuard), String>> = OnceLock::new();
    super::target::fixture(&GUARDS, || {
        let token =
            AdminToken::from_text("0123456789abcdef").ok_or("the fixed token is refused")?;
        let local = ListenerGuard::new(
            "the admin API",
            SocketAddr::from(([127, 0, 0, 1], 8081)),
            Some(token.clone()),
        );
        let cluster = ListenerGuard::new(
            "the admin API",
            SocketAddr::from(([0, 0, 0, 0], 8081)),
            Some(token),
        )
        .with_hosts(HostNames::Suffixes(vec![
            ".svc".into(),
            ".svc.cluster.local".into(),
        ]));
        Ok((local, cluster))
    })
}
