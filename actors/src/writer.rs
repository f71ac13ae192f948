//! The writer half of a byte-stream session (TCP today, a serial line later).
//!
//! It drains the session's [`Outbox`] into the socket. If the socket accepts no data
//! for `write_timeout` (the client stopped reading and its buffers are full), the
//! session is closed and counted as a slow client.

use crate::outbox::{CloseReason, Outbox};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Bytes gathered into one write.
const BATCH: usize = 64 * 1024;

/// Run until the outbox closes or the peer stops accepting data.
pub async fn write_stream<W: AsyncWrite + Unpin>(
    mut socket: W,
    outbox: Arc<Outbox>,
    write_timeout: Duration,
) {
    // Grown on demand and given back after big writes: idle connections stay small.
    let mut buf = Vec::new();
    while let Ok(mut batch) = outbox.next_batch(BATCH).await {
        // Let the session and the node run once more before writing: a client that
        // pipelines requests then gets many replies in one send, not one send each.
        tokio::task::yield_now().await;
        if let Ok(more) = outbox.take(BATCH) {
            batch.extend(more);
        }
        buf.clear();
        if buf.capacity() > 4 * BATCH {
            buf = Vec::new();
        }
        for chunk in &batch {
            crate::metrics::count_sent(chunk);
            buf.extend_from_slice(chunk);
        }
        let write = tokio::time::timeout(write_timeout, socket.write_all(&buf));
        tokio::select! {
            result = write => match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!("write failed: {e}");
                    outbox.close(CloseReason::Finished);
                    break;
                }
                Err(_) => {
                    tracing::warn!(timeout = ?write_timeout, "client stopped reading; closing its session");
                    outbox.close_slow();
                    break;
                }
            },
            _ = outbox.wait_closed() => break,
        }
    }
    let _ = socket.shutdown().await;
}
