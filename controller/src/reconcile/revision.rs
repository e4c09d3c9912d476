//! A Revision's replica spec and its status from the runtime and the autoscaler.

use std::time::Duration;

use sluice_core::{NamespacedName, ResponseTimeouts};
use sluice_crds::Condition;
use sluice_crds::meta::find_condition;
use sluice_crds::revision::{CONFIGURATION_LABEL, Revision, RevisionStatus, SERVICE_LABEL};

use crate::runtime::{ReplicaFailure, ReplicaSpec, RevisionRuntimeStatus};

/// Knative's default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The revision's key.
pub fn key(rev: &Revision) -> NamespacedName {
    NamespacedName::new(rev.metadata.namespace(), rev.metadata.name.clone())
}

/// The request timeout (`timeoutSeconds`, default 300 s).
pub fn timeout(rev: &Revision) -> Duration {
    rev.spec
        .timeout_seconds
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

/// The optional response timeouts (`responseStartTimeoutSeconds`, `idleTimeoutSeconds`);
/// zero or absent means the default (the request timeout, and no idle limit).
pub fn response_timeouts(rev: &Revision) -> ResponseTimeouts {
    let secs = |t: Option<i64>| {
        t.and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .map(Duration::from_secs)
    };
    ResponseTimeouts {
        response_start: secs(rev.spec.response_start_timeout_seconds),
        idle: secs(rev.spec.idle_timeout_seconds),
    }
}

/// Annotation on a revision template whose container is Sluice's own model-server, which
/// links the queue layer in-process (no `sluice queue` in front of it).
pub const IN_PROCESS_QUEUE_ANNOTATION: &str = "serving.sluice.dev/in-process-queue";

/// How to run one replica of the revision (with Knative's `K_*` environment): the first
/// container's `command` + `args` behind `sluice queue` (QUEUE-CONTRACT.md), or as is when
/// it carries the queue layer itself. Local mode runs no images: a container without a
/// command cannot run, and says so.
pub fn replica_spec(rev: &Revision) -> Result<ReplicaSpec, ReplicaFailure> {
    let Some(container) = rev.spec.containers.first() else {
        return Err(ReplicaFailure {
            reason: "ContainerMissing".into(),
            message: "the revision has no container to run".into(),
        });
    };
    if container.command.is_empty() {
        let name = container.name.as_deref().unwrap_or("user-container");
        return Err(ReplicaFailure {
            reason: "ContainerMissing".into(),
            message: match &container.image {
                Some(image) => format!(
                    "local mode runs no images: container {name:?} (image {image:?}) has no command; give containers[0].command"
                ),
                None => format!("container {name:?} has no command"),
            },
        });
    }
    let in_process = rev
        .metadata
        .annotations
        .get(IN_PROCESS_QUEUE_ANNOTATION)
        .is_some_and(|v| v == "true");
    let mut command = Vec::new();
    if !in_process {
        let cc = rev.spec.container_concurrency.unwrap_or(0).max(0);
        command.extend([
            "sluice".to_owned(),
            "queue".to_owned(),
            "--container-concurrency".to_owned(),
            cc.to_string(),
            "--timeout-seconds".to_owned(),
            timeout(rev).as_secs().to_string(),
        ]);
        if let Some(t) = rev.spec.response_start_timeout_seconds.filter(|t| *t > 0) {
            command.extend(["--response-start-timeout-seconds".to_owned(), t.to_string()]);
        }
        if let Some(t) = rev.spec.idle_timeout_seconds.filter(|t| *t > 0) {
            command.extend(["--idle-timeout-seconds".to_owned(), t.to_string()]);
        }
        if container
            .ports
            .iter()
            .any(|p| p.name.as_deref() == Some("h2c"))
        {
            command.push("--h2c".to_owned());
        }
        command.push("--".to_owned());
    }
    command.extend(container.command.iter().cloned());
    command.extend(container.args.iter().cloned());
    let mut env: Vec<(String, String)> = container
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let label = |k: &str| rev.metadata.labels.get(k).cloned().unwrap_or_default();
    env.push(("K_SERVICE".into(), label(SERVICE_LABEL)));
    env.push(("K_CONFIGURATION".into(), label(CONFIGURATION_LABEL)));
    env.push(("K_REVISION".into(), rev.metadata.name.clone()));
    // For the mesh in local mode: the replica's identity (SPIFFE `sa/…`) and the labels
    // authorization policies select on.
    let sa = rev
        .spec
        .extra
        .get("serviceAccountName")
        .and_then(|v| v.as_str());
    env.push((
        "SLUICE_SERVICE_ACCOUNT".into(),
        sa.unwrap_or("default").to_owned(),
    ));
    env.push((
        "SLUICE_POD_LABELS".into(),
        serde_json::to_string(&rev.metadata.labels).unwrap_or_default(),
    ));
    Ok(ReplicaSpec {
        revision: key(rev),
        uid: rev.metadata.uid.clone().unwrap_or_default(),
        command,
        env,
        drain_timeout: timeout(rev),
    })
}

/// Knative's `initial-scale: 0` (with `allow-zero-initial-scale`): the revision is ready
/// without ever running a replica, and starts one on its first request.
fn starts_at_zero(rev: &Revision, desired: u32) -> bool {
    desired == 0
        && rev
            .metadata
            .annotations
            .get("autoscaling.knative.dev/initial-scale")
            .is_some_and(|v| v.trim() == "0")
}

/// The revision's status: replicas, and `Ready`/`Active`/`ContainerHealthy` conditions.
pub fn revision_status(
    rev: &Revision,
    runtime: &RevisionRuntimeStatus,
    desired: u32,
) -> RevisionStatus {
    let was_ready = rev
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Ready"))
        .is_some_and(Condition::is_true);
    let actual = runtime.ready.len() as u32;
    let conditions = if actual > 0 {
        vec![
            Condition::ok("Active"),
            Condition::ok("ContainerHealthy"),
            Condition::ok("Ready"),
            Condition::ok("ResourcesAvailable"),
        ]
    } else if let Some(failure) = &runtime.failure {
        let failed = |t: &str| Condition::failed(t, &failure.reason, failure.message.clone());
        vec![
            Condition::unknown("Active", "Deploying", "no replica is running"),
            failed("ContainerHealthy"),
            failed("Ready"),
            Condition::ok("ResourcesAvailable"),
        ]
    } else if was_ready || starts_at_zero(rev, desired) {
        // Scaled to zero, or being woken from zero by the activator: still ready, so it
        // keeps its traffic and the activator holds requests meanwhile.
        let active = if desired == 0 {
            Condition::failed(
                "Active",
                "NoTraffic",
                "The target is not receiving traffic.",
            )
        } else {
            Condition::unknown(
                "Active",
                "Activating",
                "starting a replica for waiting requests",
            )
        };
        vec![
            active,
            Condition::ok("ContainerHealthy"),
            Condition::ok("Ready"),
            Condition::ok("ResourcesAvailable"),
        ]
    } else {
        let deploying =
            |t: &str| Condition::unknown(t, "Deploying", "waiting for a replica to become ready");
        vec![
            deploying("Active"),
            deploying("ContainerHealthy"),
            deploying("Ready"),
            Condition::ok("ResourcesAvailable"),
        ]
    };
    RevisionStatus {
        conditions,
        actual_replicas: actual,
        desired_replicas: desired,
        observed_generation: rev.metadata.generation,
    }
}

#[cfg(test)]
mod tests {
    use sluice_crds::ConditionStatus;
    use sluice_crds::ObjectMeta;
    use sluice_crds::service::{Container, RevisionSpec};

    use super::*;

    fn rev() -> Revision {
        Revision {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Revision".into(),
            metadata: ObjectMeta {
                name: "iris-predictor-00001".into(),
                namespace: Some("default".into()),
                labels: [(SERVICE_LABEL.to_owned(), "iris-predictor".to_owned())].into(),
                annotations: [(IN_PROCESS_QUEUE_ANNOTATION.to_owned(), "true".to_owned())].into(),
                ..ObjectMeta::default()
            },
            spec: RevisionSpec {
                timeout_seconds: Some(30),
                containers: vec![Container {
                    command: vec!["sluice".into(), "model-server".into()],
                    args: vec!["--x".into()],
                    ..Container::default()
                }],
                ..RevisionSpec::default()
            },
            status: None,
        }
    }

    #[test]
    fn response_timeouts_reach_the_routing_snapshot_only_when_set() {
        let mut r = rev();
        assert_eq!(response_timeouts(&r), ResponseTimeouts::default());
        r.spec.response_start_timeout_seconds = Some(10);
        r.spec.idle_timeout_seconds = Some(0);
        assert_eq!(
            response_timeouts(&r),
            ResponseTimeouts {
                response_start: Some(Duration::from_secs(10)),
                idle: None,
            }
        );
        r.spec.idle_timeout_seconds = Some(7);
        assert_eq!(response_timeouts(&r).idle, Some(Duration::from_secs(7)));
    }

    #[test]
    fn user_containers_run_behind_sluice_queue() {
        let mut r = rev();
        r.metadata.annotations.clear();
        r.spec.container_concurrency = Some(4);
        r.spec.response_start_timeout_seconds = Some(10);
        r.spec.containers[0].command = vec!["hello-server".into()];
        r.spec.containers[0].env = vec![sluice_crds::service::EnvVar::new("TARGET", "Sluice")];
        r.spec.containers[0].ports = vec![sluice_crds::service::ContainerPort {
            name: Some("h2c".into()),
            ..Default::default()
        }];
        let spec = replica_spec(&r).unwrap();
        assert_eq!(
            spec.command,
            [
                "sluice",
                "queue",
                "--container-concurrency",
                "4",
                "--timeout-seconds",
                "30",
                "--response-start-timeout-seconds",
                "10",
                "--h2c",
                "--",
                "hello-server",
                "--x"
            ]
        );
        assert!(spec.env.contains(&("TARGET".into(), "Sluice".into())));
        assert!(
            spec.env
                .contains(&("K_CONFIGURATION".into(), String::new()))
        );
    }

    #[test]
    fn an_image_without_command_cannot_run_locally() {
        let mut r = rev();
        r.spec.containers[0].command.clear();
        r.spec.containers[0].image = Some("ghcr.io/knative/helloworld-go".into());
        let failure = replica_spec(&r).unwrap_err();
        assert_eq!(failure.reason, "ContainerMissing");
        assert!(
            failure.message.contains("ghcr.io/knative/helloworld-go"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn replica_spec_has_command_env_and_drain() {
        let spec = replica_spec(&rev()).unwrap();
        assert_eq!(spec.command, ["sluice", "model-server", "--x"]);
        assert!(
            spec.env
                .contains(&("K_REVISION".into(), "iris-predictor-00001".into()))
        );
        assert!(
            spec.env
                .contains(&("K_SERVICE".into(), "iris-predictor".into()))
        );
        assert_eq!(spec.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn initial_scale_zero_is_ready_without_a_replica() {
        let mut r = rev();
        r.metadata
            .annotations
            .insert("autoscaling.knative.dev/initial-scale".into(), "0".into());
        let st = revision_status(&r, &RevisionRuntimeStatus::default(), 0);
        assert!(find_condition(&st.conditions, "Ready").unwrap().is_true());
        assert_eq!(
            find_condition(&st.conditions, "Active")
                .unwrap()
                .reason
                .as_deref(),
            Some("NoTraffic")
        );
        // Once asked for a replica, it is not ready before one is.
        let st = revision_status(&r, &RevisionRuntimeStatus::default(), 1);
        assert!(!find_condition(&st.conditions, "Ready").unwrap().is_true());
    }

    #[test]
    fn status_follows_replicas_failures_and_zero() {
        let mut r = rev();
        let deploying = revision_status(&r, &RevisionRuntimeStatus::default(), 1);
        assert_eq!(
            find_condition(&deploying.conditions, "Ready")
                .unwrap()
                .status,
            ConditionStatus::Unknown
        );
        let running = RevisionRuntimeStatus {
            ready: vec!["127.0.0.1:1".parse().unwrap()],
            ..Default::default()
        };
        let ready = revision_status(&r, &running, 1);
        assert_eq!((ready.actual_replicas, ready.desired_replicas), (1, 1));
        r.status = Some(ready);
        let zero = revision_status(&r, &RevisionRuntimeStatus::default(), 0);
        assert!(find_condition(&zero.conditions, "Ready").unwrap().is_true());
        assert_eq!(
            find_condition(&zero.conditions, "Active")
                .unwrap()
                .reason
                .as_deref(),
            Some("NoTraffic")
        );
        // Waking from zero keeps it ready (and routed).
        let waking = revision_status(&r, &RevisionRuntimeStatus::default(), 1);
        assert!(
            find_condition(&waking.conditions, "Ready")
                .unwrap()
                .is_true()
        );
        assert_eq!(
            find_condition(&waking.conditions, "Active")
                .unwrap()
                .reason
                .as_deref(),
            Some("Activating")
        );
        let failed = RevisionRuntimeStatus {
            failure: Some(ReplicaFailure {
                reason: "ExitCode".into(),
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let st = revision_status(&r, &failed, 1);
        let c = find_condition(&st.conditions, "Ready").unwrap();
        assert_eq!(
            (c.status, c.reason.as_deref(), c.message.as_deref()),
            (ConditionStatus::False, Some("ExitCode"), Some("boom"))
        );
    }
}
