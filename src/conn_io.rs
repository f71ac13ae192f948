//! The socket that the HTTP service (and the WebSockets it upgrades) is given: a
//! `TcpStream` with limits that actix-http does not have.
//!
//! - **One request at a time.** actix-http's h1 dispatcher decodes every pipelined
//!   request it has read (hundreds of KiB of them, several KiB of memory each) and
//!   keeps answering them while earlier responses wait in its write buffer. Here the
//!   dispatcher is handed one request head at a time: the bytes after the end of a
//!   head (an empty line) wait in a small stash until a response has been written, and
//!   nothing is read at all while the socket refuses a write. Once the connection is
//!   upgraded to a WebSocket ([`Upgraded::set`]) only the second rule applies.
//! - **Write timeout.** If the socket takes too little for `write_timeout` (the
//!   dispatcher's whole buffer was not written, and less than [`PROGRESS`] bytes went
//!   out), the connection is dropped: a client that does not read its response, or
//!   its WebSocket messages, holds nothing for long.
//! - **First request.** A connection that has not been answered anything by its
//!   deadline (no complete request) is dropped.
//! - **Input budget.** The bytes of an unfinished request head count against the
//!   budget of unfinished input (a WebSocket message, once upgraded, is charged by the
//!   WebSocket reader).
//! - **Kill switch.** The connection's [`Holder`] (the unfinished-input budget, the
//!   WebSocket ping timeout) can close it at any time, whatever state actix is in.
//!
//! Dropping means: every further read, write and flush fails, so the dispatcher ends
//! and the socket is closed with a reset (unread data is not kept in kernel buffers).

use secop_actors::input_budget::{Holder, READ_PER_TURN};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Bytes written that count as progress for the write timeout even when the
/// dispatcher's buffer is never quite empty (a client that reads steadily).
const PROGRESS: usize = 64 * 1024;

/// Bytes read from the socket at a time while requests are handed over one by one.
const STASH: usize = 8 * 1024;

/// Whether the connection has become a WebSocket (set by the handler that accepts
/// the upgrade, before the 101 response leaves).
#[derive(Debug, Clone, Default)]
pub struct Upgraded(Rc<Cell<bool>>);

impl Upgraded {
    pub fn set(&self) {
        self.0.set(true);
    }

    fn get(&self) -> bool {
        self.0.get()
    }
}
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
    /// A whole request head was handed over: no more bytes until a response is out.
    awaiting_response: bool,
    /// Bytes read but not handed over yet, from `stash_at`.
    stash: Vec<u8>,
    stash_at: usize,
    /// Where the search for the end of a head stands: 0 in a line, 1 after LF, 2 after
    /// LF CR.
    scan: u8,
    /// Bytes of the unfinished request head handed over so far (charged to the
    /// holder: actix buffers them until the head is complete).
    head_bytes: usize,
    upgraded: Upgraded,
    /// Bytes read since the socket last had nothing (see [`READ_PER_TURN`]).
    read_in_turn: usize,
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
            awaiting_response: false,
            stash: Vec::new(),
            stash_at: 0,
            scan: 0,
            head_bytes: 0,
            upgraded: Upgraded::default(),
            read_in_turn: 0,
            first_deadline: first_request_by.map(|t| Box::pin(tokio::time::sleep_until(t))),
            failed: None,
        }
    }

    /// The connection's budget holder and kill switch.
    pub fn holder(&self) -> &Arc<Holder> {
        &self.holder
    }

    /// The switch that the WebSocket handler sets.
    pub fn upgraded(&self) -> &Upgraded {
        &self.upgraded
    }

    /// Hand stashed bytes over: all of them once upgraded, else up to and including
    /// the end of the next request head (after which the connection waits for a
    /// response).
    fn give_stash(&mut self, buf: &mut ReadBuf<'_>) {
        let avail = &self.stash[self.stash_at..];
        let limit = avail.len().min(buf.remaining());
        let mut take = limit;
        if !self.upgraded.get() {
            for (i, b) in avail[..limit].iter().enumerate() {
                self.scan = match (b, self.scan) {
                    (b'\n', 1 | 2) => {
                        take = i + 1;
                        self.awaiting_response = true;
                        0
                    }
                    (b'\n', _) => 1,
                    (b'\r', 1) => 2,
                    _ => 0,
                };
                if self.awaiting_response {
                    break;
                }
            }
        }
        buf.put_slice(&avail[..take]);
        if !self.upgraded.get() {
            // Once per read: an unfinished head counts against the input budget.
            let before = self.head_bytes;
            self.head_bytes = if self.awaiting_response {
                0
            } else {
                self.head_bytes + take
            };
            if self.head_bytes != before {
                self.holder.charge(self.head_bytes);
            }
        }
        self.stash_at += take;
        if self.stash_at == self.stash.len() {
            self.stash.clear();
            self.stash_at = 0;
        }
    }

    /// Drop the connection: every further call fails, and the close is abortive (a
    /// reset), so that what the client did not read leaves the kernel's buffers at
    /// once instead of waiting there behind a FIN that cannot be sent.
    fn fail(&mut self, kind: io::ErrorKind) -> io::Error {
        self.failed = Some(kind);
        let _ = self.io.set_zero_linger();
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
        if this.upgraded.get() && this.stash.is_empty() {
            // A WebSocket: at most READ_PER_TURN bytes in a row, then the others run.
            if this.read_in_turn >= READ_PER_TURN {
                this.read_in_turn = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let before = buf.filled().len();
            let read = Pin::new(&mut this.io).poll_read(cx, buf);
            match read {
                Poll::Ready(Ok(())) => this.read_in_turn += buf.filled().len() - before,
                Poll::Pending => this.read_in_turn = 0,
                Poll::Ready(Err(_)) => {}
            }
            return read;
        }
        if this.awaiting_response && !this.upgraded.get() {
            // Woken when the response has been written.
            return Poll::Pending;
        }
        if this.stash.is_empty() {
            this.stash.resize(STASH, 0);
            let mut into = ReadBuf::new(&mut this.stash);
            let read = Pin::new(&mut this.io).poll_read(cx, &mut into);
            let n = into.filled().len();
            this.stash.truncate(n);
            match read {
                Poll::Ready(Ok(())) if n > 0 => {}
                other => return other,
            }
        }
        this.give_stash(buf);
        Poll::Ready(Ok(()))
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
                // A response: the connection completed a request.
                this.first_deadline = None;
                this.holder.spoke();
                this.progress += n;
                if n == buf.len() || this.progress >= PROGRESS {
                    this.write_deadline = None;
                    this.progress = 0;
                }
                if n == buf.len() && (this.blocked || this.awaiting_response) {
                    // Everything offered is out: read (the next request) again.
                    this.blocked = false;
                    this.awaiting_response = false;
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
