//! The reconcilers and the loop that runs them.
//!
//! Each pass reads desired state from the controller's cache of the `Store` (kept current
//! by the store's watch stream), derives what should exist with the pure functions of
//! `isvc`, `service` and `revision`, writes what changed (objects and status), applies
//! replica counts through the `Runtime`, and publishes a new routing snapshot.
//!
//! Passes are incremental: a store change, a runtime change (of the revisions whose
//! replicas changed) or a changed scale decision marks objects, and the next pass
//! reconciles only those and their scope (owner chain, dependents, and the Routes that
//! reference them; see `cache`), coalescing whatever arrived meanwhile. The periodic
//! resync (once a second, stretched to fifty times its own duration) compares the store's
//! object versions with the cache and reconciles what differs (a change the watch missed)
//! and what a failed pass left. A full pass that re-reads the whole store runs at start,
//! after the watch stream lagged or a serving runtime changed, after a failed full pass or
//! resync, and every `FULL_EVERY` resync intervals (the rules are `schedule`, pure and
//! tested).

mod cache;
pub mod configuration;
mod error;
pub mod isvc;
pub mod kube_routing;
pub mod revision;
pub mod rollout;
pub mod route;
mod routing;
pub mod runtime_select;
mod schedule;
pub mod service;
pub mod slo_rollout;
mod stages;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_autoscaler::AutoscalerHandle;
use sluice_core::{NamespacedName, RevisionScaling, RoutingSnapshot, ScaleDecision};
use sluice_crds::Kind;
use sluice_crds::autoscaling::scaling_from_annotations;
use sluice_crds::configuration::{Configuration, ConfigurationStatus};
use sluice_crds::inference_service::InferenceService;
use sluice_crds::revision::Revision;
use sluice_crds::route::{Route, RouteStatus};
use sluice_crds::runtime::{BUILTIN_RUNTIME, ServingRuntime, builtin_runtime};
use sluice_crds::service::{Service, ServiceStatus};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::runtime::{ReplicaFailure, ReplicaSpec, RevisionRuntimeStatus, Runtime};
use crate::store::{Change, Event, Store, StoreError};
use cache::{Cache, KINDS, Key};
pub use error::ReconcileError;
use schedule::{PassKind, Schedule};
use support::{
    decode, defaulted, encode, epoch_ms, event, group_by_config, initial_replicas, key_of, name_of,
    ready_transition,
};

/// Controller settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Domain of generated hosts: `{name}.{namespace}.{domain}`.
    pub domain: String,
    /// Port shown in URLs (the router's), omitted when 80.
    pub url_port: Option<u16>,
    /// Interval of the safety-net resync, which compares the store's object versions with
    /// the controller's cache (stretched to fifty times its own duration, so it takes at
    /// most 2 % of a core); every 600 intervals it is a full pass instead.
    pub resync: Duration,
    /// Revisions kept per configuration beyond those routed, latest created and latest
    /// ready; older ones are deleted (Knative's `min-non-active-revisions`, default 20).
    pub revision_history: usize,
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
    builtin_applied: bool,
    first_pass: Option<oneshot::Sender<()>>,
    /// The store's objects, kept current by its watch stream.
    cache: Cache,
    /// Objects changed since the last pass (reconciled with their scope).
    dirty: BTreeSet<Key>,
    /// A full pass is due (start, lagged watch, runtime definitions changed).
    full_due: bool,
    /// Objects of incremental passes that failed, retried by the next resync.
    retry: BTreeSet<Key>,
    /// The runtime's status of each revision at the last runtime change (only those that
    /// differ from the default: no replicas, no failure), so that a change notification
    /// marks only the revisions whose replicas changed.
    runtime_seen: HashMap<NamespacedName, RevisionRuntimeStatus>,
    /// Host entries of the routing snapshot by the Route or InferenceService they come
    /// from, and the snapshot they make.
    routing: routing::RoutingState,
    /// Counters of the passes run, shared with `stats` handles.
    stats: PassStats,
    /// Every revision with the status its last pass computed (for the routing snapshot).
    observed: HashMap<NamespacedName, Revision>,
    /// The wall clock gradual rollouts step by (injected by tests).
    clock: Clock,
    /// Routes in a gradual rollout, with when their next step is due (milliseconds since
    /// the Unix epoch): the resync marks them once it is.
    rollout_due: BTreeMap<Key, i64>,
    /// The router's request counters SLO-gated rollouts judge by (`None`: such rollouts
    /// wait at their first step, saying why).
    signals: Option<Arc<dyn crate::rollout_signals::SignalSource>>,
    /// Routes whose SLO-gated rollout bounds its canary's replicas: the canary and bound.
    surge: BTreeMap<Key, (NamespacedName, u32)>,
    /// The autoscaler's latest decisions, shared with the dashboard.
    board: crate::dashboard::DecisionBoard,
}

/// A wall clock: the controller's source of `SystemTime` for gradual rollouts, whose state
/// is kept in the store (so it must survive restarts) in wall-clock milliseconds.
pub type Clock = Arc<dyn Fn() -> std::time::SystemTime + Send + Sync>;

/// Counters of a controller's passes: how many ran, how many were full (re-reading the
/// store), and how many objects their scopes held in all (a full pass counts every
/// object). Cheap to clone; every clone reads the same counters.
#[derive(Clone, Debug, Default)]
pub struct PassStats(Arc<PassCounters>);

#[derive(Debug, Default)]
struct PassCounters {
    passes: AtomicU64,
    full: AtomicU64,
    objects: AtomicU64,
}

/// A reading of `PassStats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassCount {
    /// Passes run (full and incremental).
    pub passes: u64,
    /// Full passes among them.
    pub full_passes: u64,
    /// Objects in the scopes of all those passes.
    pub objects: u64,
}

impl PassStats {
    fn record(&self, full: bool, objects: usize) {
        let c = &self.0;
        c.passes.fetch_add(1, Ordering::Relaxed);
        if full {
            c.full.fetch_add(1, Ordering::Relaxed);
        }
        c.objects.fetch_add(objects as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> PassCount {
        let c = &self.0;
        PassCount {
            passes: c.passes.load(Ordering::Relaxed),
            full_passes: c.full.load(Ordering::Relaxed),
            objects: c.objects.load(Ordering::Relaxed),
        }
    }
}

use routing::HostEntry;

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
            builtin_applied: false,
            first_pass: None,
            cache: Cache::default(),
            dirty: BTreeSet::new(),
            full_due: true,
            retry: BTreeSet::new(),
            runtime_seen: HashMap::new(),
            routing: routing::RoutingState::default(),
            observed: HashMap::new(),
            stats: PassStats::default(),
            clock: Arc::new(std::time::SystemTime::now),
            rollout_due: BTreeMap::new(),
            signals: None,
            surge: BTreeMap::new(),
            board: crate::dashboard::DecisionBoard::default(),
        }
    }

    /// The autoscaler's latest decision per revision as this controller applies them.
    pub fn decisions(&self) -> crate::dashboard::DecisionBoard {
        self.board.clone()
    }

    /// Gives SLO-gated rollouts the router's request counters.
    pub fn set_signals(&mut self, signals: Arc<dyn crate::rollout_signals::SignalSource>) {
        self.signals = Some(signals);
    }

    /// Replaces the wall clock gradual rollouts step by (tests drive it by hand).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Marks the Routes whose next rollout step is due; the loop calls it before each pass.
    fn mark_due_rollouts(&mut self) {
        let now = epoch_ms((self.clock)());
        let due: Vec<Key> = self
            .rollout_due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.rollout_due.remove(&key);
            self.dirty.insert(key);
        }
    }

    /// A handle on the counters of this controller's passes (readable while it runs).
    pub fn stats(&self) -> PassStats {
        self.stats.clone()
    }

    fn hosts(&self) -> stages::Hosts {
        stages::Hosts {
            domain: self.config.domain.clone(),
            url_port: self.config.url_port,
        }
    }

    /// Signals `done` once `run`'s first pass has published routes for what the store holds
    /// (so a router can start with them).
    pub fn notify_first_pass(&mut self, done: oneshot::Sender<()>) {
        self.first_pass = Some(done);
    }

    /// Runs passes until `shutdown` resolves, then stops every replica.
    pub async fn run(
        mut self,
        mut decisions: mpsc::Receiver<ScaleDecision>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut changes = self.store.watch();
        let mut runtime_changes = self.runtime.changes();
        // Decisions are drained all the time, also during a pass: a pass registers every
        // new revision with the autoscaler, which answers each with a decision; waiting for
        // the pass to end before reading them would fill the channel and stall both sides.
        // The inbox keeps the newest decision per revision, so it is bounded by revisions.
        let inbox: Arc<std::sync::Mutex<HashMap<NamespacedName, ScaleDecision>>> = Arc::default();
        let (arrived_tx, mut arrived) = watch::channel(false);
        let forward = {
            let inbox = inbox.clone();
            tokio::spawn(async move {
                while let Some(d) = decisions.recv().await {
                    inbox
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(d.revision.clone(), d);
                    arrived_tx.send_replace(false);
                }
                // The autoscaler is gone: tell the loop to stop.
                arrived_tx.send_replace(true);
            })
        };
        tokio::pin!(shutdown);
        let mut schedule = Schedule::new(self.config.resync, tokio::time::Instant::now());
        loop {
            let drained: Vec<ScaleDecision> = inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, d)| d)
                .collect();
            for d in drained {
                self.record_decision(d);
            }
            self.mark_due_rollouts();
            let started = tokio::time::Instant::now();
            let counted = self.stats.read();
            let kind = schedule.kind(started, self.full_due);
            let result = match kind {
                PassKind::Full => self.reconcile_all().await,
                PassKind::Resync => match self.mark_stale().await {
                    Ok(()) => self.reconcile_dirty().await,
                    Err(e) => Err(e),
                },
                PassKind::Incremental => self.reconcile_dirty().await,
            };
            if let Err(e) = &result {
                tracing::warn!(
                    reason = e.metric_label(),
                    "reconcile failed: {}",
                    sluice_core::error_chain(e)
                );
            }
            let elapsed = started.elapsed();
            tracing::debug!(
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                ?kind,
                objects = self.stats.read().objects - counted.objects,
                "reconcile pass"
            );
            schedule.after(kind, started, elapsed, result.is_ok());
            if let Some(done) = self.first_pass.take() {
                let _ = done.send(());
            }
            if self.dirty.is_empty() && !self.full_due {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(c) => self.note_change(c).await,
                        Err(broadcast::error::RecvError::Lagged(_)) => self.full_due = true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = runtime_changes.changed() => self.note_runtime_change(),
                    closed = arrived.changed() => {
                        if closed.is_err() || *arrived.borrow_and_update() {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(schedule.next_resync()) => {}
                    () = &mut shutdown => break,
                }
            }
            // Coalesce whatever else arrived meanwhile into the next pass.
            loop {
                match changes.try_recv() {
                    Ok(c) => self.note_change(c).await,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => self.full_due = true,
                    Err(_) => break,
                }
            }
            if runtime_changes.has_changed().unwrap_or(false) {
                runtime_changes.borrow_and_update();
                self.note_runtime_change();
            }
        }
        forward.abort();
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
        if self.decisions.get(&d.revision) != Some(&d) {
            self.dirty.insert((
                Kind::Revision,
                d.revision.namespace.clone(),
                d.revision.name.clone(),
            ));
        }
        self.board.put(&d);
        self.decisions.insert(d.revision.clone(), d);
    }

    /// Brings the cache up to date with one change notification and marks the object (and
    /// what its previous version named: owners, configuration) for the next pass.
    async fn note_change(&mut self, change: Change) {
        let Change {
            kind,
            namespace,
            name,
        } = change;
        if !KINDS.contains(&kind) {
            return;
        }
        if matches!(kind, Kind::ServingRuntime | Kind::ClusterServingRuntime) {
            // Runtime definitions select the predictor of every InferenceService.
            self.full_due = true;
        }
        let now = match self.store.get(kind, &namespace, &name).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!("re-reading {kind} {namespace}/{name} failed: {e}; resyncing");
                self.full_due = true;
                return;
            }
        };
        if let Some(old) = self.cache.put(kind, &namespace, &name, now) {
            for (k, n) in cache::relatives(kind, &old) {
                self.dirty.insert((k, namespace.clone(), n));
            }
        }
        self.dirty.insert((kind, namespace, name));
    }

    /// Marks the revisions whose replicas changed (started, became ready, failed, stopped)
    /// since the last runtime change. The runtime's notification says only that something
    /// changed; marking every revision it knows would make each notification a pass over
    /// every revision (and each pass's own scale calls notify again).
    fn note_runtime_change(&mut self) {
        let mut now: HashMap<NamespacedName, RevisionRuntimeStatus> = HashMap::new();
        for key in self.runtime.revisions() {
            let status = self.runtime.status(&key);
            if status != RevisionRuntimeStatus::default() {
                now.insert(key, status);
            }
        }
        let changed = now
            .iter()
            .filter(|(k, s)| self.runtime_seen.get(*k) != Some(*s))
            .map(|(k, _)| k)
            .chain(self.runtime_seen.keys().filter(|k| !now.contains_key(*k)));
        for key in changed {
            self.dirty
                .insert((Kind::Revision, key.namespace.clone(), key.name.clone()));
        }
        self.runtime_seen = now;
    }

    /// Reconciles the objects of `changes` (notifications of the store's watch stream) and
    /// everything they affect, reading the controller's cache of the store: the
    /// incremental counterpart of `reconcile_all`, which must have run once before.
    /// Revisions whose replicas changed since the last pass are reconciled too.
    pub async fn reconcile_changes(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<(), ReconcileError> {
        for c in changes {
            self.note_change(c).await;
        }
        self.note_runtime_change();
        if self.full_due {
            self.reconcile_all().await
        } else {
            self.reconcile_dirty().await
        }
    }

    /// One pass over the objects marked since the last pass and their scope. When it fails,
    /// its objects are kept for the next resync to retry.
    async fn reconcile_dirty(&mut self) -> Result<(), ReconcileError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        let scope = self.cache.closure(dirty.iter().cloned());
        let result = self.pass(Some(scope)).await;
        if result.is_err() {
            self.retry.extend(dirty);
        }
        result
    }

    /// The periodic resync short of a full pass: marks what a failed pass left, and every
    /// object whose version in the store differs from the cache's (a change the watch
    /// missed), re-reading those. Comparing versions reads no object bodies, so a resync of
    /// a large store takes milliseconds, not a pass over everything.
    async fn mark_stale(&mut self) -> Result<(), ReconcileError> {
        self.dirty.append(&mut self.retry);
        let mut stale = Vec::new();
        for kind in KINDS {
            let listed = self.store.list_versions(kind).await?;
            let mut cached = self.cache.versions(kind);
            for (ns, name, version) in listed {
                match cached.remove(&(ns.clone(), name.clone())) {
                    Some(v) if v == version => {}
                    _ => stale.push((kind, ns, name)),
                }
            }
            // Cached but gone from the store.
            stale.extend(cached.into_keys().map(|(ns, name)| (kind, ns, name)));
        }
        for (kind, namespace, name) in stale {
            tracing::info!(%kind, %namespace, %name, "resync found a change the watch missed");
            self.note_change(Change {
                kind,
                namespace,
                name,
            })
            .await;
        }
        Ok(())
    }

    /// Re-reads the store into the cache (the safety net against anything a watch missed).
    async fn reload(&mut self) -> Result<(), ReconcileError> {
        for kind in KINDS {
            let objects = self.store.list(kind, None).await?;
            self.cache.fill(kind, objects);
        }
        Ok(())
    }

    /// Queues a status write (skipped when unchanged); `flush_statuses` writes the pass's
    /// statuses in one transaction, so a pass costs one fsync, not one per object.
    fn write_status(
        &self,
        pending: &mut Vec<(Kind, Value, Value)>,
        kind: Kind,
        raw: &Value,
        status: &impl Serialize,
    ) -> Result<(), ReconcileError> {
        let status = encode(kind, name_of(raw), status)?;
        if raw.get("status") != Some(&status) {
            pending.push((kind, raw.clone(), status));
        }
        Ok(())
    }

    async fn flush_statuses(
        &self,
        pending: Vec<(Kind, Value, Value)>,
        mut events: Vec<Event>,
    ) -> Result<(), ReconcileError> {
        events.extend(
            pending
                .iter()
                .filter_map(|(kind, raw, status)| ready_transition(*kind, raw, status)),
        );
        if pending.is_empty() && events.is_empty() {
            return Ok(());
        }
        // One transaction (one fsync) for the pass's statuses and events.
        for result in self.store.update_statuses(pending, events).await? {
            match result {
                // Someone wrote in between; the change event brings another pass.
                Ok(()) | Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One reconcile pass over everything (re-read from the store), in dependency order,
    /// each level reading the state the level above wrote in this same pass (so statuses
    /// are never a pass behind): InferenceService → Service → Configuration + Route →
    /// Revisions → replicas; then statuses upward and the routing snapshot.
    pub async fn reconcile_all(&mut self) -> Result<(), ReconcileError> {
        self.full_due = false;
        self.dirty.clear();
        self.retry.clear();
        self.note_runtime_change();
        self.dirty.clear();
        self.reload().await?;
        self.pass(None).await
    }

    /// Applies derived objects (see `Store::apply_derived`) and stores them, as written,
    /// into the cache and, in an incremental pass, the scope.
    async fn apply_derived(
        &mut self,
        applied: Vec<(Kind, Value)>,
        scope: &mut Option<BTreeSet<Key>>,
    ) -> Result<(), ReconcileError> {
        let keys: Vec<Key> = applied
            .iter()
            .map(|(kind, value)| {
                let (ns, name) = key_of(value);
                (*kind, ns, name)
            })
            .collect();
        let stored = self.store.apply_derived(applied).await?;
        for ((kind, ns, name), now) in keys.iter().zip(stored) {
            // Not written (its owner is gone): what the store holds, if anything.
            let now = match now {
                Some(now) => Some(now),
                None => self.store.get(*kind, ns, name).await?,
            };
            self.cache.put(*kind, ns, name, now);
        }
        self.widen(scope, keys);
        Ok(())
    }

    /// Adds `keys` to an incremental pass's scope and closes it again (see `cache`), so
    /// that objects created or found during the pass bring their own scope.
    fn widen(&self, scope: &mut Option<BTreeSet<Key>>, keys: impl IntoIterator<Item = Key>) {
        if let Some(scope) = scope {
            scope.extend(keys);
            *scope = self.cache.closure(std::mem::take(scope));
        }
    }

    /// The decoded objects of `kind` in `scope` (all without one), from the cache.
    fn typed<T: DeserializeOwned>(
        &self,
        kind: Kind,
        scope: &Option<BTreeSet<Key>>,
    ) -> Result<Vec<(Value, T)>, ReconcileError> {
        let raws: Vec<Value> = match scope {
            None => self.cache.all(kind).cloned().collect(),
            Some(scope) => self.cache.scoped(kind, scope),
        };
        raws.into_iter()
            .map(|raw| decode(kind, &raw).map(|t| (raw, t)))
            .collect()
    }

    /// A pass over `scope` (everything without one): see `reconcile_all`. With a scope,
    /// every input of what it computes is in the scope (see `cache`), and the routing
    /// snapshot is rebuilt from the host entries and revisions kept from earlier passes.
    /// One reconcile pass over `scope` (everything when `None`): derive, stamp, observe,
    /// route, scale, write statuses, keep and publish. Each stage's logic is a pure
    /// function of `stages`; this reads their inputs and writes their outputs.
    async fn pass(&mut self, mut scope: Option<BTreeSet<Key>>) -> Result<(), ReconcileError> {
        self.stats.record(
            scope.is_none(),
            scope
                .as_ref()
                .map_or_else(|| self.cache.len(), BTreeSet::len),
        );
        let hosts = self.hosts();
        let (cluster, namespaced) = self.serving_runtimes().await?;
        let runtimes = isvc::Runtimes {
            namespaced: &namespaced,
            cluster: &cluster,
            storage: self.runtime.model_storage(),
        };

        // Derive: InferenceService → component Services → Configuration + Route.
        let isvcs: Vec<(Value, InferenceService)> = self.typed(Kind::InferenceService, &scope)?;
        let components = stages::components(&isvcs, &runtimes, &hosts, &self.cache)?;
        let services = self
            .write_components(&isvcs, &components, &mut scope)
            .await?;
        let mut configs: Vec<(Value, Configuration)> = defaulted(
            self.typed(Kind::Configuration, &scope)?,
            Configuration::set_defaults,
        );
        let mut routes: Vec<(Value, Route)> =
            defaulted(self.typed(Kind::Route, &scope)?, Route::set_defaults);
        let (new_configs, new_routes) = stages::service_children(&services, &configs, &routes)?;
        let (configs_changed, routes_changed) = (!new_configs.is_empty(), !new_routes.is_empty());
        if configs_changed || routes_changed {
            self.apply_derived(
                new_configs.into_iter().chain(new_routes).collect(),
                &mut scope,
            )
            .await?;
        }
        if configs_changed {
            configs = defaulted(
                self.typed(Kind::Configuration, &scope)?,
                Configuration::set_defaults,
            );
        }
        if routes_changed {
            routes = defaulted(self.typed(Kind::Route, &scope)?, Route::set_defaults);
        }

        // Stamp: Configuration → Revisions.
        let mut revisions: Vec<(Value, Revision)> = self.typed(Kind::Revision, &scope)?;
        let stamps = stages::stamp_revisions(&configs, &revisions)?;
        if !stamps.create.is_empty() {
            self.apply_derived(stamps.create, &mut scope).await?;
            revisions = self.typed(Kind::Revision, &scope)?;
        }

        // Observe: revision readiness as the runtime sees it now.
        let (specs, observed) = self.observe(&revisions);
        let config_status = stages::configuration_statuses(&configs, &observed, &stamps.errors);

        // Route.
        let now_ms = epoch_ms((self.clock)());
        let gated = routes.iter().any(|(_, r)| {
            r.metadata
                .annotations
                .contains_key(sluice_crds::slo_rollout::STEPS)
        });
        let signals = self.signals.as_ref().filter(|_| gated).map(|s| s.read());
        let routing = stages::routing(
            &routes,
            &isvcs,
            &components,
            &config_status,
            &observed,
            &hosts,
            (now_ms, signals.as_ref()),
        );
        for (route, surge) in &routing.surge {
            match surge {
                Some(s) => self.surge.insert(route.clone(), s.clone()),
                None => self.surge.remove(route),
            };
        }
        let surge: HashMap<NamespacedName, u32> = self.surge.values().cloned().collect();
        for (route, due) in &routing.rollout_due {
            match due {
                Some(at) => self.rollout_due.insert(route.clone(), *at),
                None => self.rollout_due.remove(route),
            };
        }

        // Scale: revisions → replicas, and their status.
        let mut pending = Vec::new();
        let now_observed = self
            .scale(
                &revisions,
                &specs,
                &observed,
                (&routing.wanted, &surge),
                &mut pending,
            )
            .await?;
        self.stop_removed(&revisions, &scope);

        // Write statuses upward: Configuration, Route, Service, InferenceService.
        self.write_statuses(
            &mut pending,
            &Derived {
                configs: &configs,
                routes: &routes,
                services: &services,
                isvcs: &isvcs,
                components: &components,
                config_status: &config_status,
                route_status: &routing.statuses,
            },
            &hosts,
        )?;
        let mut events = stamps.events;
        events.extend(routing.events.iter().cloned());
        self.flush_statuses(pending, events).await?;
        self.collect_garbage(&configs, &observed, &routing.wanted, &config_status)
            .await?;

        // Keep and publish.
        let changed = self.keep(&scope, routing.hosts, &routes, &isvcs, now_observed);
        if changed {
            self.publish();
        }
        Ok(())
    }

    /// The cluster's serving runtimes (the built-in one stored once, and added if deleted)
    /// and the namespaced ones by namespace.
    async fn serving_runtimes(
        &mut self,
    ) -> Result<(Vec<ServingRuntime>, HashMap<String, Vec<ServingRuntime>>), ReconcileError> {
        if !self.builtin_applied {
            let builtin = builtin_runtime();
            let value = encode(
                Kind::ClusterServingRuntime,
                &builtin.metadata.name,
                &builtin,
            )?;
            let applied = vec![(Kind::ClusterServingRuntime, value)];
            self.apply_derived(applied, &mut None).await?;
            self.builtin_applied = true;
        }
        let mut cluster: Vec<ServingRuntime> = self
            .typed(Kind::ClusterServingRuntime, &None)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        if !cluster.iter().any(|r| r.metadata.name == BUILTIN_RUNTIME) {
            cluster.push(builtin_runtime());
        }
        let mut namespaced: HashMap<String, Vec<ServingRuntime>> = HashMap::new();
        for (_, r) in self.typed::<ServingRuntime>(Kind::ServingRuntime, &None)? {
            namespaced
                .entry(r.metadata.namespace().to_owned())
                .or_default()
                .push(r);
        }
        Ok((cluster, namespaced))
    }

    /// Writes the component Services that changed, deletes stale transformers, widens an
    /// incremental scope to every component, and returns the scope's Services.
    async fn write_components(
        &mut self,
        isvcs: &[(Value, InferenceService)],
        components: &stages::Components,
        scope: &mut Option<BTreeSet<Key>>,
    ) -> Result<Vec<(Value, Service)>, ReconcileError> {
        if !components.changed.is_empty() {
            self.apply_derived(components.changed.clone(), scope)
                .await?;
        }
        for (ns, name) in &components.stale_transformers {
            tracing::info!(service = %name, "transformer removed from its InferenceService; deleting its Service");
            match self.store.delete(Kind::Service, ns, name).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if scope.is_some() {
            // Each component Service with its scope, also when it was not owned before.
            self.widen(scope, stages::component_keys(isvcs, components));
        }
        Ok(defaulted(
            self.typed(Kind::Service, scope)?,
            Service::set_defaults,
        ))
    }

    /// Each revision's replica spec (or why it has none) and the revision with the status
    /// the runtime's view gives it now.
    fn observe(
        &self,
        revisions: &[(Value, Revision)],
    ) -> (Vec<Result<ReplicaSpec, ReplicaFailure>>, Vec<Revision>) {
        revisions
            .iter()
            .map(|(_, rev)| {
                let key = revision::key(rev);
                let spec = revision::replica_spec(rev);
                let mut rt = self.runtime.status(&key);
                if let Err(f) = &spec {
                    rt.failure = Some(f.clone());
                }
                let desired = self
                    .decisions
                    .get(&key)
                    .map_or_else(|| initial_replicas(rev), |d| d.desired_replicas);
                let mut now = rev.clone();
                now.status = Some(revision::revision_status(rev, &rt, desired));
                (spec, now)
            })
            .unzip()
    }

    /// Applies each revision's desired replicas to the runtime, tells the autoscaler of
    /// readiness changes, queues the revisions' statuses, and returns the revisions with
    /// them.
    async fn scale(
        &mut self,
        revisions: &[(Value, Revision)],
        specs: &[Result<ReplicaSpec, ReplicaFailure>],
        observed: &[Revision],
        (wanted, surge): (&HashSet<NamespacedName>, &HashMap<NamespacedName, u32>),
        pending: &mut Vec<(Kind, Value, Value)>,
    ) -> Result<Vec<Revision>, ReconcileError> {
        let mut now_observed = Vec::with_capacity(revisions.len());
        for (((raw, rev), spec), seen) in revisions.iter().zip(specs).zip(observed) {
            let key = revision::key(rev);
            let desired = self
                .desired_replicas(&key, rev, wanted.contains(&key), surge.get(&key).copied())
                .await?;
            let mut rt = self.runtime.status(&key);
            match spec {
                Ok(spec) => {
                    if let Err(e) = self.runtime.scale(spec, desired).await {
                        rt.failure = Some(ReplicaFailure {
                            reason: "InvalidSpec".into(),
                            message: e.to_string(),
                        });
                    }
                }
                Err(f) => rt.failure = Some(f.clone()),
            }
            let ready = rt.ready.len() as u32;
            if self.scaled.contains_key(&key) && self.ready_reported.get(&key) != Some(&ready) {
                self.autoscaler.set_ready(key.clone(), ready).await;
                self.ready_reported.insert(key.clone(), ready);
            }
            // Readiness as routed; desired replicas as just decided.
            let mut status = seen.status.clone().unwrap_or_default();
            status.desired_replicas = desired;
            self.write_status(pending, Kind::Revision, raw, &status)?;
            let mut routed = seen.clone();
            routed.status = Some(status);
            now_observed.push(routed);
        }
        Ok(now_observed)
    }

    /// Stops the replicas of revisions that were deleted (within the pass's scope).
    fn stop_removed(&self, revisions: &[(Value, Revision)], scope: &Option<BTreeSet<Key>>) {
        let present: HashSet<NamespacedName> =
            revisions.iter().map(|(_, r)| revision::key(r)).collect();
        let removed = |k: &NamespacedName| {
            !present.contains(k)
                && scope.as_ref().is_none_or(|s| {
                    s.contains(&(Kind::Revision, k.namespace.clone(), k.name.clone()))
                        && self
                            .cache
                            .get(Kind::Revision, &k.namespace, &k.name)
                            .is_none()
                })
        };
        for gone in self.runtime.revisions().into_iter().filter(removed) {
            tracing::info!(revision = %gone, "revision deleted; stopping its replicas");
            self.runtime.remove(&gone);
        }
    }

    /// Queues the statuses of Configurations, Routes, Services and InferenceServices.
    fn write_statuses(
        &self,
        pending: &mut Vec<(Kind, Value, Value)>,
        derived: &Derived<'_>,
        hosts: &stages::Hosts,
    ) -> Result<(), ReconcileError> {
        let key =
            |m: &sluice_crds::meta::ObjectMeta| NamespacedName::new(m.namespace(), m.name.clone());
        for (raw, cfg) in derived.configs {
            if let Some(st) = derived.config_status.get(&key(&cfg.metadata)) {
                self.write_status(pending, Kind::Configuration, raw, st)?;
            }
        }
        for (raw, route) in derived.routes {
            if let Some(st) = derived.route_status.get(&key(&route.metadata)) {
                self.write_status(pending, Kind::Route, raw, st)?;
            }
        }
        let mut service_status: HashMap<NamespacedName, ServiceStatus> = HashMap::new();
        for (raw, svc) in derived.services {
            let key = key(&svc.metadata);
            let st = service::service_status(
                svc,
                &derived.config_status.get(&key).cloned().unwrap_or_default(),
                &derived.route_status.get(&key).cloned().unwrap_or_default(),
            );
            self.write_status(pending, Kind::Service, raw, &st)?;
            service_status.insert(key, st);
        }
        let components = derived
            .components
            .predictors
            .iter()
            .zip(&derived.components.transformers);
        for ((raw, i), (predictor, transformer)) in derived.isvcs.iter().zip(components) {
            let url = hosts.url(&i.metadata.name, i.metadata.namespace());
            let transformer = transformer.as_ref().map(|k| service_status.get(k));
            let status = match predictor {
                Ok(key) => {
                    let svc = service_status.get(key);
                    let replicas = self.predictor_replicas(&key.namespace, svc);
                    isvc::isvc_status(i, Ok(svc), &replicas, transformer, &url)
                }
                Err(no) => isvc::isvc_status(
                    i,
                    Err(no),
                    &isvc::PredictorReplicas::default(),
                    transformer,
                    &url,
                ),
            };
            self.write_status(pending, Kind::InferenceService, raw, &status)?;
        }
        Ok(())
    }

    /// Keeps this pass's host entries and revisions: all of them after a full pass; after
    /// an incremental one, those it reconciled replace theirs and those of deleted objects
    /// in its scope go. Returns whether the routing snapshot may have changed (see
    /// `routing`).
    fn keep(
        &mut self,
        scope: &Option<BTreeSet<Key>>,
        mut hosts: BTreeMap<routing::Owner, Vec<HostEntry>>,
        routes: &[(Value, Route)],
        isvcs: &[(Value, InferenceService)],
        now_observed: Vec<Revision>,
    ) -> bool {
        let Some(scope) = scope else {
            self.observed.clear();
            self.observed
                .extend(now_observed.into_iter().map(|r| (revision::key(&r), r)));
            self.routing
                .reset(hosts, &self.observed, &self.runtime, &self.decisions);
            return true;
        };
        for (kind, ns, name) in scope {
            let key = NamespacedName::new(ns.clone(), name.clone());
            if *kind == Kind::Revision {
                self.routing.touch_revision(key.clone());
            }
            if self.cache.get(*kind, ns, name).is_some() {
                continue;
            }
            match kind {
                Kind::Route | Kind::InferenceService => {
                    self.routing.replace((*kind, key), None);
                }
                Kind::Revision => {
                    self.observed.remove(&key);
                }
                _ => {}
            }
        }
        let reconciled = routes
            .iter()
            .map(|(_, r)| (Kind::Route, r.metadata.namespace(), &r.metadata.name))
            .chain(isvcs.iter().map(|(_, i)| {
                (
                    Kind::InferenceService,
                    i.metadata.namespace(),
                    &i.metadata.name,
                )
            }));
        for (kind, ns, name) in reconciled {
            let owner = (kind, NamespacedName::new(ns, name.clone()));
            let entries = hosts.remove(&owner);
            self.routing.replace(owner, entries);
        }
        for (owner, entries) in hosts {
            self.routing.replace(owner, Some(entries));
        }
        self.observed
            .extend(now_observed.into_iter().map(|r| (revision::key(&r), r)));
        self.routing
            .refresh(&self.observed, &self.runtime, &self.decisions)
    }

    /// Sends the routing snapshot to the data plane when it differs from the last one.
    fn publish(&self) {
        let snap = self.routing.snapshot();
        self.snapshot.send_if_modified(|current| {
            if **current == *snap {
                false
            } else {
                *current = Arc::new(snap.clone());
                true
            }
        });
    }

    /// The replicas of a predictor's latest created revision, for `modelStatus`.
    fn predictor_replicas(
        &self,
        namespace: &str,
        svc: Option<&ServiceStatus>,
    ) -> isvc::PredictorReplicas {
        let Some(latest) = svc.and_then(|s| s.latest_created_revision_name.as_ref()) else {
            return isvc::PredictorReplicas::default();
        };
        let rt = self
            .runtime
            .status(&NamespacedName::new(namespace, latest.clone()));
        isvc::PredictorReplicas {
            ready: rt.ready.len() as u32,
            starting: rt.starting,
            failure: rt.failure.map(|f| f.message),
        }
    }

    /// Replicas a revision should have: the autoscaler's decision while it is routed (or
    /// the newest of its configuration), zero otherwise.
    async fn desired_replicas(
        &mut self,
        key: &NamespacedName,
        rev: &Revision,
        wanted: bool,
        surge: Option<u32>,
    ) -> Result<u32, ReconcileError> {
        if !wanted {
            if self.scaled.remove(key).is_some() {
                self.autoscaler.remove(key.clone()).await;
                self.decisions.remove(key);
                self.board.remove(key);
                self.ready_reported.remove(key);
            }
            return Ok(0);
        }
        let cc = rev
            .spec
            .container_concurrency
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let mut scaling = scaling_from_annotations(&rev.metadata.annotations, cc).unwrap_or_else(|errors| {
            tracing::warn!(revision = %key, "ignoring invalid autoscaling annotations: {errors:?}");
            RevisionScaling { container_concurrency: cc, ..RevisionScaling::default() }
        });
        if let Some(cap) = surge {
            // A canary judged by an SLO-gated rollout may start at most `cap` replicas.
            scaling.max_scale = match scaling.max_scale {
                0 => cap,
                max => max.min(cap),
            };
            scaling.min_scale = scaling.min_scale.min(cap);
            scaling.initial_scale = scaling.initial_scale.min(cap);
        }
        if self.scaled.get(key) != Some(&scaling) {
            // A revision with a stored status ran before this process started: resume at
            // its scale rather than starting over at the initial one.
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
        Ok(self
            .decisions
            .get(key)
            .map_or(scaling.initial_scale.max(scaling.min_scale), |d| {
                d.desired_replicas
            }))
    }

    /// Deletes the oldest revisions of each configuration beyond the history limit, never
    /// one that is routed, the latest created or the latest ready.
    async fn collect_garbage(
        &self,
        configs: &[(Value, Configuration)],
        revisions: &[Revision],
        wanted: &HashSet<NamespacedName>,
        statuses: &HashMap<NamespacedName, ConfigurationStatus>,
    ) -> Result<(), ReconcileError> {
        let by_config = group_by_config(revisions.iter());
        for (_, cfg) in configs {
            let key = NamespacedName::new(cfg.metadata.namespace(), cfg.metadata.name.clone());
            let Some(mine) = by_config.get(&(cfg.metadata.namespace(), cfg.metadata.name.as_str()))
            else {
                continue;
            };
            if mine.len() <= self.config.revision_history {
                continue;
            }
            let status = statuses.get(&key);
            let keep = |r: &Revision| {
                let name = Some(&r.metadata.name);
                wanted.contains(&revision::key(r))
                    || status.and_then(|s| s.latest_created_revision_name.as_ref()) == name
                    || status.and_then(|s| s.latest_ready_revision_name.as_ref()) == name
            };
            let mut idle: Vec<&Revision> = mine.iter().copied().filter(|r| !keep(r)).collect();
            if idle.len() <= self.config.revision_history {
                continue;
            }
            idle.sort_by_key(|r| configuration::revision_generation(r));
            let excess = idle.len() - self.config.revision_history;
            for r in idle.into_iter().take(excess) {
                tracing::info!(revision = %r.metadata.name, "deleting old revision beyond the history limit");
                self.store
                    .record_events(vec![event(
                        Kind::Configuration,
                        cfg.metadata.namespace(),
                        &cfg.metadata.name,
                        "Normal",
                        "Deleted",
                        format!(
                            "Deleted Revision {:?}: beyond the history limit of {}",
                            r.metadata.name, self.config.revision_history
                        ),
                    )])
                    .await?;
                match self
                    .store
                    .delete(Kind::Revision, r.metadata.namespace(), &r.metadata.name)
                    .await
                {
                    Ok(_) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

/// What a pass derived, for writing statuses.
struct Derived<'a> {
    configs: &'a [(Value, Configuration)],
    routes: &'a [(Value, Route)],
    services: &'a [(Value, Service)],
    isvcs: &'a [(Value, InferenceService)],
    components: &'a stages::Components,
    config_status: &'a HashMap<NamespacedName, ConfigurationStatus>,
    route_status: &'a HashMap<NamespacedName, RouteStatus>,
}
