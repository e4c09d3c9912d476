//! Request-level glue for the hops: the activator replaces any incoming attestation with
//! its own, and the replica establishes the real caller and applies authorization policy,
//! answering 403 when it must. Works on `http::request::Parts`, so any server can call it.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use http::request::Parts;
use rustls::pki_types::UnixTime;

use crate::attestation::{AttestationError, AttestationVerifier, Attester, HEADER, RequestBinding};
use crate::identity::SpiffeId;
use crate::policy::{AuthorizationEngine, DENIED_BODY, Decision, RequestAttributes, Workload};
use crate::tls::PeerInfo;
use crate::trace::REQUEST_ID;

fn binding(parts: &Parts) -> (String, String, String, String) {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let request_id = parts
        .headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        parts.method.as_str().to_owned(),
        authority,
        path,
        request_id,
    )
}

impl Attester {
    /// Removes any attestation the caller sent (nobody but the activator may speak for a
    /// caller) and attaches one stating `peer` as the caller of this request. Call it after
    /// `x-request-id` has been set.
    pub fn attach(
        &self,
        parts: &mut Parts,
        peer: &PeerInfo,
        now: UnixTime,
    ) -> Result<(), AttestationError> {
        parts.headers.remove(HEADER);
        let (method, authority, path, request_id) = binding(parts);
        let value = self.attest(
            peer.identity.as_ref(),
            peer.security,
            RequestBinding {
                method: &method,
                authority: &authority,
                path: &path,
                request_id: &request_id,
            },
            now,
        )?;
        parts.headers.insert(HEADER, value);
        Ok(())
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The attestation header did not verify.
    #[error(transparent)]
    Attestation(#[from] AttestationError),
    /// Authorization policy denied it.
    #[error("denied: {0}")]
    Denied(String),
}

impl Refusal {
    /// 403 with `RBAC: access denied` for a policy denial, or the attestation error (which
    /// names the header) for a bad attestation.
    pub fn to_response(&self) -> http::Response<String> {
        let body = match self {
            Self::Denied(_) => DENIED_BODY.to_owned(),
            Self::Attestation(e) => e.to_string(),
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = http::StatusCode::FORBIDDEN;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        response
    }
}

/// A replica's policy enforcement point.
#[derive(Debug)]
pub struct Enforcer {
    workload: Workload,
    port: u16,
    engine: RwLock<Arc<AuthorizationEngine>>,
    attestation: Option<AttestationVerifier>,
}

impl Enforcer {
    /// Enforces `engine` for `workload` listening on `port`; `attestation` verifies the
    /// activator's statements (without it an attestation header is refused).
    pub fn new(
        workload: Workload,
        port: u16,
        engine: AuthorizationEngine,
        attestation: Option<AttestationVerifier>,
    ) -> Self {
        Self {
            workload,
            port,
            engine: RwLock::new(Arc::new(engine)),
            attestation,
        }
    }

    /// Swaps in new policies; requests already being checked keep the old ones.
    pub fn replace_policies(&self, engine: AuthorizationEngine) {
        if let Ok(mut current) = self.engine.write() {
            *current = Arc::new(engine);
        }
    }

    /// Establishes the caller (attested, or the connection's peer) and applies policy.
    /// Returns the caller the request is served for.
    pub fn check(
        &self,
        parts: &Parts,
        peer: &PeerInfo,
        source_ip: Option<IpAddr>,
        now: UnixTime,
    ) -> Result<Option<SpiffeId>, Refusal> {
        let engine = self
            .engine
            .read()
            .map(|e| e.clone())
            .map_err(|_| Refusal::Denied("policy lock poisoned".into()))?;
        self.check_with(&engine, parts, peer, source_ip, now)
    }

    /// As [`Enforcer::check`], with `engine` instead of the enforcer's own policies (a
    /// replica whose policies arrive on a watch channel).
    pub fn check_with(
        &self,
        engine: &AuthorizationEngine,
        parts: &Parts,
        peer: &PeerInfo,
        source_ip: Option<IpAddr>,
        now: UnixTime,
    ) -> Result<Option<SpiffeId>, Refusal> {
        let (method, authority, path, request_id) = binding(parts);
        let request = RequestBinding {
            method: &method,
            authority: &authority,
            path: &path,
            request_id: &request_id,
        };
        let caller = match (parts.headers.get(HEADER), &self.attestation) {
            (None, _) => peer.identity.clone(),
            (Some(value), Some(verifier)) => {
                verifier
                    .verify(value, peer.identity.as_ref(), request, now)?
                    .caller
            }
            (Some(_), None) => {
                return Err(AttestationError::UntrustedSigner(
                    "any workload (this replica trusts no attester)".into(),
                )
                .into());
            }
        };
        let attrs = RequestAttributes {
            source: caller.as_ref(),
            source_ip,
            method: &method,
            path: &path,
            host: authority.split(':').next().unwrap_or(""),
            port: self.port,
            headers: &parts.headers,
        };
        match engine.evaluate(&self.workload, &attrs) {
            Decision::Allow => Ok(caller),
            Decision::Deny { reason } => Err(Refusal::Denied(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{CaConfig, CertificateAuthority, RotatingSvid, SvidIssuer};
    use crate::policy::AuthorizationPolicy;
    use crate::tls::ConnectionSecurity;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa).unwrap()
    }

    fn mtls(sa: &str) -> PeerInfo {
        PeerInfo {
            identity: Some(id(sa)),
            security: ConnectionSecurity::MutualTls,
            peer_not_after: None,
        }
    }

    fn request(extra: Option<(&str, &str)>) -> Parts {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri("/v2/models/iris/infer")
            .header("host", "iris.default.localhost:8080")
            .header(REQUEST_ID, "r-1");
        if let Some((k, v)) = extra {
            builder = builder.header(k, v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn activator_replaces_a_forged_attestation_and_the_replica_sees_the_caller() {
        let dir = std::env::temp_dir().join(format!("sluice-enforce-{}", uuid::Uuid::new_v4()));
        let ca =
            CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", &dir)).unwrap();
        let bundle = Arc::new(ca.trust_bundle().unwrap());
        let attester = Attester::new(RotatingSvid::fixed(
            ca.issue(&id("activator"), Duration::from_secs(600))
                .unwrap(),
        ));
        let (policy, _) = AuthorizationPolicy::from_yaml(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-a}\nspec:\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/a\"]}\n",
        )
        .unwrap();
        let enforcer = Enforcer::new(
            Workload::new("default", [("app", "iris")]),
            8080,
            AuthorizationEngine::new(vec![policy]),
            Some(AttestationVerifier::new(bundle, [id("activator")])),
        );

        // b sends a made-up attestation to the activator; the activator replaces it.
        let mut parts = request(Some((HEADER, "v1.forged.by.b")));
        attester
            .attach(&mut parts, &mtls("b"), UnixTime::now())
            .unwrap();
        assert_eq!(parts.headers.get_all(HEADER).iter().count(), 1);
        let refusal = enforcer
            .check(&parts, &mtls("activator"), None, UnixTime::now())
            .unwrap_err();
        assert!(matches!(refusal, Refusal::Denied(_)));
        let response = refusal.to_response();
        assert_eq!(response.status(), 403);
        assert_eq!(response.body(), "RBAC: access denied");

        let mut parts = request(None);
        attester
            .attach(&mut parts, &mtls("a"), UnixTime::now())
            .unwrap();
        assert_eq!(
            enforcer.check(&parts, &mtls("activator"), None, UnixTime::now()),
            Ok(Some(id("a")))
        );
        // The same header presented by b directly is refused, naming the header.
        let refusal = enforcer
            .check(&parts, &mtls("b"), None, UnixTime::now())
            .unwrap_err();
        assert!(refusal.to_response().body().starts_with(HEADER));

        // Policies swap at run time.
        enforcer.replace_policies(AuthorizationEngine::default());
        assert_eq!(
            enforcer.check(&request(None), &mtls("b"), None, UnixTime::now()),
            Ok(Some(id("b")))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
