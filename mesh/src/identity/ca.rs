//! The built-in certificate authority: an ECDSA P-256 root persisted in a private directory,
//! issuing SPIFFE X.509-SVIDs to workloads.
//!
//! Local mode keeps the root in the state directory (`ca.crt`, `ca.key`, mode 0600, directory
//! 0700) and reloads it on restart, so certificates issued before a restart stay valid.
//! Kubernetes mode keeps the same two PEM texts in a Secret: [`CertificateAuthority::generate`]
//! makes a root for the caller to store, [`CertificateAuthority::from_pem`] takes it back with
//! the same validation as the state directory, and [`CertificateAuthority::sign_csr`] certifies
//! a workload's own key for the identity its token proved.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
#[cfg(test)]
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::csr::{self, CsrError};
pub use super::error::CaError;
use super::files;
use super::spiffe::{SpiffeId, valid_trust_domain};
use super::svid::{Svid, parse_pem, pem_block};
use super::verify::{CLOCK_SKEW, SvidError, TrustBundle};

/// Default life of a workload certificate.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default life of the root certificate (ten years).
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

const CERT_FILE: &str = "ca.crt";
const KEY_FILE: &str = "ca.key";

/// Where the CA lives and what it issues.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// Trust domain of every SVID it issues.
    pub trust_domain: String,
    /// Private directory holding `ca.crt` and `ca.key`.
    pub dir: PathBuf,
    /// Life of a newly created root.
    pub root_ttl: Duration,
    /// Default life of a workload certificate (24 h; down to one second for tests).
    pub workload_ttl: Duration,
}

impl CaConfig {
    /// Defaults (24 h workload certificates, ten-year root) for `trust_domain` in `dir`.
    pub fn new(trust_domain: &str, dir: impl Into<PathBuf>) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            dir: dir.into(),
            root_ttl: DEFAULT_ROOT_TTL,
            workload_ttl: DEFAULT_WORKLOAD_TTL,
        }
    }

    /// Checks the trust domain and durations.
    pub fn validate(&self) -> Result<(), CaError> {
        validate_params(&self.trust_domain, Some(self.root_ttl), self.workload_ttl)
    }
}

/// Checks a trust domain, a workload TTL and (for a new root) the root's TTL.
fn validate_params(
    trust_domain: &str,
    root_ttl: Option<Duration>,
    workload_ttl: Duration,
) -> Result<(), CaError> {
    if !valid_trust_domain(trust_domain) {
        return Err(CaError::Config(format!(
            "trust_domain {trust_domain:?}: lowercase letters, digits, '.', '-', '_' only"
        )));
    }
    if workload_ttl < Duration::from_secs(1) {
        return Err(CaError::Config("workload_ttl: at least 1 s".into()));
    }
    if root_ttl.is_some_and(|root| root <= workload_ttl) {
        return Err(CaError::Config(
            "root_ttl: must be longer than workload_ttl".into(),
        ));
    }
    Ok(())
}

/// A root certificate and its private key as PEM text, for the caller to persist (a Secret in
/// Kubernetes mode). `Debug` never prints the key.
#[derive(Clone)]
pub struct RootPem {
    /// The root certificate, one PEM `CERTIFICATE` block.
    pub cert_pem: String,
    /// The root's private key, one PEM `PRIVATE KEY` block (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for RootPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPem")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Anything that hands out SVIDs: the built-in CA here, a remote CA client elsewhere.
pub trait SvidIssuer: Send + Sync {
    /// Issues a fresh key and certificate for `id` valid for `ttl`.
    fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, CaError>;
}

/// The mesh's built-in certificate authority.
pub struct CertificateAuthority {
    trust_domain: String,
    root: CertificateDer<'static>,
    root_not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
    workload_ttl: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the root from `config.dir`, or creates and persists a new one when the directory
    /// holds none.
    pub fn load_or_create(config: &CaConfig) -> Result<Self, CaError> {
        config.validate()?;
        let cert_path = config.dir.join(CERT_FILE);
        let key_path = config.dir.join(KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(config, &cert_path, &key_path),
            (false, false) => Self::create(config, &cert_path, &key_path),
            _ => Err(CaError::HalfState(config.dir.clone())),
        }
    }

    /// A new root (ECDSA P-256, valid for `root_ttl`) for `trust_domain`, kept in memory.
    /// Returns its certificate and key as PEM so the caller can persist them; the CA issues
    /// workload certificates for `workload_ttl` by default.
    pub fn generate(
        trust_domain: &str,
        root_ttl: Duration,
        workload_ttl: Duration,
    ) -> Result<(Self, RootPem), CaError> {
        validate_params(trust_domain, Some(root_ttl), workload_ttl)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "sluice");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("sluice mesh root {trust_domain}"),
        );
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + root_ttl).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let pem = RootPem {
            cert_pem: pem_block("CERTIFICATE", cert.der()),
            key_pem: key.serialize_pem(),
        };
        let ca = Self {
            trust_domain: trust_domain.to_owned(),
            root: cert.der().clone(),
            root_not_after: now + root_ttl,
            issuer: Issuer::new(params, key),
            workload_ttl,
        };
        Ok((ca, pem))
    }

    /// The root from PEM text, validated exactly like a root loaded from the state
    /// directory: a P-256 key, a CA certificate for that key and for `trust_domain`, not
    /// expired. `source` names where the text came from in errors (e.g.
    /// `Secret sluice-system/sluice-mesh-ca`).
    pub fn from_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
        workload_ttl: Duration,
        source: &str,
    ) -> Result<Self, CaError> {
        Self::from_root_pem(
            trust_domain,
            (cert_pem, &format!("{source} (certificate)")),
            (key_pem, &format!("{source} (key)")),
            workload_ttl,
        )
    }

    fn create(config: &CaConfig, cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let (ca, pem) = Self::generate(&config.trust_domain, config.root_ttl, config.workload_ttl)?;
        files::private_dir(&config.dir)?;
        files::write_private(key_path, pem.key_pem.as_bytes())?;
        files::write_private(cert_path, pem.cert_pem.as_bytes())?;
        Ok(ca)
    }

    fn load(config: &CaConfig, cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| -> Result<String, CaError> {
            String::from_utf8(files::read_private(path)?).map_err(|_| CaError::BadRoot {
                origin: path.display().to_string(),
                reason: "not UTF-8 PEM".into(),
            })
        };
        Self::from_root_pem(
            &config.trust_domain,
            (&read(cert_path)?, &cert_path.display().to_string()),
            (&read(key_path)?, &key_path.display().to_string()),
            config.workload_ttl,
        )
    }

    /// Validates and loads a root; each PEM text comes with where it came from.
    fn from_root_pem(
        trust_domain: &str,
        (cert_pem, cert_origin): (&str, &str),
        (key_pem, key_origin): (&str, &str),
        workload_ttl: Duration,
    ) -> Result<Self, CaError> {
        validate_params(trust_domain, None, workload_ttl)?;
        let bad = |origin: &str, reason: String| CaError::BadRoot {
            origin: origin.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(key_origin, e.to_string()))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(bad(key_origin, "root key is not ECDSA P-256".into()));
        }
        let der = parse_pem(cert_pem)
            .map_err(|e| bad(cert_origin, e))?
            .into_iter()
            .find(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| CertificateDer::from(der))
            .ok_or_else(|| bad(cert_origin, "no CERTIFICATE block".into()))?;
        let (_, parsed) =
            <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
                '_,
                x509_parser::error::X509Error,
            >>::from_der(&der)
            .map_err(|e| bad(cert_origin, e.to_string()))?;
        if !parsed.is_ca() {
            return Err(bad(cert_origin, "certificate is not a CA".into()));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(
                cert_origin,
                "certificate does not match the key".into(),
            ));
        }
        let expected_san = format!("spiffe://{trust_domain}");
        let san_matches = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|ext| {
                ext.value.general_names.iter().any(|n| {
                    matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == expected_san)
                })
            });
        if !san_matches {
            return Err(bad(
                cert_origin,
                format!("root is not for trust domain {trust_domain}"),
            ));
        }
        let not_after = parsed.validity().not_after.timestamp();
        let root_not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
        if root_not_after <= SystemTime::now() {
            return Err(bad(
                cert_origin,
                format!("root expired at unix time {not_after}"),
            ));
        }
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(|e| bad(cert_origin, e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            root: der,
            root_not_after,
            issuer,
            workload_ttl,
        })
    }

    /// Signs a workload's certificate signing request for `id`, the identity the caller
    /// authenticated as. The CSR must carry an ECDSA P-256 key, a valid self-signature, and
    /// no subject alternative name other than `id` itself; the leaf is the CA's standard SVID
    /// for the CSR's key, valid for `ttl` when given and lower than the CA's workload TTL,
    /// else for the workload TTL, and never past the root's own `notAfter`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<CertificateDer<'static>, CsrError> {
        let spki_der = csr::checked_public_key(csr_pem, id)?;
        let ttl = match ttl {
            Some(ttl) if ttl < Duration::from_secs(1) => return Err(CsrError::Ttl(ttl.as_secs())),
            Some(ttl) => ttl.min(self.workload_ttl),
            None => self.workload_ttl,
        };
        // A leaf never outlives its root: near the root's end, workloads get what is left
        // (whole seconds, so the signing check below holds) rather than an error.
        let left = self
            .root_not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let ttl = ttl.min(Duration::from_secs(left.as_secs().saturating_sub(1)));
        let public = rcgen::SubjectPublicKeyInfo::from_der(&spki_der)
            .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
        let (cert, _, _) = self.sign_leaf(id, &public, ttl)?;
        Ok(cert)
    }

    /// Certifies `public` as `id` for `ttl` (whole seconds): the one place leaves are signed.
    /// Returns the certificate, its issue time and `notAfter`.
    fn sign_leaf(
        &self,
        id: &SpiffeId,
        public: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<(CertificateDer<'static>, SystemTime, SystemTime), CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        // Whole seconds: X.509 times have no fractions, and lifetime() stays exact.
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
        if ttl < Duration::from_secs(1) || now + ttl > self.root_not_after {
            return Err(CaError::Ttl(ttl));
        }
        let ttl = Duration::from_secs(ttl.as_secs());
        let params = Self::svid_params(id, now, ttl)?;
        let cert = params.signed_by(public, &self.issuer)?;
        Ok((cert.der().clone(), now, now + ttl))
    }

    /// The trust domain this CA serves.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        pem_block("CERTIFICATE", &self.root)
    }

    /// The bundle that verifies this CA's SVIDs.
    pub fn trust_bundle(&self) -> Result<TrustBundle, SvidError> {
        TrustBundle::new(&self.trust_domain, [self.root.clone()])
    }

    /// The configured default workload certificate life.
    pub fn workload_ttl(&self) -> Duration {
        self.workload_ttl
    }

    /// Issues an SVID for `id` with the default TTL.
    pub fn issue_default(&self, id: &SpiffeId) -> Result<Svid, CaError> {
        self.issue(id, self.workload_ttl)
    }

    /// Signs `params` for `key` with the root, unchecked. Only for tests that need
    /// deliberately malformed certificates.
    #[cfg(test)]
    pub(crate) fn sign_raw(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<rcgen::Certificate, rcgen::Error> {
        params.signed_by(key, &self.issuer)
    }

    /// The parameters of a well-formed SVID for `id` (used by `issue` and by tests that
    /// change one thing at a time).
    pub(crate) fn svid_params(
        id: &SpiffeId,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "sluice");
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        // Backdated by the skew allowance, so a peer whose clock is behind accepts it at once.
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ttl).into();
        params.serial_number = Some(random_serial());
        Ok(params)
    }
}

impl SvidIssuer for CertificateAuthority {
    fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (cert, now, not_after) = self.sign_leaf(id, &key, ttl)?;
        let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok(Svid::from_parts(id.clone(), cert, key_der, now, not_after)?)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = uuid::Uuid::new_v4().into_bytes();
    // Positive and non-zero, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::identity::Usage;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("sluice-ca-{}", uuid::Uuid::new_v4()))
    }

    #[test]
    fn persists_privately_and_reloads_the_same_root() {
        let dir = temp_dir().join("state").join("ca");
        let config = CaConfig::new("cluster.local", &dir);
        let first = CertificateAuthority::load_or_create(&config).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(CERT_FILE)), 0o600);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let before_restart = first.issue_default(&id).unwrap();
        assert_eq!(before_restart.lifetime(), DEFAULT_WORKLOAD_TTL);
        drop(first);

        let second = CertificateAuthority::load_or_create(&config).unwrap();
        assert!(second.root_pem().contains("BEGIN CERTIFICATE"));
        let bundle = second.trust_bundle().unwrap();
        // Issued before the restart, still verifies; issued after, too.
        assert!(
            bundle
                .verify(before_restart.cert_der(), Usage::Server, UnixTime::now())
                .is_ok()
        );
        let after = second.issue(&id, Duration::from_secs(5)).unwrap();
        assert!(
            bundle
                .verify(after.cert_der(), Usage::Client, UnixTime::now())
                .is_ok()
        );
        std::fs::remove_dir_all(dir.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn refuses_readable_keys_half_state_and_bad_config() {
        let dir = temp_dir();
        let config = CaConfig::new("cluster.local", &dir);
        CertificateAuthority::load_or_create(&config).unwrap();
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = CertificateAuthority::load_or_create(&config).unwrap_err();
        assert!(err.to_string().contains("mode 644"), "{err}");
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        assert!(matches!(
            CertificateAuthority::load_or_create(&config),
            Err(CaError::HalfState(_))
        ));
        // A root for another trust domain is not silently reused.
        std::fs::remove_dir_all(&dir).unwrap();
        CertificateAuthority::load_or_create(&config).unwrap();
        let other = CaConfig::new("other.domain", &dir);
        assert!(matches!(
            CertificateAuthority::load_or_create(&other),
            Err(CaError::BadRoot { .. })
        ));
        let mut bad = CaConfig::new("Bad Domain", &dir);
        assert!(matches!(bad.validate(), Err(CaError::Config(_))));
        bad.trust_domain = "ok".into();
        bad.workload_ttl = Duration::from_millis(10);
        assert!(matches!(bad.validate(), Err(CaError::Config(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn generated_root_round_trips_through_pem_and_bad_pem_names_its_source() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let ttl = Duration::from_secs(600);
        let (first, pem) = CertificateAuthority::generate("cluster.local", year, ttl).unwrap();
        assert!(pem.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{pem:?}").contains("PRIVATE KEY"));
        let source = "Secret sluice-system/sluice-mesh-ca";
        let second = CertificateAuthority::from_pem(
            "cluster.local",
            &pem.cert_pem,
            &pem.key_pem,
            ttl,
            source,
        )
        .unwrap();
        assert_eq!(second.root_der(), first.root_der());
        // Issued by the reloaded root, verified by the original's bundle.
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let svid = second.issue_default(&id).unwrap();
        assert!(
            first
                .trust_bundle()
                .unwrap()
                .verify(svid.cert_der(), Usage::Server, UnixTime::now())
                .is_ok()
        );
        let (_, other) = CertificateAuthority::generate("cluster.local", year, ttl).unwrap();
        for (cert, key, td, says) in [
            (
                &pem.cert_pem,
                &other.key_pem,
                "cluster.local",
                "does not match the key",
            ),
            (
                &pem.cert_pem,
                &pem.key_pem,
                "other.domain",
                "not for trust domain",
            ),
            (&pem.cert_pem, &"junk".to_owned(), "cluster.local", "(key)"),
            (
                &pem.key_pem,
                &pem.key_pem,
                "cluster.local",
                "no CERTIFICATE block",
            ),
        ] {
            let err = CertificateAuthority::from_pem(td, cert, key, ttl, source).unwrap_err();
            assert!(matches!(err, CaError::BadRoot { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(source) && text.contains(says), "{text}");
        }
        assert!(matches!(
            CertificateAuthority::generate("cluster.local", ttl, year),
            Err(CaError::Config(_))
        ));
    }

    #[test]
    fn svid_file_round_trips_and_must_be_private() {
        let dir = temp_dir();
        let ca =
            CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.join("ca")))
                .unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let svid = ca.issue(&id, Duration::from_secs(600)).unwrap();
        let path = dir.join("replica").join("svid.pem");
        svid.write_private(&path).unwrap();
        let bundle = ca.trust_bundle().unwrap();
        let read = Svid::read_private(&path, &bundle).unwrap();
        assert_eq!(read.id(), &id);
        assert_eq!(read.cert_der(), svid.cert_der());
        assert_eq!(read.not_after(), svid.not_after());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Svid::read_private(&path, &bundle).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
