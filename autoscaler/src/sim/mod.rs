//! The trace simulator: replays arrivals on a virtual clock through the real [`Decider`]
//! (the same type the runner ticks), with replicas that take a cold start to become ready
//! and serve a bounded number of requests at a time.
//!
//! [`Decider`]: crate::Decider

mod generate;
mod simulate;
mod trace;

pub use generate::{TraceKind, diurnal_rate, generate, true_daily_rates};
pub use simulate::{SimConfig, SimReport, simulate};
pub use trace::{Arrival, TraceError, parse_trace};
