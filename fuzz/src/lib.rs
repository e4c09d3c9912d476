//! sluice-fuzz: fuzzing on stable Rust for every decoder that takes bytes from outside
//! Sluice (OIP and KServe v1 bodies, the binary tensor extension, gRPC messages, manifests,
//! Istio policies, the admin API's requests, request heads at the ingress, a replica and
//! the admin listener).
//!
//! A mutation fuzzer without coverage feedback (that needs nightly's sanitizer coverage):
//! [`mutate`] stacks byte-level edits and dictionary tokens on a committed corpus
//! (`fuzz/corpus/<target>/`), [`runner`] runs each input through a [`targets::Target`]
//! under `catch_unwind` and the [`alloc`] watch, keeps inputs whose outcome is new for
//! later mutation, and reports any panic or allocation over 256 MiB with the input. CI runs
//! a bounded pass (`tests/bounded.rs`); `bench/fuzz/run` runs for a while per target.
//!
//! Not here: the decoders themselves (the targets call the servers' own functions), and
//! tonic's and hyper's framing, which are theirs.

pub mod alloc;
pub mod mutate;
pub mod runner;
pub mod targets;

/// Every allocation of a binary that links this crate goes through the watch.
#[global_allocator]
static ALLOCATOR: alloc::WatchingAllocator = alloc::WatchingAllocator;

pub use runner::{Budget, Failure, Finding, Options, Report, run, run_one};
pub use targets::{ALL, Target, by_name};
