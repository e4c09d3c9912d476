//! Kubernetes mode's routing snapshot for `sluice router --kube`: built from watched
//! objects (Routes, Services, InferenceServices, Revisions) and the ready endpoints of each
//! revision's EndpointSlices, with the same host entries the controller publishes in local
//! mode: `{route}.{namespace}.{domain}` from the Route's status URL and traffic,
//! `{tag}-{host}` for each tagged target, the InferenceService's host to its top
//! component's traffic, and, before any revision is ready, the newest one (through the
//! activator). The activator is in path for a revision without ready endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use sluice_core::{NamespacedName, RoutingSnapshot, WeightedTarget};
use sluice_crds::Kind;
use sluice_crds::inference_service::InferenceService;
use sluice_crds::revision::Revision;
use sluice_crds::route::Route;
use sluice_crds::service::Service;
use tokio::sync::{broadcast, watch};

use super::{isvc, routing};
use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

/// The kinds the router watches.
pub const ROUTER_KINDS: [Kind; 4] = [
    Kind::Route,
    Kind::Service,
    Kind::InferenceService,
    Kind::Revision,
];

/// The host of a status URL (`http://host:port/…` → `host`), lower-cased.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn decoded<T: serde::de::DeserializeOwned>(objects: &[Value]) -> Vec<T> {
    objects
        .iter()
        .filter_map(|v| T::deserialize(v).ok())
        .collect()
}

/// The snapshot for these objects, with endpoints from `runtime`.
pub fn snapshot(
    routes: &[Value],
    services: &[Value],
    isvcs: &[Value],
    revisions: &[Value],
    runtime: &impl Runtime,
) -> RoutingSnapshot {
    let services: HashMap<(String, String), Service> = decoded::<Service>(services)
        .into_iter()
        .map(|s| {
            (
                (s.metadata.namespace().to_owned(), s.metadata.name.clone()),
                s,
            )
        })
        .collect();
    let mut hosts: Vec<(String, NamespacedName, Vec<WeightedTarget>)> = Vec::new();
    let mut route_targets: HashMap<(String, String), Vec<WeightedTarget>> = HashMap::new();
    for r in decoded::<Route>(routes) {
        let ns = r.metadata.namespace().to_owned();
        let key = NamespacedName::new(ns.clone(), r.metadata.name.clone());
        let Some(status) = &r.status else { continue };
        let Some(host) = status.url.as_deref().and_then(host_of) else {
            continue;
        };
        // The newest revision of the Route's Service, for while nothing is ready yet.
        let latest = r
            .metadata
            .owner_references
            .iter()
            .find(|o| o.kind == Kind::Service.name())
            .and_then(|o| services.get(&(ns.clone(), o.name.clone())))
            .and_then(|s| s.status.as_ref()?.latest_created_revision_name.as_deref());
        let entries = routing::route_host_entries(&key, &host, &status.traffic, latest);
        if let Some((_, _, targets)) = entries.last() {
            route_targets.insert((ns, r.metadata.name.clone()), targets.clone());
        }
        hosts.extend(entries);
    }
    for i in decoded::<InferenceService>(isvcs) {
        let ns = i.metadata.namespace().to_owned();
        let Some(host) = i
            .status
            .as_ref()
            .and_then(|s| s.url.as_deref())
            .and_then(host_of)
        else {
            continue;
        };
        let top = [
            isvc::transformer_name(&i.metadata.name),
            isvc::predictor_name(&i.metadata.name),
        ]
        .into_iter()
        .find_map(|name| route_targets.get(&(ns.clone(), name)));
        if let Some(targets) = top {
            hosts.push((
                host,
                NamespacedName::new(ns, i.metadata.name.clone()),
                targets.clone(),
            ));
        }
    }
    let revisions: HashMap<NamespacedName, Revision> = decoded::<Revision>(revisions)
        .into_iter()
        .map(|r| {
            (
                NamespacedName::new(r.metadata.namespace(), r.metadata.name.clone()),
                r,
            )
        })
        .collect();
    let mut snap = routing::build(hosts.iter(), &revisions, runtime, &HashMap::new());
    for r in snap.revisions.values_mut() {
        r.activator_in_path = r.endpoints.is_empty();
    }
    snap
}

/// Keeps `snapshot_tx` current from the store's watch stream (started for `ROUTER_KINDS`)
/// and the runtime's endpoint changes, until `shutdown` resolves.
pub async fn run<S: Store, R: Runtime>(
    store: S,
    runtime: R,
    snapshot_tx: watch::Sender<Arc<RoutingSnapshot>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut changes = store.watch();
    let mut endpoints = runtime.changes();
    tokio::pin!(shutdown);
    loop {
        match rebuild(&store, &runtime).await {
            Ok(snap) => {
                snapshot_tx.send_if_modified(|current| {
                    if **current == snap {
                        false
                    } else {
                        *current = Arc::new(snap);
                        true
                    }
                });
            }
            Err(e) => tracing::warn!(
                "building the routing snapshot failed: {}",
                sluice_core::error_chain(&e)
            ),
        }
        tokio::select! {
            change = changes.recv() => {
                if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
            _ = endpoints.changed() => {}
            // A failed read is retried.
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            () = &mut shutdown => return,
        }
        // Coalesce what else arrived meanwhile.
        while changes.try_recv().is_ok() {}
        endpoints.borrow_and_update();
    }
}

async fn rebuild<S: Store, R: Runtime>(
    store: &S,
    runtime: &R,
) -> Result<RoutingSnapshot, StoreError> {
    let routes = store.list(Kind::Route, None).await?;
    let services = store.list(Kind::Service, None).await?;
    let isvcs = store.list(Kind::InferenceService, None).await?;
    let revisions = store.list(Kind::Revision, None).await?;
    Ok(snapshot(&routes, &services, &isvcs, &revisions, runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_status_urls() {
        assert_eq!(
            host_of("http://Hello.default.example.com:8080/x").as_deref(),
            Some("hello.default.example.com")
        );
        assert_eq!(
            host_of("http://iris.default.example.com").as_deref(),
            Some("iris.default.example.com")
        );
        assert_eq!(host_of(""), None);
    }
}
