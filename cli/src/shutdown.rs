//! Turning SIGINT/SIGTERM (and, for replicas, a closed stdin) into one shutdown future.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn signalled() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Signal handlers could not be installed: fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when stdin reaches end of file: the supervising process is gone.
///
/// The blocking read runs on a plain thread, not the runtime's blocking pool, so it never
/// holds up the process's exit.
pub(crate) async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        });
    match spawned {
        // Either the thread saw EOF, or it died: both mean stdin is unusable.
        Ok(_) => {
            let _ = rx.await;
        }
        Err(e) => {
            tracing::warn!("cannot watch stdin: {e}; relying on signals alone");
            std::future::pending::<()>().await;
        }
    }
}
