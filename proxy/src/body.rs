//! The request body on its way to a replica: bounded in size, and sendable again as long
//! as no byte of it has left (so a connection refused can be retried on another replica),
//! or, for a body of at most [`REPLAY_LIMIT`] bytes, once it has been sent whole (so a
//! replica whose queue layer answered that it passed the request to nobody can be replaced
//! by another).

use std::collections::VecDeque;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Boxed error inside response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the data plane produces.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A whole-body response payload.
pub fn full_body(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The body error once a request body passes the configured limit.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// The largest body kept while it is sent, so that it can be sent again (Envoy keeps a
/// bounded retry buffer the same way); a larger body can only be retried while unread.
pub const REPLAY_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
struct Shared {
    /// The body until the first attempt starts reading it.
    unsent: Mutex<Option<ProxyBody>>,
    /// What the first attempt read, while it stays within [`REPLAY_LIMIT`].
    kept: Mutex<Kept>,
    /// Set when the body went over the limit.
    too_large: AtomicBool,
}

/// The bytes of the body read so far, for another attempt.
#[derive(Debug, Default)]
struct Kept {
    chunks: Vec<Bytes>,
    len: usize,
    /// The whole body was read.
    complete: bool,
    /// Over [`REPLAY_LIMIT`], or trailers (not kept): cannot be sent again.
    dropped: bool,
}

impl Kept {
    fn replayable(&self) -> bool {
        self.complete && !self.dropped
    }

    fn record(&mut self, frame: &Frame<Bytes>) {
        if self.dropped {
            return;
        }
        match frame.data_ref() {
            Some(data) if self.len + data.len() <= REPLAY_LIMIT => {
                self.len += data.len();
                self.chunks.push(data.clone());
            }
            _ => {
                self.dropped = true;
                self.chunks = Vec::new();
            }
        }
    }
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
                kept: Mutex::new(Kept::default()),
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

    /// Whether another attempt may send the body: no attempt has read from it yet, or one
    /// read all of it and it was small enough to keep.
    pub fn replayable(&self) -> bool {
        self.end_stream || self.lock().is_some() || self.shared.kept().replayable()
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

impl Shared {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum State {
    Unstarted(Arc<Shared>),
    Reading(ProxyBody, Arc<Shared>),
    /// Sending again what an earlier attempt read.
    Replaying(VecDeque<Bytes>),
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
                    let kept = shared.kept();
                    if kept.replayable() {
                        State::Replaying(kept.chunks.iter().cloned().collect())
                    } else {
                        drop(kept);
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(AlreadySent))));
                    }
                }
            };
        }
        if let State::Replaying(chunks) = &mut this.state {
            return Poll::Ready(match chunks.pop_front() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => {
                    this.state = State::Done;
                    None
                }
            });
        }
        let State::Reading(body, shared) = &mut this.state else {
            return Poll::Ready(None);
        };
        let mut polled = Pin::new(&mut *body).poll_frame(cx);
        // An empty chunk is not passed on: over HTTP/2 it would go out as an empty DATA frame
        // that is not the last, which h2 servers (the queue layer's included) count against a
        // budget that never refills, and close the connection with ENHANCE_YOUR_CALM
        // ("too_many_data_frames") once it is spent, failing every request on it.
        while let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.data_ref().is_some_and(Bytes::is_empty)
        {
            polled = Pin::new(&mut *body).poll_frame(cx);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(limit), Some(data)) = (this.limit, frame.data_ref()) {
                    this.read += data.len() as u64;
                    if this.read > limit {
                        shared.too_large.store(true, Ordering::Release);
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                    }
                }
                let mut kept = shared.kept();
                kept.record(&frame);
                // A sender that knows the length (HTTP/1.1 Content-Length) stops reading at
                // the last byte and never sees the end: the body is whole there too.
                if this.hint.exact() == Some(kept.len as u64) {
                    kept.complete = true;
                }
                drop(kept);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                shared.kept().complete = true;
                Poll::Ready(None)
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
        assert!(body.replayable());
        drop(first); // connect failed: nothing was read
        let bytes = body.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
    }

    /// A body in chunks, as a client streams it.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunked(chunks: Vec<Vec<u8>>) -> Chunks {
        Chunks(chunks.into_iter().map(Bytes::from).collect())
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_whole_at_its_last_byte() {
        let body = ReplayableBody::new(Full::new(Bytes::from_static(b"twelve bytes")), None);
        let mut first = body.attempt();
        // An HTTP/1.1 sender with Content-Length stops after the last byte.
        assert_eq!(
            first.frame().await.unwrap().unwrap().into_data().unwrap(),
            "twelve bytes"
        );
        drop(first);
        assert!(body.replayable());
        let again = body.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(again, "twelve bytes");
    }

    #[tokio::test]
    async fn empty_chunks_are_not_passed_on() {
        let parts = vec![
            vec![],
            b"ab".to_vec(),
            vec![],
            vec![],
            b"c".to_vec(),
            vec![],
        ];
        let body = ReplayableBody::new(chunked(parts), None);
        let mut attempt = body.attempt();
        let mut chunks = Vec::new();
        while let Some(frame) = attempt.frame().await {
            chunks.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(
            chunks,
            [Bytes::from_static(b"ab"), Bytes::from_static(b"c")]
        );
    }

    #[tokio::test]
    async fn a_small_body_sent_whole_can_be_sent_again_byte_for_byte() {
        let parts = vec![b"hel".to_vec(), b"lo ".to_vec(), b"again".to_vec()];
        let body = ReplayableBody::new(chunked(parts), None);
        let first = body.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(first, "hello again");
        assert!(body.replayable());
        for _ in 0..2 {
            let again = body.attempt().collect().await.unwrap().to_bytes();
            assert_eq!(again, "hello again");
        }
    }

    #[tokio::test]
    async fn a_body_read_in_part_or_over_the_replay_limit_is_not_sent_again() {
        // Read in part: the attempt stopped after the first chunk.
        let body = ReplayableBody::new(chunked(vec![vec![1; 10], vec![2; 10]]), None);
        let mut first = body.attempt();
        let chunk = first.frame().await.unwrap().unwrap();
        assert_eq!(chunk.data_ref().unwrap().len(), 10);
        drop(first);
        assert!(!body.replayable());
        let err = body.attempt().collect().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "request body was already sent to another replica"
        );

        // Sent whole, but larger than the replay buffer.
        let big = vec![vec![7; REPLAY_LIMIT], vec![8; 1]];
        let body = ReplayableBody::new(chunked(big), None);
        let sent = body.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(sent.len(), REPLAY_LIMIT + 1);
        assert!(!body.replayable());
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
        assert!(body.replayable());
    }
}
