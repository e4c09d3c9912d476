//! sluice-controller: the control plane.
//!
//! Owns reconciling desired state into running revisions: InferenceService → predictor
//! Service → immutable Revisions → replicas; status written back; the routing snapshot
//! published to the data plane; scale decisions applied. It also owns the `Store` (SQLite
//! in local mode) and `Runtime` (child processes in local mode) behind traits, and the
//! admin API that `sluice apply/get/delete` talk to.
//!
//! Not here: per-request work (`sluice-router`, `sluice-activator`), replica counts
//! (`sluice-autoscaler`), manifest types and validation (`sluice-crds`).

pub mod admin;
pub mod dashboard;
pub mod kube_ca;
pub mod kube_mesh;
pub mod kube_policies;
pub mod kube_policy_api;
pub mod kube_stats;
pub mod kube_term;
pub mod leader;
pub mod metrics;
pub mod policies;
pub mod reconcile;
pub mod retry;
pub mod rollout_signals;
pub mod runtime;
pub mod store;
