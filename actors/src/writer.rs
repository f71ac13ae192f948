//! The writer half of a TCP session.
//!
//! Lines normally go to the socket straight from the push (the outbox writes through,
//! see [`Outbox`]); this task writes what the socket did not take at once, and what
//! was queued behind it, as soon as the socket is writable again. If the socket
//! accepts no data for `write_timeout` (the client stopped reading and its buffers are
//! full), the session is closed and counted as a slow client.

use crate::outbox::{write_some, CloseReason, Outbox};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::tcp::OwnedWriteHalf;

/// Bytes taken from the queue for one round of writing.
const BATCH: usize = 64 * 1024;

/// Run until the outbox closes or the peer stops accepting data. The outbox must
/// have `socket` attached (or nothing): both write to the same socket, never at once.
pub async fn write_stream(
    socket: Arc<OwnedWriteHalf>,
    outbox: Arc<Outbox>,
    write_timeout: Duration,
) {
    while let Ok(batch) = outbox.next_batch(BATCH).await {
        let write = tokio::time::timeout(write_timeout, write_all(&socket, &batch));
        tokio::select! {
            result = write => match result {
                Ok(Ok(())) => outbox.written(),
                Ok(Err(e)) => {
                    tracing::debug!("write failed: {e}");
                    outbox.close(CloseReason::Finished);
                    break;
                }
                Err(_) => {
                    tracing::warn!(timeout = ?write_timeout, "client stopped reading; closing its session");
                    // A reset on close: what it did not read leaves the kernel's buffers
                    // at once (a FIN would wait behind it for good).
                    let _ = socket.as_ref().as_ref().set_zero_linger();
                    outbox.close_slow();
                    break;
                }
            },
            _ = outbox.wait_closed() => break,
        }
    }
    // Send FIN now, even while the session's other owners still hold the socket.
    let _ = socket2::SockRef::from(socket.as_ref().as_ref()).shutdown(std::net::Shutdown::Write);
}

/// Write every line, waiting for the socket whenever it is full.
async fn write_all(socket: &OwnedWriteHalf, lines: &[Bytes]) -> std::io::Result<()> {
    let (mut done, mut offset) = (0, 0);
    while done < lines.len() {
        socket.writable().await?;
        let (more, at, error) = write_some(socket, &lines[done..], offset);
        if let Some(e) = error {
            return Err(e);
        }
        done += more;
        offset = at;
    }
    Ok(())
}
