//! A hyper connector for mesh hops: plain TCP, or mTLS to a peer whose SPIFFE ID is checked,
//! for `http://` URIs (inside the mesh the scheme names the protocol, the mesh adds TLS).
//! Used by pooled HTTP/2 clients, probes, stat and metric scrapes. Responses received over
//! mTLS carry the server's verified identity as an [`UpstreamPeer`] extension (hyper-util's
//! pool hands each connection's extra info to the responses it carries).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::connector::MeshConnector;
use crate::identity::SpiffeId;

/// The server's identity as the mTLS handshake of the connection verified it: a response
/// extension on every response received over such a connection (telemetry's
/// `destination_principal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamPeer(pub Arc<SpiffeId>);

/// A connection made by [`MeshHttpConnector`].
#[derive(Debug)]
pub enum MeshIo {
    /// mTLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// Plain TCP (mesh off).
    Plain(TcpStream),
}

impl MeshIo {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Tls(s) => s.get_ref().0,
            Self::Plain(s) => s,
        }
    }
}

impl AsyncRead for MeshIo {
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

impl AsyncWrite for MeshIo {
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
}

/// [`MeshIo`] for hyper's client (hyper's own I/O traits, and the pool's [`Connection`]),
/// with the server's verified identity when the connection is mTLS.
#[derive(Debug)]
pub struct HyperMeshIo {
    io: TokioIo<MeshIo>,
    peer: Option<UpstreamPeer>,
}

impl HyperMeshIo {
    /// Wraps a connection for hyper.
    pub fn new(io: MeshIo) -> Self {
        Self {
            io: TokioIo::new(io),
            peer: None,
        }
    }

    /// Wraps an mTLS connection whose handshake verified the server as `peer`.
    pub fn with_peer(io: MeshIo, peer: SpiffeId) -> Self {
        Self {
            io: TokioIo::new(io),
            peer: Some(UpstreamPeer(Arc::new(peer))),
        }
    }
}

impl Read for HyperMeshIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for HyperMeshIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for HyperMeshIo {
    fn connected(&self) -> Connected {
        let connected = match self.io.inner() {
            MeshIo::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        };
        match &self.peer {
            Some(peer) => connected.extra(peer.clone()),
            None => connected,
        }
    }
}

/// Dials `host:port` of an `http://` URI, then runs the mesh handshake when configured.
#[derive(Clone, Debug)]
pub struct MeshHttpConnector {
    tcp: HttpConnector,
    tls: Option<MeshConnector>,
}

impl MeshHttpConnector {
    /// TCP with `TCP_NODELAY` and a 2 s connect timeout; mTLS through `tls` when given.
    pub fn new(tls: Option<MeshConnector>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(2)));
        Self { tcp, tls }
    }

    /// Whether connections are mTLS.
    pub fn is_mtls(&self) -> bool {
        self.tls.is_some()
    }
}

impl tower::Service<http::Uri> for MeshHttpConnector {
    type Response = HyperMeshIo;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<HyperMeshIo, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(match tls {
                Some(tls) => {
                    let (stream, peer) = tls.connect(tcp).await?;
                    HyperMeshIo::with_peer(MeshIo::Tls(Box::new(stream)), peer)
                }
                None => HyperMeshIo::new(MeshIo::Plain(tcp)),
            })
        })
    }
}

/// An HTTP/1.1 and HTTP/2 server for a mesh listener with bounded request heads: a client has
/// `header_timeout` to send one, of at most `max_header_bytes`, and an HTTP/2 connection
/// carries at most `max_streams` streams at once.
pub fn bounded_server(
    header_timeout: Duration,
    max_header_bytes: usize,
    max_streams: u32,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper's floor for the read buffer is 8 KiB.
        .max_buf_size(max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    builder
}
