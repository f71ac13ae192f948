//! The client session actor: one per connection, whatever the framing.
//!
//! It receives framed [`Inbound`] items (TCP lines, WebSocket messages) and has the
//! node answer them; the node queues the replies in the session's [`Outbox`], which a
//! transport-specific writer drains. Items that arrived together (a client pipelining
//! requests) go to the node as one [`SessionBatch`], so that their replies leave in
//! one write; the node keeps request order (see [`crate::node`]). One batch of a
//! session is handled at a time (`ctx.wait`); sessions do not wait for each other.
//! While the outbox is over its backpressure limit, no further request is read: a
//! client that does not read its replies is not served.

use crate::line_codec::Inbound;
use crate::node::{
    next_id, BatchItem, ClientInfo, Connect, Disconnect, NodeActor, SessionBatch, SessionId,
};
use crate::outbox::{CloseReason, Outbox};
use actix::prelude::*;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use secop_proto::message::{self, parse_request};
use secop_proto::{Request, SecopError};
use std::sync::Arc;

/// Items that arrived together, handled as one: the unit the session reads.
pub type InboundChunk = Vec<Result<Inbound, std::io::Error>>;

/// Most items taken from the transport at once.
const MAX_CHUNK: usize = 256;

/// Most requests sent to the node in one batch. With the `describe` and `activate`
/// rules of [`split_batches`] this bounds what one batch adds to the outbox before
/// the session looks at its backpressure again.
const MAX_BATCH: usize = 64;

/// See the module documentation.
pub struct SessionActor {
    id: SessionId,
    node: Addr<NodeActor>,
    outbox: Arc<Outbox>,
    client: ClientInfo,
}

impl SessionActor {
    pub fn new(node: Addr<NodeActor>, outbox: Arc<Outbox>, client: ClientInfo) -> Self {
        SessionActor {
            id: next_id(),
            node,
            outbox,
            client,
        }
    }

    /// Start a session reading `inbound`. Whatever the transport has decoded already
    /// is taken in one go (up to `MAX_CHUNK` items).
    pub fn start<S>(
        node: Addr<NodeActor>,
        outbox: Arc<Outbox>,
        client: ClientInfo,
        inbound: S,
    ) -> Addr<SessionActor>
    where
        S: Stream<Item = Result<Inbound, std::io::Error>> + 'static,
    {
        SessionActor::create(move |ctx| {
            ctx.add_stream(inbound.ready_chunks(MAX_CHUNK));
            SessionActor::new(node, outbox, client)
        })
    }
}

/// Split a chunk into the batches sent to the node: at most [`MAX_BATCH`] items, and a
/// batch ends after a `describe` or an `activate` (the big answers).
fn split_batches(items: Vec<BatchItem>) -> Vec<Vec<BatchItem>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    for item in items {
        let big = matches!(
            &item,
            BatchItem::Request(r) if matches!(r.request, Request::Describe | Request::Activate { .. })
        );
        current.push(item);
        if big || current.len() == MAX_BATCH {
            batches.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// What one inbound item asks for.
enum Work {
    None,
    Local(Bytes),
    Node(secop_proto::ParsedRequest),
}

/// Interpret one framed item: the part of a session that knows SECoP but no transport.
fn interpret(item: Inbound, max_line: Option<usize>) -> Work {
    let bytes = match item {
        Inbound::Line(bytes) => bytes,
        Inbound::TooLong { prefix, length } => {
            crate::metrics::count_received(None);
            let text = String::from_utf8_lossy(&prefix);
            let raw = message::split(&text);
            let limit = max_line.map_or(String::new(), |m| format!(" (limit {m})"));
            let error =
                SecopError::protocol(format!("message of {length} bytes is too long{limit}"));
            return Work::Local(Bytes::from(message::error_reply(
                raw.action,
                raw.specifier,
                &error,
            )));
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            crate::metrics::count_received(None);
            let lossy = String::from_utf8_lossy(&bytes);
            let raw = message::split(&lossy);
            // Action and specifier are ASCII by definition; bad bytes after them are a
            // JSON problem, bad bytes before a protocol problem.
            let head = raw.action.len() + 1 + raw.specifier.len();
            let error = if e.valid_up_to() > head && raw.data.is_some() {
                SecopError::bad_json("data is not valid UTF-8")
            } else {
                SecopError::protocol("message is not valid UTF-8")
            };
            return Work::Local(Bytes::from(message::error_reply(
                raw.action,
                raw.specifier,
                &error,
            )));
        }
    };
    let parsed = parse_request(text);
    match &parsed {
        Some(Ok(p)) => crate::metrics::count_received(Some(&p.action)),
        Some(Err(r)) => crate::metrics::count_received(Some(&r.action)),
        None => {}
    }
    match parsed {
        None => Work::None,
        Some(Err(rejected)) => Work::Local(Bytes::from(rejected.to_line())),
        Some(Ok(parsed)) => match &parsed.request {
            // Answered here: no need to involve the node.
            Request::Ping { token } => {
                Work::Local(Bytes::from(message::pong(token, crate::device::now())))
            }
            _ => Work::Node(parsed),
        },
    }
}

/// HTTP header fields that a browser or HTTP client sends and that no SECoP message
/// can start with (a SECoP action has no colon). Lower case.
const HTTP_HEADERS: &[&str] = &[
    "host",
    "origin",
    "referer",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "connection",
    "content-type",
    "content-length",
    "transfer-encoding",
    "cookie",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-fetch-site",
    "sec-fetch-mode",
    "cache-control",
    "pragma",
    "authorization",
];

/// If `line` can only be an HTTP header (`Host: x`, `Content-Type: ...`), its name.
fn http_header_name(line: &[u8]) -> Option<&'static str> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = line.get(..colon)?;
    HTTP_HEADERS
        .iter()
        .find(|h| h.as_bytes().eq_ignore_ascii_case(name))
        .copied()
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(session = self.id, client = %self.client, "session started");
        self.node.do_send(Connect {
            session: self.id,
            outbox: self.outbox.clone(),
            client: self.client,
        });
        // When the outbox is closed (client too slow, node kicked us), end the session.
        let outbox = self.outbox.clone();
        ctx.spawn(
            async move { outbox.wait_closed().await }
                .into_actor(self)
                .map(|_, act, ctx| {
                    tracing::debug!(session = act.id, reason = ?act.outbox.closed(), "outbox closed");
                    ctx.stop()
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        tracing::debug!(session = self.id, client = %self.client, "session ended");
        self.node.do_send(Disconnect { session: self.id });
        self.outbox.close(CloseReason::Finished);
    }
}

impl StreamHandler<InboundChunk> for SessionActor {
    fn handle(&mut self, chunk: InboundChunk, ctx: &mut Self::Context) {
        if let Some(header) = chunk.iter().find_map(|item| match item {
            Ok(Inbound::Line(line)) => http_header_name(line),
            _ => None,
        }) {
            // Someone is speaking HTTP to the SECoP parser (a cross-protocol request):
            // nothing of what arrived with it is run, and the connection is closed.
            tracing::warn!(session = self.id, client = %self.client, header,
                "HTTP header line on a SECoP connection; closing it");
            crate::metrics::metrics().cross_protocol_closed.inc();
            self.outbox.close(CloseReason::Refused);
            ctx.stop();
            return;
        }
        let mut items = Vec::with_capacity(chunk.len());
        let mut failed = false;
        for item in chunk {
            match item {
                Ok(item) => match interpret(item, None) {
                    Work::None => {}
                    Work::Local(reply) => items.push(BatchItem::Answered(reply)),
                    Work::Node(request) => items.push(BatchItem::Request(request)),
                },
                Err(e) => {
                    // What came before the error is still answered.
                    tracing::debug!(session = self.id, "read error: {e}");
                    failed = true;
                    break;
                }
            }
        }
        let outbox = self.outbox.clone();
        let local = items.iter().all(|i| matches!(i, BatchItem::Answered(_)));
        if local && !outbox.is_lagging() {
            // Answered here (ping, a malformed line): no need to involve the node.
            outbox.push_replies(items.into_iter().filter_map(BatchItem::answered).collect());
            if failed {
                ctx.stop();
            }
            return;
        }
        let node = self.node.clone();
        let session = self.id;
        ctx.wait(
            async move {
                for items in split_batches(items) {
                    outbox.writable().await;
                    let (done, replied) = tokio::sync::oneshot::channel();
                    node.do_send(SessionBatch {
                        session,
                        items,
                        done,
                    });
                    if replied.await.is_err() {
                        // The node dropped the batch: it stopped, or dropped this session.
                        if outbox.closed().is_none() {
                            tracing::error!(session, "the node did not answer");
                            outbox.close(CloseReason::Internal);
                        }
                        return;
                    }
                }
            }
            .into_actor(self)
            .map(move |_, _, ctx| {
                if failed {
                    ctx.stop();
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(item: Inbound) -> String {
        match interpret(item, None) {
            Work::Local(b) => String::from_utf8(b.to_vec()).unwrap(),
            _ => panic!("not answered locally"),
        }
    }

    #[test]
    fn invalid_utf8_is_answered() {
        let s = local(Inbound::Line(Bytes::from_static(b"change m:p \"\xff\"")));
        assert!(s.starts_with("error_change m:p [\"BadJSON\""), "{s}");
        let s = local(Inbound::Line(Bytes::from_static(b"re\xffad m:p")));
        assert!(s.starts_with("error_re?ad m:p [\"ProtocolError\""), "{s}");
    }

    #[test]
    fn too_long_echoes_action_and_specifier() {
        let s = local(Inbound::TooLong {
            prefix: Bytes::from_static(b"change m:p [1,2,3"),
            length: 5000,
        });
        assert!(
            s.starts_with("error_change m:p [\"ProtocolError\",\"message of 5000 bytes"),
            "{s}"
        );
    }

    #[test]
    fn header_lines_are_recognised() {
        for line in [
            &b"Host: 127.0.0.1:10767"[..],
            b"origin: http://evil.example",
            b"Content-Type:text/plain",
            b"CONTENT-LENGTH: 5",
        ] {
            assert!(http_header_name(line).is_some(), "{line:?}");
        }
        for line in [
            &b"read T:value"[..],
            b"change T:target 3",
            b"do io:communicate \"Host: x\"",
            b"hostname: x",
            b"*IDN?",
            b"",
        ] {
            assert_eq!(http_header_name(line), None, "{line:?}");
        }
    }

    #[test]
    fn ping_is_local() {
        let s = local(Inbound::Line(Bytes::from_static(b"ping")));
        assert!(s.starts_with("pong  [null,{\"t\":"), "{s}");
    }
}
