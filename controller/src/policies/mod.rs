//! Security policies (Istio `AuthorizationPolicy` and `PeerAuthentication`) as the control
//! plane keeps them in local mode: the [`PolicyStore`] beside the state, its admin API
//! routes, and the check that a selector matches some workload (both modes).

mod admin;
mod local;
mod workloads;

pub use admin::{PLURALS, apply_policies, objects_api, plural_of};
pub use local::{PolicyApplied, PolicyStore, PolicyStoreError, results_json, split_policies};
pub use workloads::{known_workloads, unselected_warning, warn_unselected};
