//! Mutual TLS between mesh workloads: configs, verifiers, the peer-authenticating acceptor
//! and the connector.

pub mod acceptor;
pub mod config;
pub mod connector;
pub mod verifier;

pub use acceptor::{
    AcceptError, ConnectionSecurity, MeshAcceptor, MeshStream, PeerAuthMode, PeerInfo,
};
pub use config::{MeshTls, TlsConfigError};
pub use connector::{ConnectError, MeshConnector};
pub use verifier::ExpectedServer;
