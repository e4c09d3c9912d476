//! sluice-autoscaler: turns per-revision load into desired replica counts.
//!
//! Owns the 1-second metric buckets and window averages, the per-revision decider (a pure
//! function of its state, the stats seen and `now`, so it runs under a virtual clock), the
//! scale-to-zero state machine, the runner that ticks every revision and emits
//! `ScaleDecision`s, and the scraper that collects queue-layer stats from replicas.
//!
//! Not here: applying decisions (the controller's `Runtime`), measuring load (the queue
//! layer and activator in `sluice-activator`).
//!
//! This build implements the KPA's stable-window path and scale to zero; the panic window
//! and the traffic-pattern policy come with the autoscaler issue.

mod decider;
mod runner;
mod scrape;
mod window;

pub use decider::{Decider, DeciderConfig, Decision};
pub use runner::{AutoscalerConfig, AutoscalerHandle, spawn};
pub use scrape::{ScrapeError, Scraper};
pub use window::WindowedSum;
