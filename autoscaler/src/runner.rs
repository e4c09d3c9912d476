//! The autoscaler task: ticks every revision's decider and emits changed decisions.

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::{NamespacedName, RevisionScaling, ScaleDecision, StatReport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::decider::{Decider, DeciderConfig, Decision};

/// Autoscaler settings (Knative's `config-autoscaler`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoscalerConfig {
    /// Decision interval.
    pub tick: Duration,
    /// How long the activator is in path before a revision's last replica is removed.
    pub scale_to_zero_grace: Duration,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(2),
            scale_to_zero_grace: Duration::from_secs(30),
        }
    }
}

enum Command {
    Upsert(NamespacedName, RevisionScaling, Option<u32>),
    Remove(NamespacedName),
    Ready(NamespacedName, u32),
}

/// Tells the autoscaler which revisions exist and how many replicas each has ready.
#[derive(Clone, Debug)]
pub struct AutoscalerHandle {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Upsert(k, _, _) => write!(f, "Upsert({k})"),
            Command::Remove(k) => write!(f, "Remove({k})"),
            Command::Ready(k, n) => write!(f, "Ready({k}, {n})"),
        }
    }
}

impl AutoscalerHandle {
    /// Starts (or reconfigures) scaling of a revision. `resumed` is the scale it already
    /// had (e.g. from its stored status after a restart); `None` for a new revision.
    /// Returns false once the autoscaler has stopped.
    pub async fn upsert(
        &self,
        revision: NamespacedName,
        scaling: RevisionScaling,
        resumed: Option<u32>,
    ) -> bool {
        self.commands
            .send(Command::Upsert(revision, scaling, resumed))
            .await
            .is_ok()
    }

    /// Stops scaling a revision.
    pub async fn remove(&self, revision: NamespacedName) -> bool {
        self.commands.send(Command::Remove(revision)).await.is_ok()
    }

    /// Reports how many replicas of a revision are ready.
    pub async fn set_ready(&self, revision: NamespacedName, ready: u32) -> bool {
        self.commands
            .send(Command::Ready(revision, ready))
            .await
            .is_ok()
    }
}

struct Entry {
    decider: Decider,
    ready: u32,
    emitted: Option<Decision>,
}

/// Starts the autoscaler. It reads `stats`, and sends a decision on `decisions` whenever a
/// revision's desired scale or activator placement changes. It stops when `decisions`
/// closes or every handle is dropped.
pub fn spawn(
    config: AutoscalerConfig,
    mut stats: mpsc::Receiver<StatReport>,
    decisions: mpsc::Sender<ScaleDecision>,
) -> (AutoscalerHandle, JoinHandle<()>) {
    let (tx, mut commands) = mpsc::channel::<Command>(256);
    let task = tokio::spawn(async move {
        let mut revisions: HashMap<NamespacedName, Entry> = HashMap::new();
        let mut tick = tokio::time::interval(config.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Commands first (a stat for a revision just upserted must not be dropped for
                // arriving first), then the tick (never starved by a busy stats channel).
                biased;
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let now = Instant::now();
                    match command {
                        Command::Upsert(key, scaling, resumed) => {
                            let cfg = DeciderConfig {
                                scaling,
                                scale_to_zero_grace: config.scale_to_zero_grace,
                            };
                            match revisions.get_mut(&key) {
                                Some(entry) => entry.decider.reconfigure(cfg),
                                None => {
                                    let mut decider = Decider::new(cfg, now, resumed);
                                    decider.set_tick(config.tick);
                                    let mut entry = Entry {
                                        decider,
                                        ready: 0,
                                        emitted: None,
                                    };
                                    if !emit(&key, &mut entry, now, &decisions).await {
                                        return;
                                    }
                                    revisions.insert(key, entry);
                                }
                            }
                        }
                        Command::Remove(key) => {
                            revisions.remove(&key);
                        }
                        Command::Ready(key, ready) => {
                            if let Some(entry) = revisions.get_mut(&key) {
                                entry.ready = ready;
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for (key, entry) in revisions.iter_mut() {
                        if !emit(key, entry, now, &decisions).await {
                            return;
                        }
                    }
                }
                Some(report) = stats.recv() => {
                    let now = Instant::now();
                    let Some(entry) = revisions.get_mut(&report.revision) else { continue };
                    entry.decider.record(now, &report);
                    // A stat for a revision at zero means a request is waiting: decide now.
                    if entry.decider.last().desired == 0 {
                        let key = report.revision.clone();
                        if !emit(&key, entry, now, &decisions).await {
                            return;
                        }
                    }
                }
            }
        }
    });
    (AutoscalerHandle { commands: tx }, task)
}

async fn emit(
    key: &NamespacedName,
    entry: &mut Entry,
    now: Instant,
    decisions: &mpsc::Sender<ScaleDecision>,
) -> bool {
    let decision = entry.decider.decide(now, entry.ready);
    if entry.emitted == Some(decision) || entry.emitted.is_some_and(|e| same(e, decision)) {
        return true;
    }
    entry.emitted = Some(decision);
    tracing::debug!(revision = %key, desired = decision.desired, reason = %decision.reason,
        activator_in_path = decision.activator_in_path, "scale decision");
    decisions
        .send(ScaleDecision {
            revision: key.clone(),
            desired_replicas: decision.desired,
            activator_in_path: decision.activator_in_path,
            reason: decision.reason,
        })
        .await
        .is_ok()
}

/// Decisions that differ only in their reason need not be re-sent.
fn same(a: Decision, b: Decision) -> bool {
    a.desired == b.desired && a.activator_in_path == b.activator_in_path
}

#[cfg(test)]
mod tests {
    use sluice_core::ScaleReason;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn scales_to_zero_and_back_on_a_stat() {
        let (stats_tx, stats_rx) = mpsc::channel(16);
        let (dec_tx, mut dec_rx) = mpsc::channel(16);
        let config = AutoscalerConfig {
            tick: Duration::from_secs(2),
            scale_to_zero_grace: Duration::from_secs(1),
        };
        let (handle, _task) = spawn(config, stats_rx, dec_tx);
        let key = NamespacedName::new("default", "r-00001");
        let scaling = RevisionScaling {
            stable_window: Duration::from_secs(6),
            ..RevisionScaling::default()
        };
        assert!(handle.upsert(key.clone(), scaling, None).await);
        let first = dec_rx.recv().await.unwrap();
        assert_eq!(first.desired_replicas, 1);
        assert!(handle.set_ready(key.clone(), 1).await);
        // Paused time auto-advances to each tick; wait for the zero decision.
        let zero = loop {
            let d = dec_rx.recv().await.unwrap();
            if d.desired_replicas == 0 {
                break d;
            }
        };
        assert_eq!(zero.reason, ScaleReason::Zero);
        assert!(handle.set_ready(key.clone(), 0).await);
        let poked_at = Instant::now();
        stats_tx.send(StatReport::poke(key.clone())).await.unwrap();
        let up = dec_rx.recv().await.unwrap();
        assert_eq!(
            (up.desired_replicas, up.reason),
            (1, ScaleReason::Activation)
        );
        // Immediate: no tick had to pass.
        assert_eq!(Instant::now(), poked_at);
    }

    #[tokio::test(start_paused = true)]
    async fn load_is_acted_on_at_the_next_two_second_tick_not_at_once() {
        let (stats_tx, stats_rx) = mpsc::channel(16);
        let (dec_tx, mut dec_rx) = mpsc::channel(16);
        let (handle, _task) = spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
        let key = NamespacedName::new("default", "r-00001");
        let start = Instant::now();
        assert!(
            handle
                .upsert(key.clone(), RevisionScaling::default(), None)
                .await
        );
        assert_eq!(dec_rx.recv().await.unwrap().desired_replicas, 1);
        assert!(handle.set_ready(key.clone(), 1).await);
        // 700 in flight on the one replica: ceil(700/70) = 10, a panic.
        let report = StatReport {
            revision: key.clone(),
            source: sluice_core::StatSource::Replica("a".into()),
            average_concurrency: 700.0,
            average_proxied_concurrency: 0.0,
            request_count: 700,
            proxied_request_count: 0,
        };
        tokio::time::advance(Duration::from_millis(500)).await;
        stats_tx.send(report).await.unwrap();
        let up = dec_rx.recv().await.unwrap();
        assert_eq!((up.desired_replicas, up.reason), (10, ScaleReason::Panic));
        // Not at the stat (t+0.5 s) but at the tick (t+2 s).
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn pattern_policy_prewarms_on_a_tick_before_the_predicted_arrival() {
        let (stats_tx, stats_rx) = mpsc::channel(16);
        let (dec_tx, mut dec_rx) = mpsc::channel(16);
        let (handle, _task) = spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
        let key = NamespacedName::new("default", "cron-00001");
        let scaling = RevisionScaling {
            policy: sluice_core::ScalePolicy::Pattern,
            ..RevisionScaling::default()
        };
        let start = Instant::now();
        assert!(handle.upsert(key.clone(), scaling, Some(0)).await);
        assert_eq!(dec_rx.recv().await.unwrap().desired_replicas, 0);
        let request = StatReport {
            revision: key.clone(),
            source: sluice_core::StatSource::Replica("a".into()),
            average_concurrency: 1.0,
            average_proxied_concurrency: 0.0,
            request_count: 1,
            proxied_request_count: 0,
        };
        // One request every 120 s; the "runtime" makes whatever is desired ready at once.
        // The policy first keeps the KPA's replica (no cold start saved yet), pre-warms
        // from its allowance, and once a pre-warm saved a cold start goes to zero early.
        let period = Duration::from_secs(120);
        let mut sent = 0u32;
        let mut zeroed_after: Option<u32> = None;
        let prewarm = loop {
            let next = start + period * (sent + 1);
            tokio::select! {
                d = dec_rx.recv() => {
                    let d = d.unwrap();
                    if d.desired_replicas == 0 && zeroed_after.is_none() && sent > 0 {
                        let idle = Instant::now() - (start + period * sent);
                        // Long before the KPA's 60 s stable window would have allowed it.
                        if idle < Duration::from_secs(20) {
                            zeroed_after = Some(sent);
                        }
                    }
                    if zeroed_after.is_some() && d.desired_replicas > 0 {
                        break d;
                    }
                    assert!(handle.set_ready(key.clone(), d.desired_replicas).await);
                }
                _ = tokio::time::sleep_until(next), if zeroed_after.is_none() => {
                    assert!(sent < 40, "never went to zero early");
                    stats_tx.send(request.clone()).await.unwrap();
                    sent += 1;
                }
            }
        };
        // After the request that went to zero early, with no stat since, a tick brought a
        // replica back before the next would arrive.
        assert_eq!(prewarm.reason, ScaleReason::Prewarm);
        let at = Instant::now() - (start + period * zeroed_after.unwrap());
        assert!(
            at > Duration::from_secs(80) && at < Duration::from_secs(120),
            "{at:?}"
        );
        assert_eq!((Instant::now() - start).as_secs() % 2, 0, "on a 2 s tick");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stat_right_behind_the_upsert_is_not_dropped() {
        for _ in 0..20 {
            let (stats_tx, stats_rx) = mpsc::channel(16);
            let (dec_tx, mut dec_rx) = mpsc::channel(16);
            let (handle, _task) = spawn(AutoscalerConfig::default(), stats_rx, dec_tx);
            let key = NamespacedName::new("default", "new-00001");
            // Both queued before the runner runs: the upsert must be handled first.
            assert!(
                handle
                    .upsert(key.clone(), RevisionScaling::default(), Some(0))
                    .await
            );
            stats_tx.send(StatReport::poke(key.clone())).await.unwrap();
            assert_eq!(dec_rx.recv().await.unwrap().desired_replicas, 0);
            // At once (virtual time: less than a tick), not at some later tick or never.
            let up = tokio::time::timeout(Duration::from_secs(1), dec_rx.recv())
                .await
                .expect("the poke was dropped")
                .unwrap();
            assert_eq!(
                (up.desired_replicas, up.reason),
                (1, ScaleReason::Activation)
            );
        }
    }
}
