//! The request body on its way to a replica: bounded in size, and sendable again as long
//! as no byte of it has left (so a connection refused can be retried on another replica).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::proxy::{BoxError, ProxyBody};

/// The body error once a request body passes the configured limit.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

#[derive(Debug)]
struct Shared {
    /// The body until the first attempt starts reading it.
    unsent: Mutex<Option<ProxyBody>>,
    /// Set when the body went over the limit.
    too_large: AtomicBool,
}

/// A request body that can be handed to several attempts, as long as none read from it.
#[derive(Debug, Clone)]
pub struct ReplayableBody {
    shared: Arc<Shared>,
    end_stream: bool,
    hint: SizeHint,
    limit: Option<u64>,
}

impl ReplayableBody {
    /// Wraps `body`; with `limit`, reading more than `limit` bytes fails the body.
    pub fn new<B>(body: B, limit: Option<u64>) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let end_stream = body.is_end_stream();
        let hint = body.size_hint();
        Self {
            shared: Arc::new(Shared {
                unsent: Mutex::new(Some(body.map_err(Into::into).boxed())),
                too_large: AtomicBool::new(false),
            }),
            end_stream,
            hint,
            limit,
        }
    }

    /// A body for one attempt.
    pub fn attempt(&self) -> AttemptBody {
        AttemptBody {
            state: State::Unstarted(self.shared.clone()),
            end_stream: self.end_stream,
            hint: self.hint,
            limit: self.limit,
            read: 0,
        }
    }

    /// Whether no attempt has read from the body yet (so another attempt may send it).
    pub fn unsent(&self) -> bool {
        self.end_stream || self.lock().is_some()
    }

    /// The size limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Whether an attempt failed because the body went over the limit.
    pub fn too_large(&self) -> bool {
        self.shared.too_large.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProxyBody>> {
        self.shared.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum State {
    Unstarted(Arc<Shared>),
    Reading(ProxyBody, Arc<Shared>),
    Done,
}

/// The body one attempt sends.
pub struct AttemptBody {
    state: State,
    end_stream: bool,
    hint: SizeHint,
    limit: Option<u64>,
    read: u64,
}

/// The body error when another attempt already consumed the body.
#[derive(Debug, thiserror::Error)]
#[error("request body was already sent to another replica")]
struct AlreadySent;

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.end_stream {
            return Poll::Ready(None);
        }
        if let State::Unstarted(shared) = &this.state {
            let taken = shared
                .unsent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            this.state = match taken {
                Some(body) => State::Reading(body, shared.clone()),
                None => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(Box::new(AlreadySent))));
                }
            };
        }
        let State::Reading(body, shared) = &mut this.state else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(limit), Some(data)) = (this.limit, frame.data_ref()) {
                    this.read += data.len() as u64;
                    if this.read > limit {
                        shared.too_large.store(true, Ordering::Release);
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end_stream || matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Marks a `101 Switching Protocols` response whose connection is being tunnelled: the
/// task copying the bytes, which ends when either side closes.
/// (Response extensions must be `Clone`: the handle sits in a shared slot, taken once.)
#[derive(Debug, Clone)]
pub struct Tunnel(Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>);

impl Tunnel {
    /// Marks the tunnel copied by `task`.
    pub fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(Arc::new(Mutex::new(Some(task))))
    }

    fn take(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Keeps `guard` (a replica lease, a queue slot, an in-flight count) for as long as the
/// response is being delivered: until its body is sent, or, for an upgraded connection,
/// until the tunnel closes (a WebSocket counts as a running request for its whole life).
pub fn hold_response<G: Send + Sync + Unpin + 'static>(
    resp: http::Response<ProxyBody>,
    guard: G,
) -> http::Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if let Some(handle) = parts.extensions.remove::<Tunnel>().and_then(|t| t.take()) {
        tokio::spawn(async move {
            let _ = handle.await;
            drop(guard);
        });
        return http::Response::from_parts(parts, body);
    }
    http::Response::from_parts(parts, hold(body, guard))
}

/// A response body that holds `guard` (a replica lease, an in-flight count) until the
/// body is finished or dropped, so a request counts as running while it streams.
pub struct Held<G> {
    inner: ProxyBody,
    _guard: G,
}

/// Wraps `body` so that `guard` lives as long as it.
pub fn hold<G: Send + Sync + Unpin + 'static>(body: ProxyBody, guard: G) -> ProxyBody {
    Held {
        inner: body,
        _guard: guard,
    }
    .boxed()
}

impl<G: Unpin> Body for Held<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
    use http_body_util::Full;

    use super::*;

    #[tokio::test]
    async fn an_unread_body_can_be_sent_again() {
        let body = ReplayableBody::new(Full::new(Bytes::from_static(b"hello")), None);
        let first = body.attempt();
        assert!(body.unsent());
        drop(first); // connect failed: nothing was read
        let bytes = body.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        assert!(!body.unsent());
        assert!(body.attempt().collect().await.is_err());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_fails_and_says_so() {
        let body = ReplayableBody::new(Full::new(Bytes::from(vec![0u8; 100])), Some(10));
        let err = body.attempt().collect().await.unwrap_err();
        assert_eq!(err.to_string(), "request body is larger than 10 bytes");
        assert!(body.too_large());
    }

    #[tokio::test]
    async fn an_empty_body_stays_empty_and_replayable() {
        let body = ReplayableBody::new(http_body_util::Empty::<Bytes>::new(), None);
        assert!(body.attempt().is_end_stream());
        assert!(
            body.attempt()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        assert!(body.unsent());
    }
}
