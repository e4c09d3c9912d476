//! sluice-crds: the API types users and the controller exchange.
//!
//! Owns the manifest types (KServe `InferenceService` v1beta1 and the v1alpha1 serving
//! runtimes, Knative `Service`, `Configuration`, `Revision` and `Route` v1), their defaulting and validation with field paths in every error, the
//! table of kinds and their short names, and parsing of multi-document YAML manifests.
//!
//! Not here: any I/O (callers read files and pass text), reconciliation (`sluice-controller`).

pub mod autoscaling;
pub mod configuration;
pub mod crd;
pub mod inference_service;
pub mod kind;
pub mod manifest;
pub mod meta;
pub mod revision;
pub mod rollout;
pub mod route;
pub mod runtime;
pub mod service;
pub mod slo_rollout;
pub mod traffic;
pub mod validation;

pub use kind::Kind;
pub use manifest::{Manifest, ManifestError, parse_manifests, parse_object};
pub use meta::{Condition, ConditionStatus, ObjectMeta, OwnerReference};
pub use validation::{ValidationError, Validator};
