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

use super::ca::CaError;
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
