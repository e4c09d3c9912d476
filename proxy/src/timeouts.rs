//! A revision's response timeouts (`timeoutSeconds`, `responseStartTimeoutSeconds`,
//! `idleTimeoutSeconds`) and the body wrapper that enforces the idle one.
//!
//! As in Knative's conformance tests, `timeoutSeconds` bounds the wait for the response to
//! *start*: a response whose first byte arrives in time may stream for longer.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sluice_core::{ResponseTimeouts, RevisionRoute};
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, ProxyBody};

/// Which limit a timeout enforced (named as in the Knative revision spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// `timeoutSeconds`.
    Request,
    /// `responseStartTimeoutSeconds`.
    ResponseStart,
    /// `idleTimeoutSeconds`.
    Idle,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Request => "timeoutSeconds",
            Self::ResponseStart => "responseStartTimeoutSeconds",
            Self::Idle => "idleTimeoutSeconds",
        })
    }
}

/// The timeouts one request runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `timeoutSeconds`: the longest wait for the response to start, queueing included.
    pub request: Duration,
    /// `responseStartTimeoutSeconds`; `None` = `request`.
    pub response_start: Option<Duration>,
    /// `idleTimeoutSeconds`: the longest silence, before or during the response; `None` = off.
    pub idle: Option<Duration>,
}

/// When the response must have started, and which limit says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The limit that sets it.
    pub kind: TimeoutKind,
    /// The limit's value.
    pub limit: Duration,
}

impl Timeouts {
    /// A revision's timeouts as the routing snapshot gives them.
    pub fn of(route: &RevisionRoute, extra: ResponseTimeouts) -> Self {
        Self {
            request: route.timeout,
            response_start: extra.response_start,
            idle: extra.idle,
        }
    }

    /// Only `timeoutSeconds`.
    pub fn request_only(request: Duration) -> Self {
        Self {
            request,
            response_start: None,
            idle: None,
        }
    }

    /// The deadline for the response to start for a request that arrived at `start`: the
    /// tightest of the three limits (on a tie, the more general one is named).
    pub fn response_deadline(&self, start: Instant) -> Deadline {
        let mut best = (self.request, TimeoutKind::Request);
        for (limit, kind) in [
            (self.response_start, TimeoutKind::ResponseStart),
            (self.idle, TimeoutKind::Idle),
        ] {
            if let Some(limit) = limit.filter(|l| *l < best.0) {
                best = (limit, kind);
            }
        }
        Deadline {
            at: start + best.0,
            kind: best.1,
            limit: best.0,
        }
    }
}

/// The body error when a response goes silent for longer than `idleTimeoutSeconds`.
#[derive(Debug, thiserror::Error)]
#[error("response idle for longer than {0:?} (idleTimeoutSeconds)")]
pub struct IdleTimeout(pub Duration);

/// A response body that fails once no frame has arrived for `idle`.
pub struct IdleBody {
    inner: ProxyBody,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleBody {
    /// Wraps `inner`; the clock starts now.
    pub fn new(inner: ProxyBody, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeout(this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_names_the_tightest_limit() {
        let now = Instant::now();
        let t = Timeouts::request_only(secs(10));
        assert_eq!(t.response_deadline(now).kind, TimeoutKind::Request);
        let t = Timeouts {
            request: secs(10),
            response_start: Some(secs(3)),
            idle: Some(secs(5)),
        };
        let d = t.response_deadline(now);
        assert_eq!((d.kind, d.at), (TimeoutKind::ResponseStart, now + secs(3)));
        let t = Timeouts {
            request: secs(10),
            response_start: Some(secs(10)),
            idle: Some(secs(2)),
        };
        assert_eq!(t.response_deadline(now).kind, TimeoutKind::Idle);
        // A tie names timeoutSeconds.
        let t = Timeouts {
            request: secs(10),
            response_start: Some(secs(10)),
            idle: None,
        };
        assert_eq!(t.response_deadline(now).kind, TimeoutKind::Request);
    }

    /// A body fed by a channel, so the test decides when each frame arrives.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_body_fails_only_after_a_silent_gap() {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let mut body = IdleBody::new(ChannelBody(rx).boxed(), secs(2));
        // Chunks 1.5 s apart never trip a 2 s idle limit.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.send(Bytes::from_static(b"x")).await.unwrap();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        // Then silence: the body errors after 2 s.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("idleTimeoutSeconds"), "{err}");
        drop(tx);
    }
}
