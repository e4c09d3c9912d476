//! A replica's side of the mesh (queue layer or model-server listener): accept under the
//! `PeerAuthentication` mode in force, establish the real caller (the attested original
//! caller behind the activator, else the mTLS peer), apply `AuthorizationPolicy` (403
//! `RBAC: access denied`), and label the request's telemetry.

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use rustls::pki_types::UnixTime;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::attestation::AttestationVerifier;
use crate::enforce::{Enforcer, Refusal};
use crate::handoff::{Policies, WorkloadMesh};
use crate::identity::{RotatingSvid, SpiffeId};
use crate::policy::{AuthorizationEngine, Workload};
use crate::telemetry::hop::Exchange;
use crate::tls::{
    AcceptError, ConnectionSecurity, MeshAcceptor, MeshStream, PeerAuthMode, PeerInfo,
    TlsConfigError,
};

/// Paths Sluice itself serves on a replica (probes, stats, metrics). Like Istio's rewritten
/// health probes they are exempt from authorization policy, not from peer authentication.
pub fn is_internal(parts: &Parts) -> bool {
    let path = parts.uri.path();
    path.starts_with("/sluice/")
        || (path == sluice_probe::PATH && parts.headers.contains_key(sluice_probe::HEADER))
}

/// The readiness probe contract (mirrors `sluice_core::replica`, which mesh does not use).
mod sluice_probe {
    pub const PATH: &str = "/healthz";
    pub const HEADER: &str = "k-network-probe";
}

/// One replica listener's mesh state.
#[derive(Debug)]
pub struct InboundMesh {
    acceptor: MeshAcceptor,
    enforcer: Enforcer,
    workload: Workload,
    port: u16,
    policies: watch::Receiver<Arc<Policies>>,
    identity: RotatingSvid,
    mesh: WorkloadMesh,
}

impl InboundMesh {
    /// The mesh of a replica listening on `port`.
    pub fn new(mesh: &WorkloadMesh, port: u16) -> Result<Self, TlsConfigError> {
        let workload = mesh.info.workload();
        Ok(Self {
            acceptor: MeshAcceptor::new(mesh.tls.server_config()?),
            enforcer: Enforcer::new(
                workload.clone(),
                port,
                AuthorizationEngine::default(),
                Some(AttestationVerifier::new(
                    mesh.tls.bundle().clone(),
                    mesh.attesters.iter().cloned(),
                )),
            ),
            workload,
            port,
            policies: mesh.policies.clone(),
            identity: mesh.tls.identity().clone(),
            mesh: mesh.clone(),
        })
    }

    /// The workload's mesh material.
    pub fn workload_mesh(&self) -> &WorkloadMesh {
        &self.mesh
    }

    /// The peer-authentication mode in force for this listener now.
    pub fn mode(&self) -> PeerAuthMode {
        self.policies
            .borrow()
            .peer
            .mode_for(&self.workload, self.port)
    }

    /// Accepts one connection under the current mode.
    ///
    /// Under `DISABLE` the replica authenticates nobody: plaintext is served, and so is a
    /// TLS client (Sluice's own router and activator always encrypt), but without a peer
    /// identity: its requests are labelled `none` and policies see no principal.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(MeshStream<TcpStream>, PeerInfo), AcceptError> {
        match self.mode() {
            PeerAuthMode::Disable => {
                let (stream, _) = self.acceptor.accept(tcp, PeerAuthMode::Permissive).await?;
                Ok((
                    stream,
                    PeerInfo {
                        identity: None,
                        security: ConnectionSecurity::None,
                        peer_not_after: None,
                    },
                ))
            }
            mode => self.acceptor.accept(tcp, mode).await,
        }
    }

    /// The caller the request is served for, or the refusal (403) to answer.
    pub fn authorize(
        &self,
        parts: &Parts,
        peer: &PeerInfo,
        source_ip: Option<IpAddr>,
    ) -> Result<Option<SpiffeId>, Refusal> {
        let engine = self.policies.borrow().authorization.clone();
        if peer.identity.is_none()
            && self.mode() == PeerAuthMode::Disable
            && parts.headers.contains_key(crate::attestation::HEADER)
        {
            // No peer identity under DISABLE, so nobody's statement about a caller can be
            // believed: the request is served as the anonymous caller it is.
            let mut anonymous = parts.clone();
            anonymous.headers.remove(crate::attestation::HEADER);
            return self
                .enforcer
                .check_with(&engine, &anonymous, peer, source_ip, UnixTime::now());
        }
        self.enforcer
            .check_with(&engine, parts, peer, source_ip, UnixTime::now())
    }

    /// Fills in the destination side of `exchange`'s labels and log line: the caller, how it
    /// connected, this workload, and the revision.
    pub fn label(&self, exchange: &mut Exchange, caller: Option<&SpiffeId>, peer: &PeerInfo) {
        let info = &self.mesh.info;
        let me = self.identity.current().id().to_string();
        let l = &mut exchange.labels;
        if let Some(c) = caller {
            l.source_principal = c.to_string().into();
            l.source_workload = c.service_account().to_owned().into();
            l.source_workload_namespace = c.namespace().to_owned().into();
        }
        l.destination_workload = info.revision.clone().into();
        l.destination_workload_namespace = info.namespace.clone().into();
        l.destination_service =
            format!("{}.{}.svc.cluster.local", info.service, info.namespace).into();
        l.destination_principal = me.clone().into();
        l.destination_revision = info.revision.clone().into();
        l.connection_security_policy = peer.security.label().into();
        let e = &mut exchange.entry;
        e.source_principal = caller.map(ToString::to_string).unwrap_or_default();
        e.destination_principal = me;
        e.connection_security_policy = peer.security.label().to_owned();
        e.revision = info.revision.clone();
    }
}
