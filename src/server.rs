//! The listener of the shared port: accepts connections up to a limit, sniffs each
//! (RFC-107: `GET /` is HTTP, anything else SECoP), wires SECoP connections to a
//! session actor and a writer task, hands HTTP connections to actix-web, and shuts
//! down gracefully on SIGINT/SIGTERM.

use actix::prelude::*;
use secop_actors::line_codec::LineCodec;
use secop_actors::metrics::ConnectionMetric;
use secop_actors::node::{CloseSessions, NodeActor};
use secop_actors::outbox::{Outbox, OutboxLimits, SlowClientStats};
use secop_actors::session::SessionActor;
use secop_actors::writer::write_stream;
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
}

/// Counts open connections; the guard lives as long as the connection's writer.
struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
        if open.load(Ordering::Relaxed) >= settings.max_connections {
            tracing::warn!(%peer, limit = settings.max_connections, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let guard = ConnectionGuard(open.clone());
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
                    start_session(stream, peer.to_string(), &node, &settings, &stats, guard)
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
    peer: String,
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
    SessionActor::start(node, outbox, peer, frames);
}

/// Wait for SIGINT or SIGTERM, then close all sessions of all nodes.
pub async fn shutdown_signal(nodes: Vec<Addr<NodeActor>>) {
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
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for node in &nodes {
        let _ = node.send(CloseSessions).await;
    }
    // Give writers a moment to flush and close their sockets.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
