//! sluice-router: the ingress.
//!
//! Owns accepting client connections (HTTP/1.1, HTTP/2 cleartext, upgrades), finding the
//! service for a request's Host (or tag host, or `Knative-Serving-Tag` header) in the
//! current routing snapshot, picking a revision by traffic weight, adding the proxy
//! headers, and sending the request straight to a ready replica or, when the revision lacks
//! burst capacity, through the activator (forwarding and retries with `sluice-proxy`).
//!
//! Not here: buffering, throttling and scale-from-zero (`sluice-activator`), building
//! routes (`sluice-controller`).

pub mod data_plane;
mod headers;
pub mod ingress;
mod router;
mod serve;

pub use data_plane::{DataPlane, DataPlaneConfig};
pub use headers::{ClientAddr, add_forwarded};
pub use router::{Router, RouterConfig, TAG_HEADER, edge_headers, select_route};
pub use serve::{ServeConfig, serve, serve_ingress};
