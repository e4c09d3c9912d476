//! An X.509-SVID with its private key, and the private file a replica receives it in.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::sign::CertifiedKey;

use super::files::{self, FileError};
use super::spiffe::SpiffeId;
use super::verify::{TrustBundle, Usage};

/// A workload certificate and its key, as issued by the mesh CA.
#[derive(Clone)]
pub struct Svid {
    id: SpiffeId,
    cert: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    issued_at: SystemTime,
    not_after: SystemTime,
    certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// An SVID file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SvidFileError {
    /// Reading or writing failed, or the file is not private.
    #[error(transparent)]
    File(#[from] FileError),
    /// The PEM content is malformed or lacks the certificate or the key.
    #[error("{0}: {1}")]
    Format(String, String),
    /// The certificate is not a valid SVID of the trust bundle.
    #[error("{0}: {1}")]
    Invalid(String, #[source] super::verify::SvidError),
}

impl Svid {
    /// Assembles an SVID from its parts; `key` must be the PKCS#8 key of `cert`.
    pub(crate) fn from_parts(
        id: SpiffeId,
        cert: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
        issued_at: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, rustls::Error> {
        let signing =
            rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(key.clone_key()))?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.clone()], signing));
        Ok(Self {
            id,
            cert,
            key: Arc::new(key),
            issued_at,
            not_after,
            certified,
        })
    }

    /// The workload identity in the certificate.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, PKCS#8 DER.
    pub fn key_der(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key
    }

    /// When the CA issued it (the start of its life for rotation; `notBefore` is earlier by
    /// the clock-skew allowance).
    pub fn issued_at(&self) -> SystemTime {
        self.issued_at
    }

    /// `notAfter`.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Its life from issue to expiry.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }

    /// The rustls form, shared by every connection that presents this certificate.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// Writes certificate and key as one PEM file with mode 0600 (directory 0700): how local
    /// mode hands a replica its identity, never on a command line.
    pub fn write_private(&self, path: &Path) -> Result<(), SvidFileError> {
        let mut pem = pem_block("CERTIFICATE", &self.cert);
        pem.push_str(&pem_block("PRIVATE KEY", self.key.secret_pkcs8_der()));
        Ok(files::write_private(path, pem.as_bytes())?)
    }

    /// Reads a file written by [`Svid::write_private`], refusing it unless it is private and
    /// holds a valid SVID of `bundle`.
    pub fn read_private(path: &Path, bundle: &TrustBundle) -> Result<Self, SvidFileError> {
        let name = path.display().to_string();
        let bytes = files::read_private(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| SvidFileError::Format(name.clone(), "not UTF-8 PEM".into()))?;
        let blocks = parse_pem(&text).map_err(|e| SvidFileError::Format(name.clone(), e))?;
        let find = |label: &str| {
            blocks
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, der)| der.clone())
                .ok_or_else(|| SvidFileError::Format(name.clone(), format!("no {label} block")))
        };
        let cert = CertificateDer::from(find("CERTIFICATE")?);
        let key = PrivatePkcs8KeyDer::from(find("PRIVATE KEY")?);
        let id = bundle
            .verify(&cert, Usage::Server, UnixTime::now())
            .map_err(|e| SvidFileError::Invalid(name.clone(), e))?;
        Self::from_verified(id, cert, key).map_err(|e| SvidFileError::Format(name, e))
    }

    /// Assembles an SVID from a certificate already verified as `id` and its key; the
    /// rotation clock comes from the certificate's validity. Fails when the certificate does
    /// not parse or the key does not load.
    pub(crate) fn from_verified(
        id: SpiffeId,
        cert: CertificateDer<'static>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self, String> {
        let (_, parsed) =
            <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
                '_,
                x509_parser::error::X509Error,
            >>::from_der(&cert)
            .map_err(|e| e.to_string())?;
        let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        // The CA backdates notBefore by the skew allowance; undo it for the rotation clock.
        let issued_at = at(parsed.validity().not_before.timestamp()) + super::verify::CLOCK_SKEW;
        let not_after = at(parsed.validity().not_after.timestamp());
        Self::from_parts(id, cert, key, issued_at, not_after)
            .map_err(|e| format!("key does not load: {e}"))
    }
}

pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Parses concatenated PEM blocks into `(label, der)` pairs.
pub(crate) fn parse_pem(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    use base64::Engine as _;
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let label = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .ok_or_else(|| format!("expected a BEGIN line, found {line:?}"))?
            .to_owned();
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        loop {
            let line = lines
                .next()
                .ok_or_else(|| format!("{label} block has no END line"))?
                .trim();
            if line == end {
                break;
            }
            b64.push_str(line);
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{label} block is not base64: {e}"))?;
        blocks.push((label, der));
    }
    Ok(blocks)
}
