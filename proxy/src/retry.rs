//! The retry budget: retries may add at most a fixed share to the request load, so a
//! failing revision is never hit by a retry storm.
//!
//! Only safe retries are ever attempted (the connection to the replica was refused or
//! failed before any byte of the request left); the budget bounds even those.

use std::sync::atomic::{AtomicI64, Ordering};

/// Milli-retries: one retry costs this many tokens.
const RETRY_COST: i64 = 1000;

/// Retry budget settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryConfig {
    /// Retries allowed per request sent (0.2 = retries add at most 20 % load).
    pub ratio: f64,
    /// Retries available before any request has deposited (and always the floor).
    pub reserve: u32,
    /// Most retries that can be saved up.
    pub max_saved: u32,
    /// Attempts per request at most (first try included).
    pub max_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            reserve: 10,
            max_saved: 100,
            max_attempts: 3,
        }
    }
}

/// A shared token bucket: each request deposits `ratio` of a retry, each retry withdraws one.
#[derive(Debug)]
pub struct RetryBudget {
    tokens: AtomicI64,
    deposit: i64,
    max: i64,
    /// Attempts per request at most.
    pub max_attempts: u32,
}

impl RetryBudget {
    /// A full budget.
    pub fn new(config: RetryConfig) -> Self {
        let reserve = i64::from(config.reserve) * RETRY_COST;
        Self {
            tokens: AtomicI64::new(reserve),
            deposit: (config.ratio.clamp(0.0, 1.0) * RETRY_COST as f64) as i64,
            max: (i64::from(config.max_saved) * RETRY_COST).max(reserve),
            max_attempts: config.max_attempts.max(1),
        }
    }

    /// A request was sent.
    pub fn deposit(&self) {
        if self.tokens.load(Ordering::Relaxed) >= self.max {
            return;
        }
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                Some((t + self.deposit).min(self.max))
            });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                (t >= RETRY_COST).then_some(t - RETRY_COST)
            })
            .is_ok()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(RetryConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_the_reserve_plus_a_share_of_requests() {
        let b = RetryBudget::new(RetryConfig {
            ratio: 0.2,
            reserve: 2,
            max_saved: 3,
            max_attempts: 3,
        });
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw(), "reserve spent");
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw(), "five requests earn one retry");
        assert!(!b.withdraw());
        for _ in 0..100 {
            b.deposit();
        }
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        assert_eq!(n, 3, "savings are capped");
    }
}
