//! The Kubernetes tier, on a real control plane (kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler and kwok's simulated nodes, started by
//! `scripts/kube-cluster`), with the real `sluice` binary: `sluice controller --kube`
//! reconciles the samples into Deployments whose Pods kwok runs, objects reach Ready, a
//! canary splits traffic, scale decisions land in `spec.replicas`, deletion cascades, a
//! standby takes over from a killed leader without duplicate revisions, and a cluster
//! without the CRDs is told so. Run by `scripts/kube-test` (ignored by plain `cargo test`).

// These tests drive other processes and a real API server in real time: polling with
// backoff under a deadline, never sleeping to synchronize.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod kube_support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;
use sluice_controller::reconcile::kube_routing;
use sluice_controller::runtime::KubeRuntime;
use sluice_controller::store::KubeStore;
use sluice_core::{NamespacedName, RoutingSnapshot};
use sluice_crds::Kind;
use std::future::IntoFuture;
use std::sync::Arc;
use tokio::sync::watch;

use kube_support::{Cluster, api, condition, eventually, get, install_crds, ready, repo};

fn sample(name: &str) -> String {
    repo().join("samples").join(name).display().to_string()
}

/// Writes `text` as a manifest file in the cluster's directory.
fn manifest(cluster: &Cluster, name: &str, text: &str) -> String {
    let path = cluster.dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn hello(name: &str, target: &str, min_scale: Option<u32>) -> String {
    let annotations = min_scale.map_or(String::new(), |m| {
        format!("      annotations:\n        autoscaling.knative.dev/min-scale: \"{m}\"\n")
    });
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  template:\n{}    spec:\n      containers:\n        - image: sluice:test\n          command: [\"sluice\"]\n          args: [\"hello\"]\n          env:\n            - name: TARGET\n              value: \"{target}\"\n",
        if annotations.is_empty() {
            String::new()
        } else {
            format!("    metadata:\n{annotations}")
        }
    )
}

fn iris(storage: &str, canary: Option<u32>) -> String {
    let canary = canary.map_or(String::new(), |p| {
        format!("    canaryTrafficPercent: {p}\n")
    });
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: iris\n  namespace: default\n\
         spec:\n  predictor:\n{canary}    model:\n      modelFormat:\n        name: sluice-mlp\n      storageUri: {storage}\n"
    )
}

async fn deployment(client: &kube::Client, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

/// Ready Pods of a revision on kwok's nodes.
async fn ready_pods(client: &kube::Client, revision: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods
        .list(&ListParams::default().labels(&format!("serving.knative.dev/revision={revision}")))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|p| {
            let on_node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n.starts_with("kwok-node"));
            let st = p.status.as_ref();
            let ready = st
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let ip = st.and_then(|s| s.pod_ip.as_ref()).is_some();
            on_node && ready && ip
        })
        .count()
}

/// (revision, percent, tag) of the predictor's traffic in an InferenceService's status.
fn predictor_traffic(isvc: &Value) -> Vec<(String, i64, String)> {
    isvc["status"]["components"]["predictor"]["traffic"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t["revisionName"].as_str().unwrap_or_default().to_owned(),
                        t["percent"].as_i64().unwrap_or(-1),
                        t["tag"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn samples_run_on_kubernetes_through_their_whole_life() {
    let cluster = Cluster::start("samples");
    let client = cluster.client().await;
    install_crds(&client).await;
    let controller = cluster.controller("solo");

    // `sluice apply --kube` validates and applies the samples as `sluice apply` does. The
    // Iris sample's storageUri is a folder next to it, which no Pod can read: on Kubernetes
    // its model is served over http:// (what scripts/kube-nodes-test does on a real node;
    // kwok runs nothing, so the URL is data only here).
    let iris_text = std::fs::read_to_string(sample("iris.yaml"))
        .unwrap()
        .replace(
            "storageUri: ./iris/model",
            "storageUri: http://models.sluice-test.invalid/iris/",
        );
    assert!(iris_text.contains("http://models.sluice-test.invalid/iris/"));
    let iris_file = manifest(&cluster, "iris.yaml", &iris_text);
    let (ok, out, err) = cluster.sluice(&[
        "apply",
        "--kube",
        "-f",
        &sample("hello.yaml"),
        "-f",
        &iris_file,
    ]);
    assert!(ok, "apply failed: {out}{err}");
    assert!(
        out.contains("service.serving.knative.dev/hello created"),
        "{out}"
    );
    assert!(
        out.contains("inferenceservice.serving.kserve.io/iris created"),
        "{out}"
    );

    // The controller creates a Deployment per revision, owned by its Revision.
    for rev in ["hello-00001", "iris-predictor-00001"] {
        let d = eventually(&format!("Deployment {rev}"), || deployment(&client, rev)).await;
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Revision", rev)
        );
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(c.image.as_deref(), Some("sluice:test"));
        let command = c.command.clone().unwrap();
        assert_eq!(command[0], "sluice");
        if rev.starts_with("hello") {
            assert_eq!(command[1], "queue", "{command:?}");
            assert!(
                command.ends_with(&["sluice".to_owned(), "hello".to_owned()]),
                "{command:?}"
            );
        } else {
            assert_eq!(command[1], "model-server", "{command:?}");
            assert!(
                command
                    .windows(2)
                    .any(|w| w == ["--storage-uri", "http://models.sluice-test.invalid/iris/"]),
                "{command:?}"
            );
        }
        // Pods become Running/Ready on kwok's nodes.
        eventually(&format!("a ready Pod of {rev}"), || async {
            (ready_pods(&client, rev).await >= 1).then_some(())
        })
        .await;
    }

    // Revision, Service and InferenceService reach Ready=True.
    ready(&api(&client, Kind::Revision), "Revision", "hello-00001").await;
    let svc = ready(&api(&client, Kind::Service), "Service", "hello").await;
    assert_eq!(svc["status"]["latestReadyRevisionName"], "hello-00001");
    let isvc = ready(
        &api(&client, Kind::InferenceService),
        "InferenceService",
        "iris",
    )
    .await;
    assert!(
        isvc["status"]["url"]
            .as_str()
            .unwrap()
            .contains("iris.default."),
        "{isvc}"
    );

    // The router's snapshot, built from watched objects as `sluice router --kube` builds it
    // (no request is sent: kwok's Pod IPs are data only).
    let pod_ip = eventually("the hello Pod's IP", || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let list = pods
            .list(&ListParams::default().labels("serving.knative.dev/revision=hello-00001"))
            .await
            .ok()?;
        list.items.into_iter().find_map(|p| p.status?.pod_ip)
    })
    .await;
    let store = KubeStore::new(client.clone());
    store.start_watching_kinds(&kube_routing::ROUTER_KINDS);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(RoutingSnapshot::default()));
    let routing = tokio::spawn(kube_routing::run(
        store,
        KubeRuntime::endpoints_only(client.clone()),
        snapshot_tx,
        std::future::pending(),
    ));
    let hello_key = NamespacedName::new("default", "hello-00001");
    let snap = eventually("the router's snapshot with hello's endpoint", || {
        let snap = snapshot_rx.borrow().clone();
        let key = hello_key.clone();
        async move {
            let ready = snap.revisions.get(&key)?.endpoints.len() == 1
                && snap.hosts.contains_key("iris.default.example.com");
            ready.then_some(snap)
        }
    })
    .await;
    let hello_route = &snap.hosts["hello.default.example.com"];
    assert_eq!(hello_route.targets[0].revision, hello_key);
    assert_eq!(hello_route.targets[0].percent, 100);
    let r = &snap.revisions[&hello_key];
    assert_eq!(r.endpoints[0].addr.to_string(), format!("{pod_ip}:8012"));
    assert!(!r.activator_in_path);
    assert_eq!(r.container_concurrency, 10);
    assert_eq!(
        snap.hosts["iris.default.example.com"].targets[0]
            .revision
            .name,
        "iris-predictor-00001"
    );
    routing.abort();

    // `get` and `describe` read the same objects.
    let (ok, out, err) = cluster.sluice(&["get", "--kube", "isvc", "iris", "-o", "json"]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert!(condition(&got, "Ready"), "{got}");
    let (ok, out, err) = cluster.sluice(&["describe", "--kube", "ksvc", "hello"]);
    assert!(ok, "{err}");
    assert!(out.contains("hello-00001"), "{out}");

    // A canary: v2 at 20% beside the rolled-out v1.
    let v2 = manifest(
        &cluster,
        "iris-v2.yaml",
        &iris("http://models.sluice-test.invalid/iris-v2/", Some(20)),
    );
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &v2]);
    assert!(ok, "{out}{err}");
    let isvc_api = api(&client, Kind::InferenceService);
    let traffic = eventually(
        "the canary split in the InferenceService's status",
        || async {
            let v = get(&isvc_api, "iris").await?;
            let t = predictor_traffic(&v);
            (t.len() == 2
                && t.iter()
                    .any(|(r, p, _)| r == "iris-predictor-00002" && *p == 20))
            .then_some(t)
        },
    )
    .await;
    // KServe's split: the latest revision 20 %, the rolled-out one 80 % under `prev`.
    assert_eq!(
        traffic,
        [
            ("iris-predictor-00002".to_owned(), 20, String::new()),
            ("iris-predictor-00001".to_owned(), 80, "prev".to_owned()),
        ]
    );

    // A scale decision lands in spec.replicas: a new revision with min-scale 2 gets two
    // Pods, and the revision it replaces (no longer routed) goes to zero.
    let scaled = manifest(&cluster, "hello-v2.yaml", &hello("hello", "v2", Some(2)));
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &scaled]);
    assert!(ok, "{out}{err}");
    eventually("hello-00002 at 2 replicas with 2 ready Pods", || async {
        let d = deployment(&client, "hello-00002").await?;
        (d.spec?.replicas == Some(2) && ready_pods(&client, "hello-00002").await == 2).then_some(())
    })
    .await;
    let svc = eventually("hello routed to hello-00002", || async {
        let v = get(&api(&client, Kind::Service), "hello").await?;
        (v["status"]["latestReadyRevisionName"] == "hello-00002" && condition(&v, "Ready"))
            .then_some(v)
    })
    .await;
    assert_eq!(svc["status"]["traffic"][0]["percent"], 100);
    eventually("hello-00001 scaled to zero", || async {
        let d = deployment(&client, "hello-00001").await?;
        (d.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    let rev = get(&api(&client, Kind::Revision), "hello-00002")
        .await
        .unwrap();
    assert_eq!(rev["status"]["desiredReplicas"], 2, "{rev}");

    // Deleting the InferenceService removes everything it owned (garbage collector).
    let (ok, out, err) = cluster.sluice(&["delete", "--kube", "isvc", "iris"]);
    assert!(ok, "{out}{err}");
    eventually("everything iris owned is gone", || async {
        let svc = get(&api(&client, Kind::Service), "iris-predictor").await;
        let cfg = get(&api(&client, Kind::Configuration), "iris-predictor").await;
        let revs = api(&client, Kind::Revision)
            .list(&ListParams::default().labels("serving.knative.dev/configuration=iris-predictor"))
            .await
            .ok()?;
        let d1 = deployment(&client, "iris-predictor-00001").await;
        let d2 = deployment(&client, "iris-predictor-00002").await;
        (svc.is_none() && cfg.is_none() && revs.items.is_empty() && d1.is_none() && d2.is_none())
            .then_some(())
    })
    .await;
    // What it did not own stays.
    assert!(get(&api(&client, Kind::Service), "hello").await.is_some());
    assert!(
        controller.log().contains("became the leader"),
        "{}",
        controller.log()
    );
}

/// A `sluice router --kube` on loopback for the default namespace, posting to `autoscaler`
/// over mTLS, its mesh identity from the controller's CA with a token of its own
/// ServiceAccount (created here), plus `extra` flags; and the address it listens on.
async fn mesh_router(
    cluster: &Cluster,
    client: &kube::Client,
    controller: &kube_support::ControllerProc,
    autoscaler: &str,
    extra: &[&str],
) -> (kube_support::ControllerProc, std::net::SocketAddr) {
    let ca = controller.mesh_ca().await;
    cluster.kubectl(&["create", "serviceaccount", "sluice-router", "-n", "default"]);
    let token = cluster.token_file(
        "default",
        "sluice-router",
        Some("sluice-ca"),
        "router.token",
    );
    let root = root_file(cluster, client, "default").await;
    let (token, root) = (token.display().to_string(), root.display().to_string());
    let mut args = vec![
        "router",
        "--kube",
        "--listen",
        "127.0.0.1:0",
        "--autoscaler",
        autoscaler,
        "--mesh-ca-addr",
        &ca,
        "--mesh-token-file",
        &token,
        "--mesh-root-file",
        &root,
    ];
    args.extend_from_slice(extra);
    let router = cluster.spawn("router", &args);
    let addr = router
        .printed("sluice: router listening on http://")
        .await
        .parse()
        .unwrap();
    (router, addr)
}

/// A raw HTTP/1.1 request for `host` to the router at `addr` (loopback), over and over while
/// the router answers (it has no route yet, or gave up waiting); a request the activator
/// holds stays open. Aborted by the caller.
async fn keep_requesting(addr: std::net::SocketAddr, host: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    assert!(addr.ip().is_loopback(), "{addr}");
    loop {
        if let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await {
            let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
            if conn.write_all(request.as_bytes()).await.is_ok() {
                let mut answer = Vec::new();
                let _ = conn.read_to_end(&mut answer).await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An OTLP/HTTP collector on loopback (`POST /v1/traces`, JSON): its endpoint, and every
/// span exported to it on the channel.
async fn collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        for span in scope["spans"].as_array().into_iter().flatten() {
                            let _ = tx.send(span.clone());
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app).into_future());
    (endpoint, rx)
}

/// The body of a plain `GET url` (loopback) when it answers 200.
async fn http_get(url: &str) -> Option<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.get(url.parse().ok()?).await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// A solo controller with its stats endpoint on loopback, and the autoscaler's base URL it
/// printed. The API server refuses loopback endpoints; the advertised address is a
/// documentation address (RFC 5737), data only here, as kwok's Pod IPs are: nothing dials it.
async fn controller_with_stats(cluster: &Cluster) -> (kube_support::ControllerProc, String) {
    let controller = cluster.controller_with(
        "solo",
        &cluster.kubeconfig,
        &[
            "--stats-listen",
            "127.0.0.1:0",
            "--advertise-address",
            "192.0.2.10",
        ],
    );
    let stats = controller
        .printed("sluice: controller stats endpoint on ")
        .await;
    let autoscaler = stats.strip_suffix("/v1/stats").unwrap().to_owned();
    (controller, autoscaler)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn a_request_through_the_router_scales_a_revision_from_zero() {
    let cluster = Cluster::start("fromzero");
    let client = cluster.client().await;
    install_crds(&client).await;
    // kwok's Pod IPs are data only and must never be dialled: with both nodes cordoned the
    // replica the scale-up asks for stays Pending (no IP, no ready endpoint), so the
    // activator holds the request and never forwards it.
    cluster.kubectl(&["cordon", "kwok-node-0", "kwok-node-1"]);
    let (controller, autoscaler) = controller_with_stats(&cluster).await;
    // With the mesh on (the default), the stat stream is mutual TLS.
    assert!(autoscaler.starts_with("https://127.0.0.1:"), "{autoscaler}");

    // A revision that starts at zero. `initial-scale: 0` is refused by `sluice apply` unless
    // the cluster allows it (Knative's webhook rule), so it is applied as cluster-admin,
    // with the traffic block `sluice apply` would have defaulted. Its requests time out
    // after 3 s (the activator holds them meanwhile), so every hop finishes some and
    // records them.
    let text = hello("hello", "zero", Some(0))
        .replace(
            "autoscaling.knative.dev/min-scale: \"0\"\n",
            "autoscaling.knative.dev/min-scale: \"0\"\n        autoscaling.knative.dev/initial-scale: \"0\"\n",
        )
        .replace(
            "    spec:\n      containers:",
            "    spec:\n      timeoutSeconds: 3\n      containers:",
        )
        + "  traffic:\n    - latestRevision: true\n      percent: 100\n";
    assert!(
        text.contains("initial-scale") && text.contains("timeoutSeconds"),
        "{text}"
    );
    cluster.kubectl(&["apply", "-f", &manifest(&cluster, "hello-zero.yaml", &text)]);
    ready(&api(&client, Kind::Service), "Service", "hello").await;
    let d = deployment(&client, "hello-00001").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(0));

    // The leader pointed the autoscaler's selector-less Service at itself.
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    let slice = eventually("the sluice-autoscaler EndpointSlice", || async {
        slices.get_opt("sluice-autoscaler").await.ok().flatten()
    })
    .await;
    let port: i32 = autoscaler.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(slice.endpoints[0].addresses, ["192.0.2.10"]);
    assert_eq!(slice.ports.unwrap()[0].port, Some(port));
    assert_eq!(
        slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
        "sluice-autoscaler"
    );

    // The router (activator in-process) on loopback, posting its stats to the leader over
    // mTLS; its mesh identity from the controller's CA, with a token of its ServiceAccount.
    let (otlp, mut spans) = collector().await;
    let (mut router, addr) = mesh_router(
        &cluster,
        &client,
        &controller,
        &autoscaler,
        &[
            "--access-log",
            "--metrics-listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &otlp,
        ],
    )
    .await;
    assert_eq!(
        router.printed("sluice: router mesh identity ").await,
        "spiffe://cluster.local/ns/default/sa/sluice-router"
    );
    let metrics = router.printed("sluice: router metrics on ").await;
    assert!(metrics.starts_with("http://127.0.0.1:"), "{metrics}");
    let requests = tokio::spawn(keep_requesting(addr, "hello.default.example.com"));
    eventually("hello-00001 scaled from 0 to 1 by the request", || async {
        let d = deployment(&client, "hello-00001").await?;
        (d.spec?.replicas == Some(1)).then_some(())
    })
    .await;

    // Telemetry from both hops of the router's Pod: the router's own requests (from the
    // ingress) and the activator's (to hello-00001, over mTLS), answered 504 when the held
    // request timed out, and the activator's queue depth.
    let text = eventually("both hops' requests on the router's /metrics", || async {
        let text = http_get(&metrics).await?;
        let has = |needles: &[&str]| {
            text.lines().any(|l| {
                l.starts_with("istio_requests_total{") && needles.iter().all(|n| l.contains(n))
            })
        };
        (has(&[
            r#"source_workload="ingress""#,
            r#"destination_service="hello.default.example.com""#,
        ]) && has(&[
            r#"destination_revision="hello-00001""#,
            r#"connection_security_policy="mutual_tls""#,
        ]))
        .then_some(text)
    })
    .await;
    assert!(
        text.lines().any(|l| l.starts_with("revision_queue_depth{")
            && l.contains(r#"revision_name="hello-00001""#)
            && l.contains(r#"pod_name="activator""#)),
        "{text}"
    );
    for family in [
        "istio_requests_total",
        "istio_request_duration_milliseconds",
    ] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "one header per family: {text}"
        );
    }
    // One access-log line per request and hop.
    let log = router.log();
    for reporter in ["router", "activator"] {
        assert!(
            log.lines().any(|l| l.contains("sluice::access")
                && l.contains(&format!(r#""reporter":"{reporter}""#))
                && l.contains("hello.default.example.com")),
            "no access-log line of the {reporter}: {log}"
        );
    }
    // And one span per request and hop: the activator's is the router's child.
    let mut seen: Vec<Value> = Vec::new();
    let (router_span, activator_span) =
        eventually("the router's and the activator's spans", || {
            while let Ok(span) = spans.try_recv() {
                seen.push(span);
            }
            let found = seen.iter().find_map(|a| {
                if a["name"] != "activator GET" {
                    return None;
                }
                let parent = seen.iter().find(|r| {
                    r["name"] == "router GET"
                        && r["traceId"] == a["traceId"]
                        && r["spanId"] == a["parentSpanId"]
                })?;
                Some((parent.clone(), a.clone()))
            });
            async move { found }
        })
        .await;
    eprintln!("router span {router_span}\nactivator span {activator_span}");
    router.kill();
    requests.abort();
    // The replica never ran, so nothing could have been dialled.
    assert_eq!(ready_pods(&client, "hello-00001").await, 0);
    eventually("hello-00001's status wants 1 replica", || async {
        let rev = get(&api(&client, Kind::Revision), "hello-00001").await?;
        (rev["status"]["desiredReplicas"] == 1).then_some(())
    })
    .await;
    assert!(
        router.log().contains("stats posted"),
        "the router's log: {}",
        router.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn a_crash_looping_replica_fails_its_revision_with_the_reason() {
    let cluster = Cluster::start("crashloop");
    let client = cluster.client().await;
    install_crds(&client).await;
    let _controller = cluster.controller("solo");
    // The tier's kwok stage (scripts/kube/kwok-test-stages.yaml) gives a Pod with this env
    // var the kubelet's status of a container that keeps exiting.
    let text = hello("crashy", "v1", None)
        + "            - name: SLUICE_KWOK_SIMULATE\n              value: CrashLoopBackOff\n";
    let (ok, out, err) = cluster.sluice(&[
        "apply",
        "--kube",
        "-f",
        &manifest(&cluster, "crashy.yaml", &text),
    ]);
    assert!(ok, "{out}{err}");
    let ready = eventually("crashy-00001 Ready=False from its Pod's status", || async {
        let rev = get(&api(&client, Kind::Revision), "crashy-00001").await?;
        rev["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready" && c["status"] == "False")
            .cloned()
    })
    .await;
    assert_eq!(ready["reason"], "CrashLoopBackOff", "{ready}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("container \"sluice\" is waiting: CrashLoopBackOff")
            && message.contains("its last run exited with code 1 (Error) after 5 restarts"),
        "{message}"
    );
    let svc = get(&api(&client, Kind::Service), "crashy").await.unwrap();
    assert!(!condition(&svc, "Ready"), "{svc}");
    assert_eq!(ready_pods(&client, "crashy-00001").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn a_standby_takes_over_from_a_killed_leader_without_duplicate_revisions() {
    let cluster = Cluster::start("failover");
    let client = cluster.client().await;
    install_crds(&client).await;
    let mut a = cluster.controller("ctl-a");
    let mut b = cluster.controller("ctl-b");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    let leader = eventually("a leader", || async {
        let l = leases.get_opt("sluice-controller").await.ok()??;
        Some(holder(l)).filter(|h| !h.is_empty())
    })
    .await;
    // Only the leader reconciles: the standby says it stands by.
    let (active, standby, standby_name) = if leader == "ctl-a" {
        (&mut a, &mut b, "ctl-b")
    } else {
        (&mut b, &mut a, "ctl-a")
    };
    eventually("the standby standing by", || async {
        standby.log().contains("standing by").then_some(())
    })
    .await;

    const N: usize = 8;
    let v1: String = (0..N)
        .map(|i| hello(&format!("svc-{i}"), "v1", None) + "---\n")
        .collect();
    let (ok, out, err) =
        cluster.sluice(&["apply", "--kube", "-f", &manifest(&cluster, "v1.yaml", &v1)]);
    assert!(ok, "{out}{err}");
    for i in 0..N {
        ready(&api(&client, Kind::Service), "Service", &format!("svc-{i}")).await;
    }

    // v2 of every service; the leader is killed as soon as it has started on them.
    let v2: String = (0..N)
        .map(|i| hello(&format!("svc-{i}"), "v2", None) + "---\n")
        .collect();
    let (ok, out, err) =
        cluster.sluice(&["apply", "--kube", "-f", &manifest(&cluster, "v2.yaml", &v2)]);
    assert!(ok, "{out}{err}");
    let revisions = api(&client, Kind::Revision);
    eventually("the leader creating a second revision", || async {
        let list = revisions.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|r| {
                r.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with("-00002"))
            })
            .then_some(())
    })
    .await;
    active.kill();

    eventually("the standby holding the lease", || async {
        let l = leases.get_opt("sluice-controller").await.ok()??;
        (holder(l) == standby_name).then_some(())
    })
    .await;
    for i in 0..N {
        let name = format!("svc-{i}");
        eventually(&format!("{name} ready on its second revision"), || async {
            let v = get(&api(&client, Kind::Service), &name).await?;
            (condition(&v, "Ready")
                && v["status"]["latestReadyRevisionName"] == format!("{name}-00002"))
            .then_some(())
        })
        .await;
    }
    // Exactly two revisions per service, one Deployment each: nothing stamped twice.
    let list = revisions.list(&ListParams::default()).await.unwrap();
    let mut names: Vec<String> = list
        .items
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..N)
        .flat_map(|i| [format!("svc-{i}-00001"), format!("svc-{i}-00002")])
        .collect();
    want.sort();
    assert_eq!(names, want);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let mut ds: Vec<String> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    ds.sort();
    assert_eq!(ds, want);
    assert!(
        standby.stdout().contains("is the leader"),
        "{}",
        standby.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn without_the_crds_the_controller_names_the_missing_one_and_waits() {
    let cluster = Cluster::start("nocrds");
    let client = cluster.client().await;
    let mut controller = cluster.controller("lonely");
    let line = eventually("the missing CRD in the controller's log", || async {
        controller
            .log()
            .lines()
            // Istio's policy CRDs are missing too (named as well): look for Sluice's own.
            .find(|l| l.contains("is not installed") && !l.contains("security.istio.io"))
            .map(str::to_owned)
    })
    .await;
    assert!(
        line.contains("CRD ") && line.contains(".serving."),
        "{line}"
    );
    assert!(
        controller.child.try_wait().unwrap().is_none(),
        "the controller exited: {}",
        controller.log()
    );
    // `sluice get --kube` says the same.
    let (ok, _, err) = cluster.sluice(&["get", "--kube", "isvc"]);
    assert!(!ok);
    assert!(
        err.contains("CRD inferenceservices.serving.kserve.io is not installed"),
        "{err}"
    );

    // Installing them lets it proceed, without a restart.
    install_crds(&client).await;
    eventually("the controller leading once the CRDs exist", || async {
        controller.stdout().contains("is the leader").then_some(())
    })
    .await;
    assert!(controller.child.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn the_controller_rides_out_an_api_server_restart() {
    let cluster = Cluster::start("restart");
    let client = cluster.client().await;
    install_crds(&client).await;
    let mut controller = cluster.controller("steady");
    let v1 = manifest(&cluster, "v1.yaml", &hello("hello", "v1", None));
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &v1]);
    assert!(ok, "{out}{err}");
    ready(&api(&client, Kind::Service), "Service", "hello").await;

    // The API server goes away for longer than the renew deadline and comes back.
    cluster.restart_apiserver().await;
    let client = cluster.client().await;
    eventually("the API server answering again", || async {
        api(&client, Kind::Service)
            .list(&ListParams::default())
            .await
            .ok()
    })
    .await;

    // The controller reconnects (re-listing its watches) and reconciles what comes next.
    let v2 = manifest(&cluster, "v2.yaml", &hello("hello", "v2", None));
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &v2]);
    assert!(ok, "{out}{err}");
    eventually("hello ready on hello-00002", || async {
        let v = get(&api(&client, Kind::Service), "hello").await?;
        (condition(&v, "Ready") && v["status"]["latestReadyRevisionName"] == "hello-00002")
            .then_some(())
    })
    .await;
    let list = api(&client, Kind::Revision)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["hello-00001", "hello-00002"]);
    assert!(
        controller.child.try_wait().unwrap().is_none(),
        "the controller exited: {}",
        controller.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn the_least_privilege_role_suffices_and_a_forbidden_action_is_named() {
    let cluster = Cluster::start("rbac");
    let client = cluster.client().await;
    install_crds(&client).await;
    // The install manifests' namespace and controller RBAC, and a kubeconfig with the token
    // of its service account.
    let deploy = repo().join("deploy");
    for f in ["00-namespace.yaml", "10-rbac-controller.yaml"] {
        cluster.kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &deploy.join(f).display().to_string(),
        ]);
    }
    let token = cluster.kubectl(&[
        "create",
        "token",
        "sluice-controller",
        "-n",
        "sluice-system",
    ]);
    let sa_config = cluster.dir.join("sa-kubeconfig");
    std::fs::copy(&cluster.kubeconfig, &sa_config).unwrap();
    let sa = sa_config.display().to_string();
    cluster.kubectl(&[
        "--kubeconfig",
        &sa,
        "config",
        "set-credentials",
        "sa",
        "--token",
        token.trim(),
    ]);
    cluster.kubectl(&[
        "--kubeconfig",
        &sa,
        "config",
        "set-context",
        "--current",
        "--user",
        "sa",
    ]);
    let controller = cluster.controller_with(
        "limited",
        &sa_config,
        &[
            "--lease-namespace",
            "sluice-system",
            "--stats-listen",
            "127.0.0.1:0",
            // A documentation address (RFC 5737): data only, nothing dials it.
            "--advertise-address",
            "192.0.2.10",
        ],
    );

    // The role lets it keep the mesh root in its Secret, publish it, and review tokens: a
    // workload's token gets a certificate from it.
    let ca = controller.mesh_ca().await;
    let root = root_file(&cluster, &client, "sluice-system").await;
    cluster.kubectl(&["create", "serviceaccount", "worker", "-n", "default"]);
    let token = cluster.token_file("default", "worker", Some("sluice-ca"), "worker.token");
    let svid = request_certificate(&remote_ca(&ca, &token, &root), None)
        .await
        .unwrap();
    assert_eq!(
        svid.id().to_string(),
        "spiffe://cluster.local/ns/default/sa/worker"
    );

    let v1 = manifest(&cluster, "v1.yaml", &hello("hello", "v1", None));
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &v1]);
    assert!(ok, "{out}{err}");
    ready(&api(&client, Kind::Service), "Service", "hello").await;
    // The root ConfigMap went into the revision's namespace.
    assert_eq!(
        config_map_root(&client, "default").await,
        std::fs::read_to_string(&root).unwrap()
    );
    // The role lets the leader advertise its stats endpoint in sluice-system.
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "sluice-system");
    eventually(
        "the sluice-autoscaler EndpointSlice in sluice-system",
        || async {
            let s = slices.get_opt("sluice-autoscaler").await.ok().flatten()?;
            (s.endpoints.first()?.addresses == ["192.0.2.10"]).then_some(())
        },
    )
    .await;

    // Take the right to write Deployments away: the next revision says what was refused.
    let role = cluster.kubectl(&["get", "clusterrole", "sluice-controller", "-o", "json"]);
    let mut role: Value = serde_json::from_str(&role).unwrap();
    role["rules"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["apiGroups"] != serde_json::json!(["apps"]));
    let path = manifest(&cluster, "role.json", &role.to_string());
    cluster.kubectl(&["replace", "-f", &path]);
    let v2 = manifest(&cluster, "v2.yaml", &hello("hello", "v2", None));
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &v2]);
    assert!(ok, "{out}{err}");
    let message = eventually(
        "hello-00002 Ready=False naming the refused action",
        || async {
            let rev = get(&api(&client, Kind::Revision), "hello-00002").await?;
            rev["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Ready" && c["status"] == "False")
                .and_then(|c| c["message"].as_str().map(str::to_owned))
                .filter(|m| m.contains("forbidden"))
        },
    )
    .await;
    assert!(
        message.contains("cannot get deployments.apps")
            || message.contains("cannot patch deployments.apps"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn the_store_refuses_stale_writes_and_keeps_status_and_events() {
    use sluice_controller::store::{ApplyOutcome, Event, Store, StoreError};

    let cluster = Cluster::start("store");
    let client = cluster.client().await;
    // Before the CRDs: a read names the missing one.
    let store = KubeStore::new(client.clone());
    let err = store
        .get(Kind::InferenceService, "default", "x")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CRD inferenceservices.serving.kserve.io is not installed (apply crds/yaml: kubectl apply -f crds/yaml)"
    );
    install_crds(&client).await;

    let route = |target: &str| {
        serde_json::json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Route",
            "metadata": {"name": "r", "namespace": "default", "labels": {"v": target}},
            "spec": {"traffic": [{"configurationName": target, "percent": 100}]},
        })
    };
    let out = store.apply(vec![(Kind::Route, route("a"))]).await.unwrap();
    assert_eq!(out, [ApplyOutcome::Created]);
    let out = store.apply(vec![(Kind::Route, route("a"))]).await.unwrap();
    assert_eq!(out, [ApplyOutcome::Unchanged]);
    let read = store
        .get(Kind::Route, "default", "r")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read["metadata"]["generation"], 1);

    // Status through the subresource; a write based on a stale read is a conflict.
    let with_status = store
        .update_status(Kind::Route, &read, serde_json::json!({"url": "http://r"}))
        .await
        .unwrap();
    let stale = store
        .update_status(
            Kind::Route,
            &read,
            serde_json::json!({"url": "http://stale"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale}");
    let mut edit = read.clone();
    edit["spec"]["traffic"][0]["configurationName"] = "b".into();
    let stale = store.update(Kind::Route, edit).await.unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale}");
    // A fresh edit wins, bumps the generation and keeps the status; so does apply.
    let mut edit = with_status.clone();
    edit["spec"]["traffic"][0]["configurationName"] = "b".into();
    let (outcome, updated) = store.update(Kind::Route, edit).await.unwrap();
    assert_eq!(outcome, ApplyOutcome::Configured);
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["status"]["url"], "http://r");
    let out = store.apply(vec![(Kind::Route, route("c"))]).await.unwrap();
    assert_eq!(out, [ApplyOutcome::Configured]);
    let now = store
        .get(Kind::Route, "default", "r")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now["status"]["url"], "http://r");
    assert!(now["metadata"].get("managedFields").is_none());

    // Events are core/v1 Events on the object, read back oldest first.
    let event = |reason: &str| Event {
        kind: Kind::Route,
        namespace: "default".into(),
        name: "r".into(),
        type_: "Normal".into(),
        reason: reason.into(),
        message: format!("{reason} happened"),
        time: String::new(),
    };
    store.record_events(vec![event("First")]).await.unwrap();
    store.record_events(vec![event("Second")]).await.unwrap();
    let events = store.events(Kind::Route, "default", "r").await.unwrap();
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["First", "Second"]);

    // Delete; then it is gone, and a second delete says so.
    store.delete(Kind::Route, "default", "r").await.unwrap();
    eventually("the Route gone", || async {
        store
            .get(Kind::Route, "default", "r")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let again = store.delete(Kind::Route, "default", "r").await.unwrap_err();
    assert!(matches!(again, StoreError::NotFound { .. }), "{again}");
}

// The mesh CA in Kubernetes mode (issue 5): the root in a Secret, workloads authenticated
// by their projected ServiceAccount tokens through a real TokenReview.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use sluice_mesh::identity::{CertificateAuthority, RotationConfig};
use sluice_mesh::issuance::{IssueError, RemoteCa, remote_identity, request_certificate};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROUTER_ID: &str = "spiffe://cluster.local/ns/sluice-system/sa/sluice-router";

/// The root certificate (PEM) in Secret `ns/sluice-mesh-ca`, once a controller made it.
async fn secret_root(client: &kube::Client, ns: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    eventually(&format!("Secret {ns}/sluice-mesh-ca"), || async {
        let s = secrets.get_opt("sluice-mesh-ca").await.ok().flatten()?;
        String::from_utf8(s.data?.get("ca.crt")?.0.clone()).ok()
    })
    .await
}

/// The root in ConfigMap `ns/sluice-mesh-root`, once applied.
async fn config_map_root(client: &kube::Client, ns: &str) -> String {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually(&format!("ConfigMap {ns}/sluice-mesh-root"), || async {
        let m = maps.get_opt("sluice-mesh-root").await.ok().flatten()?;
        m.data?.get("root-cert.pem").cloned()
    })
    .await
}

/// The root ConfigMap of `ns` as a file (what a Pod's projected volume holds).
async fn root_file(cluster: &Cluster, client: &kube::Client, ns: &str) -> PathBuf {
    let path = cluster.dir.join(format!("{ns}-root-cert.pem"));
    std::fs::write(&path, config_map_root(client, ns).await).unwrap();
    path
}

/// A replica of `team-a/hello-00001` as its Pod would run it: the queue layer in front of
/// `sluice hello`, its identity from the CA at `ca` with `token`, trusting `root`, with the env
/// the runtime writes (and `extra`).
fn mesh_replica(
    cluster: &Cluster,
    ca: &str,
    token: &Path,
    root: &Path,
    extra: &[(&str, &str)],
) -> kube_support::ControllerProc {
    let (token, root) = (token.display().to_string(), root.display().to_string());
    let mut env = vec![
        ("SLUICE_MESH_CA_ADDR", ca),
        ("SLUICE_MESH_TOKEN_FILE", token.as_str()),
        ("SLUICE_MESH_ROOT_FILE", root.as_str()),
        ("SLUICE_TRUST_DOMAIN", "cluster.local"),
        ("SLUICE_MESH_ATTESTERS", ROUTER_ID),
        ("POD_NAMESPACE", "team-a"),
        ("POD_NAME", "hello-00001-deployment-abc"),
        ("K_SERVICE", "hello"),
        ("K_CONFIGURATION", "hello"),
        ("K_REVISION", "hello-00001"),
    ];
    env.extend_from_slice(extra);
    cluster.spawn_with_env(
        "replica",
        &[
            "queue",
            "--listen",
            "127.0.0.1:0",
            "--",
            kube_support::SLUICE,
            "hello",
        ],
        &env,
    )
}

fn remote_ca(addr: &str, token: &Path, root: &Path) -> RemoteCa {
    let bundle =
        sluice_mesh::handoff::parse_bundle(root, std::fs::read(root).unwrap(), "cluster.local")
            .unwrap();
    RemoteCa {
        addr: addr.to_owned(),
        token_file: token.to_owned(),
        bundle: Arc::new(bundle),
    }
}

/// The CA's refusal of a certificate request: (status, its error text).
async fn refusal(ca: &RemoteCa) -> Option<(u16, String)> {
    match request_certificate(ca, None).await {
        Err(IssueError::Status {
            status, message, ..
        }) => Some((status, message)),
        Ok(svid) => {
            eprintln!("issued {}", svid.id());
            None
        }
        Err(e) => panic!("not an HTTP refusal: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn the_mesh_ca_signs_for_service_account_tokens_with_the_secrets_root() {
    let cluster = Cluster::start("meshca");
    let client = cluster.client().await;
    install_crds(&client).await;
    for ns in ["sluice-system", "team-a"] {
        cluster.kubectl(&["create", "namespace", ns]);
    }
    for sa in ["hello", "gone"] {
        cluster.kubectl(&["create", "serviceaccount", sa, "-n", "team-a"]);
    }
    // Two controller replicas start at once: they race to create the root; one wins, the
    // other loads it (on a 409, or because it was there first).
    let flags = ["--lease-namespace", "sluice-system"];
    let a = cluster.controller_with("ca-a", &cluster.kubeconfig, &flags);
    let b = cluster.controller_with("ca-b", &cluster.kubeconfig, &flags);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "sluice-system");
    let holder = eventually("a leader", || async {
        leases
            .get_opt("sluice-controller")
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    })
    .await;
    let (leader, standby) = if holder == "ca-a" { (a, b) } else { (b, a) };
    let addr_a = leader.mesh_ca().await;
    assert!(addr_a.starts_with("127.0.0.1:"), "{addr_a}");

    // The root is in the Secret, and published for the router in the same namespace.
    let root = secret_root(&client, "sluice-system").await;
    let secret = Api::<Secret>::namespaced(client.clone(), "sluice-system")
        .get("sluice-mesh-ca")
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let keys: Vec<String> = secret.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["ca.crt", "ca.key"]);
    assert_eq!(config_map_root(&client, "sluice-system").await, root);
    let root_path = cluster.dir.join("root-cert.pem");
    std::fs::write(&root_path, &root).unwrap();

    // A projected-style token for the CA's audience: the SVID names its ServiceAccount.
    let hello_token = cluster.token_file("team-a", "hello", Some("sluice-ca"), "hello.token");
    let svid = request_certificate(&remote_ca(&addr_a, &hello_token, &root_path), None)
        .await
        .unwrap();
    assert_eq!(
        svid.id().to_string(),
        "spiffe://cluster.local/ns/team-a/sa/hello"
    );

    // A token for the API server's own audience is refused by the TokenReview.
    let api_audience = cluster.token_file("team-a", "hello", None, "hello-api.token");
    let (status, message) = refusal(&remote_ca(&addr_a, &api_audience, &root_path))
        .await
        .expect("refused");
    eprintln!("a token for the API server's audience: {status} {message}");
    assert_eq!(status, 401, "{message}");
    assert!(message.contains("not authenticated"), "{message}");

    // Garbage.
    let garbage = cluster.dir.join("garbage.token");
    std::fs::write(&garbage, "not-a-token").unwrap();
    let (status, message) = refusal(&remote_ca(&addr_a, &garbage, &root_path))
        .await
        .expect("refused");
    eprintln!("garbage: {status} {message}");
    assert_eq!(status, 401, "{message}");

    // A token whose ServiceAccount was deleted: good before, refused after.
    let gone = cluster.token_file("team-a", "gone", Some("sluice-ca"), "gone.token");
    let gone_ca = remote_ca(&addr_a, &gone, &root_path);
    let svid = request_certificate(&gone_ca, None).await.unwrap();
    assert_eq!(
        svid.id().to_string(),
        "spiffe://cluster.local/ns/team-a/sa/gone"
    );
    cluster.kubectl(&["delete", "serviceaccount", "gone", "-n", "team-a"]);
    let (status, message) = eventually("the deleted ServiceAccount's token refused", || {
        refusal(&gone_ca)
    })
    .await;
    eprintln!("a deleted ServiceAccount's token: {status} {message}");
    assert_eq!(status, 401, "{message}");

    // The standby serves the same root: its server certificate and the SVIDs it signs chain
    // to the Secret's root, and to no other.
    let addr_b = standby.mesh_ca().await;
    assert_ne!(addr_a, addr_b);
    let svid = request_certificate(&remote_ca(&addr_b, &hello_token, &root_path), None)
        .await
        .unwrap();
    assert_eq!(
        svid.id().to_string(),
        "spiffe://cluster.local/ns/team-a/sa/hello"
    );
    let (_, other) = CertificateAuthority::generate(
        "cluster.local",
        Duration::from_secs(7200),
        Duration::from_secs(3600),
    )
    .unwrap();
    let other_path = cluster.dir.join("other-root.pem");
    std::fs::write(&other_path, other.cert_pem).unwrap();
    for addr in [&addr_a, &addr_b] {
        match request_certificate(&remote_ca(addr, &hello_token, &other_path), None).await {
            Err(IssueError::Handshake { .. }) => {}
            other => panic!("{addr} with another root: {other:?}"),
        }
    }
    // One replica generated the root; the other loaded it.
    let generated = [&leader, &standby]
        .iter()
        .filter(|c| c.log().contains("generated into Secret"))
        .count();
    let loaded = [&leader, &standby]
        .iter()
        .filter(|c| c.log().contains("mesh CA root loaded") || c.log().contains("; loaded"))
        .count();
    assert_eq!(
        (generated, loaded),
        (1, 1),
        "{}\n{}",
        leader.log(),
        standby.log()
    );
    assert_eq!(secret_root(&client, "sluice-system").await, root);

    // The runtime: a revision's Pods get a token for the CA and the namespace's root.
    let v1 = manifest(&cluster, "v1.yaml", &hello("hello", "v1", None));
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &v1]);
    assert!(ok, "{out}{err}");
    ready(&api(&client, Kind::Service), "Service", "hello").await;
    let d = deployment(&client, "hello-00001").await.unwrap();
    let pod = serde_json::to_value(d.spec.unwrap().template.spec.unwrap()).unwrap();
    assert_eq!(pod["automountServiceAccountToken"], false, "{pod}");
    let sources = &pod["volumes"][0]["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["audience"], "sluice-ca");
    assert_eq!(sources[1]["configMap"]["name"], "sluice-mesh-root");
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} in {env:?}"))
            .to_owned()
    };
    assert_eq!(
        value("SLUICE_MESH_CA_ADDR"),
        "sluice-ca.sluice-system.svc:15012"
    );
    assert_eq!(value("SLUICE_MESH_ATTESTERS"), ROUTER_ID);
    assert_eq!(config_map_root(&client, "default").await, root);
    // The Pods the API server admitted (projected volume validated) carry it too.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = pods
        .list(&ListParams::default().labels("serving.knative.dev/revision=hello-00001"))
        .await
        .unwrap();
    let pod = list.items.first().expect("a Pod of hello-00001");
    let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert!(
        volumes.iter().any(|v| v.name == "sluice-mesh"),
        "{volumes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn a_replica_and_the_router_with_certificates_from_the_ca_talk_mtls() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use sluice_mesh::outbound::OutboundMesh;
    use sluice_mesh::tls::MeshTls;

    let cluster = Cluster::start("meshhop");
    let client = cluster.client().await;
    install_crds(&client).await;
    for ns in ["sluice-system", "team-a"] {
        cluster.kubectl(&["create", "namespace", ns]);
    }
    cluster.kubectl(&["create", "serviceaccount", "hello", "-n", "team-a"]);
    cluster.kubectl(&[
        "create",
        "serviceaccount",
        "sluice-router",
        "-n",
        "sluice-system",
    ]);
    let controller = cluster.controller_with(
        "ca",
        &cluster.kubeconfig,
        &["--lease-namespace", "sluice-system"],
    );
    let ca = controller.mesh_ca().await;
    // Istio is not installed here: the controller names the missing policy CRDs once and
    // serves replicas the empty set (they start, PERMISSIVE, no authorization policy).
    for crd in [
        "authorizationpolicies.security.istio.io",
        "peerauthentications.security.istio.io",
    ] {
        eventually(
            &format!("the controller naming the missing CRD {crd}"),
            || async {
                let log = controller.log();
                (log.contains(&format!("CRD {crd} is not installed"))
                    && log.contains("deploy/optional/istio-security-crds.yaml"))
                .then_some(())
            },
        )
        .await;
    }
    let root = root_file(&cluster, &client, "sluice-system").await;
    let hello = cluster.token_file("team-a", "hello", Some("sluice-ca"), "hello.token");
    let router = cluster.token_file(
        "sluice-system",
        "sluice-router",
        Some("sluice-ca"),
        "router.token",
    );

    // A replica as its Pod would run it: the queue layer in front of `sluice hello`, its
    // identity from the CA with the token, the env the runtime writes.
    let mut replica = mesh_replica(
        &cluster,
        &ca,
        &hello,
        &root,
        &[("TARGET", "mesh"), ("SLUICE_ACCESS_LOG", "1")],
    );
    // Stopped with SIGTERM, so it stops `sluice hello` too.
    replica.graceful = true;
    let addr: std::net::SocketAddr = replica.printed("SLUICE_LISTENING ").await.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");

    // The router's identity, from the same CA with its own token.
    let router_ca = remote_ca(&ca, &router, &root);
    let bundle = router_ca.bundle.clone();
    let (svid, _renewal) =
        remote_identity(router_ca, RotationConfig::new(Duration::from_secs(3600)))
            .await
            .unwrap();
    assert_eq!(svid.current().id().to_string(), ROUTER_ID);
    let mesh = OutboundMesh::new(MeshTls::new(bundle, svid)).unwrap();
    let http: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(mesh.http_connector());
    let body = eventually("200 from the replica over mTLS", || async {
        let request = http::Request::get(format!("http://{addr}/"))
            .header("host", "hello.team-a.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = http.request(request).await.ok()?;
        if response.status() != 200 {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    })
    .await;
    assert!(body.contains("Hello mesh"), "{body}");
    // The replica saw the router's principal over mutual TLS, and is itself hello's.
    let line = eventually("the replica's access log line", || async {
        replica
            .log()
            .lines()
            .find(|l| l.contains("source_principal") && l.contains(ROUTER_ID))
            .map(str::to_owned)
    })
    .await;
    let entry: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(entry["source_principal"], ROUTER_ID, "{line}");
    assert_eq!(
        entry["destination_principal"], "spiffe://cluster.local/ns/team-a/sa/hello",
        "{line}"
    );
    assert_eq!(entry["connection_security_policy"], "mutual_tls", "{line}");
    // The queue layer stops its user process on SIGTERM: nothing is left behind.
    let pid = replica.child.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let users: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(!users.is_empty(), "the queue layer's user process");
    replica.terminate();
    for user in users {
        eventually(&format!("the user process {user} to exit"), || async {
            let stat = std::fs::read_to_string(format!("/proc/{user}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting to be reaped.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            matches!(state, None | Some("Z" | "X")).then_some(())
        })
        .await;
    }
}

/// With the mesh on, the controller needs the CA's listen address and the router the CA's;
/// each says which flag (or variable) is missing before touching the API server.
#[test]
fn with_the_mesh_on_the_missing_addresses_are_named() {
    use std::process::{Command, Stdio};
    let run = |args: &[&str]| {
        let out = Command::new(kube_support::SLUICE)
            .args(args)
            // No cluster: the check comes first.
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("SLUICE_MESH_LISTEN")
            .env_remove("SLUICE_MESH_CA_ADDR")
            .env_remove("SLUICE_MESH")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["controller", "--kube"]);
    assert!(!ok && err.contains("--mesh-listen"), "{err}");
    let (ok, err) = run(&["router", "--kube", "--listen", "127.0.0.1:0"]);
    assert!(!ok && err.contains("SLUICE_MESH_CA_ADDR"), "{err}");
    // The autoscaler's URL follows the mesh: https:// (mTLS) with it on, http:// off.
    for (mesh, url, want) in [
        ("on", "http://sluice-autoscaler:8080", "use https://"),
        ("off", "https://sluice-autoscaler:8080", "use http://"),
    ] {
        let (ok, err) = run(&[
            "router",
            "--kube",
            "--listen",
            "127.0.0.1:0",
            "--mesh",
            mesh,
            "--autoscaler",
            url,
        ]);
        assert!(
            !ok && err.contains("--autoscaler") && err.contains(want),
            "--mesh {mesh} --autoscaler {url}: {err}"
        );
    }
    // --mesh off needs neither: both go on to the API server (which is not there).
    for args in [
        &["controller", "--kube", "--mesh", "off"][..],
        &[
            "router",
            "--kube",
            "--listen",
            "127.0.0.1:0",
            "--mesh",
            "off",
        ][..],
    ] {
        let (ok, err) = run(args);
        assert!(
            !ok && err.contains("connecting to Kubernetes"),
            "{args:?}: {err}"
        );
    }
}

/// Istio's security policy CRDs (deploy/optional/ where Istio is not installed).
const POLICY_CRDS: [&str; 2] = [
    "authorizationpolicies.security.istio.io",
    "peerauthentications.security.istio.io",
];

/// Istio's security policies in Kubernetes mode, against the real API server: the optional
/// CRDs installed while the controller runs, policies written with `sluice apply --kube` and `kubectl`, the controller
/// watching them and serving them through its CA, a replica (`sluice queue`, the Pod's env)
/// following them: an ALLOW policy admits principal A and refuses B with 403; STRICT refuses
/// plaintext; an invalid policy gets an Event naming the field path; deleting the ALLOW
/// policy lets B through again.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn istio_policies_are_enforced_on_replicas_in_kubernetes_mode() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use sluice_mesh::outbound::OutboundMesh;
    use sluice_mesh::tls::MeshTls;

    let cluster = Cluster::start("policies");
    let client = cluster.client().await;
    install_crds(&client).await;
    for ns in ["sluice-system", "team-a"] {
        cluster.kubectl(&["create", "namespace", ns]);
    }
    for sa in ["hello", "alice", "bob"] {
        cluster.kubectl(&["create", "serviceaccount", sa, "-n", "team-a"]);
    }
    let allow = manifest(
        &cluster,
        "allow-alice.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-alice\n  namespace: team-a\nspec:\n  selector:\n    matchLabels: {app: hello}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/team-a/sa/alice]\n",
    );
    // The controller starts before the policy CRDs exist: it names them, and picks them up
    // when they are installed, with no restart.
    let controller = cluster.controller_with(
        "ca",
        &cluster.kubeconfig,
        &["--lease-namespace", "sluice-system"],
    );
    let ca = controller.mesh_ca().await;
    for crd in POLICY_CRDS {
        eventually(
            &format!("the controller naming the missing {crd}"),
            || async {
                controller
                    .log()
                    .contains(&format!("CRD {crd} is not installed"))
                    .then_some(())
            },
        )
        .await;
    }
    // Without the CRDs, `sluice apply --kube` says where they come from.
    let (ok, _, err) = cluster.sluice(&["apply", "--kube", "-f", &allow]);
    assert!(
        !ok && err.contains("authorizationpolicies.security.istio.io")
            && err.contains("deploy/optional/istio-security-crds.yaml"),
        "{err}"
    );
    let crds = repo().join("deploy/optional/istio-security-crds.yaml");
    cluster.kubectl(&["apply", "-f", &crds.display().to_string()]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/authorizationpolicies.security.istio.io",
        "crd/peerauthentications.security.istio.io",
        "--timeout=60s",
    ]);
    for crd in POLICY_CRDS {
        eventually(&format!("the controller picking up {crd}"), || async {
            controller
                .log()
                .contains(&format!("CRD {crd} is installed now"))
                .then_some(())
        })
        .await;
    }

    let root = root_file(&cluster, &client, "sluice-system").await;
    let hello = cluster.token_file("team-a", "hello", Some("sluice-ca"), "hello.token");
    let mut replica = mesh_replica(
        &cluster,
        &ca,
        &hello,
        &root,
        &[
            (
                "SLUICE_MESH_LABELS",
                r#"{"app":"hello","serving.knative.dev/revision":"hello-00001"}"#,
            ),
            ("TARGET", "policies"),
        ],
    );
    replica.graceful = true;
    let addr: std::net::SocketAddr = replica.printed("SLUICE_LISTENING ").await.parse().unwrap();

    // Callers A (alice) and B (bob), each with its SVID from the CA.
    let mut renewals = Vec::new();
    let mut callers = Vec::new();
    for sa in ["alice", "bob"] {
        let token = cluster.token_file("team-a", sa, Some("sluice-ca"), &format!("{sa}.token"));
        let remote = remote_ca(&ca, &token, &root);
        let bundle = remote.bundle.clone();
        let (svid, renewal) =
            remote_identity(remote, RotationConfig::new(Duration::from_secs(3600)))
                .await
                .unwrap();
        renewals.push(renewal);
        let mesh = OutboundMesh::new(MeshTls::new(bundle, svid)).unwrap();
        let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(mesh.http_connector());
        callers.push(http);
    }
    // No pooled connections: peer authentication is decided per connection.
    let plain: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let request = || {
        http::Request::get(format!("http://{addr}/"))
            .header("host", "hello.team-a.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // (status, body) of one request by caller `i`, or None when it got no answer.
    let ask = |i: usize| {
        let http = callers[i].clone();
        let req = request();
        async move {
            let response = http.request(req).await.ok()?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        }
    };
    // No policy yet: both get through.
    for i in 0..2 {
        let (status, body) = eventually("an answer over mTLS", || ask(i)).await;
        assert_eq!(status, 200, "{body}");
    }

    // ALLOW for A, through `sluice apply --kube`: B is refused with Istio's 403, A served.
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &allow]);
    assert!(ok, "{err}");
    assert!(
        out.contains("authorizationpolicy.security.istio.io/allow-alice created"),
        "{out}"
    );
    // No Knative workload carries app=hello (the replica here is a bare process): accepted,
    // with a warning, as in local mode.
    assert!(
        err.contains("AuthorizationPolicy/allow-alice: spec.selector.matchLabels (app=hello) matches no workload"),
        "{err}"
    );
    let (ok, out, err) = cluster.sluice(&["apply", "--kube", "-f", &allow]);
    assert!(
        ok && out.contains("authorizationpolicy.security.istio.io/allow-alice unchanged"),
        "{out}{err}"
    );
    let (status, body) = eventually("B refused by the ALLOW policy", || async {
        ask(1).await.filter(|(s, _)| *s == 403)
    })
    .await;
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    let (status, body) = ask(0).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello policies"), "{body}");
    // `sluice get --kube` lists it as kubectl would.
    let (ok, out, err) = cluster.sluice(&["get", "ap", "--kube", "-n", "team-a"]);
    assert!(
        ok && out.contains("allow-alice") && out.contains("ALLOW"),
        "{out}{err}"
    );

    // Plaintext is answered (403: no principal) until STRICT refuses it at the TLS layer.
    let plain_status = || async {
        match plain.request(request()).await {
            Ok(r) => Some(r.status().as_u16()),
            Err(_) => None,
        }
    };
    assert_eq!(plain_status().await, Some(403));
    let strict = manifest(
        &cluster,
        "strict.yaml",
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: strict\n  namespace: team-a\nspec:\n  mtls: {mode: STRICT}\n",
    );
    cluster.kubectl(&["apply", "-f", &strict]);
    eventually("STRICT refuses plaintext", || async {
        plain_status().await.is_none().then_some(())
    })
    .await;
    let (status, _) = ask(0).await.unwrap();
    assert_eq!(status, 200, "mTLS callers still served under STRICT");

    // An invalid policy: refused by `sluice apply --kube` with its field path; written with
    // kubectl (the CRD keeps spec as is), it is not enforced and gets an Event saying why.
    let bad = manifest(
        &cluster,
        "bad.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad\n  namespace: team-a\nspec:\n  action: MAYBE\n",
    );
    let (ok, _, err) = cluster.sluice(&["apply", "--kube", "-f", &bad]);
    assert!(!ok && err.contains("spec.action"), "{err}");
    cluster.kubectl(&["apply", "-f", &bad]);
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), "team-a");
    let message = eventually("an Event on the invalid policy", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            (e.involved_object.name.as_deref() == Some("bad")
                && e.involved_object.kind.as_deref() == Some("AuthorizationPolicy")
                && e.reason.as_deref() == Some("InvalidPolicy"))
            .then(|| e.message.unwrap_or_default())
        })
    })
    .await;
    assert!(message.contains("spec.action"), "{message}");
    assert!(message.starts_with("not enforced"), "{message}");
    // The invalid policy changed nothing: A still served, B still refused.
    assert_eq!(ask(0).await.unwrap().0, 200);
    assert_eq!(ask(1).await.unwrap().0, 403);
    // An edit that breaks the ALLOW policy keeps its last valid version in force (a typo
    // does not open the workload to B), and says so in an Event.
    let broken = manifest(
        &cluster,
        "allow-alice-broken.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-alice\n  namespace: team-a\nspec:\n  selector:\n    matchLabels: {app: hello}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/team-a/sa/alice]\n    to:\n    - operation:\n        ports: [\"http\"]\n",
    );
    cluster.kubectl(&["apply", "-f", &broken]);
    let message = eventually("an Event on the broken edit", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            (e.involved_object.name.as_deref() == Some("allow-alice")
                && e.reason.as_deref() == Some("InvalidPolicy"))
            .then(|| e.message.unwrap_or_default())
        })
    })
    .await;
    assert!(
        message.contains("last valid one stays in force") && message.contains("ports"),
        "{message}"
    );
    assert_eq!(ask(0).await.unwrap().0, 200);
    assert_eq!(ask(1).await.unwrap().0, 403);

    // Deleting the ALLOW policy (`sluice delete --kube`) lets B through again.
    let (ok, out, err) = cluster.sluice(&["delete", "ap", "allow-alice", "--kube", "-n", "team-a"]);
    assert!(ok && out.contains("allow-alice"), "{out}{err}");
    eventually("B served once the ALLOW policy is gone", || async {
        ask(1).await.filter(|(s, _)| *s == 200).map(|_| ())
    })
    .await;
    replica.terminate();
    for r in renewals {
        r.abort();
    }
}

/// `POST /v1/stats` (an empty batch) to the stats endpoint at `addr` through `client`:
/// the status and body, or why no HTTP answer came.
async fn post_empty_stats(
    client: &hyper_util::client::legacy::Client<
        sluice_mesh::tls::MeshHttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    addr: &str,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let request = http::Request::post(format!("http://{addr}/v1/stats"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"[]")))
        .unwrap();
    let response = client
        .request(request)
        .await
        .map_err(|e| sluice_core::error_chain(&e))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn the_autoscalers_stat_stream_takes_the_routers_identity_only() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use sluice_mesh::identity::{RotatingSvid, SpiffeId};
    use sluice_mesh::tls::{ExpectedServer, MeshConnector, MeshHttpConnector, MeshTls};

    let cluster = Cluster::start("statsmtls");
    let client = cluster.client().await;
    install_crds(&client).await;
    let controller = cluster.controller_with(
        "solo",
        &cluster.kubeconfig,
        &["--stats-listen", "127.0.0.1:0"],
    );
    let stats = controller
        .printed("sluice: controller stats endpoint on ")
        .await;
    let addr = stats
        .strip_prefix("https://")
        .and_then(|s| s.strip_suffix("/v1/stats"))
        .unwrap_or_else(|| panic!("not an https stats endpoint: {stats}"))
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let ca = controller.mesh_ca().await;
    let root = root_file(&cluster, &client, "default").await;
    // The controller's identity, which the router checks (the lease namespace: default).
    let controller_id = SpiffeId::new("cluster.local", "default", "sluice-controller").unwrap();

    // A workload's stats client: its SVID from the controller's CA (a token of its
    // ServiceAccount), mTLS to exactly the controller's identity.
    let mtls_client = |sa: &'static str| {
        let (cluster, ca, root, controller_id) = (&cluster, &ca, &root, &controller_id);
        async move {
            cluster.kubectl(&["create", "serviceaccount", sa, "-n", "default"]);
            let token =
                cluster.token_file("default", sa, Some("sluice-ca"), &format!("{sa}.token"));
            let remote = remote_ca(ca, &token, root);
            let svid = request_certificate(&remote, None).await.unwrap();
            assert_eq!(
                svid.id().to_string(),
                format!("spiffe://cluster.local/ns/default/sa/{sa}")
            );
            let tls = MeshTls::new(remote.bundle.clone(), RotatingSvid::fixed(svid));
            let config = tls
                .client_config(ExpectedServer::Exactly(controller_id.clone()))
                .unwrap();
            Client::builder(TokioExecutor::new())
                .build(MeshHttpConnector::new(Some(MeshConnector::new(config))))
        }
    };

    // The router's identity posts; once this controller leads, its autoscaler takes them.
    let router = mtls_client("sluice-router").await;
    let (status, body) = eventually("202 for the router's stats from the leader", || async {
        let answer = post_empty_stats(&router, &addr).await.ok()?;
        (answer.0 == 202).then_some(answer)
    })
    .await;
    assert_eq!(status, 202, "{body}");

    // Another ServiceAccount's SVID from the same CA completes the handshake and gets 403,
    // naming it.
    let intruder = mtls_client("intruder").await;
    let (status, body) = post_empty_stats(&intruder, &addr).await.unwrap();
    eprintln!("another identity: {status} {body}");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("spiffe://cluster.local/ns/default/sa/intruder may not post stats")
            && body.contains("spiffe://cluster.local/ns/default/sa/sluice-router"),
        "{body}"
    );

    // Plaintext gets no HTTP answer: the handshake refuses it.
    let plain: Client<MeshHttpConnector, _> =
        Client::builder(TokioExecutor::new()).build(MeshHttpConnector::new(None));
    let refused = post_empty_stats(&plain, &addr).await;
    eprintln!("plaintext: {refused:?}");
    assert!(refused.is_err(), "{refused:?}");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"POST /v1/stats HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n[]")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // TLS without a client certificate: refused too.
    let bundle = remote_ca(&ca, &root, &root).bundle;
    let anonymous =
        MeshTls::anonymous_client_config(bundle, ExpectedServer::Exactly(controller_id.clone()))
            .unwrap();
    let anonymous: Client<MeshHttpConnector, _> = Client::builder(TokioExecutor::new())
        .build(MeshHttpConnector::new(Some(MeshConnector::new(anonymous))));
    let refused = post_empty_stats(&anonymous, &addr).await;
    eprintln!("no client certificate: {refused:?}");
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        controller
            .log()
            .contains("stats refused: spiffe://cluster.local/ns/default/sa/intruder"),
        "{}",
        controller.log()
    );
}

/// An SLO-gated rollout judged in Kubernetes mode on what the router posts: two revisions at
/// zero (nodes cordoned, so kwok's Pod IPs are never dialled: the activator holds every
/// request until its 3 s timeout, a 504 at the router hop), a rollout of 50 % → 100 % with
/// 5 s steps; the router posts its outcomes to the leader over mTLS, the leader judges the
/// new revision's 0 % success rate, and the Route in the API server says RolledBack with both
/// revisions' numbers.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "Kubernetes tier: run by scripts/kube-test"]
async fn an_slo_gated_rollout_is_judged_on_the_routers_outcomes() {
    let cluster = Cluster::start("slorollout");
    let client = cluster.client().await;
    install_crds(&client).await;
    cluster.kubectl(&["cordon", "kwok-node-0", "kwok-node-1"]);
    let (controller, autoscaler) = controller_with_stats(&cluster).await;
    let service = |target: &str| {
        hello("hello", target, Some(0))
            .replace(
                "autoscaling.knative.dev/min-scale: \"0\"\n",
                "autoscaling.knative.dev/min-scale: \"0\"\n        autoscaling.knative.dev/initial-scale: \"0\"\n",
            )
            .replace(
                "    spec:\n      containers:",
                "    spec:\n      timeoutSeconds: 3\n      containers:",
            )
            .replace(
                "  namespace: default\n",
                "  namespace: default\n  annotations:\n    serving.sluice.dev/rollout-steps: \"50,100\"\n    serving.sluice.dev/rollout-step-interval: \"5s\"\n    serving.sluice.dev/rollout-min-requests: \"3\"\n",
            )
            + "  traffic:\n    - latestRevision: true\n      percent: 100\n"
    };
    let v1 = service("one");
    assert!(
        v1.contains("rollout-steps") && v1.contains("initial-scale"),
        "{v1}"
    );
    cluster.kubectl(&["apply", "-f", &manifest(&cluster, "hello-v1.yaml", &v1)]);
    ready(&api(&client, Kind::Service), "Service", "hello").await;

    let (mut router, addr) = mesh_router(&cluster, &client, &controller, &autoscaler, &[]).await;
    let requests: Vec<_> = (0..8)
        .map(|_| tokio::spawn(keep_requesting(addr, "hello.default.example.com")))
        .collect();

    cluster.kubectl(&[
        "apply",
        "-f",
        &manifest(&cluster, "hello-v2.yaml", &service("two")),
    ]);
    let routes = api(&client, Kind::Route);
    let route = eventually("hello-00002 rolled back", || async {
        let r = get(&routes, "hello").await?;
        (r["status"]["rolloutAnalysis"]["phase"] == "RolledBack").then_some(r)
    })
    .await;
    router.kill();
    for r in requests {
        r.abort();
    }
    let a = &route["status"]["rolloutAnalysis"];
    assert_eq!(
        (a["baseline"].as_str(), a["canary"].as_str()),
        (Some("hello-00001"), Some("hello-00002"))
    );
    let verdict = &a["verdicts"][0];
    assert_eq!(verdict["percent"], 50);
    assert!(
        verdict["canary"]["requests"].as_u64().unwrap() >= 3,
        "{a:#}"
    );
    assert_eq!(
        verdict["canary"]["errors"], verdict["canary"]["requests"],
        "{a:#}"
    );
    assert!(
        verdict["baseline"]["requests"].as_u64().unwrap() > 0,
        "{a:#}"
    );
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("success rate 0.0% < 99.0%"),
        "{a:#}"
    );
    let healthy = route["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "RolloutHealthy"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (healthy["status"].as_str(), healthy["reason"].as_str()),
        (Some("False"), Some("RolledBack")),
        "{route:#}"
    );
    let traffic = &route["status"]["traffic"];
    assert_eq!(traffic[0]["revisionName"], "hello-00001", "{traffic}");
    assert_eq!(traffic[0]["percent"], 100, "{traffic}");
    // Nothing was ever dialled: no replica ran.
    assert_eq!(ready_pods(&client, "hello-00002").await, 0);
}
