//! rustls certificate verifiers that accept exactly the mesh's SVIDs.
//!
//! Both sides check the peer's leaf with [`TrustBundle::verify`] (signature by the mesh CA,
//! validity with skew tolerance, leaf constraints, one SPIFFE URI SAN in the trust domain);
//! the client additionally checks the server's identity against what it expected to reach.
//! Host names play no part: identity is the SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{SpiffeId, SvidError, TrustBundle, Usage};

/// Which server identities a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedServer {
    /// Any workload of the trust domain.
    AnyInTrustDomain,
    /// Exactly this workload.
    Exactly(SpiffeId),
    /// Any of these workloads.
    OneOf(Vec<SpiffeId>),
}

impl ExpectedServer {
    fn admits(&self, id: &SpiffeId) -> bool {
        match self {
            Self::AnyInTrustDomain => true,
            Self::Exactly(expected) => expected == id,
            Self::OneOf(ids) => ids.contains(id),
        }
    }
}

/// Maps an SVID refusal to the rustls error sent as the TLS alert (and logged).
pub(crate) fn to_rustls(error: SvidError) -> rustls::Error {
    let kind = match error {
        SvidError::BadEncoding(_) => CertificateError::BadEncoding,
        SvidError::UnknownIssuer(_) => CertificateError::UnknownIssuer,
        SvidError::BadSignature => CertificateError::BadSignature,
        SvidError::Expired { .. } => CertificateError::Expired,
        SvidError::NotYetValid { .. } => CertificateError::NotValidYet,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

/// The mesh configs offer TLS 1.3 only, so a TLS 1.2 signature never needs checking.
fn tls12_not_offered() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not offered between mesh workloads".into())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Server side: verifies a client SVID, required (mesh mTLS) or optional (the CA's port,
/// where callers without an identity yet ask for one and callers with one fetch policies).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: Arc<TrustBundle>,
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// A verifier that requires a client SVID of `bundle`'s trust domain.
    pub fn new(bundle: Arc<TrustBundle>) -> Self {
        Self {
            bundle,
            algorithms: algorithms(),
            mandatory: true,
        }
    }

    /// A verifier that lets a client present no certificate, and verifies one presented
    /// exactly as [`SpiffeClientVerifier::new`] does (a bad one fails the handshake).
    pub fn optional(bundle: Arc<TrustBundle>) -> Self {
        Self {
            mandatory: false,
            ..Self::new(bundle)
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.bundle
            .verify(end_entity, Usage::Client, now)
            .map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_not_offered())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}

/// Client side: verifies the server's SVID and that it is the workload expected.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: ExpectedServer,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier for servers of `bundle`'s trust domain matching `expected`.
    pub fn new(bundle: Arc<TrustBundle>, expected: ExpectedServer) -> Self {
        Self {
            bundle,
            expected,
            algorithms: algorithms(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self
            .bundle
            .verify(end_entity, Usage::Server, now)
            .map_err(to_rustls)?;
        if !self.expected.admits(&id) {
            tracing::debug!(%id, expected = ?self.expected, "server identity not the one expected");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_not_offered())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}
