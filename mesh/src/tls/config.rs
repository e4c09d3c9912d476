//! rustls server and client configurations for mesh mTLS: TLS 1.3 only, ECDSA P-256,
//! certificates from a [`RotatingSvid`] (new connections use the newest), peers verified as
//! SVIDs of the trust bundle.

use std::sync::Arc;

use rustls::ConfigBuilder;
use rustls::client::{ClientConfig, WantsClientCert};
use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};

use super::verifier::{ExpectedServer, SpiffeClientVerifier, SpiffeServerVerifier};
use crate::identity::{RotatingSvid, TrustBundle};

/// ALPN protocols the mesh speaks, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("mesh TLS config: {0}")]
pub struct TlsConfigError(#[from] rustls::Error);

/// One workload's mTLS material: its rotating identity and the trust bundle of its peers.
#[derive(Clone, Debug)]
pub struct MeshTls {
    bundle: Arc<TrustBundle>,
    identity: RotatingSvid,
    time: Arc<dyn TimeProvider>,
}

fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // P-256 leaves: offer no other key exchange first than X25519 and P-256.
    provider.kx_groups.retain(|g| {
        matches!(
            g.name(),
            rustls::NamedGroup::X25519 | rustls::NamedGroup::secp256r1
        )
    });
    Arc::new(provider)
}

impl MeshTls {
    /// mTLS as `identity`, trusting `bundle`.
    pub fn new(bundle: Arc<TrustBundle>, identity: RotatingSvid) -> Self {
        Self {
            bundle,
            identity,
            time: Arc::new(DefaultTimeProvider),
        }
    }

    /// Replaces the clock used to check peers' validity periods (tests of expiry).
    pub fn with_time_provider(mut self, time: Arc<dyn TimeProvider>) -> Self {
        self.time = time;
        self
    }

    /// The workload's own identity holder.
    pub fn identity(&self) -> &RotatingSvid {
        &self.identity
    }

    /// The trust bundle peers are verified against.
    pub fn bundle(&self) -> &Arc<TrustBundle> {
        &self.bundle
    }

    /// A server config that requires a client SVID.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let verifier = Arc::new(SpiffeClientVerifier::new(self.bundle.clone()));
        let config = ServerConfig::builder_with_details(provider(), self.time.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(self.identity.clone()));
        Ok(with_alpn_server(config))
    }

    /// A server config presenting this workload's SVID that asks for no client certificate:
    /// for a service whose callers authenticate otherwise (the CA, by ServiceAccount token).
    pub fn server_config_no_client_auth(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let config = ServerConfig::builder_with_details(provider(), self.time.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.identity.clone()));
        Ok(with_alpn_server(config))
    }

    /// A server config presenting this workload's SVID that accepts clients with or without
    /// a certificate; one presented must be an SVID of the bundle (else the handshake fails).
    /// For the CA's port: bootstrap by token without a certificate, policies by SVID.
    pub fn server_config_optional_client_auth(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let verifier = Arc::new(SpiffeClientVerifier::optional(self.bundle.clone()));
        let config = ServerConfig::builder_with_details(provider(), self.time.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(self.identity.clone()));
        Ok(with_alpn_server(config))
    }

    /// A client config presenting this workload's SVID and accepting `expected` servers.
    pub fn client_config(
        &self,
        expected: ExpectedServer,
    ) -> Result<Arc<ClientConfig>, TlsConfigError> {
        let config = client_builder(&self.bundle, expected, self.time.clone())?
            .with_client_cert_resolver(Arc::new(self.identity.clone()));
        Ok(with_alpn_client(config))
    }

    /// A client config that presents no certificate (a workload without an identity yet,
    /// asking the CA for one) and accepts `expected` servers of `bundle`.
    pub fn anonymous_client_config(
        bundle: Arc<TrustBundle>,
        expected: ExpectedServer,
    ) -> Result<Arc<ClientConfig>, TlsConfigError> {
        let config =
            client_builder(&bundle, expected, Arc::new(DefaultTimeProvider))?.with_no_client_auth();
        Ok(with_alpn_client(config))
    }
}

fn with_alpn_server(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TLS 1.3 with the SPIFFE server verifier; the caller picks the client certificate.
fn client_builder(
    bundle: &Arc<TrustBundle>,
    expected: ExpectedServer,
    time: Arc<dyn TimeProvider>,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, TlsConfigError> {
    Ok(ClientConfig::builder_with_details(provider(), time)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            bundle.clone(),
            expected,
        ))))
}

fn with_alpn_client(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Identity is the SPIFFE ID, not a host name: send no SNI.
    config.enable_sni = false;
    Arc::new(config)
}
