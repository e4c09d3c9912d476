//! A holder that always hands out the current SVID and renews it at 50 % of its life, minus
//! a random jitter, so a fleet issued together does not renew together.
//!
//! New TLS connections pick up the new certificate through the rustls resolvers implemented
//! here; connections already open keep the certificate they were established with.

use std::sync::Arc;
use std::time::Duration;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ca::{CaError, SvidIssuer};
use super::spiffe::SpiffeId;
use super::svid::Svid;

/// How an identity is renewed.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// Life of each certificate requested.
    pub ttl: Duration,
    /// Largest share of the life by which renewal comes earlier than 50 % (0.0–0.5).
    pub jitter: f64,
    /// First retry delay after a failed renewal; doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl RotationConfig {
    /// Renewal at 40–50 % of `ttl`, retries from 1 s to 30 s.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            jitter: 0.1,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// When to renew a certificate with `lifetime`, given a uniform random `unit` in [0, 1).
pub fn renewal_delay(lifetime: Duration, jitter: f64, unit: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 0.5);
    lifetime.mul_f64(0.5 - jitter * unit.clamp(0.0, 1.0))
}

fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// The current SVID of one workload; cheap to clone, every clone sees renewals.
#[derive(Clone)]
pub struct RotatingSvid {
    rx: watch::Receiver<Arc<Svid>>,
    /// For a fixed SVID, the sender is kept here so the channel stays open.
    _fixed: Option<Arc<watch::Sender<Arc<Svid>>>>,
}

impl std::fmt::Debug for RotatingSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RotatingSvid")
            .field(&*self.rx.borrow())
            .finish()
    }
}

impl RotatingSvid {
    /// Issues the first SVID for `id` now and spawns the task that renews it. The task ends
    /// when every holder has been dropped.
    pub fn start(
        issuer: Arc<dyn SvidIssuer>,
        id: SpiffeId,
        config: RotationConfig,
    ) -> Result<(Self, JoinHandle<()>), CaError> {
        let first = Arc::new(issuer.issue(&id, config.ttl)?);
        let (tx, rx) = watch::channel(first);
        let task = tokio::spawn(renew_loop(issuer, id, config, tx));
        Ok((Self { rx, _fixed: None }, task))
    }

    /// A holder whose SVID never changes (e.g. one read from a file by a replica);
    /// [`RotatingSvid::changed`] then never returns.
    pub fn fixed(svid: Svid) -> Self {
        let (tx, rx) = watch::channel(Arc::new(svid));
        Self {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// A holder fed by `rx` (e.g. a replica re-reading its handed-off files); renewals are
    /// whatever the sender publishes.
    pub fn from_receiver(rx: watch::Receiver<Arc<Svid>>) -> Self {
        Self { rx, _fixed: None }
    }

    /// The SVID to use now.
    pub fn current(&self) -> Arc<Svid> {
        self.rx.borrow().clone()
    }

    /// Waits for the next renewal; `false` when renewal has stopped for good.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

async fn renew_loop(
    issuer: Arc<dyn SvidIssuer>,
    id: SpiffeId,
    config: RotationConfig,
    tx: watch::Sender<Arc<Svid>>,
) {
    let ttl = config.ttl;
    renew_with(config, tx, move || {
        let result = issuer.issue(&id, ttl);
        async move { result }
    })
    .await;
}

/// Publishes a new SVID from `issue` into `tx` at 40–50 % of the current one's life, retrying
/// failures with `config.retry_min` doubling up to `config.retry_max`; returns when every
/// receiver is gone. Shared by the in-process CA and the remote one.
pub(crate) async fn renew_with<F, Fut, E>(
    config: RotationConfig,
    tx: watch::Sender<Arc<Svid>>,
    mut issue: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Svid, E>>,
    E: std::fmt::Display,
{
    loop {
        let lifetime = tx.borrow().lifetime();
        let id = tx.borrow().id().clone();
        let delay = renewal_delay(lifetime, config.jitter, random_unit());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
        let mut backoff = sluice_core::Backoff::new(config.retry_min, config.retry_max);
        let svid = loop {
            let attempt = tokio::select! {
                result = issue() => result,
                _ = tx.closed() => return,
            };
            match attempt {
                Ok(svid) => break svid,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%id, %error, retry_in = ?delay, "certificate renewal failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        };
        tracing::debug!(id = %svid.id(), not_after = ?svid.not_after(), "certificate renewed");
        if tx.send(Arc::new(svid)).is_err() {
            return;
        }
    }
}

impl ResolvesServerCert for RotatingSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.rx.borrow().certified_key())
    }
}

impl ResolvesClientCert for RotatingSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        sigschemes
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| self.rx.borrow().certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_between_forty_and_fifty_percent() {
        let life = Duration::from_secs(24 * 3600);
        assert_eq!(
            renewal_delay(life, 0.1, 0.0),
            Duration::from_secs(12 * 3600)
        );
        let earliest = renewal_delay(life, 0.1, 0.999_999);
        assert!(earliest > life.mul_f64(0.399) && earliest <= life.mul_f64(0.4001));
        for _ in 0..100 {
            let d = renewal_delay(life, 0.1, random_unit());
            assert!(d >= life.mul_f64(0.4) && d <= life / 2, "{d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_forty_to_fifty_percent_and_hands_out_the_new_certificate() {
        let dir = std::env::temp_dir().join(format!("sluice-rotate-{}", uuid::Uuid::new_v4()));
        let ca = crate::identity::CertificateAuthority::load_or_create(
            &crate::identity::CaConfig::new("cluster.local", &dir),
        )
        .unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let (mut holder, task) = RotatingSvid::start(
            Arc::new(ca),
            id.clone(),
            RotationConfig::new(Duration::from_secs(100)),
        )
        .unwrap();
        let reader = holder.clone();
        for _ in 0..3 {
            let before = holder.current();
            let start = tokio::time::Instant::now();
            assert!(holder.changed().await);
            let waited = start.elapsed();
            assert!(
                waited >= Duration::from_secs(40) && waited <= Duration::from_secs(50),
                "{waited:?}"
            );
            let after = reader.current();
            assert_ne!(after.cert_der(), before.cert_der());
            assert_eq!(after.id(), &id);
        }
        drop(holder);
        drop(reader);
        // Every holder gone: the renewal task ends by itself.
        task.await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
