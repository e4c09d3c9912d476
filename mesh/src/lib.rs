//! sluice-mesh: what every Sluice process shares to be a mesh citizen.
//!
//! * [`identity`]: SPIFFE X.509-SVIDs from a built-in CA persisted in a private directory,
//!   their verification, and rotation at 50 % of life with jitter.
//! * [`tls`]: mutual-TLS configs and verifiers, the STRICT/PERMISSIVE/DISABLE acceptor that
//!   tells the handler who the peer is, the connector, and ingress TLS chosen by SNI.
//! * [`policy`]: Istio `PeerAuthentication` and `AuthorizationPolicy` manifests, validated and
//!   evaluated.
//! * [`attestation`]: the signed statement that carries the original caller's identity across
//!   the activator; [`enforce`]: the activator's and replica's per-request use of both.
//! * [`telemetry`]: Istio, Knative and KServe metric families in an injected registry, and the
//!   JSON access-log line; [`otlp`]: span export; [`trace`]: `traceparent` / `x-request-id`.
//!
//! * [`issuance`]: Kubernetes mode's CA service (CSRs authenticated by ServiceAccount
//!   tokens) and the workload's client that obtains and renews its SVID from it.
//! * [`local`]: local mode's CA in the state directory and the SVIDs of `sluice up`'s
//!   router, activator and control plane.
//! * [`handoff`]: local mode's private directory that hands a replica its SVID, bundle and
//!   policies; [`inbound`] and [`outbound`]: what a replica's listener and a proxy's client
//!   do per connection and per request.
//!
//! * [`guard`]: what protects Sluice's non-ingress listeners (the admin API, metrics and
//!   stats): the admin bearer token and the browser defences (Host, Origin, Content-Type).
//!
//! Not here: anything that routes or serves requests; those crates call into this one.

pub mod attestation;
pub mod enforce;
pub mod guard;
pub mod handoff;
pub mod identity;
pub mod inbound;
pub mod issuance;
pub mod local;
pub mod otlp;
pub mod outbound;
pub mod policy;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod vars;
