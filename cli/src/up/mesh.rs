//! The mesh pieces `sluice up` wires: printing applied policies, and the admin `/metrics`
//! that merges every hop's metrics, the replicas' included.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use sluice_core::RoutingSnapshot;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::telemetry::Registry;
use sluice_mesh::telemetry::merge::{merge_expositions, scrape_replicas};
use tokio::sync::watch;

/// Prints policy results as `sluice apply` prints others.
pub(crate) fn print_policy_results(results: &[sluice_controller::policies::PolicyApplied]) {
    for r in results {
        println!(
            "{}.security.istio.io/{} {}",
            r.kind.to_ascii_lowercase(),
            r.name,
            r.outcome
        );
        for w in &r.warnings {
            eprintln!("Warning: {}/{}: {w}", r.kind, r.name);
        }
    }
}

/// The admin `/metrics`: this process's registries (the router's, the activator's) plus
/// every ready replica's metrics, fetched over mTLS when the mesh is on.
pub(crate) async fn all_metrics(
    registries: Vec<Registry>,
    snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
    client: Option<OutboundMesh>,
) -> Response {
    let replicas: Vec<_> = snapshot
        .borrow()
        .revisions
        .values()
        .flat_map(|r| r.endpoints.iter().map(|e| e.addr))
        .collect();
    let mut texts: Vec<String> = registries.iter().map(Registry::encode).collect();
    texts.extend(
        scrape_replicas(
            replicas,
            sluice_core::replica::METRICS_PATH,
            client.as_ref(),
        )
        .await,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            sluice_mesh::telemetry::CONTENT_TYPE,
        )],
        merge_expositions(&texts),
    )
        .into_response()
}
