//! One budget for unfinished input across all connections.
//!
//! Every connection may hold some input that does not make a message yet: the start of
//! a TCP line without its LF, the frames of a WebSocket message that has not ended.
//! Each of these is bounded per connection (`max_line_bytes`, `max_message_bytes`),
//! but a thousand connections each holding just under the limit would still hold
//! gigabytes. So each connection has a [`Holder`] that tells the shared
//! [`InputBudget`] how much it holds now; when the sum goes over the budget, the
//! largest holders are closed until it fits again (counted in
//! `secop_gateway_input_budget_closed_total`).
//!
//! Cost on the hot path: a holder is charged once per read (not per byte and not per
//! message): an atomic swap and an atomic add or sub. The list of holders is only
//! looked at when the budget is exceeded.
//!
//! A holder is also the connection's kill switch: whoever owns the connection's input
//! waits for [`Holder::closed`] (the TCP session's [`BudgetedStream`], the HTTP
//! connection's I/O wrapper) and drops it, buffers and all, when it fires. One task
//! at a time waits on a holder.

use crate::line_codec::{Inbound, LineCodec};
use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_util::codec::Decoder;

/// The shared budget; see the module documentation.
#[derive(Debug)]
pub struct InputBudget {
    limit: usize,
    total: AtomicUsize,
    next_id: AtomicU64,
    holders: Mutex<HashMap<u64, Weak<Holder>>>,
}

impl InputBudget {
    pub fn new(limit: usize) -> Arc<InputBudget> {
        Arc::new(InputBudget {
            limit,
            total: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            holders: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes of unfinished input held now, by all connections.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A holder for a new connection, holding nothing yet.
    pub fn holder(self: &Arc<Self>) -> Arc<Holder> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let holder = Arc::new(Holder {
            budget: self.clone(),
            id,
            held: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            spoke: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            born: Instant::now(),
        });
        self.lock().insert(id, Arc::downgrade(&holder));
        holder
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<Holder>>> {
        self.holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Over the budget: close the largest holders until the rest fits.
    fn enforce(&self) {
        let mut by_size: Vec<(usize, Arc<Holder>)> = self
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .map(|h| (h.held.load(Ordering::Relaxed), h))
            .filter(|(held, h)| *held > 0 && !h.is_closed())
            .collect();
        // The lock is released here: dropping a holder takes it.
        by_size.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        for (held, holder) in &by_size {
            if self.total() <= self.limit {
                break;
            }
            tracing::warn!(
                held,
                total = self.total(),
                limit = self.limit,
                "unfinished input over the budget; closing the largest holder"
            );
            if holder.close() {
                crate::metrics::metrics().input_budget_closed.inc();
            }
        }
    }
}

/// One connection's share of the budget, and its kill switch.
#[derive(Debug)]
pub struct Holder {
    budget: Arc<InputBudget>,
    id: u64,
    held: AtomicUsize,
    closed: AtomicBool,
    /// The connection completed a request (a line, an HTTP request).
    spoke: AtomicBool,
    waker: AtomicWaker,
    born: Instant,
}

impl Holder {
    /// Say how many bytes of unfinished input the connection holds now. Above the
    /// budget the largest holders are closed, this one possibly among them.
    pub fn charge(&self, now: usize) {
        if self.is_closed() {
            return;
        }
        let before = self.held.swap(now, Ordering::Relaxed);
        if now > before {
            let total =
                self.budget.total.fetch_add(now - before, Ordering::Relaxed) + (now - before);
            if total > self.budget.limit {
                self.budget.enforce();
            }
        } else if before > now {
            self.budget.total.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Close the connection (its owner drops it when it sees this). What it holds is
    /// no longer counted. True if this call closed it.
    pub fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let held = self.held.swap(0, Ordering::Relaxed);
        self.budget.total.fetch_sub(held, Ordering::Relaxed);
        self.waker.wake();
        true
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the connection is to be closed.
    pub async fn closed(&self) {
        poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// Poll for [`Holder::close`]; registers the waker of the (one) task that polls.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closed() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Record that the connection completed a request.
    pub fn spoke(&self) {
        if !self.spoke.load(Ordering::Relaxed) {
            self.spoke.store(true, Ordering::Relaxed);
        }
    }

    pub fn has_spoken(&self) -> bool {
        self.spoke.load(Ordering::Relaxed)
    }

    /// Time since the connection was accepted.
    pub fn age(&self) -> Duration {
        self.born.elapsed()
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // A closed holder holds 0 (its charges are ignored).
        let held = self.held.swap(0, Ordering::Relaxed);
        self.budget.total.fetch_sub(held, Ordering::Relaxed);
        self.budget.lock().remove(&self.id);
    }
}

/// A read buffer this large is given back once it is empty (a big line came and
/// went), so that an idle connection holds no more than a small one.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The line codec, charging its buffer to a [`Holder`] once per read (when the codec
/// asks for more bytes, the buffer holds only the unfinished line). What is charged
/// is the buffer's capacity, the memory it really takes (it grows by doubling); an
/// empty buffer charges nothing and a large empty one is given back. The holder is
/// marked as having spoken at the first complete line, and once it is closed the
/// stream ends with an error at the next read.
#[derive(Debug)]
pub struct BudgetedLines {
    inner: LineCodec,
    holder: Arc<Holder>,
}

impl BudgetedLines {
    pub fn new(inner: LineCodec, holder: Arc<Holder>) -> Self {
        BudgetedLines { inner, holder }
    }
}

impl Decoder for BudgetedLines {
    type Item = Inbound;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, Self::Error> {
        if !self.holder.is_closed() {
            let item = self.inner.decode(buf)?;
            match &item {
                None => self.charge(buf),
                Some(_) => self.holder.spoke(),
            }
            if !self.holder.is_closed() {
                return Ok(item);
            }
        }
        // Closed (perhaps by this very charge): the memory goes at once, and the
        // session ends.
        *buf = BytesMut::new();
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "over the unfinished-input budget",
        ))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, Self::Error> {
        let item = self.inner.decode_eof(buf)?;
        self.charge(buf);
        Ok(item)
    }
}

impl BudgetedLines {
    fn charge(&self, buf: &mut BytesMut) {
        if buf.is_empty() {
            if buf.capacity() > KEEP_CAPACITY {
                *buf = BytesMut::new();
            }
            self.holder.charge(0);
        } else {
            self.holder.charge(buf.capacity());
        }
    }
}

/// A stream of inbound items that ends as soon as its holder is closed, dropping the
/// stream it wraps (the socket's read half and its buffer) at once: the memory goes
/// back when the session's task is next woken, which the close does.
pub struct BudgetedStream<S> {
    inner: Option<S>,
    holder: Arc<Holder>,
}

impl<S> BudgetedStream<S> {
    pub fn new(inner: S, holder: Arc<Holder>) -> Self {
        BudgetedStream {
            inner: Some(inner),
            holder,
        }
    }
}

impl<S: Stream + Unpin> Stream for BudgetedStream<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.holder.poll_closed(cx).is_ready() {
            self.inner = None;
            return Poll::Ready(None);
        }
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Bytes a connection may read in one turn before it lets the others run.
pub const READ_PER_TURN: usize = 64 * 1024;

/// A reader that takes at most [`READ_PER_TURN`] bytes in a row: then it yields (wakes
/// itself and returns `Pending`), so that one connection flooding the port cannot keep
/// the event loop from everybody else, and memory is charged and released in small
/// steps.
pub struct FairRead<R> {
    inner: R,
    read: usize,
}

impl<R> FairRead<R> {
    pub fn new(inner: R) -> Self {
        FairRead { inner, read: 0 }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FairRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read >= READ_PER_TURN {
            self.read = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) => self.read += buf.filled().len() - before,
            Poll::Pending => self.read = 0,
            Poll::Ready(Err(_)) => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_holders_go_first() {
        let budget = InputBudget::new(1000);
        let a = budget.holder();
        let b = budget.holder();
        let c = budget.holder();
        a.charge(300);
        b.charge(500);
        c.charge(100);
        assert_eq!(budget.total(), 900);
        assert!(!a.is_closed() && !b.is_closed() && !c.is_closed());
        // c grows: 300 + 500 + 400 > 1000, and closing b (500) is enough.
        c.charge(400);
        assert!(b.is_closed() && !a.is_closed() && !c.is_closed());
        assert_eq!(budget.total(), 700);
        // a closed holder's charges are ignored; its drop does not count twice.
        b.charge(900);
        assert_eq!(budget.total(), 700);
        drop(b);
        assert_eq!(budget.total(), 700);
        a.charge(0);
        assert_eq!(budget.total(), 400);
        drop(c);
        assert_eq!(budget.total(), 0);
        assert_eq!(budget.lock().len(), 1);
    }

    #[test]
    fn one_holder_over_the_whole_budget_is_closed() {
        let budget = InputBudget::new(100);
        let a = budget.holder();
        a.charge(101);
        assert!(a.is_closed());
        assert_eq!(budget.total(), 0);
    }

    #[test]
    fn lines_are_charged_per_read() {
        let budget = InputBudget::new(1 << 20);
        let holder = budget.holder();
        let mut codec = BudgetedLines::new(LineCodec::new(1 << 20), holder.clone());
        let mut buf = BytesMut::from(&b"ping\npart"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(holder.has_spoken());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(budget.total(), buf.capacity(), "the buffer's memory");
        assert!(budget.total() >= 4);
        buf.extend_from_slice(b"ial\n");
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(budget.total(), 0);
        // a big line came and went: its buffer is given back
        buf.extend_from_slice(&[b'x'; 200_000]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(budget.total() >= 200_000);
        buf.extend_from_slice(b"\n");
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(budget.total(), 0);
        assert!(buf.capacity() <= KEEP_CAPACITY);
        // once closed, the stream ends
        holder.close();
        assert!(codec.decode(&mut buf).is_err());
    }
}
