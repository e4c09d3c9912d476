//! Ingress TLS with user-provided certificates chosen by SNI, over real loopback handshakes,
//! and refusals of unusable certificate files with the file named.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use sluice_mesh::tls::{IngressCertificate, IngressTlsError, ingress_server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-ingress-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().der().clone();
        Self {
            dir,
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a leaf for `names` as `<file>.crt` / `<file>.key`; returns its DER.
    fn leaf(&self, file: &str, names: &[&str]) -> (IngressCertificate, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let cert_path = self.dir.join(format!("{file}.crt"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (
            IngressCertificate {
                hosts: names,
                cert_path,
                key_path,
            },
            cert.der().clone(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn served_cert(
    pki: &Pki,
    addr: std::net::SocketAddr,
    sni: &str,
) -> Result<CertificateDer<'static>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await?;
    tls.write_all(b"x").await?;
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

async fn serve(config: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(&b).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn sni_picks_the_certificate_per_host() {
    let pki = Pki::new();
    let (a, a_der) = pki.leaf("a", &["a.example.com"]);
    let (b, b_der) = pki.leaf("b", &["*.b.example.com"]);
    let config = ingress_server_config(&[a, b], None).unwrap();
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let addr = serve(config).await;
    assert_eq!(
        served_cert(&pki, addr, "a.example.com").await.unwrap(),
        a_der
    );
    assert_eq!(
        served_cert(&pki, addr, "A.Example.com").await.unwrap(),
        a_der
    );
    assert_eq!(
        served_cert(&pki, addr, "iris.b.example.com").await.unwrap(),
        b_der
    );
    // A wildcard covers one label only, and without a default an unknown host is refused.
    assert!(
        served_cert(&pki, addr, "x.iris.b.example.com")
            .await
            .is_err()
    );
    assert!(served_cert(&pki, addr, "other.example.com").await.is_err());
}

#[tokio::test]
async fn a_default_certificate_serves_unknown_hosts() {
    let pki = Pki::new();
    let (a, _) = pki.leaf("a", &["a.example.com"]);
    let (mut fallback, fallback_der) = pki.leaf("fallback", &["fallback.example.com"]);
    // Routed to no host: only the default path can serve it. (The client still checks the
    // certificate's name, so it asks for the name the fallback certificate carries.)
    fallback.hosts.clear();
    let addr = serve(ingress_server_config(&[a, fallback], Some(1)).unwrap()).await;
    assert_eq!(
        served_cert(&pki, addr, "fallback.example.com")
            .await
            .unwrap(),
        fallback_der
    );
}

#[test]
fn unusable_files_are_refused_with_their_path() {
    let pki = Pki::new();
    let (a, _) = pki.leaf("a", &["a.example.com"]);
    let (b, _) = pki.leaf("b", &["b.example.com"]);
    let mismatched = IngressCertificate {
        key_path: b.key_path.clone(),
        ..a.clone()
    };
    let err = ingress_server_config(&[mismatched], None).unwrap_err();
    assert!(
        matches!(&err, IngressTlsError::Invalid { path, .. } if path == &a.cert_path),
        "{err}"
    );
    assert!(err.to_string().contains("does not match"), "{err}");

    let missing = IngressCertificate {
        cert_path: pki.dir.join("nope.crt"),
        ..a.clone()
    };
    let err = ingress_server_config(&[missing], None).unwrap_err();
    assert!(err.to_string().contains("nope.crt"), "{err}");

    let not_pem = pki.dir.join("garbage.crt");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = ingress_server_config(
        &[IngressCertificate {
            cert_path: not_pem,
            ..a.clone()
        }],
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("garbage.crt"), "{err}");

    let twice = IngressCertificate {
        hosts: vec!["a.example.com".into()],
        ..b.clone()
    };
    let err = ingress_server_config(&[a.clone(), twice], None).unwrap_err();
    assert!(matches!(err, IngressTlsError::Host { .. }), "{err}");
    let bad_host = IngressCertificate {
        hosts: vec!["bad host".into()],
        ..b
    };
    assert!(matches!(
        ingress_server_config(&[bad_host], None),
        Err(IngressTlsError::Host { .. })
    ));
}
