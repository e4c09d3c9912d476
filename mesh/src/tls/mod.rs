//! Mutual TLS between mesh workloads: configs, verifiers, the peer-authenticating acceptor
//! and the connector.

pub mod acceptor;
pub mod config;
pub mod connector;
pub mod http;
pub mod ingress;
pub mod verifier;

pub use acceptor::{
    AcceptError, ConnectionSecurity, MeshAcceptor, MeshStream, PeerAuthMode, PeerInfo,
};
pub use config::{MeshTls, TlsConfigError};
pub use connector::{ConnectError, MeshConnector};
pub use http::{HyperMeshIo, MeshHttpConnector, MeshIo, UpstreamPeer, bounded_server};
pub use ingress::{
    IngressCertificate, IngressTlsError, ingress_server_config, ingress_tls_from_files,
};
pub use verifier::ExpectedServer;

/// When the peer certificate of an established TLS connection expires (`notAfter`), if it
/// presented one. Connection pools and servers use it to retire a connection before its
/// peer's identity lapses.
pub fn peer_not_after(conn: &rustls::CommonState) -> Option<std::time::SystemTime> {
    use x509_parser::prelude::FromDer;
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}
