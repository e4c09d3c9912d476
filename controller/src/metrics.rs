//! The `/metrics` of the processes that serve one: their registries (Istio's request
//! metrics of each hop, the activator's `revision_queue_depth`) merged into one Prometheus
//! text exposition, one `# HELP`/`# TYPE` per family. `sluice up`'s admin `/metrics` also
//! fetches every ready replica's ([`with_replicas`]); on Kubernetes each Pod is scraped
//! where it runs, so `sluice router --kube` serves only its own ([`app`]).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use sluice_core::RoutingSnapshot;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::telemetry::Registry;
use sluice_mesh::telemetry::merge::{merge_expositions, scrape_replicas};
use tokio::sync::watch;

/// `GET /metrics` over `registries`.
pub fn app(registries: Vec<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let texts: Vec<String> = registries.iter().map(Registry::encode).collect();
            async move { exposition(&texts) }
        }),
    )
}

/// This process's `registries` plus every ready replica's metrics (as the routes name
/// them), fetched over mTLS with `client` when the mesh is on.
pub async fn with_replicas(
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
    exposition(&texts)
}

/// Expositions merged into one response.
fn exposition(texts: &[String]) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            sluice_mesh::telemetry::CONTENT_TYPE,
        )],
        merge_expositions(texts),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use sluice_mesh::telemetry::{AccessLog, HopTelemetry};

    #[tokio::test]
    async fn one_scrape_shows_both_hops_with_one_header_per_family() {
        let (router, activator) = (Registry::new(), Registry::new());
        for (registry, hop, host) in [
            (&router, "router", "a.example.com"),
            (&activator, "activator", "b.example.com"),
        ] {
            let t = HopTelemetry::new(registry.clone(), hop, AccessLog::Off);
            let req = http::Request::get("/")
                .header("host", host)
                .body(())
                .unwrap();
            let mut ex = t.start(&req);
            // Each hop names its destination (the router and the activator set it so).
            ex.labels.destination_service = host.to_owned().into();
            ex.finish(504, 0);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            tokio::spawn(axum::serve(listener, app(vec![router, activator])).into_future());
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let response = client
            .get(format!("http://{addr}/metrics").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            sluice_mesh::telemetry::CONTENT_TYPE
        );
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        server.abort();
        assert_eq!(
            text.matches("# TYPE istio_requests_total counter").count(),
            1,
            "{text}"
        );
        for host in ["a.example.com", "b.example.com"] {
            assert!(
                text.lines().any(|l| l.starts_with("istio_requests_total{")
                    && l.contains(&format!("destination_service=\"{host}\""))
                    && l.contains("response_code=\"504\"")),
                "{host}: {text}"
            );
        }
    }
}
