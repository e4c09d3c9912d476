//! HTTP/1.1 connections to replicas, kept in a small bounded stack of idle connections per
//! replica address (one set per forwarder, so one per router shard).
//!
//! A request takes the most recently used idle connection (or dials a new one) and sends on
//! it directly through hyper's connection handle: no pool checkout future, no per-request
//! connector. The connection goes back on the stack when its response body has been read to
//! the end; a response dropped half-read closes its connection. A request that a stale idle
//! connection could not even start to send is sent on the next one, or a fresh one.
//!
//! Before a reused connection carries a request, its socket is asked directly whether the
//! replica has closed it (a peek, not the reactor's readiness, which can lag behind): a
//! replica whose process has just died closed every connection it had, and a request
//! written on one of them would be lost with no way to tell it was never processed. Found
//! closed, the request fails as [`H1Error::ClosedIdle`], which like a refused connection
//! means nothing was sent.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::MeshIo;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::AttemptBody;
use sluice_mesh::tls::UpstreamPeer;

/// Idle connections kept per replica address.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// (Thread, replica address) entries remembered before empty ones are forgotten.
const MAX_ENDPOINTS: usize = 1024;
/// How long dialling a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an HTTP/1.1 exchange with a replica failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The replica could not be connected to (nothing was sent).
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// Connecting took longer than the connect timeout (nothing was sent).
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The HTTP/1.1 handshake on a fresh connection failed (nothing was sent).
    #[error("connection setup failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The replica had closed the idle connection the request was about to go on (nothing
    /// was sent).
    #[error("the replica had closed the idle connection before the request was sent")]
    ClosedIdle,
    /// The exchange failed after the request was handed to the connection.
    #[error(transparent)]
    Http(hyper::Error),
}

impl H1Error {
    /// Whether the request cannot have reached the replica (the connection never stood).
    pub fn is_connect(&self) -> bool {
        !matches!(self, H1Error::Http(_))
    }
}

/// Idle connections by the thread that dialled them, the replica address and the mesh
/// certificate generation they were made with: a forwarder shared by several
/// single-threaded runtimes (the activator's) hands each thread only the connections its
/// own runtime drives, so no request wakes another thread; after a certificate rotation,
/// connections made with the old certificate are not reused.
type Key = (ThreadId, SocketAddr, u64);
type Idle = Arc<Mutex<HashMap<Key, Vec<Conn>>>>;

/// One connection to a replica: its request handle and, over mTLS, the replica's verified
/// identity (set on every response it carries).
#[derive(Debug)]
struct Conn {
    sender: SendRequest<AttemptBody>,
    /// Set when the connection is taken for reuse: its socket is checked before the
    /// request's first byte is written (see [`Checked`]).
    check: Arc<AtomicBool>,
    peer: Option<UpstreamPeer>,
    /// The certificate generation current when it was dialled: a connection goes back
    /// under this key only, so one made just before a rotation is not reused with the new
    /// generation's connections until the replica closes it when the old certificate
    /// expires (a request sent on it then would meet a closed connection).
    generation: u64,
}

/// HTTP/1.1 connections to replicas, by address.
#[derive(Clone, Debug, Default)]
pub(crate) struct H1Pool {
    idle: Idle,
    mesh: Option<OutboundMesh>,
}

impl H1Pool {
    /// A pool whose connections are mTLS as `mesh`'s workload.
    pub(crate) fn with_mesh(mesh: Option<OutboundMesh>) -> Self {
        Self {
            idle: Idle::default(),
            mesh,
        }
    }

    fn generation(&self) -> u64 {
        self.mesh.as_ref().map_or(0, OutboundMesh::generation)
    }

    fn key(&self, endpoint: SocketAddr) -> Key {
        (std::thread::current().id(), endpoint, self.generation())
    }

    fn take(&self, endpoint: SocketAddr) -> Option<Conn> {
        let key = self.key(endpoint);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if self.mesh.is_some() && !idle.contains_key(&key) {
            // First request since a rotation: let go of the previous generation's
            // connections to this replica (they close once dropped).
            idle.retain(|k, _| !(k.0 == key.0 && k.1 == endpoint));
        }
        let stack = idle.get_mut(&key)?;
        // The most recently used connection that can take a request now. One still busy
        // (its response was read but its request body is still being sent, say) stays for
        // later: waiting on it could hold this request up for as long as that upload takes.
        match stack.iter().rposition(|c| c.sender.is_ready()) {
            Some(i) => {
                let conn = stack.remove(i);
                conn.check.store(true, Ordering::Relaxed);
                Some(conn)
            }
            None => {
                stack.retain(|c| !c.sender.is_closed());
                None
            }
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `endpoint`.
    pub(crate) async fn request(
        &self,
        endpoint: SocketAddr,
        mut req: Request<AttemptBody>,
    ) -> Result<Response<PooledBody>, H1Error> {
        while let Some(mut conn) = self.take(endpoint) {
            if conn.sender.ready().await.is_err() {
                continue; // closed while idle
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(endpoint, conn, resp)),
                Err(mut e) => match e.take_message() {
                    // Not a byte written: try the next connection.
                    Some(back) => req = back,
                    None => {
                        let e = e.into_error();
                        return Err(if found_closed(&e) {
                            H1Error::ClosedIdle
                        } else {
                            H1Error::Http(e)
                        });
                    }
                },
            }
        }
        let mut conn = self.connect(endpoint).await?;
        match conn.sender.send_request(req).await {
            Ok(resp) => Ok(self.wrap(endpoint, conn, resp)),
            Err(e) => Err(H1Error::Http(e)),
        }
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<Conn, H1Error> {
        // Read before the handshake: should the certificate rotate during it, the
        // connection counts as the old generation's and is not reused.
        let generation = self.generation();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
            .await
            .map_err(|_| H1Error::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(H1Error::Connect)?;
        let _ = stream.set_nodelay(true);
        let (io, peer) = match &self.mesh {
            Some(mesh) => {
                let (tls, id) = mesh
                    .connector()
                    .connect(stream)
                    .await
                    .map_err(|e| H1Error::Connect(std::io::Error::other(e)))?;
                (MeshIo::Tls(Box::new(tls)), Some(UpstreamPeer(Arc::new(id))))
            }
            None => (MeshIo::Plain(stream), None),
        };
        let check = Arc::new(AtomicBool::new(false));
        let io = Checked {
            io,
            check: check.clone(),
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(H1Error::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, "replica connection ended: {e}");
            }
        });
        Ok(Conn {
            sender,
            check,
            peer,
            generation,
        })
    }

    fn wrap(
        &self,
        endpoint: SocketAddr,
        conn: Conn,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        let (mut parts, inner) = resp.into_parts();
        if let Some(peer) = &conn.peer {
            parts.extensions.insert(peer.clone());
        }
        // An upgraded connection belongs to its tunnel from now on.
        let reusable = parts.status != http::StatusCode::SWITCHING_PROTOCOLS;
        let mut body = PooledBody {
            inner,
            back: reusable.then(|| (self.clone(), endpoint, conn)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    fn put(&self, endpoint: SocketAddr, conn: Conn) {
        let key = self.key(endpoint);
        if conn.sender.is_closed() || conn.generation != key.2 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_ENDPOINTS && !idle.contains_key(&key) {
            idle.retain(|_, stack| {
                stack.retain(|c| !c.sender.is_closed());
                !stack.is_empty()
            });
            if idle.len() >= MAX_ENDPOINTS {
                return;
            }
        }
        let stack = idle.entry(key).or_default();
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(conn);
        }
    }
}

/// The error a [`Checked`] connection fails its first write with when the replica had
/// closed it.
#[derive(Debug, thiserror::Error)]
#[error("the replica had closed the idle connection")]
struct FoundClosed;

/// Whether `e` is a request failed by [`Checked`] before any byte was written.
fn found_closed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<FoundClosed>())
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A pooled connection's I/O. When the connection is taken for reuse, the first write asks
/// the socket itself (a non-blocking peek) whether the replica has closed its end, and
/// fails with [`FoundClosed`] before writing anything if so.
struct Checked {
    io: MeshIo,
    check: Arc<AtomicBool>,
}

impl Checked {
    fn closed_by_peer(&self) -> bool {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match SockRef::from(self.io.tcp()).peek(&mut byte) {
            // End of stream: the replica closed the connection.
            Ok(0) => true,
            // Bytes waiting (a TLS record, say): the connection stands; hyper reads them.
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }
}

impl AsyncRead for Checked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Checked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.check.swap(false, Ordering::Relaxed) && self.closed_by_peer() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                FoundClosed,
            )));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A replica's response body; its connection returns to the idle stack once the body has
/// been read to the end (dropped earlier, the connection closes).
#[derive(Debug)]
pub(crate) struct PooledBody {
    inner: Incoming,
    back: Option<(H1Pool, SocketAddr, Conn)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, endpoint, conn)) = self.back.take() {
            pool.put(endpoint, conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken body: the connection is of no further use.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::body::ReplayableBody;

    /// A replica answering `body_len` bytes; counts the connections it accepted.
    async fn replica(body_len: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            vec![b'x'; body_len],
                        ))))
                    }),
                ));
            }
        });
        (addr, accepted)
    }

    fn get(addr: SocketAddr) -> Request<AttemptBody> {
        let mut req = Request::new(ReplayableBody::new(Empty::<Bytes>::new(), None).attempt());
        *req.uri_mut() = http::Uri::from_static("/");
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
        req
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (addr, accepted) = replica(1024).await;
        let pool = H1Pool::default();
        for _ in 0..3 {
            let resp = pool.request(addr, get(addr)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 1024);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_half_read_does_not_give_its_connection_back() {
        let (addr, accepted) = replica(1 << 20).await;
        let pool = H1Pool::default();
        let resp = pool.request(addr, get(addr)).await.unwrap();
        drop(resp);
        let resp = pool.request(addr, get(addr)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 1 << 20);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A request body that never ends (an upload still going on).
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_upload_is_not_waited_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers every request head at once, without reading any body.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let pool = H1Pool::default();
        let mut upload = Request::new(ReplayableBody::new(Endless, None).attempt());
        *upload.method_mut() = http::Method::POST;
        *upload.uri_mut() = http::Uri::from_static("/upload");
        upload
            .headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
        let resp = pool.request(addr, upload).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
        // The upload's connection is back on the stack but busy: this one dials anew.
        let resp = pool.request(addr, get(addr)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A replica whose process died between two requests on one connection: the second
    /// request must fail as never sent (so it may go to another replica), not as lost on
    /// the way. The test holds its thread while the replica closes, so the runtime has not
    /// yet seen the connection close when the request goes out: the race a busy machine
    /// hits.
    #[tokio::test]
    async fn a_request_on_a_connection_the_replica_closed_while_idle_is_never_sent() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<usize>();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let (mut got, mut buf) = (Vec::new(), [0u8; 1024]);
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            close_rx.recv().unwrap();
            // The process dies: its connection and its listener close.
            drop(conn);
            drop(listener);
            closed_tx.send(got.len()).unwrap();
        });
        let pool = H1Pool::default();
        let resp = pool.request(addr, get(addr)).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        close_tx.send(()).unwrap();
        // Blocks this runtime's only thread: nothing polls the connection meanwhile.
        closed_rx.recv().unwrap();
        let err = pool.request(addr, get(addr)).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = H1Pool::default()
            .request(addr, get(addr))
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err}");
    }
}
