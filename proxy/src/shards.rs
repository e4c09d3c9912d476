//! One listener served by several threads, each with its own single-threaded runtime (like
//! nginx's or haproxy's workers): a connection, its requests and the upstream connections
//! they take stay on one thread, with no cross-thread wake-ups and no work stealing on the
//! hot path. The kernel spreads accepted connections over the threads waiting on the
//! listener.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// Tells one shard to stop: [`ShardStop::stopped`] resolves once the shards' shutdown
/// future has.
#[derive(Debug, Clone)]
pub struct ShardStop(watch::Receiver<bool>);

impl ShardStop {
    /// Resolves once the shards are to stop (or their owner is gone).
    pub async fn stopped(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// How many shards `configured` asks for: 0 means one per CPU.
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Runs `serve(i, listener, stop)` for each shard `i` in `0..shards` on a thread named
/// `{name}-{i}` with a runtime of its own, every shard on the same listening socket, until
/// `shutdown` resolves (or this future is dropped); then tells each to stop and waits for
/// all of them to finish. With one shard `serve` runs on the caller's runtime instead.
pub async fn serve_on_shards<F, Fut>(
    listener: TcpListener,
    shards: usize,
    name: &str,
    serve: F,
    shutdown: impl Future<Output = ()>,
) where
    F: FnOnce(usize, TcpListener, ShardStop) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Dropping the sender (this future dropped) stops the shards too.
    let (stop_tx, stop_rx) = watch::channel(false);
    if shards <= 1 {
        let served = serve(0, listener, ShardStop(stop_rx));
        tokio::pin!(served);
        tokio::select! {
            () = &mut served => return,
            () = shutdown => {}
        }
        let _ = stop_tx.send(true);
        served.await;
        return;
    }
    let std_listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{name}: cannot share the listener between threads: {e}");
            return;
        }
    };
    let mut done = Vec::with_capacity(shards);
    for i in 0..shards {
        let listener = match std_listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{name}: cannot share the listener with shard {i}: {e}");
                break;
            }
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (serve, stop) = (serve.clone(), ShardStop(stop_rx.clone()));
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("shard {i} cannot start a runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(i, listener, stop).await,
                        Err(e) => tracing::error!("shard {i} cannot listen: {e}"),
                    }
                });
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => done.push(done_rx),
            Err(e) => tracing::error!("{name}: cannot start shard {i}: {e}"),
        }
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for d in done {
        let _ = d.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Each shard answers a connection with its index; every shard stops when told.
    async fn shards_answer_and_stop(shards: usize) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let finished = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let counted = finished.clone();
        let server = tokio::spawn(serve_on_shards(
            listener,
            shards,
            "test",
            move |i, listener, stop| async move {
                let stop = stop.stopped();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let (mut conn, _) = accepted.unwrap();
                            conn.write_all(&[i as u8]).await.unwrap();
                        }
                        () = &mut stop => break,
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        for _ in 0..8 {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut shard = [0u8; 1];
            conn.read_exact(&mut shard).await.unwrap();
            assert!((shard[0] as usize) < shards.max(1));
        }
        stop_tx.send(()).unwrap();
        server.await.unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), shards.max(1));
    }

    #[tokio::test]
    async fn several_shards_serve_one_listener_and_all_stop() {
        shards_answer_and_stop(3).await;
    }

    #[tokio::test]
    async fn one_shard_serves_on_the_callers_runtime_and_stops() {
        shards_answer_and_stop(1).await;
    }
}
