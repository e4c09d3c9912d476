//! Certificate signing requests from workloads (Kubernetes mode): what the CA accepts.
//!
//! A CSR is accepted when it is one PEM `CERTIFICATE REQUEST` block of DER PKCS#10 whose
//! self-signature verifies, whose key is ECDSA P-256, and whose subject alternative names are
//! either absent or exactly one URI SAN equal to the identity the caller authenticated as.
//! Everything else the CSR asks for (subject, key usages, other extensions) is ignored: the
//! leaf is built from the CA's own SVID template, so a CSR can choose only its public key.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::error::CaError;
use super::spiffe::SpiffeId;
use super::svid::parse_pem;
use super::verify::is_p256;

/// The PEM label of a PKCS#10 request.
pub const CSR_PEM_LABEL: &str = "CERTIFICATE REQUEST";

/// Why a CSR was refused (the message names what was wrong).
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Not one PEM `CERTIFICATE REQUEST` block of valid DER.
    #[error("csr: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify with its own key.
    #[error("csr: signature does not verify with the request's public key")]
    BadSignature,
    /// The key is not ECDSA P-256.
    #[error("csr: key must be ECDSA P-256 (id-ecPublicKey on prime256v1)")]
    KeyType,
    /// A SAN other than the authenticated identity (a DNS name, IP, e-mail, or another URI).
    #[error("csr: subject alternative name {requested} is not allowed; only {authenticated}")]
    IdentityMismatch {
        /// The SAN the CSR asked for.
        requested: String,
        /// The identity the caller authenticated as.
        authenticated: String,
    },
    /// The requested life is below one second.
    #[error("ttlSeconds: at least 1 (got {0})")]
    Ttl(u64),
    /// Issuing the certificate failed (the CA's side).
    #[error("issuing the certificate: {0}")]
    Issue(#[from] CaError),
}

/// Parses and checks `csr_pem` for `id`; returns the DER SubjectPublicKeyInfo to certify.
pub(crate) fn checked_public_key(csr_pem: &str, id: &SpiffeId) -> Result<Vec<u8>, CsrError> {
    let blocks = parse_pem(csr_pem).map_err(CsrError::Malformed)?;
    let der = match blocks.as_slice() {
        [(label, der)] if label == CSR_PEM_LABEL => der,
        [(label, _)] => {
            return Err(CsrError::Malformed(format!(
                "PEM block is {label:?}, expected {CSR_PEM_LABEL:?}"
            )));
        }
        blocks => {
            return Err(CsrError::Malformed(format!(
                "expected one PEM {CSR_PEM_LABEL:?} block, found {}",
                blocks.len()
            )));
        }
    };
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CsrError::Malformed(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".into(),
        ));
    }
    let spki = &csr.certification_request_info.subject_pki;
    if !is_p256(spki) {
        return Err(CsrError::KeyType);
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let mismatch = |requested: String| CsrError::IdentityMismatch {
        requested,
        authenticated: id.to_string(),
    };
    let wanted = id.to_string();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) if *uri == wanted => {}
                    GeneralName::URI(uri) => return Err(mismatch(format!("URI:{uri}"))),
                    GeneralName::DNSName(dns) => return Err(mismatch(format!("DNS:{dns}"))),
                    GeneralName::RFC822Name(mail) => {
                        return Err(mismatch(format!("email:{mail}")));
                    }
                    GeneralName::IPAddress(ip) => {
                        return Err(mismatch(format!("IP:{}", ip_text(ip))));
                    }
                    other => return Err(mismatch(format!("{other}"))),
                }
            }
        }
    }
    Ok(spki.raw.to_vec())
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => bytes
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("."),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(octets).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    use rustls::pki_types::UnixTime;
    use x509_parser::certificate::X509Certificate;

    use super::*;
    use crate::identity::svid::pem_block;
    use crate::identity::{CertificateAuthority, Usage};

    fn ca(workload_ttl: Duration) -> CertificateAuthority {
        CertificateAuthority::generate(
            "cluster.local",
            Duration::from_secs(3600 * 24 * 365),
            workload_ttl,
        )
        .unwrap()
        .0
    }

    fn id() -> SpiffeId {
        "spiffe://cluster.local/ns/ns1/sa/sa1".parse().unwrap()
    }

    fn csr(key: &KeyPair, sans: Vec<SanType>) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "aaaa");
        params.subject_alt_names = sans;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn p256() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn life(cert: &[u8]) -> i64 {
        let (_, c) = X509Certificate::from_der(cert).unwrap();
        c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
    }

    #[test]
    fn certifies_the_requests_own_key_as_the_authenticated_identity() {
        let ca = ca(Duration::from_secs(600));
        let bundle = ca.trust_bundle().unwrap();
        let key = p256();
        for sans in [
            vec![],
            vec![SanType::URI(id().to_string().try_into().unwrap())],
        ] {
            let leaf = ca.sign_csr(&csr(&key, sans), &id(), None).unwrap();
            for usage in [Usage::Server, Usage::Client] {
                assert_eq!(bundle.verify(&leaf, usage, UnixTime::now()).unwrap(), id());
            }
            let (_, parsed) = X509Certificate::from_der(&leaf).unwrap();
            assert_eq!(
                parsed.public_key().subject_public_key.data.as_ref(),
                key.public_key_raw()
            );
            // The CA's template, not the request's subject.
            assert!(!parsed.subject().to_string().contains("aaaa"));
        }
    }

    #[test]
    fn refuses_any_other_subject_alternative_name() {
        let ca = ca(Duration::from_secs(600));
        let key = p256();
        let other = SanType::URI("spiffe://cluster.local/ns/ns1/sa/admin".try_into().unwrap());
        let dns = SanType::DnsName("sluice-ca.sluice-system.svc".try_into().unwrap());
        let ip = SanType::IpAddress([127, 0, 0, 1].into());
        let own = SanType::URI(id().to_string().try_into().unwrap());
        for (sans, shown) in [
            (vec![other], "URI:spiffe://cluster.local/ns/ns1/sa/admin"),
            (vec![dns], "DNS:sluice-ca.sluice-system.svc"),
            (vec![own, ip], "IP:127.0.0.1"),
        ] {
            let err = ca.sign_csr(&csr(&key, sans), &id(), None).unwrap_err();
            assert!(matches!(err, CsrError::IdentityMismatch { .. }), "{err}");
            assert!(err.to_string().contains(shown), "{err}");
        }
    }

    #[test]
    fn refuses_keys_other_than_p256() {
        let ca = ca(Duration::from_secs(600));
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let err = ca.sign_csr(&csr(&key, vec![]), &id(), None).unwrap_err();
            assert!(matches!(err, CsrError::KeyType), "{err}");
        }
    }

    #[test]
    fn refuses_a_tampered_request_and_garbage() {
        let ca = ca(Duration::from_secs(600));
        let good = csr(&p256(), vec![]);
        let mut der = parse_pem(&good).unwrap().remove(0).1;
        let at = der.windows(4).position(|w| w == b"aaaa").unwrap();
        der[at] = b'b';
        let tampered = pem_block(CSR_PEM_LABEL, &der);
        let err = ca.sign_csr(&tampered, &id(), None).unwrap_err();
        assert!(matches!(err, CsrError::BadSignature), "{err}");

        for (text, says) in [
            ("hello", "expected a BEGIN line"),
            (&*ca.root_pem(), "PEM block is \"CERTIFICATE\""),
            (
                &*pem_block(CSR_PEM_LABEL, b"\x30\x03\x02\x01\x00"),
                "not a DER PKCS#10",
            ),
            (&*format!("{good}{good}"), "found 2"),
        ] {
            let err = ca.sign_csr(text, &id(), None).unwrap_err();
            assert!(matches!(err, CsrError::Malformed(_)), "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn ttl_is_capped_at_the_workload_ttl() {
        let ca = ca(Duration::from_secs(600));
        let request = csr(&p256(), vec![]);
        let skew = crate::identity::CLOCK_SKEW.as_secs() as i64;
        let capped = ca
            .sign_csr(&request, &id(), Some(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(life(&capped), 600 + skew);
        let shorter = ca
            .sign_csr(&request, &id(), Some(Duration::from_secs(60)))
            .unwrap();
        assert_eq!(life(&shorter), 60 + skew);
        let default = ca.sign_csr(&request, &id(), None).unwrap();
        assert_eq!(life(&default), 600 + skew);
        assert!(matches!(
            ca.sign_csr(&request, &id(), Some(Duration::ZERO)),
            Err(CsrError::Ttl(0))
        ));
    }

    #[test]
    fn a_leaf_never_outlives_its_root() {
        // A root with two hours left, loaded by a CA configured for one-day leaves.
        let (_, pem) = CertificateAuthority::generate(
            "cluster.local",
            Duration::from_secs(2 * 3600),
            Duration::from_secs(3600),
        )
        .unwrap();
        let ca = CertificateAuthority::from_pem(
            "cluster.local",
            &pem.cert_pem,
            &pem.key_pem,
            Duration::from_secs(24 * 3600),
            "test",
        )
        .unwrap();
        let leaf = ca.sign_csr(&csr(&p256(), vec![]), &id(), None).unwrap();
        let (_, root) = X509Certificate::from_der(ca.root_der()).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf).unwrap();
        assert!(leaf.validity().not_after.timestamp() <= root.validity().not_after.timestamp());
        assert!(leaf.validity().not_after.timestamp() > root.validity().not_before.timestamp());
    }

    #[test]
    fn refuses_an_identity_of_another_trust_domain() {
        let ca = ca(Duration::from_secs(600));
        let foreign: SpiffeId = "spiffe://other.domain/ns/ns1/sa/sa1".parse().unwrap();
        let err = ca
            .sign_csr(&csr(&p256(), vec![]), &foreign, None)
            .unwrap_err();
        assert!(
            matches!(err, CsrError::Issue(CaError::ForeignTrustDomain { .. })),
            "{err}"
        );
    }
}
