//! What the router's listener accepts on one port: plaintext HTTP, TLS with the user's
//! certificates (chosen by SNI, per host), and mTLS from mesh workloads. A mesh client
//! sends no SNI (its peer is named by SPIFFE ID, not host), so a TLS ClientHello without a
//! server name gets the router's SVID and must present one of its own; the caller's verified
//! identity then travels with the request, and the next hop receives it attested.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{Acceptor, ServerConfig};
use sluice_mesh::identity::verify::peer_spiffe_id;
use sluice_mesh::telemetry::HopTelemetry;
use sluice_mesh::tls::{ConnectionSecurity, MeshStream, PeerInfo, peer_not_after};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The scheme a request reached the router with (`http` or `https`), a request extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheme(pub &'static str);

/// The listener's security settings and telemetry.
#[derive(Clone, Debug)]
pub struct Ingress {
    /// Ingress TLS with the user's certificates (by SNI).
    pub tls: Option<Arc<ServerConfig>>,
    /// mTLS for mesh workloads (the router's SVID; client SVIDs required).
    pub mesh: Option<Arc<ServerConfig>>,
    /// Metrics and access log of every request.
    pub telemetry: Option<HopTelemetry>,
    /// How long a client may take to send its first byte and finish a handshake.
    pub handshake_timeout: Duration,
}

impl Default for Ingress {
    fn default() -> Self {
        Self {
            tls: None,
            mesh: None,
            telemetry: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Who the client is and how it connected.
#[derive(Clone, Debug)]
pub struct IngressSecurity {
    /// The client (a verified SVID over mesh mTLS; anonymous otherwise).
    pub peer: PeerInfo,
    /// `http` or `https`.
    pub scheme: Scheme,
}

/// A connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// Nothing (or no finished handshake) within the timeout.
    #[error("no request or handshake within {0:?}")]
    Timeout(Duration),
    /// Reading or the handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// A TLS client arrived but no TLS is configured.
    #[error("TLS is not configured on this listener")]
    NoTls,
    /// A mesh client's certificate carries no readable SPIFFE ID.
    #[error("mesh client presented no readable SPIFFE ID")]
    NoIdentity,
}

fn anonymous(scheme: &'static str) -> IngressSecurity {
    IngressSecurity {
        peer: PeerInfo {
            identity: None,
            security: ConnectionSecurity::None,
            peer_not_after: None,
        },
        scheme: Scheme(scheme),
    }
}

impl Ingress {
    /// Accepts one connection: plaintext as is, TLS by SNI, mTLS for mesh clients.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(MeshStream<TcpStream>, IngressSecurity), IngressError> {
        if self.tls.is_none() && self.mesh.is_none() {
            return Ok((MeshStream::Plain(tcp), anonymous("http")));
        }
        let limit = self.handshake_timeout;
        tokio::time::timeout(limit, self.accept_inner(tcp))
            .await
            .map_err(|_| IngressError::Timeout(limit))?
    }

    async fn accept_inner(
        &self,
        tcp: TcpStream,
    ) -> Result<(MeshStream<TcpStream>, IngressSecurity), IngressError> {
        let mut first = [0u8; 1];
        let n = tcp
            .peek(&mut first)
            .await
            .map_err(IngressError::Handshake)?;
        if n == 0 || first[0] != TLS_HANDSHAKE {
            return Ok((MeshStream::Plain(tcp), anonymous("http")));
        }
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
            .await
            .map_err(IngressError::Handshake)?;
        let has_sni = start.client_hello().server_name().is_some();
        let (config, mesh) = match (&self.tls, &self.mesh, has_sni) {
            (Some(tls), _, true) | (Some(tls), None, false) => (tls.clone(), false),
            (_, Some(mesh), _) => (mesh.clone(), true),
            (None, None, _) => return Err(IngressError::NoTls),
        };
        let tls = start
            .into_stream(config)
            .await
            .map_err(IngressError::Handshake)?;
        if !mesh {
            return Ok((MeshStream::Tls(Box::new(tls)), anonymous("https")));
        }
        let conn = tls.get_ref().1;
        let identity = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| peer_spiffe_id(leaf).ok())
            .ok_or(IngressError::NoIdentity)?;
        let peer = PeerInfo {
            identity: Some(identity),
            security: ConnectionSecurity::MutualTls,
            peer_not_after: peer_not_after(conn),
        };
        Ok((
            MeshStream::Tls(Box::new(tls)),
            IngressSecurity {
                peer,
                scheme: Scheme("https"),
            },
        ))
    }
}
