//! Real mTLS handshakes over loopback: STRICT, PERMISSIVE and DISABLE peer authentication,
//! foreign-CA and expired certificates refused, the peer's SPIFFE ID reaching the handler,
//! and rotation giving new connections the new certificate while old ones keep working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use sluice_mesh::identity::{
    CaConfig, CertificateAuthority, RotatingSvid, RotationConfig, SpiffeId, SvidIssuer,
};
use sluice_mesh::tls::{ExpectedServer, MeshAcceptor, MeshConnector, MeshTls, PeerAuthMode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-mtls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

fn ca(dir: &TempDir, name: &str) -> Arc<CertificateAuthority> {
    Arc::new(
        CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", dir.0.join(name)))
            .unwrap(),
    )
}

fn mesh_tls(ca: &Arc<CertificateAuthority>, sa: &str) -> MeshTls {
    let svid = ca.issue(&id(sa), Duration::from_secs(3600)).unwrap();
    MeshTls::new(
        Arc::new(ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(svid),
    )
}

/// A clock `offset` seconds away from the real one.
#[derive(Debug)]
struct Skewed(i64);

impl TimeProvider for Skewed {
    fn current_time(&self) -> Option<UnixTime> {
        let now = UnixTime::now().as_secs() as i64 + self.0;
        Some(UnixTime::since_unix_epoch(Duration::from_secs(now as u64)))
    }
}

/// A server that answers each line with "<principal or anonymous> <security>", and reports
/// each accept's outcome on the channel (the first 16; later ones are not reported).
async fn serve(
    tls: &MeshTls,
    mode: PeerAuthMode,
) -> (std::net::SocketAddr, mpsc::Receiver<Result<(), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MeshAcceptor::new(tls.server_config().unwrap());
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp, mode).await {
                    Err(e) => {
                        let _ = tx.try_send(Err(format!("{e:?}")));
                    }
                    Ok((stream, peer)) => {
                        let _ = tx.try_send(Ok(()));
                        let who = peer
                            .identity
                            .map(|id| id.principal())
                            .unwrap_or_else(|| "anonymous".into());
                        let mut lines = BufReader::new(stream);
                        let mut line = String::new();
                        while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                            let reply = format!("{who} {}\n", peer.security.label());
                            if lines.get_mut().write_all(reply.as_bytes()).await.is_err() {
                                break;
                            }
                            line.clear();
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
) -> std::io::Result<String> {
    stream.get_mut().write_all(b"hello\n").await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    Ok(line.trim_end().to_owned())
}

async fn mtls_client(
    tls: &MeshTls,
    addr: std::net::SocketAddr,
) -> Result<
    (
        BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
        SpiffeId,
    ),
    String,
> {
    let connector =
        MeshConnector::new(tls.client_config(ExpectedServer::AnyInTrustDomain).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (stream, server) = connector.connect(tcp).await.map_err(|e| e.to_string())?;
    Ok((BufReader::new(stream), server))
}

#[tokio::test]
async fn strict_serves_a_mesh_client_and_shows_its_identity() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let (addr, mut accepted) = serve(&mesh_tls(&ca, "server"), PeerAuthMode::Strict).await;
    let (mut stream, server) = mtls_client(&mesh_tls(&ca, "client"), addr).await.unwrap();
    assert_eq!(server, id("server"));
    // The client can tell when the server's identity lapses (one hour from now).
    let expiry = sluice_mesh::tls::peer_not_after(stream.get_ref().get_ref().1).unwrap();
    let left = expiry.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "{left:?}"
    );
    assert_eq!(
        ask(&mut stream).await.unwrap(),
        "cluster.local/ns/default/sa/client mutual_tls"
    );
    assert_eq!(accepted.recv().await.unwrap(), Ok(()));
}

#[tokio::test]
async fn strict_refuses_plaintext() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let (addr, mut accepted) = serve(&mesh_tls(&ca, "server"), PeerAuthMode::Strict).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let outcome = accepted.recv().await.unwrap().unwrap_err();
    assert!(outcome.contains("Handshake"), "{outcome}");
    // The server answers nothing a plaintext client could read as a response.
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply).await;
    assert!(!String::from_utf8_lossy(&reply).contains("anonymous"));
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "only a TLS alert may come back: {reply:?}"
    );
}

#[tokio::test]
async fn strict_refuses_a_client_from_another_ca() {
    let dir = TempDir::new();
    let ours = ca(&dir, "ours");
    let theirs = ca(&dir, "theirs");
    let (addr, mut accepted) = serve(&mesh_tls(&ours, "server"), PeerAuthMode::Strict).await;
    // The intruder trusts our root (so it would accept our server) but holds their SVID.
    let intruder = MeshTls::new(
        Arc::new(ours.trust_bundle().unwrap()),
        RotatingSvid::fixed(
            theirs
                .issue(&id("client"), Duration::from_secs(3600))
                .unwrap(),
        ),
    );
    // In TLS 1.3 the client finishes first; the server's refusal arrives on the first read.
    let result = match mtls_client(&intruder, addr).await {
        Err(e) => Err(e),
        Ok((mut stream, _)) => ask(&mut stream).await.map_err(|e| e.to_string()),
    };
    assert!(result.is_err() || result.as_deref() == Ok(""), "{result:?}");
    let outcome = accepted.recv().await.unwrap().unwrap_err();
    assert!(outcome.contains("BadSignature"), "{outcome}");
}

#[tokio::test]
async fn permissive_accepts_mtls_and_plaintext_and_labels_them() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let (addr, mut accepted) = serve(&mesh_tls(&ca, "server"), PeerAuthMode::Permissive).await;
    let (mut tls, _) = mtls_client(&mesh_tls(&ca, "client"), addr).await.unwrap();
    assert_eq!(
        ask(&mut tls).await.unwrap(),
        "cluster.local/ns/default/sa/client mutual_tls"
    );
    let mut plain = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(ask(&mut plain).await.unwrap(), "anonymous none");
    assert_eq!(accepted.recv().await.unwrap(), Ok(()));
    assert_eq!(accepted.recv().await.unwrap(), Ok(()));
    // PERMISSIVE is not "anything goes": TLS with a foreign certificate is still refused.
    let theirs = ca_foreign(&dir);
    let intruder = MeshTls::new(
        Arc::new(ca.trust_bundle().unwrap()),
        RotatingSvid::fixed(
            theirs
                .issue(&id("client"), Duration::from_secs(3600))
                .unwrap(),
        ),
    );
    if let Ok((mut stream, _)) = mtls_client(&intruder, addr).await {
        assert!(
            !ask(&mut stream)
                .await
                .unwrap_or_default()
                .contains("mutual_tls")
        );
    }
    assert!(accepted.recv().await.unwrap().is_err());
}

fn ca_foreign(dir: &TempDir) -> Arc<CertificateAuthority> {
    ca(dir, "foreign")
}

#[tokio::test]
async fn disable_serves_plaintext_only() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let (addr, mut accepted) = serve(&mesh_tls(&ca, "server"), PeerAuthMode::Disable).await;
    let mut plain = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(ask(&mut plain).await.unwrap(), "anonymous none");
    assert_eq!(accepted.recv().await.unwrap(), Ok(()));
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    // Two hours from now, the one-hour certificates have expired.
    let later = Arc::new(Skewed(2 * 3600));
    let server = mesh_tls(&ca, "server").with_time_provider(later.clone());
    let (addr, mut accepted) = serve(&server, PeerAuthMode::Strict).await;
    let result = match mtls_client(&mesh_tls(&ca, "client"), addr).await {
        Err(e) => Err(e),
        Ok((mut stream, _)) => ask(&mut stream).await.map_err(|e| e.to_string()),
    };
    assert!(result.is_err() || result.as_deref() == Ok(""), "{result:?}");
    let outcome = accepted.recv().await.unwrap().unwrap_err();
    assert!(outcome.contains("Expired"), "{outcome}");

    // A client whose clock says the server's certificate expired refuses it.
    let (addr, _accepted) = serve(&mesh_tls(&ca, "server"), PeerAuthMode::Strict).await;
    let client = mesh_tls(&ca, "client").with_time_provider(later);
    let err = mtls_client(&client, addr).await.unwrap_err();
    assert!(err.contains("Expired"), "{err}");
}

/// Up to 20 s of clock skew is tolerated in real handshakes, on both sides. Certificates are
/// issued backdated by 20 s, so a peer whose clock is 40 s behind the issuer's sees a
/// `notBefore` exactly 20 s in its future: accepted. 45 s behind (25 s in its future):
/// refused as not yet valid.
#[tokio::test]
async fn twenty_seconds_of_clock_skew_are_tolerated_on_both_sides() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let behind = Arc::new(Skewed(-40));
    // The server's clock is behind: it accepts the client's certificate.
    let server = mesh_tls(&ca, "server").with_time_provider(behind.clone());
    let (addr, mut accepted) = serve(&server, PeerAuthMode::Strict).await;
    let (mut stream, _) = mtls_client(&mesh_tls(&ca, "client"), addr).await.unwrap();
    assert_eq!(
        ask(&mut stream).await.unwrap(),
        "cluster.local/ns/default/sa/client mutual_tls"
    );
    assert_eq!(accepted.recv().await.unwrap(), Ok(()));
    // The client's clock is behind: it accepts the server's certificate.
    let (addr, mut accepted) = serve(&mesh_tls(&ca, "server"), PeerAuthMode::Strict).await;
    let client = mesh_tls(&ca, "client").with_time_provider(behind);
    let (mut stream, server_id) = mtls_client(&client, addr).await.unwrap();
    assert_eq!(server_id, id("server"));
    assert_eq!(
        ask(&mut stream).await.unwrap(),
        "cluster.local/ns/default/sa/client mutual_tls"
    );
    assert_eq!(accepted.recv().await.unwrap(), Ok(()));

    // Beyond the tolerance, both sides refuse.
    let too_far = Arc::new(Skewed(-45));
    let server = mesh_tls(&ca, "server").with_time_provider(too_far.clone());
    let (addr, mut accepted) = serve(&server, PeerAuthMode::Strict).await;
    let result = match mtls_client(&mesh_tls(&ca, "client"), addr).await {
        Err(e) => Err(e),
        Ok((mut stream, _)) => ask(&mut stream).await.map_err(|e| e.to_string()),
    };
    assert!(result.is_err() || result.as_deref() == Ok(""), "{result:?}");
    let outcome = accepted.recv().await.unwrap().unwrap_err();
    // rustls's name for it.
    assert!(outcome.contains("NotValidYet"), "{outcome}");
    let (addr, _accepted) = serve(&mesh_tls(&ca, "server"), PeerAuthMode::Strict).await;
    let client = mesh_tls(&ca, "client").with_time_provider(too_far);
    let err = mtls_client(&client, addr).await.unwrap_err();
    assert!(err.contains("NotValidYet"), "{err}");
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_the_expected_workload() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let (addr, _accepted) = serve(&mesh_tls(&ca, "impostor"), PeerAuthMode::Strict).await;
    let client = mesh_tls(&ca, "client");
    let connector = MeshConnector::new(
        client
            .client_config(ExpectedServer::Exactly(id("server")))
            .unwrap(),
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = connector.connect(tcp).await.unwrap_err();
    assert!(err.to_string().contains("NotValidForName"), "{err}");
}

#[tokio::test]
async fn rotation_gives_new_connections_the_new_certificate_and_keeps_old_ones() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let issuer: Arc<dyn SvidIssuer> = ca.clone();
    let (mut holder, _task) = RotatingSvid::start(
        issuer,
        id("server"),
        RotationConfig::new(Duration::from_secs(2)),
    )
    .unwrap();
    let server = MeshTls::new(Arc::new(ca.trust_bundle().unwrap()), holder.clone());
    let (addr, _accepted) = serve(&server, PeerAuthMode::Strict).await;
    let client = mesh_tls(&ca, "client");

    let (mut first, _) = mtls_client(&client, addr).await.unwrap();
    let first_cert = first.get_ref().get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(first_cert, *holder.current().cert_der());

    // Wait for the renewal itself (at 40-50 % of the two-second life), not for a time.
    assert!(holder.changed().await);
    let (mut second, _) = mtls_client(&client, addr).await.unwrap();
    let second_cert = second.get_ref().get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(first_cert, second_cert);
    assert_eq!(second_cert, *holder.current().cert_der());

    // The connection made with the old certificate still serves.
    assert_eq!(
        ask(&mut first).await.unwrap(),
        "cluster.local/ns/default/sa/client mutual_tls"
    );
    assert_eq!(
        ask(&mut second).await.unwrap(),
        "cluster.local/ns/default/sa/client mutual_tls"
    );
}

#[tokio::test]
async fn rotation_on_both_sides_under_continuous_load_fails_no_request() {
    let dir = TempDir::new();
    let ca = ca(&dir, "ca");
    let bundle = Arc::new(ca.trust_bundle().unwrap());
    let issuer: Arc<dyn SvidIssuer> = ca.clone();
    // Two-second certificates renew every 0.8-1 s on both ends.
    let config = RotationConfig::new(Duration::from_secs(2));
    let (mut server_id, _s) =
        RotatingSvid::start(issuer.clone(), id("server"), config.clone()).unwrap();
    let (client_id, _c) = RotatingSvid::start(issuer, id("client"), config).unwrap();
    let (addr, _accepted) = serve(
        &MeshTls::new(bundle.clone(), server_id.clone()),
        PeerAuthMode::Strict,
    )
    .await;
    let client = MeshTls::new(bundle, client_id);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut server_certs = std::collections::HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A new connection, then a few requests on it.
                match mtls_client(&client, addr).await {
                    Err(e) => failed.push(e),
                    Ok((mut stream, _)) => {
                        let cert =
                            stream.get_ref().get_ref().1.peer_certificates().unwrap()[0].clone();
                        server_certs.insert(cert.to_vec());
                        for _ in 0..3 {
                            match ask(&mut stream).await {
                                Ok(r) if r == "cluster.local/ns/default/sa/client mutual_tls" => {
                                    ok += 1
                                }
                                other => failed.push(format!("{other:?}")),
                            }
                        }
                    }
                }
            }
            (ok, failed, server_certs)
        }));
    }
    // Let the server renew four times (the renewals themselves are the clock).
    for _ in 0..4 {
        assert!(server_id.changed().await);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut certs = std::collections::HashSet::new();
    for w in workers {
        let (ok, failed, seen) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during rotation: {failed:?}"
        );
        total += ok;
        certs.extend(seen);
    }
    assert!(total > 0);
    assert!(certs.len() >= 4, "saw {} server certificates", certs.len());
}
