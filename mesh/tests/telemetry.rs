//! Metrics after a mixed run: an mTLS caller and a plaintext caller reach a PERMISSIVE
//! server over loopback, the server records what its acceptor told it, and the scrape shows
//! Istio's names, labels and buckets, Knative's revision metrics, and nothing leaks between
//! registries.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_mesh::identity::{CaConfig, CertificateAuthority, RotatingSvid, SpiffeId, SvidIssuer};
use sluice_mesh::telemetry::{
    AccessLogEntry, AutoscalerMetrics, AutoscalerSample, IstioMetrics, ModelMetrics, ModelStage,
    Registry, Reporter, RequestLabels, RevisionLabels, RevisionMetrics,
};
use sluice_mesh::tls::{ExpectedServer, MeshAcceptor, MeshConnector, MeshTls, PeerAuthMode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

fn revision() -> RevisionLabels {
    RevisionLabels {
        namespace: "default".into(),
        service: "iris".into(),
        configuration: "iris".into(),
        revision: "iris-00001".into(),
        pod: "iris-00001-1".into(),
        container: "queue".into(),
    }
}

#[tokio::test]
async fn a_mixed_run_is_labelled_by_peer_identity_and_security() {
    let dir = std::env::temp_dir().join(format!("sluice-telemetry-{}", uuid::Uuid::new_v4()));
    let ca = Arc::new(
        CertificateAuthority::load_or_create(&CaConfig::new("cluster.local", &dir)).unwrap(),
    );
    let tls = |sa: &str| {
        MeshTls::new(
            Arc::new(ca.trust_bundle().unwrap()),
            RotatingSvid::fixed(ca.issue(&id(sa), Duration::from_secs(3600)).unwrap()),
        )
    };
    let registry = Registry::new();
    let istio = IstioMetrics::register(&registry);
    let revision_metrics = RevisionMetrics::register(&registry);
    let other_registry = Registry::new();
    let _other = IstioMetrics::register(&other_registry);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MeshAcceptor::new(tls("iris").server_config().unwrap());
    let (istio_server, revision_server) = (istio.clone(), revision_metrics.clone());
    let (log_tx, mut log_rx) = tokio::sync::mpsc::channel::<String>(4);
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let (stream, peer) = acceptor
                .accept(tcp, PeerAuthMode::Permissive)
                .await
                .unwrap();
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            // Plaintext callers are refused by this service's policy: 403.
            let code = if peer.identity.is_some() { 200 } else { 403 };
            let body = format!("{code}\n");
            stream.get_mut().write_all(body.as_bytes()).await.unwrap();
            let labels = RequestLabels {
                source_workload: peer
                    .identity
                    .as_ref()
                    .map_or("unknown".into(), |i| i.service_account().to_owned().into()),
                source_workload_namespace: peer
                    .identity
                    .as_ref()
                    .map_or("unknown".into(), |i| i.namespace().to_owned().into()),
                source_principal: peer
                    .identity
                    .as_ref()
                    .map_or("unknown".into(), |i| i.to_string().into()),
                destination_workload: "iris-00001-deployment".into(),
                destination_workload_namespace: "default".into(),
                destination_service: "iris.default.svc.cluster.local".into(),
                destination_principal: id("iris").to_string().into(),
                destination_revision: "iris-00001".into(),
                response_code: code,
                connection_security_policy: peer.security.label().into(),
                ..RequestLabels::unknown(Reporter::Destination)
            };
            let took = Duration::from_micros(700);
            istio_server.record(&labels, took, line.len() as u64, body.len() as u64);
            revision_server.record(&revision(), code, took);
            let entry = AccessLogEntry {
                start_time: AccessLogEntry::format_time(SystemTime::now()),
                reporter: "queue".into(),
                response_code: code,
                source_principal: labels.source_principal.to_string(),
                connection_security_policy: labels.connection_security_policy.to_string(),
                revision: "iris-00001".into(),
                ..Default::default()
            };
            log_tx.send(entry.to_json_line()).await.unwrap();
        }
    });

    let connector = MeshConnector::new(
        tls("web")
            .client_config(ExpectedServer::Exactly(id("iris")))
            .unwrap(),
    );
    let (stream, _) = connector
        .connect(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"GET /\n").await.unwrap();
    let mut reply = String::new();
    stream.read_line(&mut reply).await.unwrap();
    assert_eq!(reply, "200\n");
    let mut plain = BufReader::new(TcpStream::connect(addr).await.unwrap());
    plain.get_mut().write_all(b"GET /\n").await.unwrap();
    reply.clear();
    plain.read_line(&mut reply).await.unwrap();
    assert_eq!(reply, "403\n");
    server.await.unwrap();

    let text = registry.encode();
    let mtls = "reporter=\"destination\",source_workload=\"web\",source_workload_namespace=\"default\",source_principal=\"spiffe://cluster.local/ns/default/sa/web\",destination_workload=\"iris-00001-deployment\",destination_workload_namespace=\"default\",destination_service=\"iris.default.svc.cluster.local\",destination_principal=\"spiffe://cluster.local/ns/default/sa/iris\",destination_revision=\"iris-00001\",request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",connection_security_policy=\"mutual_tls\"";
    let plaintext = "reporter=\"destination\",source_workload=\"unknown\",source_workload_namespace=\"unknown\",source_principal=\"unknown\",destination_workload=\"iris-00001-deployment\",destination_workload_namespace=\"default\",destination_service=\"iris.default.svc.cluster.local\",destination_principal=\"spiffe://cluster.local/ns/default/sa/iris\",destination_revision=\"iris-00001\",request_protocol=\"http\",response_code=\"403\",grpc_response_status=\"\",connection_security_policy=\"none\"";
    assert!(
        text.contains(&format!("istio_requests_total{{{mtls}}} 1\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("istio_requests_total{{{plaintext}}} 1\n")),
        "{text}"
    );
    // 0.7 ms falls in Istio's 1 ms bucket, not the 0.5 ms one.
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_bucket{{{mtls},le=\"0.5\"}} 0\n"
    )));
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_bucket{{{mtls},le=\"1\"}} 1\n"
    )));
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_bucket{{{mtls},le=\"3600000\"}} 1\n"
    )));
    assert!(text.contains(&format!(
        "istio_request_bytes_bucket{{{mtls},le=\"10\"}} 1\n"
    )));
    assert!(text.contains(&format!("istio_response_bytes_sum{{{plaintext}}} 4\n")));
    assert!(text.contains("# TYPE istio_request_duration_milliseconds histogram\n"));
    let rev = "namespace_name=\"default\",service_name=\"iris\",configuration_name=\"iris\",revision_name=\"iris-00001\",pod_name=\"iris-00001-1\",container_name=\"queue\"";
    assert!(text.contains(&format!(
        "revision_request_count{{{rev},response_code=\"200\",response_code_class=\"2xx\"}} 1\n"
    )));
    assert!(text.contains(&format!(
        "revision_request_count{{{rev},response_code=\"403\",response_code_class=\"4xx\"}} 1\n"
    )));
    assert!(text.contains(&format!("revision_request_latencies_bucket{{{rev},response_code=\"200\",response_code_class=\"2xx\",le=\"5\"}} 1\n")));

    // Registries are injected, not global: the other one saw nothing.
    assert!(!other_registry.encode().contains("istio_requests_total{"));

    let first: serde_json::Value = serde_json::from_str(&log_rx.recv().await.unwrap()).unwrap();
    assert_eq!(first["response_code"], 200);
    assert_eq!(
        first["source_principal"],
        "spiffe://cluster.local/ns/default/sa/web"
    );
    assert_eq!(first["connection_security_policy"], "mutual_tls");
    assert!(first["start_time"].as_str().unwrap().ends_with('Z'));
    let second: serde_json::Value = serde_json::from_str(&log_rx.recv().await.unwrap()).unwrap();
    assert_eq!(second["connection_security_policy"], "none");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn revision_queue_depth_autoscaler_and_model_metrics() {
    let registry = Registry::new();
    let revision_metrics = RevisionMetrics::register(&registry);
    revision_metrics.set_queue_depth(&revision(), 3);
    let autoscaler = AutoscalerMetrics::register(&registry);
    autoscaler.record(
        ["default", "iris", "iris", "iris-00001"],
        AutoscalerSample {
            desired_pods: 4.0,
            actual_pods: 2.0,
            stable_concurrency: 1.5,
            panic_concurrency: 6.25,
            panic_mode: true,
        },
    );
    let models = ModelMetrics::register(&registry);
    models.record("iris", ModelStage::Predict, Duration::from_millis(3));
    let text = registry.encode();
    assert!(text.contains("revision_queue_depth{namespace_name=\"default\",service_name=\"iris\",configuration_name=\"iris\",revision_name=\"iris-00001\",pod_name=\"iris-00001-1\",container_name=\"queue\"} 3\n"), "{text}");
    let scaler = "namespace_name=\"default\",service_name=\"iris\",configuration_name=\"iris\",revision_name=\"iris-00001\"";
    assert!(text.contains(&format!("autoscaler_desired_pods{{{scaler}}} 4\n")));
    assert!(text.contains(&format!(
        "autoscaler_panic_request_concurrency{{{scaler}}} 6.25\n"
    )));
    assert!(text.contains(&format!("autoscaler_panic_mode{{{scaler}}} 1\n")));
    assert!(text.contains("request_predict_seconds_bucket{model_name=\"iris\",le=\"0.005\"} 1\n"));
    assert!(text.contains("request_predict_seconds_count{model_name=\"iris\"} 1\n"));
}
