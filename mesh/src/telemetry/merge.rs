//! Merging Prometheus text expositions from several sources (this process's registries and
//! every replica's `/sluice/metrics`) into one: what local mode's admin `/metrics` serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::outbound::OutboundMesh;
use crate::tls::MeshHttpConnector;

/// Largest metrics text read from one replica.
pub const MAX_REPLICA_METRICS: usize = 4 * 1024 * 1024;
/// Replicas scraped for one answer, at most.
pub const MAX_SCRAPED: usize = 256;

/// Merges Prometheus text expositions: one `# HELP`/`# TYPE` per family, then every
/// source's samples of it.
pub fn merge_expositions(texts: &[String]) -> String {
    struct Family {
        header: Vec<String>,
        samples: Vec<String>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for text in texts {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                current = name.clone();
                let fam = families.entry(name.clone()).or_insert_with(|| {
                    order.push(name.clone());
                    Family {
                        header: Vec::new(),
                        samples: Vec::new(),
                    }
                });
                if fam.header.len() < 2 && !fam.header.iter().any(|h| h == line) {
                    fam.header.push(line.to_owned());
                }
            } else if !line.trim().is_empty() && !line.starts_with('#') {
                let fam = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    Family {
                        header: Vec::new(),
                        samples: Vec::new(),
                    }
                });
                fam.samples.push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some(f) = families.get(&name) {
            for l in f.header.iter().chain(&f.samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// Fetches `path` from each of `replicas` (at most [`MAX_SCRAPED`], 1 s and
/// [`MAX_REPLICA_METRICS`] bytes each), over mTLS as `client` when given; the texts that
/// arrived (a replica that did not answer in time is left out).
pub async fn scrape_replicas(
    replicas: impl IntoIterator<Item = SocketAddr>,
    path: &str,
    client: Option<&OutboundMesh>,
) -> Vec<String> {
    let connector = MeshHttpConnector::new(client.map(|c| c.connector().clone()));
    let http: Client<MeshHttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut set = tokio::task::JoinSet::new();
    for addr in replicas.into_iter().take(MAX_SCRAPED) {
        let http = http.clone();
        let Ok(uri) = format!("http://{addr}{path}").parse::<http::Uri>() else {
            continue;
        };
        set.spawn(async move {
            let fetch = async {
                let resp = http.get(uri).await.ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let body = Limited::new(resp.into_body(), MAX_REPLICA_METRICS)
                    .collect()
                    .await
                    .ok()?
                    .to_bytes();
                String::from_utf8(body.to_vec()).ok()
            };
            let got = tokio::time::timeout(Duration::from_secs(1), fetch)
                .await
                .ok()
                .flatten();
            if got.is_none() {
                tracing::debug!(%addr, "replica metrics not scraped");
            }
            got
        });
    }
    let mut texts = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(Some(text)) = joined {
            texts.push(text);
        }
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_metrics_keep_one_header_per_family() {
        let one = "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"1\"} 1\n".to_owned();
        let two = "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"2\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 3\n".to_owned();
        assert_eq!(
            merge_expositions(&[one, two]),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{pod=\"1\"} 1\nx_total{pod=\"2\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 3\n"
        );
    }
}
