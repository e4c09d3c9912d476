//! The Deployment and Service of one revision, built from its `ReplicaSpec` (pure).
//!
//! One Pod per replica with one container, `sluice`, running the replica's command as in
//! local mode: `sluice queue [flags] -- <user command>` (the queue layer in front of the
//! user process, in the same container) or `sluice model-server …` alone (its queue layer
//! is in-process). The replica listens on `REPLICA_PORT` on all interfaces; the Service
//! selects the revision's Pods, and its EndpointSlices say which are ready.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_core::replica::{PROBE_HEADER, PROBE_PATH};
use sluice_crds::revision::{CONFIGURATION_LABEL, SERVICE_LABEL};

use crate::runtime::ReplicaSpec;

/// The label naming a revision on its Deployment, Pods, Service and EndpointSlices.
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// The label every object the runtime writes carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sluice");
/// The port a replica (queue layer or model-server) serves on inside its Pod.
pub const REPLICA_PORT: u16 = 8012;

/// Settings of the Pods the runtime creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTemplate {
    /// The image that holds the `sluice` binary.
    pub image: String,
    /// `imagePullPolicy` (`IfNotPresent` when empty).
    pub image_pull_policy: String,
    /// The service account of replica Pods (the namespace's default when empty).
    pub service_account: String,
    /// The mesh of replica Pods: their certificate comes from the controller's CA,
    /// authenticated by a projected ServiceAccount token. `None`: plaintext replicas.
    pub mesh: Option<PodMesh>,
}

/// What a replica Pod needs to get its SVID from the controller's CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMesh {
    /// `host:port` of the CA (`sluice-ca.<controller namespace>.svc:15012`).
    pub ca_addr: String,
    /// The trust domain.
    pub trust_domain: String,
    /// SPIFFE IDs replicas trust to attest callers (the router's).
    pub attesters: Vec<String>,
    /// The CA's root certificate (PEM), published in each namespace as ConfigMap
    /// [`ROOT_CONFIGMAP`].
    pub root_pem: String,
}

/// The ConfigMap that holds the mesh's root certificate in each namespace with replicas.
pub const ROOT_CONFIGMAP: &str = "sluice-mesh-root";
/// Its key.
pub const ROOT_KEY: &str = "root-cert.pem";
/// The audience of the projected ServiceAccount token replicas present to the CA.
pub const TOKEN_AUDIENCE: &str = "sluice-ca";
/// How long a projected token lives (the kubelet refreshes it at 80 %).
pub const TOKEN_EXPIRATION_SECONDS: u32 = 3600;
/// Where the projected volume (token and root) is mounted.
pub const MESH_MOUNT: &str = "/var/run/secrets/sluice/mesh";
/// The projected volume's name.
pub const MESH_VOLUME: &str = "sluice-mesh";

/// Who owns the objects: the Revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The Revision's name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

fn env_value<'a>(spec: &'a ReplicaSpec, name: &str) -> Option<&'a str> {
    spec.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The Pod's labels: the Revision's own (its template's, as Knative gives them to Pods, so
/// `AuthorizationPolicy` selectors match what the user labelled), then Sluice's. They are
/// fixed when the Revision is created; the Deployment selects on the revision label alone.
fn labels(spec: &ReplicaSpec) -> Value {
    let mut labels: serde_json::Map<String, Value> = env_value(spec, "SLUICE_POD_LABELS")
        .and_then(|json| serde_json::from_str::<BTreeMap<String, String>>(json).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    labels.insert(REVISION_LABEL.into(), spec.revision.name.clone().into());
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    for (label, env) in [
        (CONFIGURATION_LABEL, "K_CONFIGURATION"),
        (SERVICE_LABEL, "K_SERVICE"),
    ] {
        if let Some(v) = env_value(spec, env).filter(|v| !v.is_empty()) {
            labels.insert(label.into(), v.into());
        }
    }
    Value::Object(labels)
}

fn owner_references(owner: &Owner) -> Value {
    json!([{
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "name": owner.name,
        "uid": owner.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// The replica's command with its listener on the Pod's port. The model server is given
/// `--listen` on its command line (local mode's `127.0.0.1:0`), which wins over
/// `SLUICE_LISTEN`: that value is replaced (the queue layer takes its listener from the
/// environment).
fn pod_command(command: &[String], listen: &str) -> Vec<String> {
    let mut out = command.to_vec();
    if command.get(1).map(String::as_str) != Some("model-server") {
        return out;
    }
    out.retain(|a| !a.starts_with("--listen="));
    match out.iter().position(|a| a == "--listen") {
        Some(i) if i + 1 < out.len() => out[i + 1] = listen.to_owned(),
        _ => out.extend(["--listen".to_owned(), listen.to_owned()]),
    }
    out
}

/// The revision's Deployment with `replicas` replicas (a server-side apply body).
pub fn deployment(spec: &ReplicaSpec, replicas: u32, owner: &Owner, pod: &PodTemplate) -> Value {
    let labels = labels(spec);
    let listen = format!("0.0.0.0:{REPLICA_PORT}");
    let mut env: Vec<Value> = spec
        .env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    // The replica's own listener: the queue layer's, or the model-server's.
    match spec.command.get(1).map(String::as_str) {
        Some("queue") => env.push(json!({"name": "SLUICE_QUEUE_LISTEN", "value": listen})),
        Some("model-server") => env.push(json!({"name": "SLUICE_LISTEN", "value": listen})),
        _ => {}
    }
    let mut pod_spec = json!({
        "terminationGracePeriodSeconds": spec.drain_timeout.as_secs().max(1),
        "containers": [{
            "name": "sluice",
            "image": pod.image,
            "imagePullPolicy": if pod.image_pull_policy.is_empty() { "IfNotPresent" } else { pod.image_pull_policy.as_str() },
            "command": pod_command(&spec.command, &listen),
            "env": env,
            "ports": [{"name": "http", "containerPort": REPLICA_PORT, "protocol": "TCP"}],
            "readinessProbe": {
                "httpGet": {
                    "path": PROBE_PATH,
                    "port": REPLICA_PORT,
                    "httpHeaders": [{"name": PROBE_HEADER, "value": "queue"}],
                },
                "periodSeconds": 1,
                "failureThreshold": 3,
            },
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"]},
            },
        }],
    });
    if !pod.service_account.is_empty() {
        pod_spec["serviceAccountName"] = pod.service_account.clone().into();
    }
    if let Some(mesh) = &pod.mesh {
        add_mesh(&mut pod_spec, mesh, &labels);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spec.revision.name,
            "namespace": spec.revision.namespace,
            "labels": labels,
            "ownerReferences": owner_references(owner),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {REVISION_LABEL: spec.revision.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec,
            },
        },
    })
}

/// The Pod's mesh: no automounted API token (replicas do not talk to the API server); a
/// projected volume with a token for the CA's audience and the root; the env the replica's
/// mesh loader reads, with the Pod's `labels` (policies' selectors match them).
fn add_mesh(pod_spec: &mut Value, mesh: &PodMesh, labels: &Value) {
    pod_spec["automountServiceAccountToken"] = false.into();
    pod_spec["volumes"] = json!([{
        "name": MESH_VOLUME,
        "projected": {
            "sources": [
                {"serviceAccountToken": {
                    "audience": TOKEN_AUDIENCE,
                    "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                    "path": "token",
                }},
                {"configMap": {
                    "name": ROOT_CONFIGMAP,
                    "items": [{"key": ROOT_KEY, "path": ROOT_KEY}],
                }},
            ],
        },
    }]);
    let container = &mut pod_spec["containers"][0];
    container["volumeMounts"] = json!([{
        "name": MESH_VOLUME,
        "mountPath": MESH_MOUNT,
        "readOnly": true,
    }]);
    if let Some(env) = container["env"].as_array_mut() {
        let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
        env.extend([
            json!({"name": "SLUICE_MESH_CA_ADDR", "value": mesh.ca_addr}),
            json!({"name": "SLUICE_MESH_TOKEN_FILE", "value": format!("{MESH_MOUNT}/token")}),
            json!({"name": "SLUICE_MESH_ROOT_FILE", "value": format!("{MESH_MOUNT}/{ROOT_KEY}")}),
            json!({"name": sluice_mesh::issuance::TRUST_DOMAIN_ENV, "value": mesh.trust_domain}),
            json!({"name": "SLUICE_MESH_ATTESTERS", "value": mesh.attesters.join(",")}),
            json!({"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}),
            json!({"name": "POD_NAME", "valueFrom": field("metadata.name")}),
            json!({"name": "SLUICE_MESH_LABELS", "value": labels.to_string()}),
        ]);
    }
}

/// The namespace's ConfigMap [`ROOT_CONFIGMAP`] with the mesh's root (a server-side apply
/// body). Not owned by a revision: every revision of the namespace mounts it.
pub fn root_config_map(namespace: &str, root_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CONFIGMAP,
            "namespace": namespace,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
        },
        "data": {ROOT_KEY: root_pem},
    })
}

/// The revision's Service: its ready Pods, as EndpointSlices.
pub fn service(spec: &ReplicaSpec, owner: &Owner) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": spec.revision.name,
            "namespace": spec.revision.namespace,
            "labels": labels(spec),
            "ownerReferences": owner_references(owner),
        },
        "spec": {
            "selector": {REVISION_LABEL: spec.revision.name},
            "ports": [{"name": "http", "port": 80, "targetPort": REPLICA_PORT, "protocol": "TCP"}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::NamespacedName;
    use std::time::Duration;

    fn spec(command: &[&str]) -> ReplicaSpec {
        ReplicaSpec {
            revision: NamespacedName::new("default", "hello-00001"),
            uid: "u1".into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![
                ("TARGET".into(), "Sluice".into()),
                ("K_SERVICE".into(), "hello".into()),
                ("K_CONFIGURATION".into(), "hello".into()),
            ],
            drain_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn deployment_runs_the_replica_command_owned_by_its_revision() {
        let owner = Owner {
            name: "hello-00001".into(),
            uid: "u1".into(),
        };
        let pod = PodTemplate {
            image: "sluice:dev".into(),
            image_pull_policy: String::new(),
            service_account: String::new(),
            mesh: None,
        };
        let d = deployment(
            &spec(&["sluice", "queue", "--", "sluice", "hello"]),
            3,
            &owner,
            &pod,
        );
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(d["metadata"]["labels"][REVISION_LABEL], "hello-00001");
        assert_eq!(d["metadata"]["labels"][SERVICE_LABEL], "hello");
        assert!(
            d["spec"]["template"]["metadata"]["labels"]
                .get("app")
                .is_none()
        );
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "sluice:dev");
        assert_eq!(
            c["command"],
            json!(["sluice", "queue", "--", "sluice", "hello"])
        );
        let env = c["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "SLUICE_QUEUE_LISTEN", "value": "0.0.0.0:8012"})));
        assert!(env.contains(&json!({"name": "TARGET", "value": "Sluice"})));
        assert_eq!(
            d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            30
        );
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            d["spec"]["template"]["metadata"]["labels"][REVISION_LABEL]
                .as_str()
                .map(|r| json!({REVISION_LABEL: r}))
                .unwrap()
        );
        let m = deployment(
            &spec(&[
                "sluice",
                "model-server",
                "--model-name",
                "iris",
                "--listen",
                "127.0.0.1:0",
                "--container-concurrency",
                "0",
            ]),
            1,
            &owner,
            &pod,
        );
        // Found on a real node: the model server listened where local mode asks
        // (127.0.0.1:0), never on the Pod's port, and the Pod never became ready.
        assert_eq!(
            m["spec"]["template"]["spec"]["containers"][0]["command"],
            json!([
                "sluice",
                "model-server",
                "--model-name",
                "iris",
                "--listen",
                "0.0.0.0:8012",
                "--container-concurrency",
                "0"
            ])
        );
        assert_eq!(
            pod_command(&["sluice".into(), "model-server".into()], "0.0.0.0:8012"),
            ["sluice", "model-server", "--listen", "0.0.0.0:8012"]
        );
        let env = m["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        assert!(env.contains(&json!({"name": "SLUICE_LISTEN", "value": "0.0.0.0:8012"})));
        let s = service(&spec(&["sluice", "hello"]), &owner);
        assert_eq!(s["spec"]["selector"][REVISION_LABEL], "hello-00001");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 8012);
        // Without the mesh: no volume, the default token mount is left as it is.
        let spec = &d["spec"]["template"]["spec"];
        assert!(spec.get("volumes").is_none());
        assert!(spec.get("automountServiceAccountToken").is_none());
    }

    #[test]
    fn with_the_mesh_a_pod_gets_a_projected_token_for_the_ca_and_the_root() {
        let owner = Owner {
            name: "hello-00001".into(),
            uid: "u1".into(),
        };
        let pod = PodTemplate {
            image: "sluice:dev".into(),
            image_pull_policy: String::new(),
            service_account: "hello-sa".into(),
            mesh: Some(PodMesh {
                ca_addr: "sluice-ca.sluice-system.svc:15012".into(),
                trust_domain: "cluster.local".into(),
                attesters: vec![
                    "spiffe://cluster.local/ns/sluice-system/sa/sluice-router".into(),
                    "spiffe://cluster.local/ns/sluice-system/sa/other".into(),
                ],
                root_pem: "ROOT".into(),
            }),
        };
        let d = deployment(
            &spec(&["sluice", "queue", "--", "sluice", "hello"]),
            1,
            &owner,
            &pod,
        );
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["serviceAccountName"], "hello-sa");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            spec["volumes"],
            json!([{
                "name": "sluice-mesh",
                "projected": {"sources": [
                    {"serviceAccountToken": {"audience": "sluice-ca", "expirationSeconds": 3600, "path": "token"}},
                    {"configMap": {"name": "sluice-mesh-root",
                        "items": [{"key": "root-cert.pem", "path": "root-cert.pem"}]}},
                ]},
            }])
        );
        let c = &spec["containers"][0];
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "sluice-mesh", "mountPath": "/var/run/secrets/sluice/mesh", "readOnly": true}])
        );
        let env = c["env"].as_array().unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {env:?}"))
                .clone()
        };
        assert_eq!(
            value("SLUICE_MESH_CA_ADDR")["value"],
            "sluice-ca.sluice-system.svc:15012"
        );
        assert_eq!(
            value("SLUICE_MESH_TOKEN_FILE")["value"],
            "/var/run/secrets/sluice/mesh/token"
        );
        assert_eq!(
            value("SLUICE_MESH_ROOT_FILE")["value"],
            "/var/run/secrets/sluice/mesh/root-cert.pem"
        );
        assert_eq!(value("SLUICE_TRUST_DOMAIN")["value"], "cluster.local");
        assert_eq!(
            value("SLUICE_MESH_ATTESTERS")["value"],
            "spiffe://cluster.local/ns/sluice-system/sa/sluice-router,spiffe://cluster.local/ns/sluice-system/sa/other"
        );
        assert_eq!(
            value("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(
            value("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        // The Pod's own labels, for policies' selectors.
        let labels: Value =
            serde_json::from_str(value("SLUICE_MESH_LABELS")["value"].as_str().unwrap()).unwrap();
        assert_eq!(labels, d["spec"]["template"]["metadata"]["labels"]);
        // The user's env and the replica's listener stay.
        assert_eq!(value("TARGET")["value"], "Sluice");
        assert_eq!(value("SLUICE_QUEUE_LISTEN")["value"], "0.0.0.0:8012");

        let cm = root_config_map("team-a", "ROOT");
        assert_eq!(cm["metadata"]["name"], "sluice-mesh-root");
        assert_eq!(cm["metadata"]["namespace"], "team-a");
        assert_eq!(cm["data"]["root-cert.pem"], "ROOT");
        assert!(cm["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn pods_carry_the_revisions_own_labels_under_sluices() {
        let mut spec = spec(&["sluice", "queue", "--", "sluice", "hello"]);
        spec.env.push((
            "SLUICE_POD_LABELS".into(),
            r#"{"app":"shop","serving.knative.dev/revision":"spoofed"}"#.into(),
        ));
        let owner = Owner {
            name: "hello-00001".into(),
            uid: "u1".into(),
        };
        let pod = PodTemplate {
            image: "sluice:dev".into(),
            image_pull_policy: String::new(),
            service_account: String::new(),
            mesh: None,
        };
        let d = deployment(&spec, 1, &owner, &pod);
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app"], "shop");
        // Sluice's own labels win, and the selector stays the revision label alone.
        assert_eq!(labels[REVISION_LABEL], "hello-00001");
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            json!({REVISION_LABEL: "hello-00001"})
        );
    }
}
