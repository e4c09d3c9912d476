//! Why a reconcile pass fails.

use sluice_crds::Kind;

use crate::store::StoreError;

/// Why a reconcile pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object does not decode as its kind (or encode to JSON).
    #[error("{kind} {name} does not (de)serialize")]
    Serde {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The autoscaler has stopped.
    #[error("the autoscaler has stopped")]
    AutoscalerGone,
}

impl ReconcileError {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Store(_) => "store",
            ReconcileError::Serde { .. } => "serde",
            ReconcileError::AutoscalerGone => "autoscaler_gone",
        }
    }
}
