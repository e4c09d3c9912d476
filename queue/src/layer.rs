//! The tower layer: admission, accounting and drain tracking around every request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{PROXY_HEADER, Queue};

/// Wraps a replica's request handler in its [`Queue`].
#[derive(Clone, Debug)]
pub struct QueueLayer {
    queue: Arc<Queue>,
}

impl QueueLayer {
    /// A layer sharing `queue`.
    pub fn new(queue: Arc<Queue>) -> Self {
        Self { queue }
    }
}

impl<S> Layer<S> for QueueLayer {
    type Service = QueueService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QueueService {
            inner,
            queue: self.queue.clone(),
        }
    }
}

/// The service [`QueueLayer`] produces.
#[derive(Clone, Debug)]
pub struct QueueService<S> {
    inner: S,
    queue: Arc<Queue>,
}

impl<S, B, R> Service<Request<B>> for QueueService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: From<String>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let queue = self.queue.clone();
        let proxied = req
            .headers()
            .get(PROXY_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"activator"));
        Box::pin(async move {
            let _permit = match queue.admit().await {
                Ok(permit) => permit,
                Err(rejection) => {
                    let mut resp = Response::new(R::from(format!("{rejection}\n")));
                    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok(resp);
                }
            };
            queue.recorder.request_in(Instant::now(), proxied);
            let _guard = Finished {
                queue: &queue,
                proxied,
            };
            inner.call(req).await
        })
    }
}

/// Marks the request finished even when the handler future is dropped mid-flight.
struct Finished<'a> {
    queue: &'a Queue,
    proxied: bool,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.queue.finished(self.proxied);
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::oneshot;
    use tower::ServiceExt;

    use super::*;
    use crate::QueueConfig;

    #[tokio::test]
    async fn rejects_beyond_concurrency_plus_queue() {
        let queue = Arc::new(Queue::new(
            QueueConfig {
                container_concurrency: 1,
                max_queued: Some(1),
            },
            Instant::now(),
        ));
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let release = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
        let (entered_tx, mut entered_rx) = tokio::sync::mpsc::channel::<()>(4);
        let svc =
            QueueLayer::new(queue.clone()).layer(tower::service_fn(move |_req: Request<()>| {
                let release = release.clone();
                let entered = entered_tx.clone();
                async move {
                    let _ = entered.send(()).await;
                    if let Some(rx) = release.lock().await.take() {
                        let _ = rx.await;
                    }
                    Ok::<_, Infallible>(Response::new(String::from("ok")))
                }
            }));
        // First request runs and blocks; second waits; third is refused at once.
        let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
        entered_rx.recv().await.unwrap();
        let second = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        while queue
            .breaker
            .as_ref()
            .unwrap()
            .waiting
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            tokio::task::yield_now().await;
        }
        let third = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(third.body(), "pending request queue full\n");
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(queue.recorder().in_flight(), 0);
        let period = queue.recorder().take_period(Instant::now());
        assert_eq!(period.request_count, 2);
    }

    #[tokio::test]
    async fn counts_proxied_requests() {
        let queue = Arc::new(Queue::new(
            QueueConfig {
                container_concurrency: 0,
                max_queued: None,
            },
            Instant::now(),
        ));
        let svc =
            QueueLayer::new(queue.clone()).layer(tower::service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }));
        let req = Request::builder()
            .header(PROXY_HEADER, "activator")
            .body(())
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
        svc.oneshot(Request::new(())).await.unwrap();
        let p = queue.recorder().take_period(Instant::now());
        assert_eq!((p.request_count, p.proxied_request_count), (2, 1));
    }
}
