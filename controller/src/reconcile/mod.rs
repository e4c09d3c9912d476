//! The reconcilers and the loop that runs them.
//!
//! Each pass reads desired state from the `Store`, derives what should exist with the pure
//! functions of `isvc`, `service` and `revision`, writes what changed (objects and status),
//! applies replica counts through the `Runtime`, and publishes a new routing snapshot. A
//! pass runs on every store change, runtime change, scale decision, and once a second.

pub mod isvc;
pub mod revision;
mod routing;
pub mod service;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_autoscaler::AutoscalerHandle;
use sluice_core::{
    NamespacedName, RevisionScaling, RoutingSnapshot, ScaleDecision, WeightedTarget,
};
use sluice_crds::Kind;
use sluice_crds::autoscaling::scaling_from_annotations;
use sluice_crds::inference_service::InferenceService;
use sluice_crds::revision::{Revision, SERVICE_LABEL};
use sluice_crds::service::Service;
use tokio::sync::{broadcast, mpsc, watch};

use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

/// Controller settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Domain of generated hosts: `{name}.{namespace}.{domain}`.
    pub domain: String,
    /// Port shown in URLs (the router's), omitted when 80.
    pub url_port: Option<u16>,
    /// Interval of the safety-net resync.
    pub resync: Duration,
}

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

/// The controller: reconcilers over a `Store` and a `Runtime`.
pub struct Controller<S: Store, R: Runtime> {
    config: ControllerConfig,
    store: S,
    runtime: R,
    autoscaler: AutoscalerHandle,
    snapshot: watch::Sender<Arc<RoutingSnapshot>>,
    decisions: HashMap<NamespacedName, ScaleDecision>,
    scaled: HashMap<NamespacedName, RevisionScaling>,
    ready_reported: HashMap<NamespacedName, u32>,
}

fn name_of(raw: &Value) -> &str {
    raw["metadata"]["name"].as_str().unwrap_or_default()
}

fn decode<T: DeserializeOwned>(kind: Kind, raw: &Value) -> Result<T, ReconcileError> {
    serde_json::from_value(raw.clone()).map_err(|source| ReconcileError::Serde {
        kind,
        name: name_of(raw).to_owned(),
        source,
    })
}

fn encode(kind: Kind, name: &str, value: &impl Serialize) -> Result<Value, ReconcileError> {
    serde_json::to_value(value).map_err(|source| ReconcileError::Serde {
        kind,
        name: name.to_owned(),
        source,
    })
}

impl<S: Store, R: Runtime> Controller<S, R> {
    /// A controller publishing routes on `snapshot`.
    pub fn new(
        config: ControllerConfig,
        store: S,
        runtime: R,
        autoscaler: AutoscalerHandle,
        snapshot: watch::Sender<Arc<RoutingSnapshot>>,
    ) -> Self {
        Self {
            config,
            store,
            runtime,
            autoscaler,
            snapshot,
            decisions: HashMap::new(),
            scaled: HashMap::new(),
            ready_reported: HashMap::new(),
        }
    }

    fn host(&self, name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}.{}", self.config.domain).to_ascii_lowercase()
    }

    fn url(&self, name: &str, namespace: &str) -> String {
        let host = self.host(name, namespace);
        match self.config.url_port {
            Some(port) if port != 80 => format!("http://{host}:{port}"),
            _ => format!("http://{host}"),
        }
    }

    /// Runs passes until `shutdown` resolves, then stops every replica.
    pub async fn run(
        mut self,
        mut decisions: mpsc::Receiver<ScaleDecision>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut changes = self.store.watch();
        let mut runtime_changes = self.runtime.changes();
        let mut resync = tokio::time::interval(self.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.reconcile_all().await {
                tracing::warn!(
                    reason = e.metric_label(),
                    "reconcile failed: {}",
                    sluice_core::error_chain(&e)
                );
            }
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = runtime_changes.changed() => {}
                decision = decisions.recv() => match decision {
                    Some(d) => self.record_decision(d),
                    None => break,
                },
                _ = resync.tick() => {}
                () = &mut shutdown => break,
            }
            // Coalesce whatever else arrived meanwhile into the next pass.
            while let Ok(d) = decisions.try_recv() {
                self.record_decision(d);
            }
            while changes.try_recv().is_ok() {}
        }
        self.runtime.shutdown().await;
    }

    fn record_decision(&mut self, d: ScaleDecision) {
        let previous = self.decisions.get(&d.revision).map(|p| p.desired_replicas);
        if previous != Some(d.desired_replicas) {
            tracing::info!(
                revision = %d.revision,
                desired = d.desired_replicas,
                reason = %d.reason,
                activator_in_path = d.activator_in_path,
                "scaling revision"
            );
        }
        self.decisions.insert(d.revision.clone(), d);
    }

    async fn write_status(
        &self,
        kind: Kind,
        raw: &Value,
        status: &impl Serialize,
    ) -> Result<(), ReconcileError> {
        let status = encode(kind, name_of(raw), status)?;
        if raw.get("status") == Some(&status) {
            return Ok(());
        }
        match self.store.update_status(kind, raw, status).await {
            // Someone wrote in between; the change event brings another pass.
            Ok(_) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One reconcile pass over everything.
    pub async fn reconcile_all(&mut self) -> Result<(), ReconcileError> {
        // InferenceService → predictor Service.
        let mut isvc_routes: Vec<(String, NamespacedName)> = Vec::new();
        for raw in self.store.list(Kind::InferenceService, None).await? {
            let isvc: InferenceService = decode(Kind::InferenceService, &raw)?;
            let ns = isvc.metadata.namespace().to_owned();
            let url = self.url(&isvc.metadata.name, &ns);
            let status = match isvc::predictor_service(&isvc) {
                Ok(svc) => {
                    let name = svc.metadata.name.clone();
                    let value = encode(Kind::Service, &name, &svc)?;
                    self.store.apply(vec![(Kind::Service, value)]).await?;
                    let current = self.store.get(Kind::Service, &ns, &name).await?;
                    let current: Option<Service> =
                        current.map(|v| decode(Kind::Service, &v)).transpose()?;
                    isvc_routes.push((
                        self.host(&isvc.metadata.name, &ns),
                        NamespacedName::new(ns.clone(), name),
                    ));
                    isvc::isvc_status(&isvc, Ok(current.as_ref()), &url)
                }
                Err(no) => isvc::isvc_status(&isvc, Err(&no), &url),
            };
            self.write_status(Kind::InferenceService, &raw, &status)
                .await?;
        }

        // Service → Revisions, status and traffic.
        let raw_revisions = self.store.list(Kind::Revision, None).await?;
        let revisions: Vec<(Value, Revision)> = raw_revisions
            .into_iter()
            .map(|raw| decode(Kind::Revision, &raw).map(|r| (raw, r)))
            .collect::<Result<_, _>>()?;
        let mut traffic: BTreeMap<NamespacedName, Vec<WeightedTarget>> = BTreeMap::new();
        let mut wanted: HashSet<NamespacedName> = HashSet::new();
        let mut hosts: Vec<(String, NamespacedName)> = Vec::new();
        for raw in self.store.list(Kind::Service, None).await? {
            let svc: Service = decode(Kind::Service, &raw)?;
            let ns = svc.metadata.namespace().to_owned();
            let owned: Vec<&Revision> = revisions
                .iter()
                .map(|(_, r)| r)
                .filter(|r| {
                    r.metadata.namespace() == ns
                        && r.metadata.labels.get(SERVICE_LABEL) == Some(&svc.metadata.name)
                })
                .collect();
            let owned_values: Vec<Revision> = owned.iter().map(|r| (*r).clone()).collect();
            if let Some(new) = service::revision_to_create(&svc, &owned_values) {
                tracing::info!(revision = %new.metadata.name, "creating revision");
                let value = encode(Kind::Revision, &new.metadata.name, &new)?;
                self.store.apply(vec![(Kind::Revision, value)]).await?;
            }
            let status = service::service_status(&svc, &owned, &self.url(&svc.metadata.name, &ns));
            let key = NamespacedName::new(ns.clone(), svc.metadata.name.clone());
            let mut targets: Vec<WeightedTarget> = status
                .traffic
                .iter()
                .filter_map(|t| {
                    Some(WeightedTarget {
                        revision: NamespacedName::new(ns.clone(), t.revision_name.clone()?),
                        percent: u32::try_from(t.percent.unwrap_or(0)).ok()?,
                    })
                })
                .collect();
            // Before any revision is ready, the data plane sends requests to the newest one
            // through the activator, which holds them until it is ready (or says why it
            // cannot be), rather than answering 404 during the first deployment. Status
            // traffic stays empty, as in Knative.
            if targets.is_empty()
                && let Some(latest) = &status.latest_created_revision_name
            {
                targets.push(WeightedTarget {
                    revision: NamespacedName::new(ns.clone(), latest.clone()),
                    percent: 100,
                });
            }
            wanted.extend(targets.iter().map(|t| t.revision.clone()));
            if let Some(latest) = &status.latest_created_revision_name {
                wanted.insert(NamespacedName::new(ns.clone(), latest.clone()));
            }
            hosts.push((self.host(&svc.metadata.name, &ns), key.clone()));
            traffic.insert(key, targets);
            self.write_status(Kind::Service, &raw, &status).await?;
        }
        hosts.extend(isvc_routes);

        // Revisions → replicas and status.
        let mut present: HashSet<NamespacedName> = HashSet::new();
        for (raw, rev) in &revisions {
            let key = revision::key(rev);
            present.insert(key.clone());
            let cc = rev
                .spec
                .container_concurrency
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0);
            let scaling = scaling_from_annotations(&rev.metadata.annotations, cc).unwrap_or_else(|errors| {
                tracing::warn!(revision = %key, "ignoring invalid autoscaling annotations: {errors:?}");
                RevisionScaling { container_concurrency: cc, ..RevisionScaling::default() }
            });
            let desired = if wanted.contains(&key) {
                if self.scaled.get(&key) != Some(&scaling) {
                    // A revision with a stored status ran before this process started:
                    // resume at its scale rather than starting over at the initial one.
                    let resumed = rev.status.as_ref().map(|s| s.desired_replicas);
                    if !self
                        .autoscaler
                        .upsert(key.clone(), scaling.clone(), resumed)
                        .await
                    {
                        return Err(ReconcileError::AutoscalerGone);
                    }
                    self.scaled.insert(key.clone(), scaling.clone());
                }
                self.decisions
                    .get(&key)
                    .map_or(scaling.initial_scale.max(scaling.min_scale), |d| {
                        d.desired_replicas
                    })
            } else {
                if self.scaled.remove(&key).is_some() {
                    self.autoscaler.remove(key.clone()).await;
                    self.decisions.remove(&key);
                    self.ready_reported.remove(&key);
                }
                0
            };
            let spec = revision::replica_spec(rev);
            let mut rt = self.runtime.status(&key);
            if let Err(e) = self.runtime.scale(&spec, desired).await {
                rt.failure = Some(crate::runtime::ReplicaFailure {
                    reason: "InvalidSpec".into(),
                    message: e.to_string(),
                });
            }
            let ready = rt.ready.len() as u32;
            if self.scaled.contains_key(&key) && self.ready_reported.get(&key) != Some(&ready) {
                self.autoscaler.set_ready(key.clone(), ready).await;
                self.ready_reported.insert(key.clone(), ready);
            }
            let status = revision::revision_status(rev, &rt, desired);
            self.write_status(Kind::Revision, raw, &status).await?;
        }
        for gone in self
            .runtime
            .revisions()
            .into_iter()
            .filter(|k| !present.contains(k))
        {
            tracing::info!(revision = %gone, "revision deleted; stopping its replicas");
            self.runtime.remove(&gone);
        }

        // Publish routes.
        let snap = routing::build(&hosts, &traffic, &revisions, &self.runtime, &self.decisions);
        self.snapshot.send_if_modified(|current| {
            if **current == snap {
                false
            } else {
                *current = Arc::new(snap);
                true
            }
        });
        Ok(())
    }
}
