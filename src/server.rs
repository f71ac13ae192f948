//! The TCP listener: accepts connections up to a limit, wires each to a session
//! actor and a writer task, and shuts down gracefully on SIGINT/SIGTERM.

use actix::prelude::*;
use secop_actors::line_codec::LineCodec;
use secop_actors::node::{CloseSessions, NodeActor};
use secop_actors::outbox::{Outbox, OutboxLimits, SlowClientStats};
use secop_actors::session::SessionActor;
use secop_actors::writer::write_stream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;

/// Per-connection settings of a listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub max_line_bytes: usize,
    pub max_connections: usize,
    pub write_timeout: Duration,
    pub limits: OutboxLimits,
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
        start_session(stream, peer.to_string(), &node, &settings, &stats, guard);
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
    let outbox = Outbox::new(settings.limits, stats.clone());
    let timeout = settings.write_timeout;
    let writer_outbox = outbox.clone();
    actix::spawn(async move {
        write_stream(write, writer_outbox, timeout).await;
        drop(guard);
    });
    let frames = FramedRead::new(read, LineCodec::new(settings.max_line_bytes));
    let node = node.clone();
    SessionActor::create(move |ctx| {
        ctx.add_stream(frames);
        SessionActor::new(node, outbox, peer)
    });
}

/// Wait for SIGINT or SIGTERM, then close all sessions.
pub async fn shutdown_signal(node: Addr<NodeActor>) {
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
    let _ = node.send(CloseSessions).await;
    // Give writers a moment to flush and close their sockets.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
