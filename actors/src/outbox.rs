//! The bounded, coalescing outgoing queue of one client session.
//!
//! The node pushes into it directly (no actor message in between), which is what
//! makes "every side-effect update reaches the client before the reply" hold: the
//! node queues updates and then the replies. A transport-specific writer drains it.
//!
//! Write-through: when a socket is attached ([`Outbox::attach`]) and nothing is queued
//! or being written, a push hands its lines to the socket at once (a non-blocking
//! `writev`); only what the socket does not take is queued for the writer task. The
//! common case, a client that keeps up, then costs one syscall per push and no task
//! wake-up, no timer and no copy.
//!
//! Slow-consumer policy, in this order:
//! 1. The session stops reading requests while more than `backpressure_bytes` wait
//!    here, so replies cannot pile up: a client that does not read is not served.
//! 2. Once more than `coalesce_bytes` wait, a new update of a parameter whose previous
//!    update is still queued replaces that one in place (the client gets the newest
//!    value, never an older one after a newer one) and `log` events are dropped.
//!    Updates of distinct parameters are bounded by the node's parameter count.
//! 3. If the queue still exceeds `max_bytes`, or the writer cannot hand any data to
//!    the socket for the write timeout, the session is closed.
//!
//! Every coalesced update, dropped event and forced close is counted.

use bytes::Bytes;
use prometheus::IntCounter;
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Identifies a parameter of a node for coalescing: (module index, parameter index).
pub type UpdateKey = (u32, u32);

/// Size limits of an outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub backpressure_bytes: usize,
    pub coalesce_bytes: usize,
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            backpressure_bytes: 256 * 1024,
            coalesce_bytes: 64 * 1024,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Counters shared by all sessions.
#[derive(Debug, Clone)]
pub struct SlowClientStats {
    pub updates_coalesced: IntCounter,
    pub events_dropped: IntCounter,
    pub sessions_closed_slow: IntCounter,
}

impl SlowClientStats {
    /// The process's counters, exported as Prometheus metrics.
    pub fn exported() -> Self {
        let m = crate::metrics::metrics();
        SlowClientStats {
            updates_coalesced: m.updates_coalesced.clone(),
            events_dropped: m.events_dropped.clone(),
            sessions_closed_slow: m.slow_clients_disconnected.clone(),
        }
    }
}

impl Default for SlowClientStats {
    /// Private counters, for tests.
    fn default() -> Self {
        let counter = |name: &str| {
            IntCounter::new(name, name)
                .unwrap_or_else(|_| crate::metrics::metrics().events_dropped.clone())
        };
        SlowClientStats {
            updates_coalesced: counter("updates_coalesced"),
            events_dropped: counter("events_dropped"),
            sessions_closed_slow: counter("sessions_closed_slow"),
        }
    }
}

/// Why an outbox was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The session ended normally (client left, or shutdown).
    Finished,
    /// The client did not read and the queue hit `max_bytes`.
    Overflow,
    /// The node dropped the session (description changed, shutdown).
    Kicked,
    /// The node could not be reached: an internal failure.
    Internal,
    /// The client broke a rule of the port (HTTP header lines on a SECoP connection).
    Refused,
}

struct Item {
    key: Option<UpdateKey>,
    data: Bytes,
    /// Already counted as sent (the rest of a line written through in part).
    counted: bool,
}

/// A socket that takes bytes without waiting, for writing through.
pub trait TryWrite: Send + Sync {
    /// Write what the socket takes now; `WouldBlock` if nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
}

impl TryWrite for tokio::net::tcp::OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

/// Record the backlog of a client when data leaves for it (0: written through).
fn observe_queued(bytes: usize) {
    crate::metrics::metrics()
        .outbox_queued_bytes
        .observe(bytes as f64);
}

/// Most lines handed to one `writev` (Linux takes up to 1024).
const MAX_IOVECS: usize = 256;

/// Write `lines` to `sink` until it takes no more: how many lines went completely,
/// how many bytes of the next one, and the error that stopped it (not `WouldBlock`).
pub fn write_some(
    sink: &dyn TryWrite,
    lines: &[Bytes],
    mut offset: usize,
) -> (usize, usize, Option<std::io::Error>) {
    let mut done = 0;
    while done < lines.len() {
        let end = lines.len().min(done + MAX_IOVECS);
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(end - done);
        slices.push(IoSlice::new(&lines[done][offset..]));
        slices.extend(lines[done + 1..end].iter().map(|l| IoSlice::new(l)));
        let mut n = match sink.try_write_vectored(&slices) {
            Ok(0) => return (done, offset, Some(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return (done, offset, Some(e)),
        };
        while n > 0 && done < lines.len() {
            let left = lines[done].len() - offset;
            if n >= left {
                n -= left;
                done += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    (done, offset, None)
}

#[derive(Default)]
struct State {
    queue: VecDeque<Item>,
    /// Sequence number of `queue[0]`.
    head_seq: u64,
    /// Sequence number of the queued update of each key.
    pending: HashMap<UpdateKey, u64>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// The socket, for writing through; dropped when the outbox closes.
    sink: Option<Arc<dyn TryWrite>>,
    /// The writer task holds data it took and has not finished writing.
    writing: bool,
}

impl State {
    /// Whether a push may go straight to the socket: nothing waits before it.
    fn through(&self) -> Option<Arc<dyn TryWrite>> {
        if self.queue.is_empty() && !self.writing && self.closed.is_none() {
            self.sink.clone()
        } else {
            None
        }
    }
}

/// See the module documentation.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when data arrives or the outbox closes.
    data_ready: Notify,
    /// Wakes a session waiting for the queue to shrink.
    drained: Notify,
    /// Wakes whoever waits for the outbox to close (kept apart from `drained`, so that
    /// every drain does not wake the session).
    closing: Notify,
    limits: OutboxLimits,
    stats: Arc<SlowClientStats>,
}

impl Outbox {
    pub fn new(limits: OutboxLimits, stats: Arc<SlowClientStats>) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            data_ready: Notify::new(),
            drained: Notify::new(),
            closing: Notify::new(),
            limits,
            stats,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way
        // that matters more than losing the session, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write through to this socket from now on (see the module documentation). The
    /// writer task must write to the same socket and report with [`Outbox::written`].
    pub fn attach(&self, sink: Arc<dyn TryWrite>) {
        self.lock().sink = Some(sink);
    }

    /// Queue a reply (or anything that must not be dropped).
    pub fn push_reply(&self, data: Bytes) {
        self.push(None, data);
    }

    /// Queue several replies at once (one lock, one `writev` or one wake-up of the
    /// writer).
    pub fn push_replies(&self, replies: Vec<Bytes>) {
        let mut st = self.lock();
        if st.closed.is_some() || replies.is_empty() {
            return;
        }
        // A write error is left to the writer task, which meets it again and closes.
        let (done, offset) = match st.through() {
            Some(sink) => {
                observe_queued(0);
                let (done, offset, _) = write_some(&*sink, &replies, 0);
                (done, offset)
            }
            None => (0, 0),
        };
        replies[..done.min(replies.len())]
            .iter()
            .for_each(|l| crate::metrics::count_sent(l));
        let mut rest = replies.into_iter().skip(done);
        if offset > 0 {
            if let Some(partial) = rest.next() {
                crate::metrics::count_sent(&partial);
                let data = partial.slice(offset..);
                st.bytes += data.len();
                st.queue.push_back(Item {
                    key: None,
                    data,
                    counted: true,
                });
            }
        }
        let mut any = offset > 0;
        for data in rest {
            any = true;
            st.bytes += data.len();
            st.queue.push_back(Item {
                key: None,
                data,
                counted: false,
            });
        }
        if any {
            self.queued(st);
        }
    }

    /// Queue an update of parameter `key`, coalescing when the client lags.
    pub fn push_update(&self, key: UpdateKey, data: Bytes) {
        self.push(Some(key), data);
    }

    /// Queue a `log` event; dropped when the client lags.
    pub fn push_event(&self, data: Bytes) {
        let st = self.lock();
        if st.closed.is_some() {
            return;
        }
        if st.bytes > self.limits.coalesce_bytes {
            self.stats.events_dropped.inc();
            return;
        }
        drop(st);
        self.push(None, data);
    }

    fn push(&self, key: Option<UpdateKey>, data: Bytes) {
        let mut st = self.lock();
        if st.closed.is_some() {
            return;
        }
        if let Some(sink) = st.through() {
            observe_queued(0);
            let line = std::slice::from_ref(&data);
            let (done, offset, _) = write_some(&*sink, line, 0);
            if done == 1 || offset > 0 {
                crate::metrics::count_sent(&data);
            }
            if done == 1 {
                return;
            }
            if offset > 0 {
                // The rest of a line must go first and whole: not coalescible.
                let data = data.slice(offset..);
                st.bytes += data.len();
                st.queue.push_back(Item {
                    key: None,
                    data,
                    counted: true,
                });
                return self.queued(st);
            }
        }
        if let Some(key) = key {
            if st.bytes > self.limits.coalesce_bytes {
                if let Some(&seq) = st.pending.get(&key) {
                    let idx = (seq - st.head_seq) as usize;
                    let old_len = st.queue[idx].data.len();
                    st.bytes = st.bytes - old_len + data.len();
                    st.queue[idx].data = data;
                    self.stats.updates_coalesced.inc();
                    return;
                }
            }
            let seq = st.head_seq + st.queue.len() as u64;
            st.pending.insert(key, seq);
        }
        st.bytes += data.len();
        st.queue.push_back(Item {
            key,
            data,
            counted: false,
        });
        self.queued(st);
    }

    /// After queueing: close if over the limit, and wake the writer.
    fn queued(&self, mut st: MutexGuard<'_, State>) {
        if st.bytes > self.limits.max_bytes {
            st.closed = Some(CloseReason::Overflow);
            self.stats.sessions_closed_slow.inc();
            tracing::warn!(
                queued = st.bytes,
                "client queue over its limit; closing the session"
            );
            drop(st);
            self.drained.notify_waiters();
            self.closing.notify_waiters();
        } else {
            drop(st);
        }
        self.data_ready.notify_one();
    }

    /// Close the outbox: queued data is discarded, the writer stops.
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(reason);
        }
        st.sink = None;
        drop(st);
        self.data_ready.notify_one();
        self.drained.notify_waiters();
        self.closing.notify_waiters();
    }

    /// Close because the client did not take data for too long; counted.
    pub fn close_slow(&self) {
        self.stats.sessions_closed_slow.inc();
        self.close(CloseReason::Overflow);
    }

    pub fn closed(&self) -> Option<CloseReason> {
        self.lock().closed
    }

    /// Whether the session should wait before reading its next request.
    pub fn is_lagging(&self) -> bool {
        self.lock().bytes > self.limits.backpressure_bytes
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Take everything queued (up to about `max` bytes). Returns `Err` once closed.
    ///
    /// What is taken counts as sent, and as being written until [`Outbox::written`].
    pub fn take(&self, max: usize) -> Result<Vec<Bytes>, CloseReason> {
        let mut st = self.lock();
        if let Some(reason) = st.closed {
            return Err(reason);
        }
        let mut out = Vec::new();
        let mut taken = 0;
        while taken < max {
            let Some(item) = st.queue.pop_front() else {
                break;
            };
            let seq = st.head_seq;
            st.head_seq += 1;
            if let Some(key) = item.key {
                if st.pending.get(&key) == Some(&seq) {
                    st.pending.remove(&key);
                }
            }
            st.bytes -= item.data.len();
            taken += item.data.len();
            if !item.counted {
                crate::metrics::count_sent(&item.data);
            }
            out.push(item.data);
        }
        if !out.is_empty() {
            st.writing = true;
        }
        if !out.is_empty() && st.bytes <= self.limits.backpressure_bytes {
            drop(st);
            self.drained.notify_waiters();
        }
        Ok(out)
    }

    /// The writer task has written everything it took: pushes may write through again
    /// once the queue is empty.
    pub fn written(&self) {
        self.lock().writing = false;
    }

    /// Wait for data and take it; `Err` once the outbox is closed.
    pub async fn next_batch(&self, max: usize) -> Result<Vec<Bytes>, CloseReason> {
        loop {
            let notified = self.data_ready.notified();
            let queued = self.queued_bytes();
            let batch = self.take(max)?;
            if !batch.is_empty() {
                observe_queued(queued);
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
            notified.await;
        }
    }

    /// Wait until the queue is below the backpressure limit (or the outbox closed).
    pub async fn writable(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Register before checking, so a drain in between is not missed.
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.closed.is_some() || st.bytes <= self.limits.backpressure_bytes {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Wait until the outbox is closed.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed().is_some() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(coalesce: usize, max: usize) -> (Arc<Outbox>, Arc<SlowClientStats>) {
        let stats = Arc::new(SlowClientStats::default());
        let limits = OutboxLimits {
            backpressure_bytes: coalesce,
            coalesce_bytes: coalesce,
            max_bytes: max,
        };
        (Outbox::new(limits, stats.clone()), stats)
    }

    fn strings(v: Vec<Bytes>) -> Vec<String> {
        v.into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn keeps_order_below_the_threshold() {
        let (o, _) = outbox(100, 1000);
        o.push_update((0, 0), Bytes::from_static(b"a1"));
        o.push_update((0, 0), Bytes::from_static(b"a2"));
        o.push_reply(Bytes::from_static(b"r"));
        assert_eq!(strings(o.take(usize::MAX).unwrap()), ["a1", "a2", "r"]);
    }

    #[test]
    fn coalesces_in_place_when_lagging() {
        let (o, stats) = outbox(4, 1000);
        o.push_update((0, 0), Bytes::from_static(b"a1"));
        o.push_update((0, 1), Bytes::from_static(b"b1"));
        o.push_reply(Bytes::from_static(b"r"));
        o.push_update((0, 0), Bytes::from_static(b"a2"));
        o.push_update((0, 1), Bytes::from_static(b"b2"));
        o.push_update((0, 0), Bytes::from_static(b"a3"));
        o.push_event(Bytes::from_static(b"log"));
        assert_eq!(strings(o.take(usize::MAX).unwrap()), ["a3", "b2", "r"]);
        assert_eq!(stats.updates_coalesced.get(), 3);
        assert_eq!(stats.events_dropped.get(), 1);
        // after draining, a key is queued afresh
        o.push_update((0, 0), Bytes::from_static(b"a4"));
        assert_eq!(strings(o.take(usize::MAX).unwrap()), ["a4"]);
    }

    #[test]
    fn overflow_closes() {
        let (o, stats) = outbox(4, 10);
        o.push_reply(Bytes::from_static(b"123456"));
        o.push_reply(Bytes::from_static(b"123456"));
        assert_eq!(o.take(usize::MAX), Err(CloseReason::Overflow));
        assert_eq!(stats.sessions_closed_slow.get(), 1);
        o.push_reply(Bytes::from_static(b"ignored"));
        assert_eq!(o.queued_bytes(), 12);
    }

    #[test]
    fn take_respects_the_batch_size() {
        let (o, _) = outbox(100, 1000);
        for _ in 0..5 {
            o.push_reply(Bytes::from_static(b"abc"));
        }
        assert_eq!(o.take(6).unwrap().len(), 2);
        assert_eq!(o.take(usize::MAX).unwrap().len(), 3);
    }

    /// Over a real loopback connection: lines go straight out while the socket takes
    /// them, then queue (the rest of a partly written line first), and the writer task
    /// delivers the queue in order once the peer reads.
    #[actix_rt::test]
    async fn writes_through_until_the_socket_is_full_then_queues_in_order() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let write = Arc::new(write);
        let (o, _) = outbox(1 << 30, 1 << 30);
        o.attach(write.clone());

        let mut expected = b"first\n".to_vec();
        o.push_reply(Bytes::from_static(b"first\n"));
        assert_eq!(o.queued_bytes(), 0, "written through");
        let mut n = 0;
        while o.queued_bytes() == 0 {
            let mut line = format!("line {n} ").into_bytes();
            line.resize(60_000, b'x');
            line.push(b'\n');
            expected.extend_from_slice(&line);
            o.push_replies(vec![Bytes::from(line)]);
            n += 1;
            assert!(n < 10_000, "the socket never filled up");
        }
        for update in [&b"update a\n"[..], b"update b\n"] {
            o.push_update((0, 0), Bytes::copy_from_slice(update));
            expected.extend_from_slice(update);
        }
        assert!(o.queued_bytes() > 0);

        actix_rt::spawn(crate::writer::write_stream(
            write,
            o.clone(),
            std::time::Duration::from_secs(10),
        ));
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while got.len() < expected.len() {
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut chunk))
                    .await
                    .expect("data in time")
                    .unwrap();
            assert!(read > 0, "connection closed early");
            got.extend_from_slice(&chunk[..read]);
        }
        assert!(got == expected, "bytes arrive complete and in order");
        assert_eq!(o.queued_bytes(), 0);
        // Idle again: the next push is written through at once.
        o.push_reply(Bytes::from_static(b"last\n"));
        assert_eq!(o.queued_bytes(), 0);
        let read = client.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..read], b"last\n");
    }
}
