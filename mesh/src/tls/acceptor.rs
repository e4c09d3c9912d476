//! The server side of every mesh hop: peer authentication as Istio's `PeerAuthentication`
//! modes, and the peer's identity for the request handler.
//!
//! * `STRICT`: every connection must complete mTLS with a verified SVID; plaintext is refused
//!   by the TLS layer (its first bytes are not a TLS record).
//! * `PERMISSIVE`: the first byte decides. A TLS handshake record (0x16) gets mTLS, anything
//!   else is served as plaintext and labelled so (no principal).
//! * `DISABLE`: plaintext only.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::identity::SpiffeId;
use crate::identity::verify::peer_spiffe_id;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// How a workload authenticates its peers (Istio `PeerAuthentication` `mtls.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PeerAuthMode {
    /// mTLS required.
    Strict,
    /// mTLS or plaintext (the default).
    #[default]
    Permissive,
    /// Plaintext only.
    Disable,
}

/// Whether a connection was mutually authenticated (Istio's `connection_security_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionSecurity {
    /// mTLS with a verified peer SVID.
    MutualTls,
    /// Plaintext.
    None,
}

impl ConnectionSecurity {
    /// The metric label value: `mutual_tls` or `none`.
    pub fn label(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
        }
    }
}

/// What the request handler knows about the peer of its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's verified SPIFFE ID; `None` on plaintext.
    pub identity: Option<SpiffeId>,
    /// mTLS or plaintext.
    pub security: ConnectionSecurity,
    /// When the peer's certificate expires: a server should close the connection by then,
    /// so a long-lived connection is re-established with a fresh certificate.
    pub peer_not_after: Option<SystemTime>,
}

/// A connection could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client sent nothing, or the handshake did not finish, within the timeout.
    #[error("TLS handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The client closed before sending anything.
    #[error("connection closed before the first byte")]
    Closed,
    /// The TLS handshake failed: plaintext under STRICT, an unverifiable certificate, …
    #[error("TLS handshake refused: {0}")]
    Handshake(#[source] io::Error),
    /// The handshake finished without a peer certificate we can read (cannot happen with the
    /// mesh verifier; refused rather than served anonymously).
    #[error("mTLS peer presented no readable SPIFFE ID")]
    NoPeerIdentity,
    /// Reading the first byte failed.
    #[error("reading the connection: {0}")]
    Io(#[source] io::Error),
}

/// An accepted connection: TLS or plaintext.
#[derive(Debug)]
pub enum MeshStream<S> {
    /// mTLS.
    Tls(Box<TlsStream<S>>),
    /// Plaintext (PERMISSIVE or DISABLE).
    Plain(S),
}

/// Accepts connections under a peer-authentication mode.
#[derive(Clone)]
pub struct MeshAcceptor {
    tls: TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for MeshAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl MeshAcceptor {
    /// An acceptor using `config` (from [`super::MeshTls::server_config`]); handshakes must
    /// finish within 10 s.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            tls: TlsAcceptor::from(config),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Changes the handshake deadline.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Accepts `tcp` under `mode`, returning the stream to serve and who the peer is.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        mode: PeerAuthMode,
    ) -> Result<(MeshStream<TcpStream>, PeerInfo), AcceptError> {
        let deadline = self.handshake_timeout;
        tokio::time::timeout(deadline, self.accept_inner(tcp, mode))
            .await
            .map_err(|_| AcceptError::Timeout(deadline))?
    }

    async fn accept_inner(
        &self,
        tcp: TcpStream,
        mode: PeerAuthMode,
    ) -> Result<(MeshStream<TcpStream>, PeerInfo), AcceptError> {
        let plain = PeerInfo {
            identity: None,
            security: ConnectionSecurity::None,
            peer_not_after: None,
        };
        match mode {
            PeerAuthMode::Disable => return Ok((MeshStream::Plain(tcp), plain)),
            PeerAuthMode::Permissive => {
                let mut first = [0u8; 1];
                let n = tcp.peek(&mut first).await.map_err(AcceptError::Io)?;
                if n == 0 {
                    return Err(AcceptError::Closed);
                }
                if first[0] != TLS_HANDSHAKE {
                    return Ok((MeshStream::Plain(tcp), plain));
                }
            }
            PeerAuthMode::Strict => {}
        }
        let tls = self.tls.accept(tcp).await.map_err(AcceptError::Handshake)?;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| peer_spiffe_id(leaf).ok())
            .ok_or(AcceptError::NoPeerIdentity)?;
        let peer_not_after = super::peer_not_after(tls.get_ref().1);
        Ok((
            MeshStream::Tls(Box::new(tls)),
            PeerInfo {
                identity: Some(identity),
                security: ConnectionSecurity::MutualTls,
                peer_not_after,
            },
        ))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MeshStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MeshStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tls(s) => s.is_write_vectored(),
            Self::Plain(s) => s.is_write_vectored(),
        }
    }
}
