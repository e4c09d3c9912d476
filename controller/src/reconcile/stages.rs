//! The pure stages of a reconcile pass. Each takes the objects of the pass's scope as the
//! cache holds them and returns plain values: what to write, what to route, what went
//! wrong. The pass (`Controller::pass`) reads, calls them in order and writes; none of them
//! touches the store, the runtime or the autoscaler, so each is testable on its own.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use sluice_core::{NamespacedName, WeightedTarget};
use sluice_crds::Kind;
use sluice_crds::configuration::{Configuration, ConfigurationStatus};
use sluice_crds::inference_service::InferenceService;
use sluice_crds::revision::Revision;
use sluice_crds::route::{Route, RouteStatus};
use sluice_crds::service::Service;

use super::cache::{Cache, Key};
use super::error::ReconcileError;
use super::routing::{HostEntry, Owner, route_host_entries};
use super::support::{by_key, differs, encode, event, group_by_config, key_of};
use super::{configuration, isvc, rollout, route, service, slo_rollout};
use crate::store::Event;

/// A derived object to write: its kind and its JSON.
pub(super) type Derived = (Kind, Value);

/// What the InferenceServices of a pass derive: one entry per InferenceService (in order)
/// in `predictors` and `transformers`, and the component Services to write or delete.
#[derive(Debug, Default)]
pub(super) struct Components {
    /// Each InferenceService's predictor Service, or why it has no runtime.
    pub predictors: Vec<Result<NamespacedName, isvc::NoRuntime>>,
    /// Each InferenceService's transformer Service, when it has one.
    pub transformers: Vec<Option<NamespacedName>>,
    /// Component Services that differ from the stored ones.
    pub changed: Vec<(Kind, Value)>,
    /// Transformer Services whose InferenceService no longer has a transformer:
    /// `(namespace, name)`.
    pub stale_transformers: Vec<(String, String)>,
}

/// InferenceService → predictor and transformer Services.
pub(super) fn components(
    isvcs: &[(Value, InferenceService)],
    runtimes: &isvc::Runtimes,
    hosts: &Hosts,
    cache: &Cache,
) -> Result<Components, ReconcileError> {
    let mut out = Components::default();
    for (_, i) in isvcs {
        let ns = i.metadata.namespace();
        let host = isvc::predictor_host(i, &hosts.domain, hosts.url_port);
        match isvc::transformer_service(i, &host) {
            Some(svc) => {
                out.transformers
                    .push(Some(NamespacedName::new(ns, svc.metadata.name.clone())));
                let value = encode(Kind::Service, &svc.metadata.name, &svc)?;
                if differs(&value, cache.get(Kind::Service, ns, &svc.metadata.name)) {
                    out.changed.push((Kind::Service, value));
                }
            }
            None => {
                out.transformers.push(None);
                // A transformer removed from the spec: its Service goes.
                let name = isvc::transformer_name(&i.metadata.name);
                if cache
                    .get(Kind::Service, ns, &name)
                    .is_some_and(|v| owned_by_isvc(v, &i.metadata.name))
                {
                    out.stale_transformers.push((ns.to_owned(), name));
                }
            }
        }
        match isvc::predictor_service(i, runtimes) {
            Ok(svc) => {
                out.predictors
                    .push(Ok(NamespacedName::new(ns, svc.metadata.name.clone())));
                let value = encode(Kind::Service, &svc.metadata.name, &svc)?;
                if differs(&value, cache.get(Kind::Service, ns, &svc.metadata.name)) {
                    out.changed.push((Kind::Service, value));
                }
            }
            Err(no) => out.predictors.push(Err(no)),
        }
    }
    Ok(out)
}

fn owned_by_isvc(service: &Value, isvc: &str) -> bool {
    service["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| {
            o.iter()
                .any(|r| r["kind"] == "InferenceService" && r["name"] == isvc)
        })
}

/// The component Services of each InferenceService (for widening an incremental scope).
pub(super) fn component_keys(
    isvcs: &[(Value, InferenceService)],
    components: &Components,
) -> Vec<Key> {
    isvcs
        .iter()
        .zip(&components.predictors)
        .zip(&components.transformers)
        .flat_map(|(((_, i), p), t)| {
            let ns = i.metadata.namespace();
            p.as_ref()
                .ok()
                .into_iter()
                .chain(t.as_ref())
                .map(move |k| (Kind::Service, ns.to_owned(), k.name.clone()))
        })
        .collect()
}

/// Service → Configuration and Route: those that differ from the stored ones, as
/// `(configurations, routes)`.
pub(super) fn service_children(
    services: &[(Value, Service)],
    configs: &[(Value, Configuration)],
    routes: &[(Value, Route)],
) -> Result<(Vec<Derived>, Vec<Derived>), ReconcileError> {
    let stored_configs = by_key(configs.iter().map(|(raw, _)| raw));
    let stored_routes = by_key(routes.iter().map(|(raw, _)| raw));
    let (mut new_configs, mut new_routes) = (Vec::new(), Vec::new());
    for (_, svc) in services {
        let cfg = service::configuration_for(svc);
        let route = service::route_for(svc);
        let cfg = encode(Kind::Configuration, &cfg.metadata.name, &cfg)?;
        let route = encode(Kind::Route, &route.metadata.name, &route)?;
        if differs(&cfg, stored_configs.get(&key_of(&cfg)).copied()) {
            new_configs.push((Kind::Configuration, cfg));
        }
        if differs(&route, stored_routes.get(&key_of(&route)).copied()) {
            new_routes.push((Kind::Route, route));
        }
    }
    Ok((new_configs, new_routes))
}

/// Configuration → Revisions: the revisions to create (with their events) and the
/// configurations whose template names a revision that another one owns.
#[derive(Debug, Default)]
pub(super) struct Stamps {
    /// New revisions.
    pub create: Vec<(Kind, Value)>,
    /// `Created` events for them.
    pub events: Vec<Event>,
    /// Configuration → the revision name it cannot take.
    pub errors: HashMap<NamespacedName, String>,
}

/// The revisions each configuration's template calls for that do not exist yet.
pub(super) fn stamp_revisions(
    configs: &[(Value, Configuration)],
    revisions: &[(Value, Revision)],
) -> Result<Stamps, ReconcileError> {
    let mut out = Stamps::default();
    let by_config = group_by_config(revisions.iter().map(|(_, r)| r));
    let by_name: HashMap<(&str, &str), &Revision> = revisions
        .iter()
        .map(|(_, r)| ((r.metadata.namespace(), r.metadata.name.as_str()), r))
        .collect();
    for (_, cfg) in configs {
        let ns = cfg.metadata.namespace();
        let mut candidates: Vec<&Revision> = by_config
            .get(&(ns, cfg.metadata.name.as_str()))
            .cloned()
            .unwrap_or_default();
        let byo = cfg.spec.template.metadata.name.as_str();
        if let Some(r) = by_name.get(&(ns, byo))
            && !candidates.iter().any(|c| c.metadata.name == byo)
        {
            candidates.push(r);
        }
        match configuration::revision_to_create(cfg, &candidates) {
            configuration::Stamp::Exists => {}
            configuration::Stamp::Create(new) => {
                tracing::info!(revision = %new.metadata.name, "creating revision");
                out.events.push(event(
                    Kind::Configuration,
                    ns,
                    &cfg.metadata.name,
                    "Normal",
                    "Created",
                    format!("Created Revision {:?}", new.metadata.name),
                ));
                let value = encode(Kind::Revision, &new.metadata.name, &*new)?;
                out.create.push((Kind::Revision, value));
            }
            configuration::Stamp::NameTaken(name) => {
                out.errors
                    .insert(NamespacedName::new(ns, cfg.metadata.name.clone()), name);
            }
        }
    }
    Ok(out)
}

/// Each configuration's status from its revisions as observed now.
pub(super) fn configuration_statuses(
    configs: &[(Value, Configuration)],
    observed: &[Revision],
    stamp_errors: &HashMap<NamespacedName, String>,
) -> HashMap<NamespacedName, ConfigurationStatus> {
    let by_config = group_by_config(observed.iter());
    configs
        .iter()
        .map(|(_, cfg)| {
            let key = NamespacedName::new(cfg.metadata.namespace(), cfg.metadata.name.clone());
            let mine = by_config
                .get(&(cfg.metadata.namespace(), cfg.metadata.name.as_str()))
                .cloned()
                .unwrap_or_default();
            let status = configuration::configuration_status(
                cfg,
                &mine,
                stamp_errors.get(&key).map(String::as_str),
            );
            (key, status)
        })
        .collect()
}

/// How hosts and URLs are named: `{name}.{namespace}.{domain}`, with the router's port in
/// URLs unless it is 80.
#[derive(Clone, Debug)]
pub(super) struct Hosts {
    pub domain: String,
    pub url_port: Option<u16>,
}

impl Hosts {
    pub fn host(&self, name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}.{}", self.domain).to_ascii_lowercase()
    }

    pub fn url(&self, name: &str, namespace: &str) -> String {
        route::UrlFor::url_for(self, &self.host(name, namespace))
    }
}

impl route::UrlFor for Hosts {
    fn url_for(&self, host: &str) -> String {
        match self.url_port {
            Some(port) if port != 80 => format!("http://{host}:{port}"),
            _ => format!("http://{host}"),
        }
    }
}

/// What routing the pass's objects call for.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// Each Route's status.
    pub statuses: HashMap<NamespacedName, RouteStatus>,
    /// The host entries of each Route and InferenceService.
    pub hosts: BTreeMap<Owner, Vec<HostEntry>>,
    /// The revisions something routes to or may soon (latest created): they keep their
    /// replicas and are never garbage.
    pub wanted: HashSet<NamespacedName>,
    /// Routes in a gradual rollout with when their next step is due, and `None` for those
    /// that are not (or no longer) in one.
    pub rollout_due: Vec<(Key, Option<i64>)>,
    /// Each Route's canary in an SLO-gated rollout with a surge bound, and the bound
    /// (`None` for those without).
    pub surge: Vec<(Key, Option<(NamespacedName, u32)>)>,
    /// What SLO-gated rollouts did in this pass (started, a step passed, promoted, rolled
    /// back).
    pub events: Vec<Event>,
}

/// The event of what a Route's SLO-gated rollout did in this pass, if anything.
fn rollout_event(route: &Route, status: &RouteStatus) -> Option<Event> {
    use sluice_crds::slo_rollout::RolloutPhase;
    let now = status.rollout_analysis.as_ref()?;
    let before = route
        .status
        .as_ref()
        .and_then(|s| s.rollout_analysis.as_ref());
    let same = |b: &&sluice_crds::slo_rollout::RolloutAnalysis| b.canary == now.canary;
    let (type_, reason, message) = match (before.filter(same), now.phase) {
        (None, _) => (
            "Normal",
            "RolloutStarted",
            format!(
                "rolling out {} from {}: steps {:?} %",
                now.canary, now.baseline, now.steps
            ),
        ),
        (Some(b), RolloutPhase::RolledBack) if b.phase != RolloutPhase::RolledBack => {
            ("Warning", "RolledBack", now.message.clone())
        }
        (Some(b), RolloutPhase::Promoted) if b.phase != RolloutPhase::Promoted => {
            ("Normal", "Promoted", now.message.clone())
        }
        (Some(b), RolloutPhase::Progressing) if b.step != now.step => (
            "Normal",
            "StepPassed",
            format!(
                "{} passed the {} % step; now {} %",
                now.canary,
                b.steps.get(b.step as usize).copied().unwrap_or_default(),
                now.canary_percent()
            ),
        ),
        _ => return None,
    };
    Some(event(
        Kind::Route,
        route.metadata.namespace(),
        &route.metadata.name,
        type_,
        reason,
        message,
    ))
}

/// A Route's SLO-gated rollout's schedule: when it wants its next look, and its canary with
/// its surge bound while it is being judged (the annotations parsed once).
fn slo_schedule(
    route: &Route,
    status: &RouteStatus,
    now_ms: i64,
) -> (Option<i64>, Option<(NamespacedName, u32)>) {
    let (Some(config), Some(a)) = (
        sluice_crds::slo_rollout::slo_rollout(&route.metadata.annotations)
            .ok()
            .flatten(),
        status.rollout_analysis.as_ref(),
    ) else {
        return (None, None);
    };
    let surge = (a.phase == sluice_crds::slo_rollout::RolloutPhase::Progressing)
        .then_some(config.max_surge)
        .flatten()
        .map(|n| {
            (
                NamespacedName::new(route.metadata.namespace(), a.canary.clone()),
                n,
            )
        });
    (slo_rollout::next_check_ms(a, &config, now_ms), surge)
}

/// Routes → their statuses and host entries; InferenceServices → their top-level host
/// (to the transformer when there is one, else the predictor).
pub(super) fn routing(
    routes: &[(Value, Route)],
    isvcs: &[(Value, InferenceService)],
    components: &Components,
    config_status: &HashMap<NamespacedName, ConfigurationStatus>,
    observed: &[Revision],
    hosts: &Hosts,
    (now_ms, signals): (i64, Option<&slo_rollout::Signals>),
) -> Routing {
    let mut by_ns_configs: HashMap<&str, HashMap<String, ConfigurationStatus>> = HashMap::new();
    for (key, st) in config_status {
        by_ns_configs
            .entry(key.namespace.as_str())
            .or_default()
            .insert(key.name.clone(), st.clone());
    }
    let mut by_ns_revs: HashMap<&str, HashMap<String, &Revision>> = HashMap::new();
    for r in observed {
        by_ns_revs
            .entry(r.metadata.namespace())
            .or_default()
            .insert(r.metadata.name.clone(), r);
    }
    let (empty_cfgs, empty_revs) = (HashMap::new(), HashMap::new());
    let mut out = Routing::default();
    let mut route_targets: HashMap<NamespacedName, Vec<WeightedTarget>> = HashMap::new();
    for (_, route) in routes {
        let ns = route.metadata.namespace();
        let key = NamespacedName::new(ns, route.metadata.name.clone());
        let owned_by_service = route
            .metadata
            .owner_references
            .iter()
            .any(|o| o.kind == Kind::Service.name());
        let inputs = route::RouteInputs {
            configurations: by_ns_configs.get(ns).unwrap_or(&empty_cfgs),
            revisions: by_ns_revs.get(ns).unwrap_or(&empty_revs),
            default_configuration: owned_by_service.then_some(route.metadata.name.as_str()),
            signals,
        };
        let host = hosts.host(&route.metadata.name, ns);
        let status = route::route_status(route, &inputs, &host, hosts, now_ms);
        let (slo_check, surge) = slo_schedule(route, &status, now_ms);
        let next_step = status
            .rollout
            .iter()
            .flat_map(|r| &r.configurations)
            .filter_map(rollout::next_step_ms)
            .chain(slo_check)
            .min();
        out.surge.push((
            (Kind::Route, ns.to_owned(), route.metadata.name.clone()),
            surge,
        ));
        out.events.extend(rollout_event(route, &status));
        out.rollout_due.push((
            (Kind::Route, ns.to_owned(), route.metadata.name.clone()),
            next_step,
        ));
        // Status traffic stays empty before any revision is ready, as in Knative; the
        // host still routes to the newest one (see `route_host_entries`).
        let latest = inputs
            .default_configuration
            .and_then(|c| inputs.configurations.get(c))
            .and_then(|c| c.latest_created_revision_name.as_deref());
        let entries = route_host_entries(&key, &host, &status.traffic, latest);
        out.wanted.extend(
            entries
                .iter()
                .flat_map(|(_, _, t)| t)
                .map(|t| t.revision.clone()),
        );
        if let Some((_, _, targets)) = entries.last() {
            route_targets.insert(key.clone(), targets.clone());
        }
        out.hosts.insert((Kind::Route, key.clone()), entries);
        out.statuses.insert(key, status);
    }
    for (key, status) in config_status {
        if let Some(latest) = &status.latest_created_revision_name {
            out.wanted
                .insert(NamespacedName::new(key.namespace.clone(), latest.clone()));
        }
    }
    for (((_, i), predictor), transformer) in isvcs
        .iter()
        .zip(&components.predictors)
        .zip(&components.transformers)
    {
        let top = match transformer {
            Some(t) => Some(t),
            None => predictor.as_ref().ok(),
        };
        if let Some(targets) = top.and_then(|p| route_targets.get(p)) {
            let key = NamespacedName::new(i.metadata.namespace(), i.metadata.name.clone());
            let host = hosts.host(&i.metadata.name, i.metadata.namespace());
            out.hosts.insert(
                (Kind::InferenceService, key.clone()),
                vec![(host, key, targets.clone())],
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decoded<T: serde::de::DeserializeOwned>(derived: &[Derived]) -> Vec<(Value, T)> {
        derived
            .iter()
            .map(|(_, v)| (v.clone(), serde_json::from_value(v.clone()).unwrap()))
            .collect()
    }

    fn hosts() -> Hosts {
        Hosts {
            domain: "example.com".into(),
            url_port: Some(8080),
        }
    }

    fn service() -> (Value, Service) {
        let raw = json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "uid": "u-1", "generation": 1},
            "spec": {"template": {"spec": {"containers": [{"image": "hello", "command": ["python3"]}]}}}
        });
        (raw.clone(), serde_json::from_value(raw).unwrap())
    }

    /// Service → Configuration + Route → a first Revision → a host that routes to it before
    /// it is ready: the stages of a pass chained by hand, with no store and no runtime.
    #[test]
    fn a_new_service_derives_stamps_and_routes_to_its_first_revision() {
        let services = [service()];
        let (configs, routes) = service_children(&services, &[], &[]).unwrap();
        assert_eq!((configs.len(), routes.len()), (1, 1));
        let (configs, routes) = (
            decoded::<Configuration>(&configs),
            decoded::<Route>(&routes),
        );
        // Derived again from what is now stored: nothing differs.
        let again = service_children(&services, &configs, &routes).unwrap();
        assert_eq!((again.0.len(), again.1.len()), (0, 0));

        let stamps = stamp_revisions(&configs, &[]).unwrap();
        assert_eq!(stamps.create.len(), 1);
        assert_eq!(stamps.events.len(), 1);
        assert!(stamps.errors.is_empty());
        let revisions = decoded::<Revision>(&stamps.create);
        assert_eq!(revisions[0].1.metadata.name, "hello-00001");
        // With the revision stored, the same template stamps nothing.
        assert!(
            stamp_revisions(&configs, &revisions)
                .unwrap()
                .create
                .is_empty()
        );

        let observed: Vec<Revision> = revisions.iter().map(|(_, r)| r.clone()).collect();
        let config_status = configuration_statuses(&configs, &observed, &HashMap::new());
        let hello = NamespacedName::new("default", "hello");
        assert_eq!(
            config_status[&hello]
                .latest_created_revision_name
                .as_deref(),
            Some("hello-00001")
        );
        let routing = routing(
            &routes,
            &[],
            &Components::default(),
            &config_status,
            &observed,
            &hosts(),
            (0, None),
        );
        let entries = &routing.hosts[&(Kind::Route, hello.clone())];
        assert_eq!(entries.len(), 1);
        let (host, owner, targets) = &entries[0];
        assert_eq!(host, "hello.default.example.com");
        assert_eq!(owner, &hello);
        let first = NamespacedName::new("default", "hello-00001");
        assert_eq!(
            targets,
            &vec![WeightedTarget {
                revision: first.clone(),
                percent: 100
            }]
        );
        assert!(routing.wanted.contains(&first));
        assert_eq!(
            routing.statuses[&hello].url.as_deref(),
            Some("http://hello.default.example.com:8080")
        );
    }

    #[test]
    fn a_template_naming_another_configurations_revision_is_a_stamp_error() {
        let services = [service()];
        let (configs, _) = service_children(&services, &[], &[]).unwrap();
        let mut configs = decoded::<Configuration>(&configs);
        let stamps = stamp_revisions(&configs, &[]).unwrap();
        let mut revisions = decoded::<Revision>(&stamps.create);
        // Another configuration's revision, under the name this template asks for.
        revisions[0]
            .1
            .metadata
            .labels
            .insert("serving.knative.dev/configuration".into(), "other".into());
        revisions[0].1.metadata.owner_references.clear();
        configs[0].1.spec.template.metadata.name = "hello-00001".into();
        let stamps = stamp_revisions(&configs, &revisions).unwrap();
        assert!(stamps.create.is_empty());
        assert_eq!(
            stamps.errors[&NamespacedName::new("default", "hello")],
            "hello-00001"
        );
    }
}
