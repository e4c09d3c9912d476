//! The client side of a mesh hop (router, activator, runtime probes): mTLS connections that
//! present the workload's current SVID, and the signed attestation of the original caller.
//!
//! Connection pools key idle connections by [`OutboundMesh::generation`], which changes
//! whenever this workload's certificate rotates: a connection made with the previous
//! certificate finishes what it carries and is not reused, so a peer never sees a stale
//! identity for long. Caller attestations are mTLS-bound (see
//! [`AttestationMode::MtlsBound`]). TLS session resumption is off for the same reason (a resumed session
//! would carry the identity of the certificate it was first established with).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use http::request::Parts;
use rustls::pki_types::UnixTime;

use crate::attestation::{AttestationError, AttestationMode, Attester};
use crate::tls::{
    ExpectedServer, MeshConnector, MeshHttpConnector, MeshTls, PeerInfo, TlsConfigError,
};

/// One workload's outbound mTLS and attestation.
#[derive(Clone, Debug)]
pub struct OutboundMesh {
    tls: MeshTls,
    connector: MeshConnector,
    attester: Arc<Attester>,
}

impl OutboundMesh {
    /// Outbound mTLS as `tls`'s identity to any workload of its trust domain.
    pub fn new(tls: MeshTls) -> Result<Self, TlsConfigError> {
        let mut config = (*tls.client_config(ExpectedServer::AnyInTrustDomain)?).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            connector: MeshConnector::new(Arc::new(config)),
            // Bound to the mTLS connection: the replica accepts it only from a trusted
            // attester's connection, with no per-request ECDSA on either side.
            attester: Arc::new(
                Attester::new(tls.identity().clone()).with_mode(AttestationMode::MtlsBound),
            ),
            tls,
        })
    }

    /// The mTLS connector.
    pub fn connector(&self) -> &MeshConnector {
        &self.connector
    }

    /// A hyper connector over [`OutboundMesh::connector`].
    pub fn http_connector(&self) -> MeshHttpConnector {
        MeshHttpConnector::new(Some(self.connector.clone()))
    }

    /// The workload's mTLS material.
    pub fn tls(&self) -> &MeshTls {
        &self.tls
    }

    /// Changes when this workload's certificate rotates (pool key).
    pub fn generation(&self) -> u64 {
        let svid = self.tls.identity().current();
        let der = svid.cert_der().as_ref();
        // The signature at the end of the certificate is unique to it.
        let mut h = DefaultHasher::new();
        der[der.len().saturating_sub(32)..].hash(&mut h);
        h.finish()
    }

    /// Replaces any attestation on the request with this workload's statement that `caller`
    /// (the peer of the connection the request came in on) sent it.
    pub fn attest(&self, parts: &mut Parts, caller: &PeerInfo) -> Result<(), AttestationError> {
        self.attester.attach(parts, caller, UnixTime::now())
    }
}
