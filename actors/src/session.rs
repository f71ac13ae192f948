//! The client session actor: one per connection, whatever the framing.
//!
//! It receives framed [`Inbound`] items (TCP lines today, WebSocket messages later),
//! turns each into a reply via the node, and queues replies in its [`Outbox`]; a
//! transport-specific writer drains that. Requests of one session are handled one
//! at a time (`ctx.wait`), so replies come in request order; sessions do not wait
//! for each other. While the outbox is over its backpressure limit, no further
//! request is read: a client that does not read its replies is not served.

use crate::line_codec::Inbound;
use crate::node::{next_id, Connect, Disconnect, NodeActor, SessionId, SessionRequest};
use crate::outbox::{CloseReason, Outbox};
use actix::prelude::*;
use bytes::Bytes;
use secop_proto::message::{self, parse_request};
use secop_proto::{Request, SecopError};
use std::sync::Arc;

/// See the module documentation.
pub struct SessionActor {
    id: SessionId,
    node: Addr<NodeActor>,
    outbox: Arc<Outbox>,
    peer: String,
}

impl SessionActor {
    pub fn new(node: Addr<NodeActor>, outbox: Arc<Outbox>, peer: String) -> Self {
        SessionActor {
            id: next_id(),
            node,
            outbox,
            peer,
        }
    }
}

/// What one inbound item asks for.
enum Work {
    None,
    Local(Bytes),
    Node(secop_proto::ParsedRequest),
}

/// Interpret one framed item: the part of a session that knows SECoP but no transport.
fn interpret(item: Inbound, max_line: Option<usize>) -> Work {
    let received = &crate::metrics::metrics().messages_received;
    let bytes = match item {
        Inbound::Line(bytes) => bytes,
        Inbound::TooLong { prefix, length } => {
            received.with_label_values(&["invalid"]).inc();
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
            received.with_label_values(&["invalid"]).inc();
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
    if parsed.is_some() {
        let action = message::split(text).action;
        received
            .with_label_values(&[crate::metrics::received_action(action)])
            .inc();
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

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(session = self.id, peer = %self.peer, "session started");
        self.node.do_send(Connect {
            session: self.id,
            outbox: self.outbox.clone(),
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
        tracing::debug!(session = self.id, peer = %self.peer, "session ended");
        self.node.do_send(Disconnect { session: self.id });
        self.outbox.close(CloseReason::Finished);
    }
}

impl StreamHandler<Result<Inbound, std::io::Error>> for SessionActor {
    fn handle(&mut self, item: Result<Inbound, std::io::Error>, ctx: &mut Self::Context) {
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                tracing::debug!(session = self.id, "read error: {e}");
                ctx.stop();
                return;
            }
        };
        let work = interpret(item, None);
        let outbox = self.outbox.clone();
        let lagging = outbox.is_lagging();
        match work {
            Work::None => {}
            Work::Local(reply) if !lagging => outbox.push_reply(reply),
            Work::Local(reply) => ctx.wait(
                async move {
                    outbox.writable().await;
                    outbox.push_reply(reply);
                }
                .into_actor(self),
            ),
            Work::Node(request) => {
                let node = self.node.clone();
                let session = self.id;
                ctx.wait(
                    async move {
                        outbox.writable().await;
                        match node.send(SessionRequest { session, request }).await {
                            Ok(reply) => outbox.push_reply(reply),
                            Err(_) => {
                                tracing::error!(session, "the node actor is gone");
                                outbox.close(CloseReason::Internal)
                            }
                        }
                    }
                    .into_actor(self),
                );
            }
        }
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
    fn ping_is_local() {
        let s = local(Inbound::Line(Bytes::from_static(b"ping")));
        assert!(s.starts_with("pong  [null,{\"t\":"), "{s}");
    }
}
