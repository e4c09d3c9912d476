//! HTTP/2 and HTTP/1.1 connections to replicas after this workload's own certificate
//! rotates, with real mTLS handshakes on loopback: requests sent after the rotation go out
//! on a new connection that presents the new certificate, while requests in flight on the
//! old connection (one still waiting for its response head, one streaming its body) finish
//! on it; the old connection then closes and is never reused (the replica closes it when the
//! old certificate expires, so a request sent on it then would be lost).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_core::NamespacedName;
use sluice_mesh::identity::{
    CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, Svid, SvidIssuer,
};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{MeshAcceptor, MeshStream, MeshTls, PeerAuthMode};
use sluice_proxy::timeouts::Timeouts;
use sluice_proxy::{BoxError, Forwarder, Outbound, ProxyBody, UpstreamPeer, full_body};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

struct Pki {
    dir: PathBuf,
    ca: CertificateAuthority,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki() -> Pki {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "sluice-h2-rotation-{}-{unique}",
        std::process::id()
    ));
    let ca = CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.join("ca")))
        .unwrap();
    Pki { dir, ca }
}

fn svid(ca: &CertificateAuthority, ns: &str, sa: &str) -> Svid {
    let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
    ca.issue(&id, Duration::from_secs(3600)).unwrap()
}

/// What the replica saw.
#[derive(Debug)]
enum Event {
    /// A request arrived on connection `conn`, whose client presented certificate `cert`.
    Request {
        path: String,
        conn: usize,
        cert: Vec<u8>,
    },
    /// Connection `conn` ended.
    Closed { conn: usize },
}

/// A body the test feeds chunk by chunk; it ends when its sender is dropped.
struct Fed(mpsc::Receiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Releases the held requests.
struct Holds {
    /// `/slow-head` answers once this is `true`.
    head: watch::Receiver<bool>,
    /// `/slow-body`'s body, handed to the test when that request arrives.
    body: mpsc::Sender<mpsc::Sender<Bytes>>,
}

/// A replica under STRICT mTLS as `default/hello` speaking `version` (HTTP/2 or HTTP/1.1),
/// reporting every request with the certificate of the connection it came on, and every
/// connection's end.
async fn replica(
    pki: &Pki,
    events: mpsc::UnboundedSender<Event>,
    holds: Holds,
    version: Version,
) -> SocketAddr {
    let tls = MeshTls::new(
        Arc::new(pki.ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(svid(&pki.ca, "default", "hello")),
    );
    let acceptor = MeshAcceptor::new(tls.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holds = Arc::new(holds);
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let (stream, _peer) = acceptor.accept(tcp, PeerAuthMode::Strict).await.unwrap();
            let cert = match &stream {
                MeshStream::Tls(tls) => tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
                MeshStream::Plain(_) => panic!("plaintext under STRICT"),
            };
            let conn = next;
            next += 1;
            let (events, holds) = (events.clone(), holds.clone());
            tokio::spawn(async move {
                let seen = events.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let path = req.uri().path().to_owned();
                    let _ = seen.send(Event::Request {
                        path: path.clone(),
                        conn,
                        cert: cert.clone(),
                    });
                    let holds = holds.clone();
                    async move {
                        let resp: Response<ProxyBody> = match path.as_str() {
                            "/slow-head" => {
                                let mut head = holds.head.clone();
                                head.wait_for(|go| *go).await.unwrap();
                                Response::new(full_body("head held"))
                            }
                            "/slow-body" => {
                                let (tx, rx) = mpsc::channel(4);
                                tx.send(Bytes::from_static(b"first ")).await.unwrap();
                                holds.body.send(tx).await.unwrap();
                                Response::new(Fed(rx).boxed())
                            }
                            _ => Response::new(full_body(path)),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let io = TokioIo::new(stream);
                let _ = if version == Version::HTTP_2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                };
                let _ = events.send(Event::Closed { conn });
            });
        }
    });
    addr
}

/// Sends `GET path` over `version` through `forwarder` to `replica`.
async fn send(
    forwarder: &Forwarder,
    replica: SocketAddr,
    path: &str,
    version: Version,
) -> Response<ProxyBody> {
    let req = Request::get(format!("http://hello.default.localhost{path}"))
        .version(version)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut out = Outbound::new(req, None).unwrap();
    let deadline =
        Timeouts::request_only(Duration::from_secs(30)).response_deadline(Instant::now());
    forwarder
        .send(
            &NamespacedName::new("default", "hello-00001"),
            replica,
            &mut out,
            deadline,
            None,
        )
        .await
        .unwrap()
}

async fn text(resp: Response<ProxyBody>) -> String {
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The next request event: (path, connection, certificate).
async fn next_request(events: &mut mpsc::UnboundedReceiver<Event>) -> (String, usize, Vec<u8>) {
    match events.recv().await.unwrap() {
        Event::Request { path, conn, cert } => (path, conn, cert),
        other => panic!("expected a request, got {other:?}"),
    }
}

#[tokio::test]
async fn after_our_certificate_rotates_h2_requests_use_a_new_connection_and_old_ones_finish() {
    rotation(Version::HTTP_2).await;
}

/// Over HTTP/1.1 the requests in flight hold their own connections; each old one finishes
/// its response and must then close, not go back to the pool under the new certificate.
#[tokio::test]
async fn after_our_certificate_rotates_h1_connections_of_the_old_certificate_are_not_reused() {
    rotation(Version::HTTP_11).await;
}

async fn rotation(version: Version) {
    let h2 = version == Version::HTTP_2;
    let pki = pki();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (release_head, head) = watch::channel(false);
    let (body_tx, mut bodies) = mpsc::channel(1);
    let replica = replica(
        &pki,
        events_tx,
        Holds {
            head,
            body: body_tx,
        },
        version,
    )
    .await;

    // The activator's identity, rotated by the test.
    let old = svid(&pki.ca, "sluice-system", "activator");
    let new = svid(&pki.ca, "sluice-system", "activator");
    assert_ne!(old.cert_der().as_ref(), new.cert_der().as_ref());
    let (rotate, identity) = watch::channel(Arc::new(old.clone()));
    let mesh = OutboundMesh::new(MeshTls::new(
        Arc::new(pki.ca.trust_bundle().unwrap()),
        RotatingSvid::from_receiver(identity),
    ))
    .unwrap();
    let forwarder = Forwarder::new().with_mesh(mesh);

    // Before: a request, then two left in flight on the same connection.
    let resp = send(&forwarder, replica, "/before", version).await;
    // The response names the replica as the handshake verified it.
    let UpstreamPeer(peer) = resp.extensions().get::<UpstreamPeer>().unwrap().clone();
    assert_eq!(
        peer.to_string(),
        "spiffe://cluster.local/ns/default/sa/hello"
    );
    assert_eq!(text(resp).await, "/before");
    let (path, old_conn, cert) = next_request(&mut events).await;
    assert_eq!(path, "/before");
    assert_eq!(cert, old.cert_der().as_ref());
    let slow_head = tokio::spawn({
        let forwarder = forwarder.clone();
        async move { text(send(&forwarder, replica, "/slow-head", version).await).await }
    });
    // Over HTTP/1.1 the first connection is back in the pool: the held head takes it.
    assert_eq!(
        next_request(&mut events).await,
        ("/slow-head".into(), old_conn, cert.clone())
    );
    let slow_body = send(&forwarder, replica, "/slow-body", version).await;
    // HTTP/2 multiplexes it on the same connection; HTTP/1.1 dials a second one.
    let (path, body_conn, body_cert) = next_request(&mut events).await;
    assert_eq!(path, "/slow-body");
    assert_eq!(body_conn, if h2 { old_conn } else { old_conn + 1 });
    assert_eq!(body_cert, cert);
    let feed = bodies.recv().await.unwrap();
    let new_conn = body_conn + 1;

    // Our certificate rotates.
    rotate.send_replace(Arc::new(new.clone()));

    // After: every request goes out on one new connection presenting the new certificate.
    for i in 0..3 {
        let path = format!("/after-{i}");
        assert_eq!(
            text(send(&forwarder, replica, &path, version).await).await,
            path
        );
        let (seen, conn, cert) = next_request(&mut events).await;
        assert_eq!(seen, path);
        assert_eq!(
            conn, new_conn,
            "{path} did not go out on the new certificate's connection"
        );
        assert_eq!(cert, new.cert_der().as_ref(), "{path}");
    }

    // The requests in flight across the rotation finish on their old connections.
    release_head.send_replace(true);
    assert_eq!(slow_head.await.unwrap(), "head held");
    feed.send(Bytes::from_static(b"then the rest"))
        .await
        .unwrap();
    drop(feed);
    assert_eq!(text(slow_body).await, "first then the rest");

    // With nothing left on them, the old connections close (the new one stays).
    let mut old: Vec<usize> = vec![old_conn, body_conn];
    old.dedup();
    while !old.is_empty() {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        let event = event.unwrap_or_else(|_| panic!("connections {old:?} stayed open"));
        match event.unwrap() {
            Event::Closed { conn } if old.contains(&conn) => old.retain(|c| *c != conn),
            other => panic!("expected an old connection to close, got {other:?}"),
        }
    }
    for path in ["/last", "/last-again"] {
        assert_eq!(
            text(send(&forwarder, replica, path, version).await).await,
            path
        );
        assert_eq!(
            next_request(&mut events).await,
            (path.into(), new_conn, new.cert_der().as_ref().to_vec())
        );
    }
}
