//! WebSocket sessions (RFC-107): the same SECoP session actor as TCP, framed as one
//! SECoP message per TEXT frame.
//!
//! The reader here handles framing, fragments, control frames and the close
//! handshake, and maps every failure to its close code (1002 protocol error, 1007
//! invalid UTF-8, 1009 too big, 1003 binary data on the SECoP endpoint). The same
//! reader serves the echo endpoint that the Autobahn suite tests, so the suite
//! exercises exactly the code that SECoP clients use.
//!
//! Nothing here waits on the client without a bound: a send that blocks (the client
//! does not read) is given up after `write_timeout` (close 1008, or the connection is
//! dropped), pings and pongs are never awaited, so the ping deadline is checked
//! whatever the sending side does, and the bytes of an unfinished message are charged
//! to the connection's share of the input budget as they arrive.

use crate::ws_guard::{FrameGuard, Violation};
use actix::prelude::*;
use actix_http::error::PayloadError;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Item, Message, MessageStream, ProtocolError, Session};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::{FutureExt, Stream};
use secop_actors::input_budget::Holder;
use secop_actors::line_codec::Inbound;
use secop_actors::node::{ClientInfo, NodeActor};
use secop_actors::outbox::{CloseReason as OutboxClose, Outbox, OutboxLimits, SlowClientStats};
use secop_actors::session::SessionActor;
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// WebSocket settings from `[listen.websocket]`.
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub limits: OutboxLimits,
    /// How long a send may wait for the client to read (`listen.write_timeout`).
    pub write_timeout: Duration,
}

/// A complete message from the client.
#[derive(Debug)]
pub enum WsMessage {
    Text(String),
    Binary(Bytes),
}

/// Why the reader stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadEnd {
    /// The client closed (and we answered its close frame).
    ClientClosed,
    /// We closed with this code.
    Closed(u16),
    /// The connection went away without a close handshake.
    Gone,
}

/// Client bytes pass through the [`FrameGuard`] before actix decodes them.
struct GuardedPayload {
    inner: actix_http::Payload,
    guard: Rc<RefCell<FrameGuard>>,
    /// The connection's share of the unfinished-input budget.
    holder: Option<Arc<Holder>>,
    /// Set once a violation was seen: the error is returned after the good bytes.
    failing: bool,
    stopped: bool,
}

impl Stream for GuardedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.stopped {
            return Poll::Ready(None);
        }
        if self.holder.as_ref().is_some_and(|h| h.is_closed()) {
            // Over the input budget: actix is given nothing more (the connection is
            // being dropped).
            self.stopped = true;
            return Poll::Ready(Some(Err(PayloadError::Overflow)));
        }
        if self.failing {
            // Hand actix nothing more: what it decoded so far is still delivered, then
            // the reader sees the error and closes with the guard's code.
            self.stopped = true;
            return Poll::Ready(Some(Err(PayloadError::Overflow)));
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                let violation = self.guard.borrow_mut().inspect_at(&bytes);
                if let Some(holder) = &self.holder {
                    // Once per chunk read: the message so far. Twice its bytes: actix's
                    // decoder buffers a frame in a buffer that grows by doubling.
                    holder.charge(self.guard.borrow().unfinished().saturating_mul(2));
                }
                match violation {
                    None => Poll::Ready(Some(Ok(bytes))),
                    Some((_, 0)) => {
                        self.stopped = true;
                        Poll::Ready(Some(Err(PayloadError::Overflow)))
                    }
                    Some((_, good)) => {
                        // The frames before the offending one are valid: pass them on.
                        self.failing = true;
                        Poll::Ready(Some(Ok(bytes.slice(..good))))
                    }
                }
            }
            other => other,
        }
    }
}

/// An accepted WebSocket: what the reader and writer tasks need.
pub struct Accepted {
    pub session: Session,
    pub stream: MessageStream,
    pub guard: Rc<RefCell<FrameGuard>>,
    /// The connection's budget holder and kill switch (absent only in tests).
    pub holder: Option<Arc<Holder>>,
}

/// Accept the upgrade with the frame guard in front of actix's decoder.
pub async fn accept(
    req: &HttpRequest,
    body: web::Payload,
    max_message: usize,
    holder: Option<Arc<Holder>>,
) -> Result<(HttpResponse, Accepted), actix_web::Error> {
    let guard = Rc::new(RefCell::new(FrameGuard::new(max_message)));
    let guarded = GuardedPayload {
        inner: body.into_inner(),
        guard: guard.clone(),
        holder: holder.clone(),
        failing: false,
        stopped: false,
    };
    let stream: actix_http::BoxedPayloadStream = Box::pin(guarded);
    let mut payload = actix_http::Payload::Stream { payload: stream };
    let body = web::Payload::from_request(req, &mut payload).await?;
    // We implement no subprotocol, so we never select one (RFC 6455 4.2.2: a server
    // that supports none of the offered subprotocols answers without the header).
    let (response, session, stream) = actix_ws::handle_with_protocols(req, body, &[])?;
    // The guard enforces the real limit from the frame headers; actix's own limits
    // are set just above it so they never fire first.
    let stream = stream.max_frame_size(max_message.saturating_add(1));
    Ok((
        response,
        Accepted {
            session,
            stream,
            guard,
            holder,
        },
    ))
}

/// Assembles fragments and validates text as it arrives (fail fast on bad UTF-8).
struct Assembly {
    text: bool,
    data: BytesMut,
    /// Bytes known to be complete, valid UTF-8.
    valid: usize,
}

impl Assembly {
    /// Append a fragment; `Err(1007)` as soon as the text cannot be valid UTF-8.
    fn push(&mut self, bytes: &[u8], last: bool) -> Result<(), u16> {
        self.data.extend_from_slice(bytes);
        if self.text {
            match std::str::from_utf8(&self.data[self.valid..]) {
                Ok(_) => self.valid = self.data.len(),
                Err(e) if e.error_len().is_none() && !last => {
                    // An incomplete code point at the end may be finished by the next fragment.
                    self.valid += e.valid_up_to();
                }
                Err(_) => return Err(1007),
            }
        }
        Ok(())
    }
}

fn close_reason(code: u16, text: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: (!text.is_empty()).then(|| text.to_owned()),
    }
}

/// Map a decoder error to a close code, preferring what the guard saw.
fn close_code_for(error: &ProtocolError, guard: &FrameGuard) -> u16 {
    if let Some(v) = guard.violation() {
        return v.close_code();
    }
    match error {
        ProtocolError::Overflow => Violation::TooBig.close_code(),
        // Text that is not UTF-8 reaches us as InvalidData from actix.
        ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => 1007,
        _ => 1002,
    }
}

/// Read client messages until the connection ends, answering pings and the close
/// handshake, pinging the client and dropping it when it stops answering.
/// `deliver` gets each complete message; returning `Err(code)` closes with that code.
///
/// The ping deadline runs beside the reading, not inside it: while a message waits to
/// be delivered (the session takes no input because its client reads nothing) or a
/// send waits for room, the deadline still fires.
pub async fn read_messages<F>(accepted: Accepted, settings: &WsSettings, deliver: F) -> ReadEnd
where
    F: AsyncFnMut(WsMessage) -> Result<(), u16>,
{
    let Accepted {
        stream,
        session,
        guard,
        holder,
    } = accepted;
    let last_heard = Cell::new(Instant::now());
    let pinger = ping_until_silent(session.clone(), &last_heard, settings);
    let reader = read_loop(
        stream,
        session.clone(),
        guard,
        settings,
        deliver,
        &last_heard,
    );
    tokio::select! {
        end = reader => end,
        () = pinger => {
            tracing::debug!("WebSocket peer stopped answering pings; dropping it");
            // A close frame if there is room for it; the connection goes anyway.
            let _ = session
                .close(Some(close_reason(1001, "ping timeout")))
                .now_or_never();
            if let Some(holder) = holder {
                drop_later(holder);
            }
            ReadEnd::Gone
        }
    }
}

/// Ping every `ping_interval`; return when nothing was heard for `ping_timeout`.
async fn ping_until_silent(
    mut session: Session,
    last_heard: &Cell<Instant>,
    settings: &WsSettings,
) {
    let mut ticker = tokio::time::interval(settings.ping_interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if last_heard.get().elapsed() > settings.ping_timeout {
            return;
        }
        // Never wait to send a ping: while the client reads nothing, a ping that does
        // not fit is skipped. Once the session is closed, the reader ends it.
        if let Some(Err(_)) = session.ping(b"secop-gateway").now_or_never() {
            std::future::pending::<()>().await;
        }
    }
}

async fn read_loop<F>(
    mut stream: MessageStream,
    mut session: Session,
    guard: Rc<RefCell<FrameGuard>>,
    settings: &WsSettings,
    mut deliver: F,
    last_heard: &Cell<Instant>,
) -> ReadEnd
where
    F: AsyncFnMut(WsMessage) -> Result<(), u16>,
{
    let mut assembly: Option<Assembly> = None;
    loop {
        let message = match stream.recv().await {
            None => {
                // The payload ended: either the peer went away, or the guard stopped it.
                let code = guard.borrow().violation().map(Violation::close_code);
                return match code {
                    Some(code) => close(session, code, "", settings).await,
                    None => ReadEnd::Gone,
                };
            }
            Some(Err(error)) => {
                // Frames decoded before the error are still queued: handle them first.
                let mut pending = Vec::new();
                while let Some(Some(Ok(m))) = stream.recv().now_or_never() {
                    pending.push(m);
                }
                for m in pending {
                    match handle(m, &mut assembly, &mut session, settings, &mut deliver).await {
                        Ok(()) => {}
                        Err(end) => return end,
                    }
                }
                let code = close_code_for(&error, &guard.borrow());
                tracing::debug!("WebSocket protocol error: {error}; closing with {code}");
                return close(session, code, "", settings).await;
            }
            Some(Ok(message)) => message,
        };
        last_heard.set(Instant::now());
        if let Err(end) = handle(message, &mut assembly, &mut session, settings, &mut deliver).await
        {
            return end;
        }
    }
}

/// Send a close frame, waiting at most `write_timeout` for room to queue it.
async fn close(session: Session, code: u16, text: &str, settings: &WsSettings) -> ReadEnd {
    let closing = session.close(Some(close_reason(code, text)));
    let _ = tokio::time::timeout(settings.write_timeout, closing).await;
    ReadEnd::Closed(code)
}

/// Drop the connection after a moment (time for a queued close frame to leave).
fn drop_later(holder: Arc<Holder>) {
    actix::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        holder.close();
    });
}

/// Handle one decoded frame. `Err` ends the connection.
async fn handle<F>(
    message: Message,
    assembly: &mut Option<Assembly>,
    session: &mut Session,
    settings: &WsSettings,
    deliver: &mut F,
) -> Result<(), ReadEnd>
where
    F: AsyncFnMut(WsMessage) -> Result<(), u16>,
{
    let complete = match message {
        Message::Text(text) => {
            if assembly.is_some() {
                return Err(close(session.clone(), 1002, "", settings).await);
            }
            WsMessage::Text(text.to_string())
        }
        Message::Binary(bytes) => {
            if assembly.is_some() {
                return Err(close(session.clone(), 1002, "", settings).await);
            }
            WsMessage::Binary(bytes)
        }
        Message::Continuation(item) => {
            let (bytes, first, last, text) = match item {
                Item::FirstText(b) => (b, true, false, true),
                Item::FirstBinary(b) => (b, true, false, false),
                Item::Continue(b) => (b, false, false, false),
                Item::Last(b) => (b, false, true, false),
            };
            if first {
                if assembly.is_some() {
                    return Err(close(session.clone(), 1002, "", settings).await);
                }
                *assembly = Some(Assembly {
                    text,
                    data: BytesMut::new(),
                    valid: 0,
                });
            }
            let Some(a) = assembly.as_mut() else {
                return Err(close(session.clone(), 1002, "", settings).await);
            };
            if let Err(code) = a.push(&bytes, last) {
                return Err(close(session.clone(), code, "", settings).await);
            }
            if a.data.len() > settings.max_message_bytes {
                return Err(close(session.clone(), 1009, "", settings).await);
            }
            if !last {
                return Ok(());
            }
            let Some(a) = assembly.take() else {
                return Ok(());
            };
            if a.text {
                match String::from_utf8(a.data.to_vec()) {
                    Ok(s) => WsMessage::Text(s),
                    Err(_) => return Err(close(session.clone(), 1007, "", settings).await),
                }
            } else {
                WsMessage::Binary(a.data.freeze())
            }
        }
        Message::Ping(bytes) => {
            // Never wait: a client that pings and reads nothing gets no pong.
            return match session.pong(&bytes).now_or_never() {
                Some(Err(_)) => Err(ReadEnd::Gone),
                Some(Ok(())) | None => Ok(()),
            };
        }
        Message::Pong(_) | Message::Nop => return Ok(()),
        Message::Close(reason) => {
            // Echo the client's code (RFC 6455 5.5.1); no code → a close without one.
            let reply = reason.map(|r| CloseReason {
                code: r.code,
                description: None,
            });
            let closing = session.clone().close(reply);
            let _ = tokio::time::timeout(settings.write_timeout, closing).await;
            return Err(ReadEnd::ClientClosed);
        }
    };
    match deliver(complete).await {
        Ok(()) => Ok(()),
        Err(code) => Err(close(session.clone(), code, "", settings).await),
    }
}

/// Run a SECoP session over an accepted WebSocket.
pub fn start_secop_session(
    node: Addr<NodeActor>,
    accepted: Accepted,
    settings: WsSettings,
    stats: Arc<SlowClientStats>,
    client: ClientInfo,
) {
    let outbox = Outbox::new(settings.limits, stats);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Inbound, std::io::Error>>(16);
    let inbound = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let actor_outbox = outbox.clone();
    SessionActor::start(node, actor_outbox, client, inbound);
    // Writer: each queued line becomes one TEXT frame, without its LF.
    let writer_outbox = outbox.clone();
    let mut writer_session = accepted.session.clone();
    let writer_holder = accepted.holder.clone();
    let write_timeout = settings.write_timeout;
    actix::spawn(async move {
        loop {
            match writer_outbox.next_batch(64 * 1024).await {
                Ok(batch) => {
                    for line in batch {
                        let end = line.len() - usize::from(line.ends_with(b"\n"));
                        // Our lines are ASCII: shared as they are, not copied.
                        let line = line.slice(..end);
                        let text = ByteString::try_from(line.clone()).unwrap_or_else(|_| {
                            ByteString::from(String::from_utf8_lossy(&line).into_owned())
                        });
                        match tokio::time::timeout(write_timeout, writer_session.text(text)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                writer_outbox.close(OutboxClose::Finished);
                                return;
                            }
                            Err(_) => {
                                // The client has read nothing for write_timeout.
                                tracing::warn!(timeout = ?write_timeout, "WebSocket client stopped reading; closing its session");
                                writer_outbox.close_slow();
                                let _ = writer_session
                                    .close(Some(close_reason(1008, "client too slow")))
                                    .now_or_never();
                                if let Some(holder) = writer_holder {
                                    drop_later(holder);
                                }
                                return;
                            }
                        }
                    }
                    writer_outbox.written();
                }
                Err(reason) => {
                    // Kicked = node shutdown or description change: "going away".
                    let code = match reason {
                        OutboxClose::Kicked => Some(close_reason(1001, "node going away")),
                        OutboxClose::Overflow => Some(close_reason(1008, "client too slow")),
                        OutboxClose::Internal => Some(close_reason(1011, "internal error")),
                        OutboxClose::Refused => Some(close_reason(1008, "policy violation")),
                        OutboxClose::Finished => None,
                    };
                    if let Some(code) = code {
                        let closing = writer_session.close(Some(code));
                        let _ = tokio::time::timeout(write_timeout, closing).await;
                    }
                    return;
                }
            }
        }
    });
    // Reader: TEXT frames become SECoP lines for the session actor.
    let connection = secop_actors::metrics::ConnectionMetric::open("ws");
    actix::spawn(async move {
        let end = read_messages(accepted, &settings, async |message| match message {
            WsMessage::Text(text) => {
                // One message per frame; a trailing LF (or CRLF) is allowed. Several
                // lines in one frame are taken one by one.
                let text = text.strip_suffix('\n').unwrap_or(&text);
                for line in text.split('\n') {
                    let line =
                        Bytes::copy_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
                    if tx.send(Ok(Inbound::Line(line))).await.is_err() {
                        return Err(1001);
                    }
                }
                Ok(())
            }
            // SECoP travels in TEXT frames (RFC-107); binary data is refused.
            WsMessage::Binary(_) => Err(1003),
        })
        .await;
        tracing::debug!(?end, "WebSocket session ended");
        outbox.close(OutboxClose::Finished);
        drop(connection);
    });
}

/// The Autobahn echo endpoint: same reader, messages sent straight back.
pub fn start_echo(accepted: Accepted, settings: WsSettings) {
    actix::spawn(async move {
        let sender = accepted.session.clone();
        let write_timeout = settings.write_timeout;
        let _ = read_messages(accepted, &settings, async |message| {
            let mut s = sender.clone();
            let sent = async {
                match message {
                    WsMessage::Text(t) => s.text(t).await,
                    WsMessage::Binary(b) => s.binary(b).await,
                }
            };
            match tokio::time::timeout(write_timeout, sent).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(1001),
                Err(_) => Err(1008),
            }
        })
        .await;
    });
}
