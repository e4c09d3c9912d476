//! Who answered: the replica's SPIFFE ID as the mTLS handshake of the connection verified
//! it, set on every response that came over such a connection (telemetry's
//! `destination_principal`). The HTTP/1.1 stacks keep it with each connection; the pooled
//! HTTP/2 client gets it through [`PeerConnector`], which hands it to hyper-util's pool as
//! the connection's extra info.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use sluice_mesh::identity::SpiffeId;
use sluice_mesh::tls::{HyperMeshIo, MeshConnector, MeshIo};

/// The replica's verified identity, a response extension on responses received over mTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamPeer(pub Arc<SpiffeId>);

/// A connection made by [`PeerConnector`]: hyper's I/O over plain TCP or mTLS, and the
/// peer's identity when mTLS.
#[derive(Debug)]
pub(crate) struct PeerIo {
    io: HyperMeshIo,
    peer: Option<UpstreamPeer>,
}

impl Connection for PeerIo {
    fn connected(&self) -> Connected {
        let connected = self.io.connected();
        match &self.peer {
            Some(peer) => connected.extra(peer.clone()),
            None => connected,
        }
    }
}

impl Read for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Dials `host:port` of an `http://` URI (`TCP_NODELAY`, 2 s connect timeout), then runs the
/// mesh handshake when configured, keeping the peer's verified identity.
#[derive(Clone, Debug)]
pub(crate) struct PeerConnector {
    tcp: HttpConnector,
    tls: Option<MeshConnector>,
}

impl PeerConnector {
    /// mTLS through `tls` when given, plain TCP otherwise.
    pub(crate) fn new(tls: Option<MeshConnector>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(2)));
        Self { tcp, tls }
    }
}

impl tower::Service<http::Uri> for PeerConnector {
    type Response = PeerIo;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<PeerIo, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let (io, peer) = match tls {
                Some(tls) => {
                    let (stream, id) = tls.connect(tcp).await?;
                    (
                        MeshIo::Tls(Box::new(stream)),
                        Some(UpstreamPeer(Arc::new(id))),
                    )
                }
                None => (MeshIo::Plain(tcp), None),
            };
            Ok(PeerIo {
                io: HyperMeshIo::new(io),
                peer,
            })
        })
    }
}
