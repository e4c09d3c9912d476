//! The `Runtime`: where replicas run (child processes locally, Deployments on Kubernetes).
//! Reconcilers see only this trait.

pub mod guard;
pub mod kube;
mod local;
pub mod mesh;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::NamespacedName;
use tokio::sync::watch;

pub use kube::KubeRuntime;
pub use local::{GUARD_SUBCOMMAND, LocalRuntime, LocalRuntimeConfig, STOP_NOW};

/// How to run one replica of a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// The revision.
    pub revision: NamespacedName,
    /// The revision's uid (empty where unknown): the owner of what a runtime creates for it.
    /// A revision deleted and created again under the same name has a new one.
    pub uid: String,
    /// Program and arguments (`sluice` means this binary).
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// How long a stopping replica may take to drain.
    pub drain_timeout: Duration,
}

/// Why the last replica of a revision failed, for its `Ready=False` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFailure {
    /// One-word reason (`ExitCode`, `StartFailed`, `ProbeFailed`).
    pub reason: String,
    /// What happened, with the end of the replica's stderr.
    pub message: String,
}

/// What the runtime knows of a revision's replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionRuntimeStatus {
    /// Addresses of replicas that passed their readiness probe.
    pub ready: Vec<SocketAddr>,
    /// Replicas started but not ready yet.
    pub starting: u32,
    /// The most recent failure, cleared when a replica becomes ready.
    pub failure: Option<ReplicaFailure>,
}

/// Why the runtime could not act.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The replica spec cannot be run.
    #[error("cannot run revision {revision}: {message}")]
    InvalidSpec {
        /// The revision.
        revision: NamespacedName,
        /// Why.
        message: String,
    },
    /// The Kubernetes API refused or failed a request (Kubernetes mode).
    #[error("cannot run revision {revision}: {source}")]
    Kube {
        /// The revision.
        revision: NamespacedName,
        /// The cause.
        #[source]
        source: crate::store::kube::KubeError,
    },
}

/// Runs replicas.
pub trait Runtime: Send + Sync + 'static {
    /// Makes `replicas` replicas of `spec` run (starting or stopping as needed).
    fn scale(
        &self,
        spec: &ReplicaSpec,
        replicas: u32,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops every replica of a revision and forgets it (the revision is gone).
    fn remove(&self, revision: &NamespacedName);

    /// The current state of a revision's replicas.
    fn status(&self, revision: &NamespacedName) -> RevisionRuntimeStatus;

    /// Revisions with replicas (running, starting or stopping).
    fn revisions(&self) -> Vec<NamespacedName>;

    /// Bumped whenever any replica changes state.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Stops every replica and waits for them to exit.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;

    /// Which `storageUri`s its replicas can load a model from.
    fn model_storage(&self) -> ModelStorage {
        ModelStorage::Local
    }
}

/// Where a runtime's replicas can load models from (an InferenceService's `storageUri`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelStorage {
    /// Replicas run on the machine that holds the manifests: a folder path or `file://` is
    /// read in place; `http(s)://` is downloaded by the model server.
    #[default]
    Local,
    /// Replicas run in Pods on other machines: only what a Pod reaches over the network
    /// (`http(s)://`, downloaded by the model server).
    Network,
}
