//! The socket that the HTTP service (and the WebSockets it upgrades) is given: a
//! `TcpStream` with limits that actix-http does not have.
//!
//! - **One response in flight.** actix-http's h1 dispatcher keeps reading and
//!   answering pipelined requests while earlier responses wait in its write buffer, so
//!   a client that sends requests and reads nothing makes the buffer grow without
//!   bound. Here reading stops as soon as the socket refuses a write, and resumes only
//!   when everything the dispatcher offered has been written.
//! - **Write timeout.** If the socket takes too little for `write_timeout` (the
//!   dispatcher's whole buffer was not written, and less than [`PROGRESS`] bytes went
//!   out), the connection is dropped: a client that does not read its response, or
//!   its WebSocket messages, holds nothing for long.
//! - **First request.** A connection that has not been answered anything by its
//!   deadline (no complete request) is dropped.
//! - **Kill switch.** The connection's [`Holder`] (the unfinished-input budget, the
//!   WebSocket ping timeout) can close it at any time, whatever state actix is in.
//!
//! Dropping means: every further read, write and flush fails, so the dispatcher ends
//! and the socket is closed.

use secop_actors::input_budget::Holder;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Bytes written that count as progress for the write timeout even when the
/// dispatcher's buffer is never quite empty (a client that reads steadily).
const PROGRESS: usize = 64 * 1024;

/// See the module documentation.
pub struct ConnIo {
    io: TcpStream,
    holder: Arc<Holder>,
    write_timeout: Duration,
    /// Armed while a write is blocked; cleared by progress.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes written since the write deadline was armed.
    progress: usize,
    /// The last write left data unwritten: do not read until it is written.
    blocked: bool,
    /// Until the first byte of a response is written.
    first_deadline: Option<Pin<Box<Sleep>>>,
    /// Why the connection was dropped, once it was.
    failed: Option<io::ErrorKind>,
}

impl ConnIo {
    pub fn new(
        io: TcpStream,
        holder: Arc<Holder>,
        write_timeout: Duration,
        first_request_by: Option<Instant>,
    ) -> ConnIo {
        ConnIo {
            io,
            holder,
            write_timeout,
            write_deadline: None,
            progress: 0,
            blocked: false,
            first_deadline: first_request_by.map(|t| Box::pin(tokio::time::sleep_until(t))),
            failed: None,
        }
    }

    /// The connection's budget holder and kill switch.
    pub fn holder(&self) -> &Arc<Holder> {
        &self.holder
    }

    fn fail(&mut self, kind: io::ErrorKind) -> io::Error {
        self.failed = Some(kind);
        io::Error::from(kind)
    }

    /// Checks that apply to every operation: closed by the holder, no first request
    /// in time. Registers for both, so that either wakes the connection's task.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(kind) = self.failed {
            return Err(io::Error::from(kind));
        }
        if self.holder.poll_closed(cx).is_ready() {
            tracing::debug!("HTTP connection closed by its kill switch");
            return Err(self.fail(io::ErrorKind::ConnectionAborted));
        }
        if let Some(deadline) = self.first_deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                self.first_deadline = None;
                crate::server::count_refused("first_request_timeout");
                tracing::debug!("HTTP connection without a complete request in time; dropped");
                return Err(self.fail(io::ErrorKind::TimedOut));
            }
        }
        Ok(())
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        if this.blocked {
            // The dispatcher retries its write when the socket is writable and calls
            // again; the waker is woken when the write goes through.
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.first_deadline = None;
                this.progress += n;
                if n == buf.len() || this.progress >= PROGRESS {
                    this.write_deadline = None;
                    this.progress = 0;
                }
                if n == buf.len() && this.blocked {
                    // Everything offered is out: read again.
                    this.blocked = false;
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                this.blocked = true;
                let timeout = this.write_timeout;
                let deadline = this
                    .write_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    secop_actors::metrics::metrics()
                        .slow_clients_disconnected
                        .inc();
                    tracing::warn!(?timeout, "HTTP client stopped reading; dropping it");
                    return Poll::Ready(Err(this.fail(io::ErrorKind::TimedOut)));
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
