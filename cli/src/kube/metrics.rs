//! The `/metrics` of `sluice router --kube`: the router's and its in-process activator's
//! registries (Istio's request metrics from both hops, the activator's
//! `revision_queue_depth`) in one Prometheus text exposition. Replicas are not scraped
//! here: in Kubernetes each Pod is scraped where it runs.

use axum::response::IntoResponse;
use sluice_mesh::telemetry::Registry;

/// `GET /metrics` over `registries`, one `# HELP`/`# TYPE` per family.
pub(super) fn app(registries: Vec<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let texts: Vec<String> = registries.iter().map(Registry::encode).collect();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        sluice_mesh::telemetry::CONTENT_TYPE,
                    )],
                    crate::up::mesh::merge_expositions(&texts),
                )
                    .into_response()
            }
        }),
    )
}
