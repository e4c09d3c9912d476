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
                    sluice_mesh::telemetry::merge::merge_expositions(&texts),
                )
                    .into_response()
            }
        }),
    )
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
            ex.labels.destination_service = host.to_owned();
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
