//! Collects each ready replica's queue-layer stats once per interval (as Knative's
//! autoscaler scrapes queue-proxies) and forwards them as `StatReport`s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_core::replica::STATS_PATH;
use sluice_core::{PeriodStats, RoutingSnapshot, StatReport, StatSource};
use sluice_mesh::tls::{MeshConnector, MeshHttpConnector};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

const MAX_STATS_BYTES: usize = 64 * 1024;

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The request failed.
    #[error("request to {0} failed: {1}")]
    Request(SocketAddr, String),
    /// The replica answered with an error status.
    #[error("{0} answered {1}")]
    Status(SocketAddr, http::StatusCode),
    /// The body was not a stats object.
    #[error("{0} sent malformed stats: {1}")]
    Body(SocketAddr, String),
    /// No answer in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
}

/// Scrapes replicas listed in the routing snapshot.
#[derive(Clone, Debug)]
pub struct Scraper {
    client: Client<MeshHttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Scraper {
    /// A scraper whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::with_mesh(timeout, None)
    }

    /// A scraper that reaches replicas over mTLS through `mesh` (when given).
    pub fn with_mesh(timeout: Duration, mesh: Option<MeshConnector>) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(MeshHttpConnector::new(mesh)),
            timeout,
        }
    }

    /// Fetches one replica's stats for the period since its last scrape.
    pub async fn scrape(&self, addr: SocketAddr) -> Result<PeriodStats, ScrapeError> {
        let uri: http::Uri = format!("http://{addr}{STATS_PATH}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| ScrapeError::Request(addr, e.to_string()))?;
        let fetch = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| ScrapeError::Request(addr, e.to_string()))?;
            if !resp.status().is_success() {
                return Err(ScrapeError::Status(addr, resp.status()));
            }
            let body = http_body_util::Limited::new(resp.into_body(), MAX_STATS_BYTES)
                .collect()
                .await
                .map_err(|e| ScrapeError::Body(addr, e.to_string()))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| ScrapeError::Body(addr, e.to_string()))
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| ScrapeError::Timeout(addr, self.timeout))?
    }

    /// Every `interval`, scrapes every ready endpoint of every revision in the current
    /// snapshot and sends the reports to `stats`. Returns when `stats` closes.
    pub async fn run(
        self,
        interval: Duration,
        snapshot: watch::Receiver<Arc<RoutingSnapshot>>,
        stats: mpsc::Sender<StatReport>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snap = snapshot.borrow().clone();
            let mut set = JoinSet::new();
            for route in snap.revisions.values() {
                for endpoint in &route.endpoints {
                    let (scraper, key, addr) = (self.clone(), route.key.clone(), endpoint.addr);
                    set.spawn(async move { (key, addr, scraper.scrape(addr).await) });
                }
            }
            while let Some(joined) = set.join_next().await {
                let Ok((key, addr, result)) = joined else {
                    continue;
                };
                match result {
                    Ok(period) => {
                        let report = period.into_report(key, StatSource::Replica(addr.to_string()));
                        if stats.send(report).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(revision = %key, "scrape failed: {e}"),
                }
            }
        }
    }
}
