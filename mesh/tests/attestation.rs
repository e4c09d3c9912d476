//! Signed caller attestation: the replica's policy sees the original caller behind the
//! activator, and the attestation cannot be forged, replayed by another peer, moved to another
//! request, or kept past its life. The end-to-end test runs caller → activator → replica over
//! real mTLS connections on loopback.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderValue;
use rustls::pki_types::UnixTime;
use sluice_mesh::attestation::{
    AttestationError, AttestationMode, AttestationVerifier, Attester, MAX_HEADER_LEN,
    RequestBinding,
};
use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::policy::{AuthorizationEngine, AuthorizationPolicy, RequestAttributes, Workload};
use sluice_mesh::tls::{
    ConnectionSecurity, ExpectedServer, MeshAcceptor, MeshConnector, MeshTls, PeerAuthMode,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Fixture {
    dir: PathBuf,
    ca: Arc<CertificateAuthority>,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-attest-{}", uuid::Uuid::new_v4()));
        let ca = Arc::new(
            CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.join("ca")))
                .unwrap(),
        );
        Self { dir, ca }
    }

    fn holder(&self, sa: &str) -> RotatingSvid {
        RotatingSvid::fixed(self.ca.issue(&id(sa), Duration::from_secs(3600)).unwrap())
    }

    fn tls(&self, sa: &str) -> MeshTls {
        MeshTls::new(Arc::new(self.ca.trust_bundle().unwrap()), self.holder(sa))
    }

    fn verifier(&self) -> AttestationVerifier {
        AttestationVerifier::new(Arc::new(self.ca.trust_bundle().unwrap()), [id("activator")])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

const REQ: RequestBinding<'static> = RequestBinding {
    method: "POST",
    authority: "iris.default.localhost",
    path: "/v2/models/iris/infer",
    request_id: "req-1",
};

fn later(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(UnixTime::now().as_secs() + secs))
}

#[test]
fn mtls_bound_statements_count_only_on_a_trusted_attesters_connection() {
    let f = Fixture::new();
    let attester = Attester::new(f.holder("activator")).with_mode(AttestationMode::MtlsBound);
    let value = attester
        .attest(
            Some(&id("alice")),
            ConnectionSecurity::MutualTls,
            REQ,
            UnixTime::now(),
        )
        .unwrap();
    assert!(value.to_str().unwrap().starts_with("m1."));
    let v = f.verifier();
    let ok = v
        .verify(&value, Some(&id("activator")), REQ, UnixTime::now())
        .unwrap();
    assert_eq!(ok.caller, Some(id("alice")));
    assert_eq!(ok.signer, id("activator"));
    // Anyone can write the header; it counts only from the activator's own connection.
    assert_eq!(
        v.verify(&value, Some(&id("mallory")), REQ, UnixTime::now()),
        Err(AttestationError::UntrustedSigner(id("mallory").to_string()))
    );
    assert!(matches!(
        v.verify(&value, None, REQ, UnixTime::now()),
        Err(AttestationError::NotFromSigner { .. })
    ));
    // Still bound to its request and its life.
    let other = RequestBinding {
        path: "/admin",
        ..REQ
    };
    assert_eq!(
        v.verify(&value, Some(&id("activator")), other, UnixTime::now()),
        Err(AttestationError::WrongRequest("path"))
    );
    assert!(matches!(
        v.verify(&value, Some(&id("activator")), REQ, later(3600)),
        Err(AttestationError::Stale { .. })
    ));
}

#[test]
fn verifies_the_original_caller_signed_by_the_activator() {
    let f = Fixture::new();
    let attester = Attester::new(f.holder("activator"));
    let value = attester
        .attest(
            Some(&id("a")),
            ConnectionSecurity::MutualTls,
            REQ,
            UnixTime::now(),
        )
        .unwrap();
    let attested = f
        .verifier()
        .verify(&value, Some(&id("activator")), REQ, UnixTime::now())
        .unwrap();
    assert_eq!(attested.caller, Some(id("a")));
    assert_eq!(attested.signer, id("activator"));
    assert_eq!(attested.security, ConnectionSecurity::MutualTls);

    // A plaintext original caller stays unauthenticated across the hop.
    let anonymous = attester
        .attest(None, ConnectionSecurity::None, REQ, UnixTime::now())
        .unwrap();
    let attested = f
        .verifier()
        .verify(&anonymous, Some(&id("activator")), REQ, UnixTime::now())
        .unwrap();
    assert_eq!(attested.caller, None);
    assert_eq!(attested.security, ConnectionSecurity::None);
}

#[test]
fn refuses_forgery_replay_rebinding_and_staleness() {
    let f = Fixture::new();
    let verifier = f.verifier();
    let activator = Some(id("activator"));
    let value = Attester::new(f.holder("activator"))
        .attest(
            Some(&id("a")),
            ConnectionSecurity::MutualTls,
            REQ,
            UnixTime::now(),
        )
        .unwrap();

    // Swap the caller in the statement, keep the signature.
    let parts: Vec<&str> = value.to_str().unwrap().split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let statement = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let forged_statement = statement.replace("/sa/a\"", "/sa/admin\"");
    assert_ne!(forged_statement, statement);
    let forged = format!(
        "v1.{}.{}.{}",
        b64.encode(forged_statement),
        parts[2],
        parts[3]
    );
    assert_eq!(
        verifier.verify(
            &HeaderValue::from_str(&forged).unwrap(),
            activator.as_ref(),
            REQ,
            UnixTime::now()
        ),
        Err(AttestationError::BadSignature)
    );

    // Presented by someone other than the signer (a replayed header), or over plaintext.
    assert!(matches!(
        verifier.verify(&value, Some(&id("b")), REQ, UnixTime::now()),
        Err(AttestationError::NotFromSigner { .. })
    ));
    assert!(matches!(
        verifier.verify(&value, None, REQ, UnixTime::now()),
        Err(AttestationError::NotFromSigner { .. })
    ));

    // Moved to another request.
    let other = RequestBinding {
        path: "/v2/models/secret/infer",
        ..REQ
    };
    assert_eq!(
        verifier.verify(&value, activator.as_ref(), other, UnixTime::now()),
        Err(AttestationError::WrongRequest("path"))
    );

    // Kept past its life (30 s + 20 s skew).
    assert!(matches!(
        verifier.verify(&value, activator.as_ref(), REQ, later(120)),
        Err(AttestationError::Stale { .. })
    ));

    // Any workload may sign, but only the activator is trusted to attest.
    let self_signed = Attester::new(f.holder("b"))
        .attest(
            Some(&id("a")),
            ConnectionSecurity::MutualTls,
            REQ,
            UnixTime::now(),
        )
        .unwrap();
    assert!(matches!(
        verifier.verify(&self_signed, Some(&id("b")), REQ, UnixTime::now()),
        Err(AttestationError::UntrustedSigner(_))
    ));

    // An activator certificate from another CA.
    let other_ca = CertificateAuthority::load_or_create(&CaConfig::new(
        "cluster.local",
        f.dir.join("other-ca"),
    ))
    .unwrap();
    let intruder = Attester::new(RotatingSvid::fixed(
        other_ca
            .issue(&id("activator"), Duration::from_secs(600))
            .unwrap(),
    ))
    .attest(
        Some(&id("a")),
        ConnectionSecurity::MutualTls,
        REQ,
        UnixTime::now(),
    )
    .unwrap();
    assert!(matches!(
        verifier.verify(&intruder, activator.as_ref(), REQ, UnixTime::now()),
        Err(AttestationError::Signer(_))
    ));

    // Garbage and oversize.
    assert!(matches!(
        verifier.verify(
            &HeaderValue::from_static("v1.x.y"),
            activator.as_ref(),
            REQ,
            UnixTime::now()
        ),
        Err(AttestationError::Malformed(_))
    ));
    let huge = HeaderValue::from_str(&"a".repeat(MAX_HEADER_LEN + 1)).unwrap();
    assert!(matches!(
        verifier.verify(&huge, activator.as_ref(), REQ, UnixTime::now()),
        Err(AttestationError::TooLong(_))
    ));
}

#[test]
fn without_an_attestation_the_caller_is_the_connection_peer() {
    let f = Fixture::new();
    let caller = f
        .verifier()
        .effective_caller(None, Some(&id("a")), REQ, UnixTime::now())
        .unwrap();
    assert_eq!(caller, Some(id("a")));
}

/// The replica: STRICT mTLS; each line is `METHOD PATH REQUEST-ID ATTESTATION|-`; answers
/// `200`, `403 RBAC: access denied`, or `400 <attestation error>`.
async fn replica(f: &Fixture) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MeshAcceptor::new(f.tls("replica").server_config().unwrap());
    let verifier = f.verifier();
    let (policy, _) = AuthorizationPolicy::from_yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-a, namespace: default}\nspec:\n  selector: {matchLabels: {serving.knative.dev/revision: iris-00001}}\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/default/sa/a\"]}\n",
    )
    .unwrap();
    let engine = Arc::new(AuthorizationEngine::new(vec![policy]));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, verifier, engine) = (acceptor.clone(), verifier.clone(), engine.clone());
            tokio::spawn(async move {
                let Ok((stream, peer)) = acceptor.accept(tcp, PeerAuthMode::Strict).await else {
                    return;
                };
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (method, path, request_id) = (fields[0], fields[1], fields[2]);
                let header = (fields[3] != "-").then(|| HeaderValue::from_str(fields[3]).unwrap());
                let binding = RequestBinding {
                    method,
                    authority: "iris.default.localhost",
                    path,
                    request_id,
                };
                let reply = match verifier.effective_caller(
                    header.as_ref(),
                    peer.identity.as_ref(),
                    binding,
                    UnixTime::now(),
                ) {
                    Err(e) => format!("400 {e}\n"),
                    Ok(caller) => {
                        let headers = http::HeaderMap::new();
                        let attrs = RequestAttributes {
                            source: caller.as_ref(),
                            source_ip: None,
                            method,
                            path,
                            host: "iris.default.localhost",
                            port: 8012,
                            headers: &headers,
                        };
                        let workload = Workload::new(
                            "default",
                            [("serving.knative.dev/revision", "iris-00001")],
                        );
                        if engine.evaluate(&workload, &attrs).is_allowed() {
                            "200\n".to_owned()
                        } else {
                            "403 RBAC: access denied\n".to_owned()
                        }
                    }
                };
                stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

/// The activator: STRICT mTLS from callers; attests the caller and forwards over mTLS.
async fn activator(f: &Fixture, replica: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = f.tls("activator");
    let acceptor = MeshAcceptor::new(tls.server_config().unwrap());
    let connector = MeshConnector::new(
        tls.client_config(ExpectedServer::Exactly(id("replica")))
            .unwrap(),
    );
    let attester = Arc::new(Attester::new(tls.identity().clone()));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, connector, attester) =
                (acceptor.clone(), connector.clone(), attester.clone());
            tokio::spawn(async move {
                let Ok((stream, peer)) = acceptor.accept(tcp, PeerAuthMode::Strict).await else {
                    return;
                };
                let mut inbound = BufReader::new(stream);
                let mut line = String::new();
                inbound.read_line(&mut line).await.unwrap();
                let fields: Vec<&str> = line.split_whitespace().collect();
                let binding = RequestBinding {
                    method: fields[0],
                    authority: "iris.default.localhost",
                    path: fields[1],
                    request_id: fields[2],
                };
                let header = attester
                    .attest(
                        peer.identity.as_ref(),
                        peer.security,
                        binding,
                        UnixTime::now(),
                    )
                    .unwrap();
                let upstream = TcpStream::connect(replica).await.unwrap();
                let (upstream, _) = connector.connect(upstream).await.unwrap();
                let mut upstream = BufReader::new(upstream);
                let forward = format!(
                    "{} {} {} {}\n",
                    fields[0],
                    fields[1],
                    fields[2],
                    header.to_str().unwrap()
                );
                upstream
                    .get_mut()
                    .write_all(forward.as_bytes())
                    .await
                    .unwrap();
                let mut reply = String::new();
                upstream.read_line(&mut reply).await.unwrap();
                inbound.get_mut().write_all(reply.as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

async fn call(tls: &MeshTls, addr: std::net::SocketAddr, expect: &str, line: &str) -> String {
    let connector = MeshConnector::new(
        tls.client_config(ExpectedServer::Exactly(id(expect)))
            .unwrap(),
    );
    let (stream, _) = connector
        .connect(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_line(&mut reply).await.unwrap();
    reply.trim_end().to_owned()
}

#[tokio::test]
async fn a_policy_behind_the_activator_sees_the_original_caller() {
    let f = Fixture::new();
    let replica = replica(&f).await;
    let activator = activator(&f, replica).await;

    let via = |sa: &'static str| {
        let tls = f.tls(sa);
        async move {
            call(
                &tls,
                activator,
                "activator",
                "POST /v2/models/iris/infer r1\n",
            )
            .await
        }
    };
    assert_eq!(via("a").await, "200");
    assert_eq!(via("b").await, "403 RBAC: access denied");

    // Direct to the replica: a's own identity passes, b's does not.
    assert_eq!(
        call(
            &f.tls("a"),
            replica,
            "replica",
            "POST /v2/models/iris/infer r2 -\n"
        )
        .await,
        "200"
    );
    // b replays an attestation naming a (as if captured): refused, the signer is not b.
    let captured = Attester::new(f.holder("activator"))
        .attest(
            Some(&id("a")),
            ConnectionSecurity::MutualTls,
            RequestBinding {
                request_id: "r3",
                ..REQ
            },
            UnixTime::now(),
        )
        .unwrap();
    let reply = call(
        &f.tls("b"),
        replica,
        "replica",
        &format!(
            "POST /v2/models/iris/infer r3 {}\n",
            captured.to_str().unwrap()
        ),
    )
    .await;
    assert!(
        reply.starts_with("400 x-sluice-caller-attestation: signed by"),
        "{reply}"
    );
}
