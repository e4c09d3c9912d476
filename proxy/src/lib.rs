//! sluice-proxy: the HTTP forwarding machinery every hop of the data plane shares.
//!
//! Owns forwarding one request to one replica ([`Forwarder`]: HTTP/1.1 over our own idle
//! connection stacks, HTTP/2 over a pooled client, upgrades tunnelled), the retry
//! policy around it with its budget ([`Forwarder::attempt`], [`Retries`], [`RetryBudget`]), request and
//! response bodies (replay buffer, size limits, holding a guard until a body ends), the
//! revision timeouts ([`timeouts`]), load balancing by `containerConcurrency`
//! ([`balance`]), and the mapping of data-plane failures to status codes and JSON error
//! bodies ([`ProxyError`], [`error_response`]), and serving one listener from a single-threaded
//! runtime per CPU ([`shards`]).
//!
//! Used by the router (replica picking on the direct path), the activator (buffering and
//! throttling in front of a revision) and the queue layer (the hop to a user process). It
//! knows nothing about routes, revisions' lifecycles or scaling.

pub mod balance;
mod body;
mod error;
mod forward;
mod h1pool;
mod retry;
pub mod shards;
pub mod timeouts;

pub use body::{
    BodyTooLarge, BoxError, ProxyBody, REPLAY_LIMIT, Tunnel, full_body, hold, hold_response,
};
pub use error::{ProxyError, UpstreamError, error_response};
pub use forward::{
    Attempt, Forwarder, INTERNAL_HEADER_PREFIX, Outbound, Retries, UNPROCESSED_HEADER, set_header,
    strip_hop_by_hop, strip_internal_headers,
};
pub use h1pool::H1Error;
pub use retry::{RetryBudget, RetryConfig};
pub use sluice_mesh::tls::UpstreamPeer;
