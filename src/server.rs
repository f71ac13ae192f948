//! The listener of the shared port: accepts connections up to a limit (overall and per
//! client address), turns away clients that the access rules deny before reading a
//! byte, sniffs each connection (an HTTP request line is HTTP, anything else SECoP),
//! wires SECoP connections to a session actor and a writer task, hands HTTP
//! connections to actix-web, and shuts down gracefully on SIGINT/SIGTERM.

use crate::access_rules::{AccessRules, Transport};
use actix::prelude::*;
use secop_actors::line_codec::LineCodec;
use secop_actors::metrics::ConnectionMetric;
use secop_actors::node::{ClientInfo, NodeActor, SessionTransport};
use secop_actors::outbox::{Outbox, OutboxLimits, SlowClientStats};
use secop_actors::session::SessionActor;
use secop_actors::writer::write_stream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Count a connection closed at once, and say why.
fn refuse(peer: SocketAddr, reason: &'static str) {
    secop_actors::metrics::metrics()
        .connections_refused
        .with_label_values(&[reason])
        .inc();
    tracing::debug!(%peer, reason, "connection refused");
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
        if open.load(Ordering::Relaxed) >= settings.max_connections {
            tracing::warn!(%peer, limit = settings.max_connections, "connection limit reached; closing new connection");
            drop(stream);
            refuse(peer, "connection_limit");
            continue;
        }
        let limit = settings.access.connection_limit(address);
        let held = per_address.borrow().get(&address).copied().unwrap_or(0);
        if held >= limit {
            drop(stream);
            refuse(peer, "address_limit");
            continue;
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
        actix::spawn(async move {
            let detected =
                sniff::detect(&stream, settings.handshake_timeout, settings.idle_timeout).await;
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
                    start_session(stream, client, &node, &settings, &stats, guard)
                }
                Ok(Detected::Http) => {
                    let _ = stream.set_nodelay(true);
                    http(stream, peer).await;
                    drop(guard);
                }
                Ok(Detected::TimedOut) => {
                    tracing::debug!(%peer, "connection dropped: no complete first request in time")
                }
                Ok(Detected::Closed) | Err(_) => {}
            }
        });
    }
}

fn start_session(
    stream: TcpStream,
    client: ClientInfo,
    node: &Addr<NodeActor>,
    settings: &ListenerSettings,
    stats: &Arc<SlowClientStats>,
    guard: ConnectionGuard,
) {
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
    actix::spawn(async move {
        write_stream(write, writer_outbox, timeout).await;
        drop(connection);
        drop(guard);
    });
    let frames = FramedRead::new(read, LineCodec::new(settings.max_line_bytes));
    let node = node.clone();
    SessionActor::start(node, outbox, client, frames);
}

/// Wait for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
