//! The `Store`: where desired and observed state lives (SQLite locally, the Kubernetes API
//! in cluster mode). Reconcilers see only this trait.

pub mod kube;
mod sqlite;

use std::future::Future;

use sluice_crds::Kind;
use tokio::sync::broadcast;

pub use kube::KubeStore;
pub use sqlite::SqliteStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object changed since it was read (`resourceVersion` mismatch).
    #[error(
        "conflict: {kind} {namespace}/{name} was modified (have resourceVersion {have}, stored {stored})"
    )]
    Conflict {
        /// Kind.
        kind: Kind,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The version the writer read.
        have: String,
        /// The version now stored.
        stored: String,
    },
    /// The object does not exist.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Kind.
        kind: Kind,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The object is not a well-formed stored object.
    #[error("malformed object: {0}")]
    Malformed(String),
    /// SQLite failed.
    #[error("database error")]
    Database(#[from] rusqlite::Error),
    /// The state directory could not be prepared.
    #[error("cannot open state in {path}")]
    Open {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes API refused or failed a request (Kubernetes mode).
    #[error(transparent)]
    Kube(#[from] kube::resource::KubeError),
    /// A blocking store task died.
    #[error("store task failed: {0}")]
    Task(String),
}

/// What happened to an object on apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyOutcome {
    /// It did not exist.
    Created,
    /// Its spec, labels or annotations changed.
    Configured,
    /// Nothing changed.
    Unchanged,
    /// Not written: its controlling owner (`ownerReferences[controller=true]`) no longer
    /// exists, so writing it would resurrect a child of a deleted object.
    OwnerGone,
}

/// A change notification (the object's new state is read from the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Something that happened to an object, for `sluice describe` (Kubernetes' Event, trimmed).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The object's kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// One-word reason.
    pub reason: String,
    /// What happened.
    pub message: String,
    /// When (RFC 3339), set by the store.
    #[serde(default)]
    pub time: String,
}

/// Events kept in the store (oldest dropped first).
pub const MAX_EVENTS: i64 = 10_000;

/// Desired and observed state, with optimistic concurrency.
///
/// Objects are JSON with Kubernetes-style `metadata`; the store owns `uid`,
/// `resourceVersion`, `generation` (bumped on spec change) and `creationTimestamp`.
pub trait Store: Send + Sync + 'static {
    /// One object.
    fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, StoreError>> + Send;

    /// All objects of a kind, in one namespace or all, ordered by namespace and name.
    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<Vec<serde_json::Value>, StoreError>> + Send;

    /// `(namespace, name, resourceVersion)` of every object of a kind, ordered by namespace
    /// and name: what a controller's resync compares with its cache. The default lists the
    /// objects; a store can answer without reading their bodies.
    fn list_versions(
        &self,
        kind: Kind,
    ) -> impl Future<Output = Result<Vec<(String, String, String)>, StoreError>> + Send {
        async move {
            Ok(self
                .list(kind, None)
                .await?
                .iter()
                .map(|o| {
                    let meta = &o["metadata"];
                    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                    let ns = meta["namespace"].as_str().unwrap_or("default").to_owned();
                    (ns, s(&meta["name"]), s(&meta["resourceVersion"]))
                })
                .collect())
        }
    }

    /// Creates or updates the spec, labels and annotations of each object, all or none.
    /// Status is kept. An object whose controlling owner is gone is skipped (`OwnerGone`).
    fn apply(
        &self,
        objects: Vec<(Kind, serde_json::Value)>,
    ) -> impl Future<Output = Result<Vec<ApplyOutcome>, StoreError>> + Send;

    /// `apply` for objects the controller derives from others (a Service's Configuration,
    /// Route and Revisions, an InferenceService's Services), returning each one as stored
    /// afterwards (`None` where it was not written because its owner is gone).
    ///
    /// Derived objects, like statuses, are recomputed from the objects they come from when
    /// the controller starts, so a store may acknowledge them before they are durable
    /// against power loss (never before they survive a crash of the process that wrote
    /// them); user writes (`apply`, `update`, `delete`) stay durable when acknowledged.
    /// The default is `apply` followed by a `get` of each object.
    fn apply_derived(
        &self,
        objects: Vec<(Kind, serde_json::Value)>,
    ) -> impl Future<Output = Result<Vec<Option<serde_json::Value>>, StoreError>> + Send {
        async move {
            let keys: Vec<(Kind, String, String)> = objects
                .iter()
                .map(|(kind, o)| {
                    let meta = &o["metadata"];
                    let ns = meta["namespace"].as_str().unwrap_or("default").to_owned();
                    let name = meta["name"].as_str().unwrap_or_default().to_owned();
                    (*kind, ns, name)
                })
                .collect();
            let outcomes = self.apply(objects).await?;
            let mut stored = Vec::with_capacity(keys.len());
            for ((kind, ns, name), outcome) in keys.into_iter().zip(outcomes) {
                stored.push(match outcome {
                    ApplyOutcome::OwnerGone => None,
                    _ => self.get(kind, &ns, &name).await?,
                });
            }
            Ok(stored)
        }
    }

    /// Replaces the spec, labels and annotations of an existing object if the
    /// `metadata.resourceVersion` it carries is still the stored one: a write based on a
    /// stale read is refused with `Conflict` (optimistic concurrency). Status is kept.
    fn update(
        &self,
        kind: Kind,
        object: serde_json::Value,
    ) -> impl Future<Output = Result<(ApplyOutcome, serde_json::Value), StoreError>> + Send;

    /// Replaces an object's status if its `resourceVersion` still matches.
    fn update_status(
        &self,
        kind: Kind,
        object: &serde_json::Value,
        status: serde_json::Value,
    ) -> impl Future<Output = Result<serde_json::Value, StoreError>> + Send;

    /// Replaces the status of each object whose `resourceVersion` still matches, and
    /// records `events`, in one transaction; each status write succeeds or fails
    /// (conflict, not found) on its own. Statuses are derived (see `apply_derived`): a
    /// store may acknowledge them before they are durable against power loss.
    fn update_statuses(
        &self,
        writes: Vec<(Kind, serde_json::Value, serde_json::Value)>,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<Result<(), StoreError>>, StoreError>> + Send;

    /// Records events (the newest `MAX_EVENTS` are kept).
    fn record_events(
        &self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The events of one object, oldest first.
    fn events(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// Deletes an object and, transitively, everything it owns. Returns what was deleted.
    fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Vec<Change>, StoreError>> + Send;

    /// Change notifications. A lagging receiver should re-list.
    fn watch(&self) -> broadcast::Receiver<Change>;
}
