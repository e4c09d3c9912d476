//! The router's side of the autoscaler's stat stream in Kubernetes mode: its in-process
//! activator's StatReports, posted in batches to the leading controller's `POST /v1/stats`
//! (`sluice_autoscaler::endpoint`), over mutual TLS as the router's identity to exactly the
//! controller's with the mesh on, plain HTTP with it off.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_core::StatReport;
use sluice_core::outcomes::{MAX_OUTCOME_REVISIONS, RevisionOutcome, RouterOutcomes};
use sluice_mesh::identity::SpiffeId;
use sluice_mesh::outbound::OutboundMesh;
use sluice_mesh::tls::{ExpectedServer, MeshConnector, MeshHttpConnector, TlsConfigError};
use tokio::sync::mpsc;

/// `--autoscaler` does not name a stats endpoint usable with the mesh setting.
#[derive(Debug, thiserror::Error)]
#[error("--autoscaler {base:?}: {reason}")]
pub struct StatsTargetError {
    /// The URL as given.
    pub base: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why one post failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The request could not be made or sent.
    #[error("{0}")]
    Send(String),
    /// The autoscaler refused (status and what it said).
    #[error("answered {status}: {text}")]
    Refused {
        /// The status.
        status: http::StatusCode,
        /// The start of its body.
        text: String,
    },
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// StatReports the router holds for the autoscaler before the activator's are dropped.
pub const STATS_QUEUE: usize = 1024;
/// Most StatReports the router sends in one post.
const STATS_BATCH: usize = 512;
/// How long one post to the autoscaler may take.
const STATS_POST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a refusal's body the router reads (to log why).
const MAX_REFUSAL_BYTES: usize = 4096;

/// Where the router posts its activator's stats.
#[derive(Clone, Debug)]
pub struct StatsTarget {
    /// `http://HOST:PORT/…/v1/stats`: the URI the (mesh) connector dials; over mTLS the mesh
    /// adds the TLS, as on every mesh hop.
    uri: http::Uri,
    /// The URL as configured (for logs).
    shown: String,
}

/// `BASE` → `BASE/v1/stats`: `https://` with the mesh on (the stream is mTLS), `http://`
/// with it off; a mismatch is refused naming `--autoscaler` and `--mesh`.
pub fn stats_target(base: &str, mesh: bool) -> Result<StatsTarget, StatsTargetError> {
    let refuse = |reason: &str| StatsTargetError {
        base: base.to_owned(),
        reason: reason.to_owned(),
    };
    let shown = format!("{}/v1/stats", base.trim_end_matches('/'));
    let uri: http::Uri = shown.parse().map_err(|_| refuse("not a URL"))?;
    let Some(host) = uri.host() else {
        return Err(refuse("the autoscaler's URL needs a host"));
    };
    match (uri.scheme_str(), mesh) {
        (Some("http"), false) => Ok(StatsTarget { uri, shown }),
        (Some("https"), true) => {
            let port = uri.port_u16().unwrap_or(443);
            let path = uri.path_and_query().map_or("/v1/stats", |p| p.as_str());
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            let uri = format!("http://{host}:{port}{path}")
                .parse()
                .map_err(|_| refuse("not a URL"))?;
            Ok(StatsTarget { uri, shown })
        }
        (Some("http"), true) => Err(refuse(
            "with --mesh on the autoscaler's stat stream is mutual TLS: use https://HOST:PORT (or pass --mesh off for plain HTTP)",
        )),
        (Some("https"), false) => Err(refuse(
            "https:// is the mesh's mutual TLS, which --mesh off turns off: use http://HOST:PORT (or --mesh on)",
        )),
        _ => Err(refuse(
            "the autoscaler's URL must be https://HOST[:PORT] (--mesh on) or http://HOST[:PORT] (--mesh off)",
        )),
    }
}

/// The router's mTLS to the autoscaler: its mesh identity, and the controller's identity the
/// server must present.
#[derive(Clone, Debug)]
pub struct StatsMesh {
    /// The router's outbound mesh (its SVID from the CA).
    pub out: OutboundMesh,
    /// The controller's SPIFFE ID.
    pub server: SpiffeId,
}

type StatsClient = Client<MeshHttpConnector, Full<Bytes>>;

/// A client with a fresh connection pool: plain HTTP, or mTLS as the router's current
/// identity to exactly the controller's.
fn stats_client(mesh: Option<&StatsMesh>) -> Result<StatsClient, TlsConfigError> {
    let tls = match mesh {
        Some(m) => {
            let config = m
                .out
                .tls()
                .client_config(ExpectedServer::Exactly(m.server.clone()))?;
            let mut config = (*config).clone();
            // A resumed session would carry the certificate it was first made with.
            config.resumption = rustls::client::Resumption::disabled();
            Some(MeshConnector::new(Arc::new(config)))
        }
        None => None,
    };
    Ok(Client::builder(TokioExecutor::new()).build(MeshHttpConnector::new(tls)))
}

/// Posts the activator's StatReports to the autoscaler as they come (whatever is queued in
/// one post), until the activator stops; over mTLS with `mesh` (pooled connections are
/// dropped when the router's certificate rotates, so the controller sees the current one).
/// Reports that cannot be delivered are dropped and counted: stats are a stream, the next
/// second's replace them.
pub async fn post_stats(
    target: Option<StatsTarget>,
    mesh: Option<StatsMesh>,
    mut rx: mpsc::Receiver<StatReport>,
) {
    let Some(target) = target else {
        tracing::warn!(
            "no --autoscaler: the activator's stats are dropped, and revisions at zero stay at zero"
        );
        while rx.recv().await.is_some() {}
        return;
    };
    let url = target.shown.as_str();
    let generation = || mesh.as_ref().map(|m| m.out.generation());
    let mut client = match stats_client(mesh.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%url, "the activator's stats are dropped: the router's TLS config for the autoscaler: {e}");
            while rx.recv().await.is_some() {}
            return;
        }
    };
    let mut made_with = generation();
    let mut dropped = 0u64;
    let mut failing = false;
    let mut batch = Vec::with_capacity(STATS_BATCH);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < STATS_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let now = generation();
        if now != made_with {
            match stats_client(mesh.as_ref()) {
                Ok(c) => {
                    client = c;
                    made_with = now;
                }
                Err(e) => tracing::warn!(%url, "keeping the previous connections: {e}"),
            }
        }
        let result = post_batch(&client, &target.uri, &batch).await;
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!(%url, dropped, "the autoscaler takes stats again");
                    failing = false;
                }
                tracing::debug!(%url, reports = batch.len(), "stats posted");
            }
            Err(e) => {
                dropped += batch.len() as u64;
                if !failing {
                    tracing::warn!(%url, dropped, "posting stats to the autoscaler failed, dropping them: {e}");
                    failing = true;
                }
            }
        }
    }
}

/// One post; a refusal's error names the status and what the autoscaler said.
async fn post_batch(
    client: &StatsClient,
    uri: &http::Uri,
    batch: &[StatReport],
) -> Result<(), PostError> {
    let body = serde_json::to_vec(batch).map_err(|e| PostError::Send(e.to_string()))?;
    post_json(client, uri, body).await
}

/// How often the router posts its request outcomes.
pub const OUTCOMES_EVERY: Duration = Duration::from_secs(2);

/// Posts the router hop's request outcomes per revision (read from its `registry`) to the
/// leader's `…/v1/outcomes` every [`OUTCOMES_EVERY`], as `source` (unique to this router's
/// run), for SLO-gated rollouts. Runs until the task is dropped; a failed post is logged
/// once and the next one carries the counts (they are cumulative).
pub async fn post_outcomes(
    target: StatsTarget,
    mesh: Option<StatsMesh>,
    registry: sluice_mesh::telemetry::Registry,
    source: String,
) {
    let uri = match outcomes_uri(&target.uri) {
        Some(u) => u,
        None => {
            tracing::error!(url = %target.shown, "no outcomes URL next to the stats URL");
            return;
        }
    };
    let mut made_with = None;
    let mut client = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(OUTCOMES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = mesh.as_ref().map(|m| m.out.generation());
        if client.is_none() || now != made_with {
            match stats_client(mesh.as_ref()) {
                Ok(c) => {
                    client = Some(c);
                    made_with = now;
                }
                Err(e) => tracing::warn!("the outcomes client's TLS config: {e}"),
            }
        }
        let Some(c) = &client else { continue };
        let mut revisions: Vec<RevisionOutcome> =
            sluice_mesh::telemetry::outcomes::outcomes(&registry.encode())
                .into_iter()
                .map(|((namespace, revision), counts)| RevisionOutcome {
                    namespace,
                    revision,
                    counts,
                })
                .collect();
        revisions.truncate(MAX_OUTCOME_REVISIONS);
        let posted = RouterOutcomes {
            source: source.clone(),
            revisions,
        };
        let result = match serde_json::to_vec(&posted) {
            Ok(body) => post_json(c, &uri, body).await,
            Err(e) => Err(PostError::Send(e.to_string())),
        };
        match result {
            Ok(()) if failing => {
                tracing::info!(url = %uri, "the leader takes request outcomes again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(url = %uri, "posting request outcomes failed: {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// `…/v1/stats` → `…/v1/outcomes`.
fn outcomes_uri(stats: &http::Uri) -> Option<http::Uri> {
    let text = stats.to_string();
    let base = text.strip_suffix("/v1/stats")?;
    format!("{base}/v1/outcomes").parse().ok()
}

/// One JSON post to `uri`; a refusal's error names the status and what was said.
async fn post_json(client: &StatsClient, uri: &http::Uri, body: Vec<u8>) -> Result<(), PostError> {
    let request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PostError::Send(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| PostError::Send(sluice_core::error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = Limited::new(response.into_body(), MAX_REFUSAL_BYTES)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(PostError::Refused { status, text })
    };
    tokio::time::timeout(STATS_POST_TIMEOUT, exchange)
        .await
        .map_err(|_| PostError::Timeout(STATS_POST_TIMEOUT))?
}

/// One post of `batch` to `target` on a fresh connection, as `mesh` (the router's identity)
/// when given: what [`post_stats`] does per batch, for a caller that posts once.
pub async fn post_once(
    target: &StatsTarget,
    mesh: Option<&StatsMesh>,
    batch: &[StatReport],
) -> Result<(), PostError> {
    let client = stats_client(mesh).map_err(|e| PostError::Send(e.to_string()))?;
    post_batch(&client, &target.uri, batch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_autoscaler_url_follows_the_mesh() {
        let plain =
            stats_target("http://sluice-autoscaler.sluice-system.svc:8080/", false).unwrap();
        assert_eq!(
            plain.uri.to_string(),
            "http://sluice-autoscaler.sluice-system.svc:8080/v1/stats"
        );
        // Over mTLS the mesh connector dials an http:// URI and adds the TLS itself.
        let mtls = stats_target("https://sluice-autoscaler.sluice-system.svc:8080", true).unwrap();
        assert_eq!(
            mtls.uri.to_string(),
            "http://sluice-autoscaler.sluice-system.svc:8080/v1/stats"
        );
        assert_eq!(
            mtls.shown,
            "https://sluice-autoscaler.sluice-system.svc:8080/v1/stats"
        );
        assert_eq!(
            stats_target("https://a", true).unwrap().uri.to_string(),
            "http://a:443/v1/stats"
        );
        for (base, mesh, needle) in [
            ("http://a:1", true, "use https://"),
            ("https://a:1", false, "use http://"),
            ("ftp://a:1", true, "must be https://"),
            ("a b", false, "not a URL"),
        ] {
            let err = stats_target(base, mesh).unwrap_err().to_string();
            assert!(
                err.contains("--autoscaler") && err.contains(needle),
                "{base}: {err}"
            );
        }
    }
}
