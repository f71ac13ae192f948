//! Requests of a session, handled as batches with the device requests in flight
//! tracked by the node itself.
//!
//! A session sends what arrived together as one [`SessionBatch`]. The node dispatches
//! its items in order: answers what it can at once and sends device requests without
//! waiting for them, so that a client pipelining reads has them all at its devices
//! together. Only `read` and `describe` may overtake a device request that is still
//! outstanding; any other request (`change`, `activate`, `*IDN?`, ...) waits until
//! the requests before it are answered, so that every request sees the state its
//! predecessors left, exactly as if they had been handled one by one. When the batch
//! is complete its replies are queued in request order, after the side-effect updates
//! of its requests.
//!
//! Devices answer with [`DeviceDone`] messages; the node holds no future per request
//! (an actix actor polls all its futures on every wake-up). One timer, armed for the
//! earliest deadline in flight ([`crate::deadline`]), answers requests past theirs.

use super::{NodeActor, SessionId};
use crate::deadline::{self, DeadlineTimer, Deadlines};
use crate::device::{DeviceCall, DeviceReply, DeviceRequest, Responder};
use crate::metrics::received_action_index;
use actix::prelude::*;
use bytes::Bytes;
use secop_proto::message;
use secop_proto::{ParsedRequest, Request, SecopError};
use std::time::Instant;
use tokio::sync::oneshot;

/// One item of a [`SessionBatch`].
pub enum BatchItem {
    /// Answered by the session already (ping, a malformed line); kept in its place.
    Answered(Bytes),
    Request(ParsedRequest),
}

impl BatchItem {
    /// The reply of an item the session answered itself.
    pub fn answered(self) -> Option<Bytes> {
        match self {
            BatchItem::Answered(reply) => Some(reply),
            BatchItem::Request(_) => None,
        }
    }

    /// Whether this item must wait for the device requests before it.
    fn waits_for_predecessors(&self) -> bool {
        match self {
            BatchItem::Answered(_) => false,
            BatchItem::Request(r) => !matches!(
                r.request,
                Request::Read { .. } | Request::Describe | Request::Ping { .. }
            ),
        }
    }
}

/// Requests of one session that arrived together. The replies go to the session's
/// outbox; `done` fires once they are all queued (or is dropped if the session is gone).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionBatch {
    pub session: SessionId,
    pub items: Vec<BatchItem>,
    pub done: oneshot::Sender<()>,
}

/// A device request of a batch, waiting for its answer.
struct Waiting {
    request: ParsedRequest,
    module: usize,
    force: bool,
    action: usize,
    started: Instant,
}

/// A batch with device requests outstanding.
pub(super) struct InFlight {
    session: SessionId,
    /// One per dispatched item, in request order; empty where an answer is awaited.
    replies: Vec<Bytes>,
    /// How many of `replies` are in the outbox already.
    flushed: usize,
    /// Aligned with `replies`: the device requests still waited for.
    waiting: Vec<Option<Waiting>>,
    outstanding: usize,
    /// Items not dispatched yet.
    rest: std::vec::IntoIter<BatchItem>,
    /// When the outstanding device requests are answered with `TimeoutError`.
    deadline: Instant,
    done: oneshot::Sender<()>,
}

impl NodeActor {
    /// Dispatch items until one has to wait for outstanding device requests; then the
    /// batch is kept in flight, or completed if nothing is outstanding.
    fn advance(&mut self, id: u64, mut flight: InFlight) {
        let mut outgoing: Vec<(usize, Vec<DeviceCall>)> = Vec::new();
        // Requests that arrived together started together (one clock reading).
        let started = Instant::now();
        while flight.outstanding == 0
            || flight
                .rest
                .as_slice()
                .first()
                .is_some_and(|item| !item.waits_for_predecessors())
        {
            let Some(item) = flight.rest.next() else {
                break;
            };
            if item.waits_for_predecessors() {
                // Everything before it is answered: those replies go out first, so that
                // what this request sends (the updates of an `activate`, side effects)
                // comes after them, as if the requests had come one by one.
                self.flush(&mut flight);
            }
            match item {
                BatchItem::Answered(reply) => {
                    flight.replies.push(reply);
                    flight.waiting.push(None);
                }
                BatchItem::Request(request) => {
                    self.dispatch(&mut flight, request, started, &mut outgoing)
                }
            }
        }
        for (module, calls) in outgoing {
            self.send_calls(id, &mut flight, module, calls);
        }
        if flight.outstanding > 0 {
            self.expiry.want(flight.deadline);
            self.in_flight.insert(id, flight);
        } else {
            self.flush(&mut flight);
            let _ = flight.done.send(());
        }
    }

    /// Queue the replies not queued yet (all answered) in the session's outbox.
    fn flush(&mut self, flight: &mut InFlight) {
        if flight.flushed == flight.replies.len() {
            return;
        }
        if let Some(session) = self.sessions.get(&flight.session) {
            session
                .outbox
                .push_replies(flight.replies[flight.flushed..].to_vec());
        }
        flight.flushed = flight.replies.len();
    }

    /// Answer one request, or queue it for its device (in `outgoing`, by the index of
    /// the first module of that device seen in this round).
    fn dispatch(
        &mut self,
        flight: &mut InFlight,
        request: ParsedRequest,
        started: Instant,
        outgoing: &mut Vec<(usize, Vec<DeviceCall>)>,
    ) {
        let action = received_action_index(&request.action);
        self.request_metrics[action].0.inc();
        let outcome = match self.prepare(flight.session, &request) {
            Ok(super::Next::Reply(reply)) => Ok(reply),
            Err(e) => Err(e),
            Ok(super::Next::Device {
                module,
                action: device_action,
                force,
            }) => {
                if flight.outstanding == 0 {
                    flight.deadline = deadline::after(started, self.settings.device_timeout);
                }
                let slot = flight.replies.len() as u32;
                let call = DeviceCall {
                    module: self.modules[module].name.clone(),
                    action: device_action,
                    slot,
                };
                let device = self.modules[module].device_index;
                match outgoing
                    .iter_mut()
                    .find(|(m, _)| self.modules[*m].device_index == device)
                {
                    Some((_, calls)) => calls.push(call),
                    None => outgoing.push((module, vec![call])),
                }
                flight.replies.push(Bytes::new());
                flight.waiting.push(Some(Waiting {
                    request,
                    module,
                    force,
                    action,
                    started,
                }));
                flight.outstanding += 1;
                return;
            }
        };
        self.answer_now(flight, &request, action, started, outcome);
    }

    /// Send the calls of this round for one device (reached through `module`).
    fn send_calls(
        &mut self,
        id: u64,
        flight: &mut InFlight,
        module: usize,
        calls: Vec<DeviceCall>,
    ) {
        let (error, calls) = match self.done_sink.clone() {
            None => (SecopError::internal("the node is not running"), calls),
            Some(sink) => {
                let request = DeviceRequest {
                    calls,
                    origin: Some(self.subscriber_id),
                    deadline: flight.deadline,
                    reply: Responder::new(sink, id),
                };
                let device = &self.modules[module].device;
                match device.try_send(request) {
                    Ok(()) => return,
                    // The bound is elsewhere: one batch per session at a time.
                    Err(SendError::Full(request)) => return device.do_send(request),
                    Err(SendError::Closed(request)) => (
                        SecopError::communication_failed("the device actor has stopped"),
                        request.calls,
                    ),
                }
            }
        };
        let replies = calls
            .iter()
            .map(|c| (c.slot, DeviceReply::error(error.clone())))
            .collect();
        self.settle(flight, replies);
    }

    fn answer_now(
        &mut self,
        flight: &mut InFlight,
        request: &ParsedRequest,
        action: usize,
        started: Instant,
        outcome: Result<Bytes, SecopError>,
    ) {
        if let Err(e) = &outcome {
            self.audit(flight.session, request, Err(e));
        }
        let reply = outcome.unwrap_or_else(|e| {
            Bytes::from(message::error_reply(
                &request.action,
                &request.specifier,
                &e,
            ))
        });
        self.observe(action, started, Instant::now());
        flight.replies.push(reply);
        flight.waiting.push(None);
    }

    fn observe(&self, action: usize, started: Instant, now: Instant) {
        self.request_metrics[action]
            .1
            .observe(now.saturating_duration_since(started).as_secs_f64());
    }

    /// A device answered (some) calls of batch `id`.
    fn device_done(&mut self, id: u64, replies: Vec<(u32, DeviceReply)>) {
        let Some(mut flight) = self.in_flight.remove(&id) else {
            for (_, reply) in replies {
                self.late(reply);
            }
            return;
        };
        self.settle(&mut flight, replies);
        if flight.outstanding == 0 {
            self.advance(id, flight);
        } else {
            self.in_flight.insert(id, flight);
        }
    }

    /// Turn answers into the reply lines of their slots.
    fn settle(&mut self, flight: &mut InFlight, replies: Vec<(u32, DeviceReply)>) {
        let now = Instant::now();
        for (slot, reply) in replies {
            let Some(waiting) = flight.waiting.get_mut(slot as usize).and_then(Option::take) else {
                self.late(reply);
                continue;
            };
            let line = self.finish(
                flight.session,
                &waiting.request,
                waiting.module,
                waiting.force,
                reply,
            );
            self.observe(waiting.action, waiting.started, now);
            flight.replies[slot as usize] = line;
            flight.outstanding -= 1;
        }
    }

    /// An answer after its request timed out: the client has its `TimeoutError`, but the
    /// values the device obtained are still news for everybody.
    fn late(&mut self, reply: DeviceReply) {
        for update in &reply.updates {
            self.apply(update, false);
        }
    }

    /// Answer the device requests whose deadline passed with `TimeoutError`.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(mut flight) = self.in_flight.remove(&id) else {
                continue;
            };
            let replies = (0..flight.waiting.len())
                .filter(|slot| flight.waiting[*slot].is_some())
                .map(|slot| {
                    let error = SecopError::timeout("the device did not answer in time");
                    (slot as u32, DeviceReply::error(error))
                })
                .collect();
            self.settle(&mut flight, replies);
            self.advance(id, flight);
        }
    }
}

impl Deadlines for NodeActor {
    fn timer(&mut self) -> &mut DeadlineTimer {
        &mut self.expiry
    }

    fn expire_due(&mut self) -> Option<Instant> {
        self.expire();
        self.in_flight.values().map(|f| f.deadline).min()
    }
}

impl Handler<SessionBatch> for NodeActor {
    type Result = ();

    fn handle(&mut self, msg: SessionBatch, ctx: &mut Self::Context) {
        let id = self.next_batch;
        self.next_batch += 1;
        let n = msg.items.len();
        let flight = InFlight {
            session: msg.session,
            replies: Vec::with_capacity(n),
            flushed: 0,
            waiting: Vec::with_capacity(n),
            outstanding: 0,
            rest: msg.items.into_iter(),
            deadline: Instant::now(),
            done: msg.done,
        };
        self.advance(id, flight);
        deadline::arm(self, ctx);
    }
}

impl Handler<crate::device::DeviceDone> for NodeActor {
    type Result = ();

    fn handle(&mut self, msg: crate::device::DeviceDone, ctx: &mut Self::Context) {
        self.device_done(msg.token, msg.replies);
        deadline::arm(self, ctx);
    }
}
