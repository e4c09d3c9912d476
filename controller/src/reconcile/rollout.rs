//! Gradual rollout of a `latestRevision` target (Knative's `serving.knative.dev/rollout-duration`).
//!
//! When the target's latest ready revision changes from A to B and the Route's annotation
//! asks for a positive duration, B first gets 1 % of the target's share P and then grows in
//! `min(4, P - 1)` equal steps (rounded up, so 100 % goes 1 → 26 → 51 → 76 → 100), step k
//! taking effect `k · duration / steps` after the rollout started; what B gains is taken from
//! the oldest revisions first and a revision left with 0 % drops out. If C becomes the latest
//! mid-rollout, the rollout restarts toward C from the current split: C takes 1 % from the
//! newest previous revision and the steps start again (the older shares shrink, oldest first,
//! as C grows). If C was already in the split (a return to an older revision), its share
//! goes to the newest other revision first. The state lives in the Route's
//! `status.rollout`, so it survives a controller restart; times are wall-clock
//! milliseconds since the Unix epoch from the controller's clock.

use std::time::Duration;

use sluice_crds::rollout::{ConfigurationRollout, RolloutRevision};

/// Steps from 1 % to the whole share (fewer when the share is under 5 %).
pub const STEPS: u32 = 4;

/// Steps of a rollout over a share of `percent`.
pub fn steps_for(percent: i64) -> u32 {
    u32::try_from((percent - 1).clamp(0, i64::from(STEPS))).unwrap_or(STEPS)
}

/// The new revision's share after `k` of `steps` steps of a rollout over `percent`:
/// `1 + ceil(k · (percent − 1) / steps)`, which is `percent` at `k = steps`.
pub fn step_percent(percent: i64, steps: u32, k: u32) -> i64 {
    if steps == 0 || k >= steps {
        return percent;
    }
    let (k, steps) = (i64::from(k), i64::from(steps));
    1 + (k * (percent - 1) + steps - 1) / steps
}

/// When step `k` (1-based) takes effect: `started + k · duration / steps`, exact in
/// milliseconds (no drift when the duration does not divide).
pub fn step_at_ms(started_ms: i64, duration_ms: i64, steps: u32, k: u32) -> i64 {
    if steps == 0 {
        return started_ms;
    }
    let offset = i128::from(duration_ms) * i128::from(k) / i128::from(steps);
    started_ms.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
}

/// When the rollout's next step is due (`None`: it is complete).
pub fn next_step_ms(state: &ConfigurationRollout) -> Option<i64> {
    let steps = steps_for(state.percent);
    (state.steps_done < steps).then(|| {
        step_at_ms(
            state.started_at_ms,
            state.duration_ms,
            steps,
            state.steps_done + 1,
        )
    })
}

/// Takes `amount` from the revisions before the last, oldest first, dropping those left at 0.
fn take_from_oldest(revisions: &mut Vec<RolloutRevision>, mut amount: i64) {
    let last = revisions.len().saturating_sub(1);
    for r in revisions.iter_mut().take(last) {
        let taken = amount.min(r.percent);
        r.percent -= taken;
        amount -= taken;
    }
    revisions.retain(|r| r.percent > 0);
}

/// Takes every step due at `now_ms`; `true` when the rollout is complete.
fn advance(state: &mut ConfigurationRollout, now_ms: i64) -> bool {
    let steps = steps_for(state.percent);
    while let Some(due) = next_step_ms(state)
        && now_ms >= due
    {
        state.steps_done += 1;
    }
    let target = step_percent(state.percent, steps, state.steps_done);
    let current = state.revisions.last().map_or(0, |r| r.percent);
    take_from_oldest(&mut state.revisions, target - current);
    if let Some(last) = state.revisions.last_mut() {
        last.percent = target;
    }
    state.steps_done >= steps || state.revisions.len() <= 1
}

/// What one `latestRevision` target needs to plan its rollout.
pub struct Target<'a> {
    /// The configuration it follows.
    pub configuration: &'a str,
    /// Its tag.
    pub tag: Option<&'a str>,
    /// Its share.
    pub percent: i64,
    /// Its latest ready revision now.
    pub latest: &'a str,
}

/// The rollout state of a target at `now_ms`, given its previous state (if it was rolling
/// out) or else the revision it sent its share to before (`previous_revision`). `None`:
/// the latest revision has the whole share (no rollout asked for, none started, or done).
pub fn plan(
    target: &Target<'_>,
    previous: Option<&ConfigurationRollout>,
    previous_revision: Option<&str>,
    duration: Option<Duration>,
    now_ms: i64,
) -> Option<ConfigurationRollout> {
    let duration = duration?;
    if target.percent < 2 {
        return None;
    }
    let duration_ms = i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let mut state = match previous {
        Some(p) if p.percent == target.percent && !p.revisions.is_empty() => p.clone(),
        Some(p) => {
            // The target's share changed: restart from the revision it last rolled to.
            let from = p.revisions.last().map(|r| r.revision_name.as_str());
            return plan(target, None, from, Some(duration), now_ms);
        }
        None => {
            let from = previous_revision.filter(|&a| a != target.latest)?;
            ConfigurationRollout {
                configuration_name: target.configuration.to_owned(),
                tag: target.tag.map(str::to_owned),
                percent: target.percent,
                revisions: vec![RolloutRevision {
                    revision_name: from.to_owned(),
                    percent: target.percent,
                }],
                started_at_ms: now_ms,
                duration_ms,
                steps_done: 0,
            }
        }
    };
    let rolling_to = state.revisions.last().map(|r| r.revision_name.clone());
    if rolling_to.as_deref() != Some(target.latest) {
        // A new latest revision: restart toward it from the current split.
        if let Some(i) = state
            .revisions
            .iter()
            .position(|r| r.revision_name == target.latest)
        {
            let back = state.revisions.remove(i);
            if let Some(last) = state.revisions.last_mut() {
                last.percent += back.percent;
            }
        }
        if let Some(last) = state.revisions.last_mut() {
            last.percent -= 1;
        }
        state.revisions.retain(|r| r.percent > 0);
        state.revisions.push(RolloutRevision {
            revision_name: target.latest.to_owned(),
            percent: 1,
        });
        state.started_at_ms = now_ms;
        state.duration_ms = duration_ms;
        state.steps_done = 0;
    }
    if advance(&mut state, now_ms) {
        return None;
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(state: &Option<ConfigurationRollout>) -> Vec<(&str, i64)> {
        state.as_ref().map_or_else(Vec::new, |s| {
            s.revisions
                .iter()
                .map(|r| (r.revision_name.as_str(), r.percent))
                .collect()
        })
    }

    fn target<'a>(latest: &'a str, percent: i64) -> Target<'a> {
        Target {
            configuration: "hello",
            tag: None,
            percent,
            latest,
        }
    }

    #[test]
    fn step_arithmetic() {
        let s = steps_for(100);
        assert_eq!(s, 4);
        let p: Vec<i64> = (0..=s).map(|k| step_percent(100, s, k)).collect();
        assert_eq!(p, [1, 26, 51, 76, 100]);
        let p: Vec<i64> = (0..=4).map(|k| step_percent(50, 4, k)).collect();
        assert_eq!(p, [1, 14, 26, 38, 50]);
        assert_eq!(steps_for(3), 2);
        let p: Vec<i64> = (0..=2).map(|k| step_percent(3, 2, k)).collect();
        assert_eq!(p, [1, 2, 3]);
        assert_eq!(steps_for(1), 0);
        // 1001 ms in 4 steps: exact offsets, the last one at the whole duration.
        let at: Vec<i64> = (1..=4).map(|k| step_at_ms(10_000, 1001, 4, k)).collect();
        assert_eq!(at, [10_250, 10_500, 10_750, 11_001]);
    }

    #[test]
    fn rolls_out_in_steps_then_drops_the_old_revision() {
        let d = Some(Duration::from_secs(380));
        let t0 = 1_000_000;
        let mut state = plan(&target("b", 100), None, Some("a"), d, t0);
        assert_eq!(split(&state), [("a", 99), ("b", 1)]);
        // Not yet due: unchanged.
        state = plan(&target("b", 100), state.as_ref(), None, d, t0 + 94_999);
        assert_eq!(split(&state), [("a", 99), ("b", 1)]);
        for (k, want) in [(1, 26), (2, 51), (3, 76)] {
            state = plan(&target("b", 100), state.as_ref(), None, d, t0 + 95_000 * k);
            assert_eq!(split(&state), [("a", 100 - want), ("b", want)]);
            assert_eq!(
                next_step_ms(state.as_ref().unwrap()),
                Some(t0 + 95_000 * (k + 1))
            );
        }
        state = plan(&target("b", 100), state.as_ref(), None, d, t0 + 380_000);
        assert_eq!(state, None);
        // A late pass catches up several steps at once.
        let late = plan(&target("b", 100), None, Some("a"), d, t0);
        let late = plan(&target("b", 100), late.as_ref(), None, d, t0 + 200_000);
        assert_eq!(split(&late), [("a", 49), ("b", 51)]);
    }

    #[test]
    fn fifty_percent_target_and_no_rollout_without_duration() {
        let d = Some(Duration::from_secs(40));
        let mut state = plan(&target("b", 50), None, Some("a"), d, 0);
        assert_eq!(split(&state), [("a", 49), ("b", 1)]);
        for (k, want) in [(1, 14), (2, 26), (3, 38)] {
            state = plan(&target("b", 50), state.as_ref(), None, d, 10_000 * k);
            assert_eq!(split(&state), [("a", 50 - want), ("b", want)]);
        }
        assert_eq!(
            plan(&target("b", 50), state.as_ref(), None, d, 40_000),
            None
        );
        assert_eq!(plan(&target("b", 100), None, Some("a"), None, 0), None);
        // The first revision ever, or the same one: nothing to roll out.
        assert_eq!(plan(&target("b", 100), None, None, d, 0), None);
        assert_eq!(plan(&target("b", 100), None, Some("b"), d, 0), None);
    }

    #[test]
    fn a_newer_revision_mid_rollout_restarts_from_the_current_split() {
        let d = Some(Duration::from_secs(4));
        let state = plan(&target("b", 100), None, Some("a"), d, 0);
        let state = plan(&target("b", 100), state.as_ref(), None, d, 1_000);
        assert_eq!(split(&state), [("a", 74), ("b", 26)]);
        let state = plan(&target("c", 100), state.as_ref(), None, d, 1_500);
        assert_eq!(split(&state), [("a", 74), ("b", 25), ("c", 1)]);
        // C grows at the expense of the oldest first.
        let state = plan(&target("c", 100), state.as_ref(), None, d, 2_500);
        assert_eq!(split(&state), [("a", 49), ("b", 25), ("c", 26)]);
        let state = plan(&target("c", 100), state.as_ref(), None, d, 4_500);
        assert_eq!(split(&state), [("b", 24), ("c", 76)]);
        assert_eq!(
            plan(&target("c", 100), state.as_ref(), None, d, 5_500),
            None
        );
        // Back to A mid-rollout: its share goes to B, then A restarts at 1 %.
        let state = plan(&target("b", 100), None, Some("a"), d, 0);
        let state = plan(&target("b", 100), state.as_ref(), None, d, 1_000);
        let state = plan(&target("a", 100), state.as_ref(), None, d, 1_000);
        assert_eq!(split(&state), [("b", 99), ("a", 1)]);
    }
}
