//! sluice-autoscaler: turns per-revision load into desired replica counts.
//!
//! Owns stats ingestion (1-second buckets of revision-wide load, without double counting
//! what the activator proxied, stale replicas expiring), Knative's KPA (stable and panic
//! windows, rate limits, scale-down delay, burst capacity), the scale-to-zero state machine,
//! Sluice's traffic-pattern policy, the runner that ticks every revision and emits
//! `ScaleDecision`s, the scraper that collects queue-layer stats from replicas, and a trace
//! simulator that replays arrivals through the same decider on a virtual clock.
//!
//! The decider is pure (state + stats + `now` → decision): the runner drives it with the
//! real clock, the simulator with a virtual one.
//!
//! Not here: applying decisions (the controller's `Runtime`), measuring load (the queue
//! layer in `sluice-queue` and the activator in `sluice-activator`), parsing annotations (`sluice-crds`).

pub mod daily;
mod decider;
pub mod endpoint;
pub mod kpa;
pub mod ledger;
pub mod pattern;
mod runner;
mod scrape;
pub mod sim;
mod window;

pub use decider::{ACTIVATION_TIMEOUT, Decider, DeciderConfig, Decision, PATTERN_ALLOWANCE};
pub use runner::{AutoscalerConfig, AutoscalerHandle, spawn};
pub use scrape::{ScrapeError, Scraper};
pub use window::WindowedSum;
