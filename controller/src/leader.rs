//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller
//! replicas exactly one reconciles.
//!
//! The protocol is client-go's: a candidate takes the Lease when it does not exist, is
//! released (no holder), or has not been renewed for `lease_duration` as measured on the
//! candidate's own clock since it last saw the Lease change (so clock skew between
//! replicas does not matter); every write carries the `resourceVersion` it read, so of two
//! candidates racing for it exactly one wins (the other gets 409 and stays standby). The
//! leader renews every `retry_period` and gives up leadership when it could not renew for
//! `renew_deadline` (shorter than the lease duration, so it stops before another can take
//! over).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

use crate::store::kube::{KubeError, api_code, classify};

/// Leader election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (unique per replica: the Pod name, or host and pid).
    pub identity: String,
    /// How long a Lease not renewed stays held (client-go's default: 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up (10 s).
    pub renew_deadline: Duration,
    /// How often candidates retry and the leader renews (2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults (15 s lease, 10 s renew deadline, 2 s retry period).
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the durations fit together.
    pub fn validate(&self) -> Result<(), String> {
        if self.identity.is_empty() {
            return Err("the leader election identity is empty".into());
        }
        if self.retry_period.is_zero() || self.renew_deadline <= self.retry_period {
            return Err(format!(
                "the renew deadline ({:?}) must be longer than the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// What a candidate last saw of the Lease, and when (on its own clock).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

/// One candidate.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Observed, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaderElector {
    /// A candidate for `config`'s Lease.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    fn err(e: kube::Error) -> KubeError {
        classify("update", "leases.coordination.k8s.io".into(), None, e)
    }

    /// Takes or renews the Lease once: whether this candidate holds it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let me = self.config.identity.clone();
        let Some(lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(Self::err)?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(seconds(self.config.lease_duration)),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if api_code(&e) == Some(409) => Ok(false),
                Err(e) => Err(Self::err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let seen = Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let at = match &self.observed {
            Some((o, at)) if *o == seen => *at,
            _ => Instant::now(),
        };
        self.observed = Some((seen, at));
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let mine = holder == me;
        let expired = holder.is_empty() || at.elapsed() >= duration;
        if !mine && !expired {
            return Ok(false);
        }
        let mut next = lease;
        let mut spec = spec;
        if !mine {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.lease_duration_seconds = Some(seconds(self.config.lease_duration));
        spec.renew_time = Some(now());
        next.spec = Some(spec);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            // Another candidate wrote first (renewed, or took it): not ours.
            Err(e) if api_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(Self::err(e)),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became the leader");
                    return;
                }
                Ok(false) => {
                    if !logged {
                        tracing::info!(identity = %self.config.identity, lease = %self.config.name, "standing by: another replica leads");
                        logged = true;
                    }
                }
                Err(e) => tracing::warn!(
                    "leader election failed, retrying: {}",
                    sluice_core::error_chain(&e)
                ),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the Lease until leadership is lost: another candidate took it, or no renewal
    /// succeeded within the renew deadline. Returns then.
    pub async fn hold(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    tracing::warn!(identity = %self.config.identity, "lost the lease to another replica");
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        "renewing the lease failed: {}",
                        sluice_core::error_chain(&e)
                    );
                    if renewed.elapsed() >= self.config.renew_deadline {
                        tracing::warn!(identity = %self.config.identity, "could not renew the lease within the renew deadline");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on a clean shutdown), so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!("releasing the lease failed: {e}");
        }
    }
}

/// Points the selector-less Service `service` (in `namespace`) at this leader: server-side
/// applies the EndpointSlice `service` with the one address `ip` and port `port` (named
/// `http`). Knative's autoscaler does the same, so that the stats the activators post reach
/// the leader and never a standby, whatever the Pods' readiness.
pub async fn advertise(
    client: Client,
    namespace: &str,
    service: &str,
    ip: std::net::IpAddr,
    port: u16,
) -> Result<(), KubeError> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Patch, PatchParams};
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let slice = endpoint_slice(service, ip, port);
    api.patch(
        service,
        &PatchParams::apply("sluice-controller").force(),
        &Patch::Apply(&slice),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        classify(
            "patch",
            format!("endpointslices.discovery.k8s.io {namespace}/{service}"),
            None,
            e,
        )
    })
}

/// The EndpointSlice of [`advertise`].
fn endpoint_slice(service: &str, ip: std::net::IpAddr, port: u16) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "sluice-controller",
            },
        },
        "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{ "addresses": [ip.to_string()], "conditions": { "ready": true } }],
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_nest() {
        let mut c = LeaseConfig::new("ns", "sluice-controller", "a");
        assert_eq!(c.validate(), Ok(()));
        c.renew_deadline = Duration::from_secs(20);
        assert!(c.validate().unwrap_err().contains("lease duration"));
        c.renew_deadline = Duration::from_secs(1);
        assert!(c.validate().unwrap_err().contains("retry period"));
        c.identity.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_advertised_slice_names_the_service_and_the_leader() {
        let s = endpoint_slice("sluice-autoscaler", "10.1.2.3".parse().unwrap(), 8080);
        assert_eq!(
            s["metadata"]["labels"]["kubernetes.io/service-name"],
            "sluice-autoscaler"
        );
        assert_eq!(s["addressType"], "IPv4");
        assert_eq!(s["endpoints"][0]["addresses"][0], "10.1.2.3");
        assert_eq!(s["ports"][0]["port"], 8080);
        let v6 = endpoint_slice("a", "fd00::1".parse().unwrap(), 1);
        assert_eq!(v6["addressType"], "IPv6");
    }
}
