//! The client side of a mesh hop: mTLS to a peer whose SPIFFE ID is checked.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::identity::SpiffeId;
use crate::identity::verify::peer_spiffe_id;

/// The name given to rustls; never sent (SNI is off) and never checked (the SPIFFE ID is).
const PLACEHOLDER_NAME: &str = "sluice.mesh.invalid";

/// An mTLS connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The handshake did not finish in time.
    #[error("mTLS handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The handshake failed (the server's SVID was refused, or it refused ours).
    #[error("mTLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// The server's certificate carries no readable SPIFFE ID.
    #[error("server presented no readable SPIFFE ID")]
    NoPeerIdentity,
}

/// Opens mTLS connections with one client config.
#[derive(Clone)]
pub struct MeshConnector {
    tls: TlsConnector,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector").finish_non_exhaustive()
    }
}

impl MeshConnector {
    /// A connector using `config` (from [`super::MeshTls::client_config`]), 10 s handshakes.
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self {
            tls: TlsConnector::from(config),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Changes the handshake deadline.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs the handshake over `io`; returns the stream and the server's verified identity.
    pub async fn connect<S>(&self, io: S) -> Result<(TlsStream<S>, SpiffeId), ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(PLACEHOLDER_NAME)
            .map_err(|e| ConnectError::Handshake(io::Error::other(e)))?;
        let deadline = self.handshake_timeout;
        let tls = tokio::time::timeout(deadline, self.tls.connect(name, io))
            .await
            .map_err(|_| ConnectError::Timeout(deadline))?
            .map_err(ConnectError::Handshake)?;
        let id = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| peer_spiffe_id(leaf).ok())
            .ok_or(ConnectError::NoPeerIdentity)?;
        Ok((tls, id))
    }
}
