//! Verification of X.509-SVIDs against a trust bundle (the mesh CA's root certificates).
//!
//! The chain is exactly leaf → root: Sluice's CA signs workload certificates directly. A leaf
//! is accepted when it is signed by a root of the bundle, is valid at `now` within the clock
//! skew tolerance, is not a CA, has key usage `digitalSignature` (and no certificate signing),
//! the extended key usage the connection side needs, an ECDSA P-256 key and exactly one URI SAN
//! that is a SPIFFE ID in the bundle's trust domain.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;

use super::spiffe::{SpiffeId, SpiffeIdError};

/// Clock skew tolerated between peers when checking validity periods.
pub const CLOCK_SKEW: Duration = Duration::from_secs(20);

/// Which side of a connection the certificate authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server certificate (EKU serverAuth required).
    Server,
    /// A client certificate (EKU clientAuth required).
    Client,
}

/// Why a certificate is not an acceptable SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// Not a DER X.509 v3 certificate.
    #[error("certificate is not valid DER X.509 v3: {0}")]
    BadEncoding(String),
    /// No root of the trust bundle issued it.
    #[error("certificate is not issued by the mesh CA (issuer {0})")]
    UnknownIssuer(String),
    /// The signature does not verify with the issuing root's key.
    #[error("certificate signature does not verify against the mesh CA")]
    BadSignature,
    /// `notAfter` (plus the skew tolerance) is in the past.
    #[error("certificate expired at unix time {not_after} (now {now}, skew tolerance 20 s)")]
    Expired {
        /// `notAfter`, seconds since the epoch.
        not_after: i64,
        /// The verifier's time.
        now: i64,
    },
    /// `notBefore` (minus the skew tolerance) is in the future.
    #[error(
        "certificate is not valid before unix time {not_before} (now {now}, skew tolerance 20 s)"
    )]
    NotYetValid {
        /// `notBefore`, seconds since the epoch.
        not_before: i64,
        /// The verifier's time.
        now: i64,
    },
    /// Basic constraints say `CA:TRUE` on a workload certificate.
    #[error("certificate is a CA (basicConstraints CA:TRUE), not a workload leaf")]
    CaLeaf,
    /// Key usage missing, without `digitalSignature`, or allowing certificate/CRL signing.
    #[error("certificate key usage must be digitalSignature without keyCertSign/cRLSign: {0}")]
    WrongKeyUsage(&'static str),
    /// The extended key usage lacks what this side needs.
    #[error("certificate extended key usage lacks {0}")]
    WrongExtendedKeyUsage(&'static str),
    /// The subject key is not ECDSA P-256.
    #[error("certificate key is not ECDSA P-256")]
    WrongKeyType,
    /// Zero or several URI SANs.
    #[error("certificate has {0} URI SANs; an SVID has exactly one")]
    UriSanCount(usize),
    /// The URI SAN is not a SPIFFE ID of the expected shape.
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("SPIFFE ID {id} is outside trust domain {expected}")]
    ForeignTrustDomain {
        /// The certificate's ID.
        id: String,
        /// The bundle's trust domain.
        expected: String,
    },
}

/// One root the bundle trusts, kept in the pieces verification needs.
#[derive(Clone, Debug)]
struct Root {
    der: CertificateDer<'static>,
    subject: Vec<u8>,
    public_key: Vec<u8>,
}

/// The roots of one trust domain.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Vec<Root>,
}

impl TrustBundle {
    /// A bundle for `trust_domain` with the given root certificates (DER).
    pub fn new(
        trust_domain: &str,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, SvidError> {
        let roots = roots
            .into_iter()
            .map(|der| {
                let (_, cert) = X509Certificate::from_der(&der)
                    .map_err(|e| SvidError::BadEncoding(e.to_string()))?;
                Ok(Root {
                    subject: cert.subject().as_raw().to_vec(),
                    public_key: cert.public_key().subject_public_key.data.to_vec(),
                    der: der.clone(),
                })
            })
            .collect::<Result<Vec<_>, SvidError>>()?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            roots,
        })
    }

    /// The trust domain every accepted SVID must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificates, DER.
    pub fn roots(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.roots.iter().map(|r| &r.der)
    }

    /// Verifies `der` as an SVID for `usage` at `now`; returns its SPIFFE ID.
    pub fn verify(&self, der: &[u8], usage: Usage, now: UnixTime) -> Result<SpiffeId, SvidError> {
        let cert = parse(der)?;
        self.check_signature(&cert)?;
        check_validity(&cert, now)?;
        check_leaf_extensions(&cert, usage)?;
        let id = spiffe_id_of(&cert)?;
        if id.trust_domain() != self.trust_domain {
            return Err(SvidError::ForeignTrustDomain {
                id: id.to_string(),
                expected: self.trust_domain.clone(),
            });
        }
        Ok(id)
    }

    fn check_signature(&self, cert: &X509Certificate<'_>) -> Result<(), SvidError> {
        let issuer = cert.issuer().as_raw();
        let mut candidates = self.roots.iter().filter(|r| r.subject == issuer).peekable();
        if candidates.peek().is_none() {
            return Err(SvidError::UnknownIssuer(cert.issuer().to_string()));
        }
        if cert.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
            return Err(SvidError::BadSignature);
        }
        let tbs = cert.tbs_certificate.as_ref();
        let signature = cert.signature_value.data.as_ref();
        let verified = candidates.any(|root| {
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &root.public_key,
            )
            .verify(tbs, signature)
            .is_ok()
        });
        if verified {
            Ok(())
        } else {
            Err(SvidError::BadSignature)
        }
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::BadEncoding(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::BadEncoding(
            "trailing bytes after certificate".into(),
        ));
    }
    if cert.version().0 != 2 {
        return Err(SvidError::BadEncoding(format!(
            "version {} (an SVID is v3)",
            cert.version().0 + 1
        )));
    }
    Ok(cert)
}

fn check_validity(cert: &X509Certificate<'_>, now: UnixTime) -> Result<(), SvidError> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let skew = CLOCK_SKEW.as_secs() as i64;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now.saturating_add(skew) < not_before {
        return Err(SvidError::NotYetValid { not_before, now });
    }
    if now.saturating_sub(skew) > not_after {
        return Err(SvidError::Expired { not_after, now });
    }
    Ok(())
}

fn check_leaf_extensions(cert: &X509Certificate<'_>, usage: Usage) -> Result<(), SvidError> {
    let bad = |e: x509_parser::error::X509Error| SvidError::BadEncoding(e.to_string());
    if let Some(bc) = cert.basic_constraints().map_err(bad)?
        && bc.value.ca
    {
        return Err(SvidError::CaLeaf);
    }
    let ku = cert
        .key_usage()
        .map_err(bad)?
        .ok_or(SvidError::WrongKeyUsage("key usage extension missing"))?;
    if !ku.value.digital_signature() {
        return Err(SvidError::WrongKeyUsage("digitalSignature missing"));
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::WrongKeyUsage("keyCertSign or cRLSign set"));
    }
    let eku = cert
        .extended_key_usage()
        .map_err(bad)?
        .ok_or(SvidError::WrongExtendedKeyUsage(
            "serverAuth and clientAuth",
        ))?;
    match usage {
        Usage::Server if !eku.value.server_auth => {
            return Err(SvidError::WrongExtendedKeyUsage("serverAuth"));
        }
        Usage::Client if !eku.value.client_auth => {
            return Err(SvidError::WrongExtendedKeyUsage("clientAuth"));
        }
        _ => {}
    }
    if !is_p256(cert.public_key()) {
        return Err(SvidError::WrongKeyType);
    }
    Ok(())
}

/// Whether a subject public key is ECDSA on P-256 (certificates here, CSRs at the CA).
pub(crate) fn is_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
    let on_p256 = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|oid| oid == OID_EC_P256);
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && on_p256
}

/// The SPIFFE ID in the certificate's single URI SAN (no other check).
fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::BadEncoding(e.to_string()))?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => Ok(uri.parse()?),
        _ => Err(SvidError::UriSanCount(uris.len())),
    }
}

/// Reads the SPIFFE ID of a certificate that was already verified (e.g. by the TLS handshake).
pub fn peer_spiffe_id(der: &[u8]) -> Result<SpiffeId, SvidError> {
    spiffe_id_of(&parse(der)?)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rcgen::{
        BasicConstraints, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256, SanType,
    };

    use super::*;
    use crate::identity::SvidIssuer;
    use crate::identity::ca::{CaConfig, CertificateAuthority};

    fn ca(dir: &std::path::Path, td: &str) -> CertificateAuthority {
        CertificateAuthority::load_or_create(&CaConfig::new(td, dir)).unwrap()
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-mesh-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn id() -> SpiffeId {
        "spiffe://cluster.local/ns/default/sa/web".parse().unwrap()
    }

    /// Signs a well-formed SVID for `id` after `change` alters one parameter.
    fn mutated(
        ca: &CertificateAuthority,
        change: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Vec<u8> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            CertificateAuthority::svid_params(&id(), SystemTime::now(), Duration::from_secs(3600))
                .unwrap();
        change(&mut params);
        ca.sign_raw(&params, &key).unwrap().der().to_vec()
    }

    fn now_plus(secs: i64) -> UnixTime {
        let now = UnixTime::now().as_secs() as i64;
        UnixTime::since_unix_epoch(Duration::from_secs((now + secs) as u64))
    }

    #[test]
    fn accepts_a_well_formed_svid_for_both_usages() {
        let dir = temp_dir("ok");
        let ca = ca(&dir, "cluster.local");
        let bundle = ca.trust_bundle().unwrap();
        let svid = ca.issue(&id(), Duration::from_secs(3600)).unwrap();
        for usage in [Usage::Server, Usage::Client] {
            assert_eq!(
                bundle
                    .verify(svid.cert_der(), usage, UnixTime::now())
                    .unwrap(),
                id()
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_two_uri_sans() {
        let dir = temp_dir("sans");
        let ca = ca(&dir, "cluster.local");
        let der = mutated(&ca, |p| {
            p.subject_alt_names.push(SanType::URI(
                "spiffe://cluster.local/ns/default/sa/admin"
                    .try_into()
                    .unwrap(),
            ));
        });
        let bundle = ca.trust_bundle().unwrap();
        assert_eq!(
            bundle.verify(&der, Usage::Client, UnixTime::now()),
            Err(SvidError::UriSanCount(2))
        );
        let none = mutated(&ca, |p| {
            p.subject_alt_names = vec![SanType::DnsName("web.default".try_into().unwrap())];
        });
        assert_eq!(
            bundle.verify(&none, Usage::Client, UnixTime::now()),
            Err(SvidError::UriSanCount(0))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_ca_leaves_and_wrong_key_usage() {
        let dir = temp_dir("ku");
        let ca = ca(&dir, "cluster.local");
        let bundle = ca.trust_bundle().unwrap();
        let ca_leaf = mutated(&ca, |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
        assert_eq!(
            bundle.verify(&ca_leaf, Usage::Server, UnixTime::now()),
            Err(SvidError::CaLeaf)
        );
        let cert_sign = mutated(&ca, |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign));
        assert!(matches!(
            bundle.verify(&cert_sign, Usage::Server, UnixTime::now()),
            Err(SvidError::WrongKeyUsage(_))
        ));
        let no_sig = mutated(&ca, |p| {
            p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
        });
        assert!(matches!(
            bundle.verify(&no_sig, Usage::Server, UnixTime::now()),
            Err(SvidError::WrongKeyUsage(_))
        ));
        let no_ku = mutated(&ca, |p| p.key_usages.clear());
        assert!(matches!(
            bundle.verify(&no_ku, Usage::Server, UnixTime::now()),
            Err(SvidError::WrongKeyUsage(_))
        ));
        let server_only = mutated(&ca, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
        });
        assert!(
            bundle
                .verify(&server_only, Usage::Server, UnixTime::now())
                .is_ok()
        );
        assert_eq!(
            bundle.verify(&server_only, Usage::Client, UnixTime::now()),
            Err(SvidError::WrongExtendedKeyUsage("clientAuth"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_foreign_trust_domain_and_foreign_ca() {
        let dir = temp_dir("td");
        let ours = ca(&dir.join("ours"), "cluster.local");
        let bundle = ours.trust_bundle().unwrap();
        let foreign_id = mutated(&ours, |p| {
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://evil.example/ns/default/sa/web"
                    .try_into()
                    .unwrap(),
            )];
        });
        assert!(matches!(
            bundle.verify(&foreign_id, Usage::Client, UnixTime::now()),
            Err(SvidError::ForeignTrustDomain { .. })
        ));
        // Another CA with the same subject name and trust domain: the signature gives it away.
        let theirs = ca(&dir.join("theirs"), "cluster.local");
        let svid = theirs.issue(&id(), Duration::from_secs(60)).unwrap();
        assert_eq!(
            bundle.verify(svid.cert_der(), Usage::Client, UnixTime::now()),
            Err(SvidError::BadSignature)
        );
        assert!(matches!(
            ours.issue(
                &"spiffe://evil.example/ns/a/sa/b".parse().unwrap(),
                Duration::from_secs(60)
            ),
            Err(crate::identity::CaError::ForeignTrustDomain { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn validity_tolerates_twenty_seconds_of_skew_and_no_more() {
        let dir = temp_dir("skew");
        let ca = ca(&dir, "cluster.local");
        let bundle = ca.trust_bundle().unwrap();
        // A certificate whose notBefore is 15 s in our future (the issuer's clock is ahead).
        let ahead = mutated(&ca, |p| {
            p.not_before = (SystemTime::now() + Duration::from_secs(15)).into();
        });
        assert!(
            bundle
                .verify(&ahead, Usage::Server, UnixTime::now())
                .is_ok()
        );
        assert!(matches!(
            bundle.verify(&ahead, Usage::Server, now_plus(-30)),
            Err(SvidError::NotYetValid { .. })
        ));
        let svid = ca.issue(&id(), Duration::from_secs(60)).unwrap();
        assert!(
            bundle
                .verify(svid.cert_der(), Usage::Server, now_plus(75))
                .is_ok()
        );
        assert!(matches!(
            bundle.verify(svid.cert_der(), Usage::Server, now_plus(90)),
            Err(SvidError::Expired { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn skew_boundaries_are_exactly_twenty_seconds() {
        let dir = temp_dir("skew-bounds");
        let ca = ca(&dir, "cluster.local");
        let bundle = ca.trust_bundle().unwrap();
        let t = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            );
        let at = |secs: i64| {
            let base = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
            UnixTime::since_unix_epoch(Duration::from_secs((base + secs) as u64))
        };
        // notBefore = t + 20, notAfter = t + 100.
        let cert = mutated(&ca, |p| {
            p.not_before = (t + Duration::from_secs(20)).into();
            p.not_after = (t + Duration::from_secs(100)).into();
        });
        // notBefore 20 s in the verifier's future: accepted; 21 s: refused.
        assert!(bundle.verify(&cert, Usage::Client, at(0)).is_ok());
        assert!(matches!(
            bundle.verify(&cert, Usage::Client, at(-1)),
            Err(SvidError::NotYetValid { .. })
        ));
        // notAfter 20 s in the verifier's past: accepted; 21 s: refused.
        assert!(bundle.verify(&cert, Usage::Client, at(120)).is_ok());
        assert!(matches!(
            bundle.verify(&cert, Usage::Client, at(121)),
            Err(SvidError::Expired { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_garbage() {
        let dir = temp_dir("garbage");
        let bundle = ca(&dir, "cluster.local").trust_bundle().unwrap();
        assert!(matches!(
            bundle.verify(b"not a certificate", Usage::Server, UnixTime::now()),
            Err(SvidError::BadEncoding(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
