//! Retrying a call to the API server (or the mesh CA) with backoff while its failure is
//! one that may pass (the server not up yet, a 5xx), until it succeeds, fails for good, or
//! the process is told to stop.

use std::future::Future;
use std::time::Duration;

use sluice_core::Backoff;

/// How a retried call ended without a value.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E: std::error::Error + 'static> {
    /// A failure that will not pass.
    #[error("{what}")]
    Failed {
        /// What was being done.
        what: String,
        /// The last failure.
        #[source]
        source: E,
    },
    /// The process was told to stop meanwhile.
    #[error("stopped while {what}")]
    Stopped {
        /// What was being done.
        what: String,
    },
}

/// Calls `f` until it succeeds or fails with an error `retry` says will not pass, waiting
/// 0.5 s doubling up to 30 s between tries (each retried failure is logged); gives up when
/// the future `stopped()` makes resolves during a wait.
pub async fn with_retries<T, E, F, Fut, S, Stop>(
    what: &str,
    retry: impl Fn(&E) -> bool,
    mut f: F,
    stopped: S,
) -> Result<T, RetryError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
    S: Fn() -> Stop,
    Stop: Future<Output = ()>,
{
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if retry(&e) => {
                tracing::warn!("{what} failed, retrying: {}", sluice_core::error_chain(&e));
            }
            Err(source) => {
                return Err(RetryError::Failed {
                    what: what.to_owned(),
                    source,
                });
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = stopped() => return Err(RetryError::Stopped { what: what.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failure(&'static str);

    #[tokio::test(start_paused = true)]
    async fn retries_what_may_pass_and_stops_at_what_will_not() {
        let calls = AtomicU32::new(0);
        let got = with_retries(
            "asking",
            |e: &Failure| e.0 == "later",
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(Failure("later")),
                    _ => Ok(7),
                }
            },
            std::future::pending::<()>,
        )
        .await
        .unwrap();
        assert_eq!((got, calls.load(Ordering::SeqCst)), (7, 3));
        let err = with_retries(
            "asking",
            |e: &Failure| e.0 == "later",
            || async { Err::<u32, _>(Failure("never")) },
            std::future::pending::<()>,
        )
        .await
        .unwrap_err();
        assert_eq!(sluice_core::error_chain(&err), "asking: never");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_wait_ends_the_retries() {
        let err = with_retries(
            "waiting for the CA",
            |_: &Failure| true,
            || async { Err::<u32, _>(Failure("not up")) },
            || async {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RetryError::Stopped { .. }), "{err}");
        assert_eq!(err.to_string(), "stopped while waiting for the CA");
    }
}
