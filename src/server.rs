//! The listener of the shared port: accepts connections up to a limit (overall and per
//! client address), turns away clients that the access rules deny before reading a
//! byte, sniffs each connection (an HTTP request line is HTTP, anything else SECoP),
//! wires SECoP connections to a session actor and a writer task, hands HTTP
//! connections to actix-web, and shuts down gracefully on SIGINT/SIGTERM.
//!
//! Every connection gets a [`Holder`] of the shared unfinished-input budget at accept
//! (its kill switch too), and must complete a first request (a SECoP line, an HTTP
//! request) within `first_request_timeout`.

use crate::access_rules::{AccessRules, Transport};
use crate::conn_io::ConnIo;
use actix::prelude::*;
use secop_actors::input_budget::{BudgetedLines, BudgetedStream, FairRead, Holder, InputBudget};
use secop_actors::line_codec::LineCodec;
use secop_actors::metrics::ConnectionMetric;
use secop_actors::node::{ClientInfo, NodeActor, SessionTransport};
use secop_actors::outbox::{CloseReason, Outbox, OutboxLimits, SlowClientStats};
use secop_actors::session::SessionActor;
use secop_actors::writer::write_stream;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;

use crate::http::ConnectionService;
use crate::sniff::{self, Detected};

/// Per-connection settings of a listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub max_line_bytes: usize,
    pub max_connections: usize,
    pub write_timeout: Duration,
    pub limits: OutboxLimits,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// From accept to the first complete request (None: no limit).
    pub first_request_timeout: Option<Duration>,
    /// Unfinished input of all connections of all nodes.
    pub budget: Arc<InputBudget>,
    /// The node's access rules (they also hold the per-address connection limits).
    pub access: Arc<AccessRules>,
}

/// Open connections per client address (the listener's task and its connections all
/// run on one thread).
type PerAddress = Rc<RefCell<HashMap<IpAddr, usize>>>;

/// Counts an open connection, overall and for its address; the guard lives as long as
/// the connection.
struct ConnectionGuard {
    open: Arc<AtomicUsize>,
    per_address: PerAddress,
    address: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let mut counts = self.per_address.borrow_mut();
        if let Some(n) = counts.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Count a connection closed before its first request, by reason.
pub fn count_refused(reason: &'static str) {
    secop_actors::metrics::metrics()
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

/// Count a connection closed at once, and say why.
fn refuse(peer: SocketAddr, reason: &'static str) {
    count_refused(reason);
    tracing::debug!(%peer, reason, "connection refused");
}

/// How long a connection may stay silent before a new one, at the connection limit,
/// may take its place.
const EVICTABLE_AFTER: Duration = Duration::from_secs(2);

/// Close the oldest connection that has been open for [`EVICTABLE_AFTER`] without
/// completing a request (`silent` is in accept order). True if one was closed.
fn evict_oldest_silent(silent: &mut VecDeque<Weak<Holder>>) -> bool {
    while let Some(front) = silent.front() {
        match front.upgrade() {
            Some(h) if !h.has_spoken() && !h.is_closed() => {
                if h.age() < EVICTABLE_AFTER {
                    return false;
                }
                h.close();
                silent.pop_front();
                return true;
            }
            _ => {
                silent.pop_front();
            }
        }
    }
    false
}

/// The earlier of two optional timeouts.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Accept connections until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    node: Addr<NodeActor>,
    settings: ListenerSettings,
    stats: Arc<SlowClientStats>,
    http: ConnectionService,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let per_address: PerAddress = Rc::default();
    let silent: Rc<RefCell<VecDeque<Weak<Holder>>>> = Rc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let address = peer.ip().to_canonical();
        if settings.access.denies_everything(address) {
            // Closed before a byte is read: nothing of this client reaches a parser.
            drop(stream);
            refuse(peer, "access_denied");
            continue;
        }
        let limit = settings.access.connection_limit(address);
        let held = per_address.borrow().get(&address).copied().unwrap_or(0);
        if held >= limit {
            drop(stream);
            refuse(peer, "address_limit");
            continue;
        }
        if open.load(Ordering::Relaxed) >= settings.max_connections {
            // Full: the oldest connection that has not spoken yet (for a while) makes
            // room; only if there is none is the new one turned away.
            if evict_oldest_silent(&mut silent.borrow_mut()) {
                count_refused("evicted");
            } else {
                tracing::warn!(%peer, limit = settings.max_connections, "connection limit reached; closing new connection");
                drop(stream);
                refuse(peer, "connection_limit");
                continue;
            }
        }
        *per_address.borrow_mut().entry(address).or_insert(0) += 1;
        open.fetch_add(1, Ordering::Relaxed);
        let guard = ConnectionGuard {
            open: open.clone(),
            per_address: per_address.clone(),
            address,
        };
        // Each connection is sniffed in its own task, so a client that sends `G` and
        // then nothing holds up nobody else.
        let node = node.clone();
        let settings = settings.clone();
        let stats = stats.clone();
        let http = http.clone();
        let accepted = tokio::time::Instant::now();
        let first_request_by = settings.first_request_timeout.map(|t| accepted + t);
        let holder = settings.budget.holder();
        {
            let mut silent = silent.borrow_mut();
            // (spoken and closed ones leave from the front as they are met)
            if silent.len() >= 2 * settings.max_connections {
                silent.retain(|h| {
                    h.upgrade()
                        .is_some_and(|h| !h.has_spoken() && !h.is_closed())
                });
            }
            silent.push_back(Arc::downgrade(&holder));
        }
        actix::spawn(async move {
            // Silent connections wait for their first byte no longer than for their
            // first request.
            let first_byte = earliest(settings.idle_timeout, settings.first_request_timeout);
            let first_line = earliest(
                Some(settings.handshake_timeout),
                settings.first_request_timeout,
            )
            .unwrap_or(settings.handshake_timeout);
            let detected = tokio::select! {
                d = sniff::detect(&stream, first_line, first_byte) => d,
                _ = holder.closed() => {
                    tracing::debug!(%peer, "silent connection evicted to make room");
                    return;
                }
            };
            match detected {
                Ok(Detected::Secop) => {
                    let Some(access) = settings.access.grant(address, Transport::Tcp).access()
                    else {
                        refuse(peer, "access_denied");
                        return;
                    };
                    let client = ClientInfo {
                        address: Some(peer),
                        transport: SessionTransport::Tcp,
                        access,
                    };
                    let session = Session {
                        client,
                        holder,
                        first_request_by,
                    };
                    start_session(stream, session, &node, &settings, &stats, guard)
                }
                Ok(Detected::Http) => {
                    let _ = stream.set_nodelay(true);
                    let io = ConnIo::new(stream, holder, settings.write_timeout, first_request_by);
                    http(io, peer).await;
                    drop(guard);
                }
                Ok(Detected::TimedOut) => {
                    count_refused("first_request_timeout");
                    tracing::debug!(%peer, "connection dropped: no complete first request in time")
                }
                Ok(Detected::Closed) | Err(_) => {}
            }
        });
    }
}

/// A SECoP connection about to become a session.
struct Session {
    client: ClientInfo,
    holder: Arc<Holder>,
    first_request_by: Option<tokio::time::Instant>,
}

/// Close the session when it has not completed a line by its deadline. Never
/// returns. (A closed holder ends the session through its [`BudgetedStream`].)
async fn first_request_deadline(
    holder: Arc<Holder>,
    first_request_by: Option<tokio::time::Instant>,
    outbox: Arc<Outbox>,
) {
    if let Some(t) = first_request_by {
        tokio::time::sleep_until(t).await;
        if !holder.has_spoken() && !holder.is_closed() {
            count_refused("first_request_timeout");
            tracing::debug!("SECoP connection without a complete first line in time; dropped");
            outbox.close(CloseReason::Refused);
        }
    }
    std::future::pending::<()>().await
}

fn start_session(
    stream: TcpStream,
    session: Session,
    node: &Addr<NodeActor>,
    settings: &ListenerSettings,
    stats: &Arc<SlowClientStats>,
    guard: ConnectionGuard,
) {
    let Session {
        client,
        holder,
        first_request_by,
    } = session;
    // Replies are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let write = Arc::new(write);
    let outbox = Outbox::new(settings.limits, stats.clone());
    // Replies and updates go to the socket straight from the node when it takes them.
    outbox.attach(write.clone());
    let timeout = settings.write_timeout;
    let writer_outbox = outbox.clone();
    let connection = ConnectionMetric::open("tcp");
    let watched = outbox.clone();
    let watched_holder = holder.clone();
    actix::spawn(async move {
        tokio::select! {
            _ = write_stream(write, writer_outbox, timeout) => {}
            _ = first_request_deadline(watched_holder, first_request_by, watched) => {}
        }
        drop(connection);
        drop(guard);
    });
    let codec = BudgetedLines::new(LineCodec::new(settings.max_line_bytes), holder.clone());
    let frames = BudgetedStream::new(FramedRead::new(FairRead::new(read), codec), holder);
    let node = node.clone();
    SessionActor::start(node, outbox, client, frames);
}

/// What a signal asks the process to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGINT or SIGTERM: shut down.
    Stop,
    /// SIGHUP: reload the configuration.
    Reload,
}

/// The signals the process handles, registered once (a signal that arrives while a
/// reload runs is not lost).
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Wait for the next signal.
    pub async fn next(&mut self) -> SignalAction {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let hup = async {
                match self.hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = ctrl_c => { tracing::info!("SIGINT received, shutting down"); SignalAction::Stop }
                _ = term => { tracing::info!("SIGTERM received, shutting down"); SignalAction::Stop }
                _ = hup => { tracing::info!("SIGHUP received, reloading the configuration"); SignalAction::Reload }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
            tracing::info!("SIGINT received, shutting down");
            SignalAction::Stop
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}
