//! The fuzz targets: one per decoder that takes bytes from outside, each calling the
//! functions the servers call (not copies), in the order they call them.

mod admin;
mod embeddings;
mod grpc;
mod headers;
mod manifest;
mod oip;
mod policy;
mod target;

pub use grpc::seed_requests as grpc_seed_requests;
pub use target::Target;

/// Every target.
pub const ALL: &[Target] = &[
    oip::JSON,
    oip::BINARY,
    oip::KSERVE_V1,
    embeddings::EMBEDDINGS,
    grpc::INFER,
    manifest::MANIFEST,
    policy::POLICY,
    admin::ADMIN,
    headers::INGRESS,
    headers::GUARD,
];

/// The target named `name`.
pub fn by_name(name: &str) -> Option<&'static Target> {
    ALL.iter().find(|t| t.name == name)
}
