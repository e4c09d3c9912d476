//! The autoscaler's stat stream end to end with the mesh on: the controller's endpoint
//! (`sluice_autoscaler::endpoint`) over real mTLS on loopback, the router's poster
//! (`sluice_activator::stats_post`): the router's identity delivers; another workload of
//! the mesh is refused by name; plaintext, certificate-less and foreign-CA clients are
//! refused by the handshake; the router does not post to a server that is not the
//! controller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_activator::stats_post::{StatsMesh, post_once, post_stats, stats_target};
use sluice_autoscaler::endpoint::{self, Posters, StatsSink};
use sluice_core::StatReport;
use sluice_mesh::identity::{CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{ExpectedServer, MeshAcceptor, MeshConnector, MeshHttpConnector, MeshTls};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn report(name: &str) -> StatReport {
    StatReport::poke(sluice_core::NamespacedName {
        namespace: "default".into(),
        name: name.into(),
    })
}

/// A mesh CA, and workloads' mTLS material from it.
struct Mesh {
    ca: CertificateAuthority,
}

impl Mesh {
    fn new() -> Self {
        let (ca, _) = CertificateAuthority::generate(
            "cluster.local",
            Duration::from_secs(7200),
            Duration::from_secs(3600),
        )
        .unwrap();
        Self { ca }
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "sluice-system", sa).unwrap()
    }

    fn tls(&self, sa: &str) -> MeshTls {
        let svid = self
            .ca
            .issue(&Self::id(sa), Duration::from_secs(3600))
            .unwrap();
        MeshTls::new(
            Arc::new(self.ca.trust_bundle().unwrap()),
            RotatingSvid::fixed(svid),
        )
    }

    /// The router's side, as `sa`, expecting the server to be `server`.
    fn client(&self, sa: &str, server: &str) -> StatsMesh {
        StatsMesh {
            out: OutboundMesh::new(self.tls(sa)).unwrap(),
            server: Self::id(server),
        }
    }
}

#[tokio::test]
async fn over_mtls_only_the_routers_identity_posts_stats() {
    let mesh = Mesh::new();
    let sink = StatsSink::default();
    let (tx, mut rx) = mpsc::channel(16);
    sink.set(Some(tx));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MeshAcceptor::new(mesh.tls("sluice-controller").server_config().unwrap());
    let app = endpoint::stats_app(sink.clone(), Posters::Only(Mesh::id("sluice-router")));
    let server = tokio::spawn(endpoint::serve_mtls(listener, app, acceptor));
    let target = stats_target(&format!("https://{addr}"), true).unwrap();

    // The router, through the activator's stat stream: delivered.
    let (stats_tx, stats_rx) = mpsc::channel(4);
    let poster = tokio::spawn(post_stats(
        Some(target.clone()),
        Some(mesh.client("sluice-router", "sluice-controller")),
        stats_rx,
    ));
    stats_tx.send(report("hello-00001")).await.unwrap();
    let got = rx.recv().await.unwrap();
    assert_eq!(got.revision.name, "hello-00001");
    drop(stats_tx);
    poster.await.unwrap();

    // Another workload of the same mesh completes the handshake and is refused, named.
    let batch = [report("hello-00002")];
    let intruder = mesh.client("intruder", "sluice-controller");
    let err = post_once(&target, Some(&intruder), &batch)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("403")
            && err
                .contains("spiffe://cluster.local/ns/sluice-system/sa/intruder may not post stats")
            && err.contains("spiffe://cluster.local/ns/sluice-system/sa/sluice-router"),
        "{err}"
    );

    // The router does not post to a server that is not the controller's identity.
    let wrong = mesh.client("sluice-router", "someone-else");
    let err = post_once(&target, Some(&wrong), &batch)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("answered"), "{err}");

    // Plain HTTP is refused by the handshake: no HTTP answer at all.
    let err = post_once(&target, None, &batch)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("answered"), "{err}");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /v1/stats HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n[]")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    // TLS without a client certificate is refused too.
    let anonymous = MeshTls::anonymous_client_config(
        Arc::new(mesh.ca.trust_bundle().unwrap()),
        ExpectedServer::Exactly(Mesh::id("sluice-controller")),
    )
    .unwrap();
    let anonymous: Client<MeshHttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(MeshHttpConnector::new(Some(MeshConnector::new(anonymous))));
    let request = http::Request::post(format!("http://{addr}/v1/stats"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&batch).unwrap())))
        .unwrap();
    let answered = anonymous.request(request).await;
    assert!(
        answered.is_err(),
        "a client without a certificate got an answer"
    );

    // A certificate from another CA: refused by the handshake.
    let other = Mesh::new();
    let foreign = StatsMesh {
        out: OutboundMesh::new(other.tls("sluice-router")).unwrap(),
        server: Mesh::id("sluice-controller"),
    };
    let err = post_once(&target, Some(&foreign), &batch)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("answered"), "{err}");

    // Only the router's report came through.
    assert!(rx.try_recv().is_err());
    server.abort();
}
