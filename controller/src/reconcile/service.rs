//! Service → its Configuration and Route (same name, owned by it), and the Service's status
//! from theirs.

use sluice_crds::configuration::{Configuration, ConfigurationSpec, ConfigurationStatus};
use sluice_crds::meta::find_condition;
use sluice_crds::revision::SERVICE_LABEL;
use sluice_crds::route::{Route, RouteSpec, RouteStatus};
use sluice_crds::service::{Service, ServiceStatus};
use sluice_crds::{Condition, Kind, ObjectMeta, OwnerReference};

fn owned_meta(svc: &Service) -> ObjectMeta {
    let mut labels = svc.metadata.labels.clone();
    labels.insert(SERVICE_LABEL.into(), svc.metadata.name.clone());
    ObjectMeta {
        name: svc.metadata.name.clone(),
        namespace: Some(svc.metadata.namespace().to_owned()),
        labels,
        annotations: svc.metadata.annotations.clone(),
        owner_references: vec![OwnerReference {
            api_version: Kind::Service.api_version().into(),
            kind: Kind::Service.name().into(),
            name: svc.metadata.name.clone(),
            uid: svc.metadata.uid.clone().unwrap_or_default(),
            controller: true,
        }],
        ..ObjectMeta::default()
    }
}

/// The Service's Configuration: its template. Only a template change bumps its generation
/// (and so stamps a revision); a traffic change does not.
pub fn configuration_for(svc: &Service) -> Configuration {
    Configuration {
        api_version: Kind::Configuration.api_version().into(),
        kind: Kind::Configuration.name().into(),
        metadata: owned_meta(svc),
        spec: ConfigurationSpec {
            template: svc.spec.template.clone(),
            extra: Default::default(),
        },
        status: None,
    }
}

/// The Service's Route: its traffic.
pub fn route_for(svc: &Service) -> Route {
    Route {
        api_version: Kind::Route.api_version().into(),
        kind: Kind::Route.name().into(),
        metadata: owned_meta(svc),
        spec: RouteSpec {
            traffic: svc.spec.traffic.clone(),
            extra: Default::default(),
        },
        status: None,
    }
}

/// The Service's status from its Configuration's and Route's.
pub fn service_status(
    svc: &Service,
    config: &ConfigurationStatus,
    route: &RouteStatus,
) -> ServiceStatus {
    let configurations = find_condition(&config.conditions, "Ready").map_or_else(
        || {
            Condition::unknown(
                "ConfigurationsReady",
                "Deploying",
                "creating the configuration",
            )
        },
        |c| c.renamed("ConfigurationsReady"),
    );
    let routes = find_condition(&route.conditions, "Ready").map_or_else(
        || Condition::unknown("RoutesReady", "Deploying", "creating the route"),
        |c| c.renamed("RoutesReady"),
    );
    let ready = if !configurations.is_true() {
        configurations.renamed("Ready")
    } else if !routes.is_true() {
        routes.renamed("Ready")
    } else {
        Condition::ok("Ready")
    };
    let mut conditions = vec![configurations, ready, routes];
    conditions.extend(find_condition(&route.conditions, "RolloutHealthy").cloned());
    ServiceStatus {
        conditions,
        url: route.url.clone(),
        address: route.address.clone(),
        traffic: route.traffic.clone(),
        latest_ready_revision_name: config.latest_ready_revision_name.clone(),
        latest_created_revision_name: config.latest_created_revision_name.clone(),
        observed_generation: svc.metadata.generation,
    }
}

#[cfg(test)]
mod tests {
    use sluice_crds::service::{RevisionSpec, RevisionTemplate, ServiceSpec, TrafficTarget};

    use super::*;

    fn svc() -> Service {
        Service {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Service".into(),
            metadata: ObjectMeta {
                name: "hello".into(),
                namespace: Some("default".into()),
                generation: Some(3),
                uid: Some("u".into()),
                ..ObjectMeta::default()
            },
            spec: ServiceSpec {
                template: RevisionTemplate {
                    metadata: ObjectMeta::default(),
                    spec: RevisionSpec::default(),
                },
                traffic: vec![TrafficTarget {
                    latest_revision: Some(true),
                    percent: Some(100),
                    ..TrafficTarget::default()
                }],
                extra: Default::default(),
            },
            status: None,
        }
    }

    #[test]
    fn children_are_owned_and_split_template_from_traffic() {
        let s = svc();
        let cfg = configuration_for(&s);
        let route = route_for(&s);
        assert_eq!(cfg.metadata.owner_references[0].uid, "u");
        assert_eq!(cfg.metadata.labels[SERVICE_LABEL], "hello");
        assert_eq!(route.spec.traffic, s.spec.traffic);
        let mut changed = s.clone();
        changed.spec.traffic[0].tag = Some("current".into());
        assert_eq!(configuration_for(&changed).spec, cfg.spec);
    }

    #[test]
    fn status_takes_failures_from_either_child() {
        let config = ConfigurationStatus {
            conditions: vec![Condition::failed("Ready", "RevisionFailed", "boom")],
            latest_created_revision_name: Some("hello-00002".into()),
            latest_ready_revision_name: Some("hello-00001".into()),
            observed_generation: Some(2),
        };
        let route = RouteStatus {
            conditions: vec![Condition::ok("Ready")],
            url: Some("http://hello.default.localhost".into()),
            ..RouteStatus::default()
        };
        let st = service_status(&svc(), &config, &route);
        let ready = find_condition(&st.conditions, "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("RevisionFailed"));
        assert_eq!(
            st.latest_ready_revision_name.as_deref(),
            Some("hello-00001")
        );
        assert_eq!(st.observed_generation, Some(3));
        assert!(
            find_condition(&st.conditions, "RoutesReady")
                .unwrap()
                .is_true()
        );
    }
}
