//! The contract between the node and device actors.
//!
//! A device actor owns one link (a simulated instrument, a serial line, a Modbus
//! connection, a remote SEC node) and serves one or more modules. The node talks to
//! it with [`DeviceRequest`]s and receives its unsolicited values as
//! [`DeviceUpdates`]. Plain data types only: any transport can sit behind them.

use actix::prelude::*;
use secop_proto::{ModuleDescription, SecopError};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// UNIX time in seconds, the SECoP timestamp.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A new value (or read error) of one parameter, with the time it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamUpdate {
    pub module: Arc<str>,
    pub parameter: Arc<str>,
    pub value: Result<Value, SecopError>,
    pub timestamp: f64,
}

impl ParamUpdate {
    pub fn new(module: &Arc<str>, parameter: &str, value: Result<Value, SecopError>) -> Self {
        ParamUpdate {
            module: module.clone(),
            parameter: Arc::from(parameter),
            value,
            timestamp: now(),
        }
    }
}

/// What the node asks a device to do. Values are already validated by the node.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceAction {
    Read {
        parameter: String,
    },
    Change {
        parameter: String,
        value: Value,
    },
    Do {
        command: String,
        argument: Value,
    },
    /// Only for devices that check themselves (remote nodes, see
    /// [`DeviceHandle::checks`]); the node checks for all others.
    Check {
        accessible: String,
        value: Value,
    },
}

/// One thing asked of a device: an action on one of its modules. `slot` tells the
/// asker which of its requests the answer belongs to.
#[derive(Debug)]
pub struct DeviceCall {
    pub module: Arc<str>,
    pub action: DeviceAction,
    pub slot: u32,
}

/// Requests for a device, taken in order. A client that pipelines reads has them
/// sent as one message (one envelope, one answer), not one each.
///
/// Devices queue requests and answer through the [`Responder`], as a message back to
/// the node: the node keeps no future per request in flight (an actix actor polls
/// every future it holds on each wake-up, so thousands of pending requests would make
/// every message cost thousands of polls).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceRequest {
    pub calls: Vec<DeviceCall>,
    /// The subscriber that asked; it gets the side effects in the reply and is left out
    /// when the device broadcasts them to its other subscribers.
    pub origin: Option<SubscriberId>,
    /// The asker has given up by then (it answered its client with `TimeoutError`): a
    /// call not started by this time is answered without touching the link.
    pub deadline: Instant,
    pub reply: Responder,
}

/// Answers to (some of) the calls of one [`DeviceRequest`], by slot.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceDone {
    /// The asker's reference for the request (its batch).
    pub token: u64,
    pub replies: Vec<(u32, DeviceReply)>,
}

/// Where the answers to one [`DeviceRequest`] go.
#[derive(Clone)]
pub struct Responder {
    sink: Recipient<DeviceDone>,
    token: u64,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Responder({})", self.token)
    }
}

impl Responder {
    pub fn new(sink: Recipient<DeviceDone>, token: u64) -> Self {
        Responder { sink, token }
    }

    /// Deliver answers. An asker that is gone is not an error of the device.
    pub fn send(&self, replies: Vec<(u32, DeviceReply)>) {
        self.sink.do_send(DeviceDone {
            token: self.token,
            replies,
        });
    }
}

/// The outcome of one [`DeviceCall`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReply {
    /// Read-back value (read, change) or command result (do), with its timestamp.
    pub result: Result<(Value, f64), SecopError>,
    /// Side effects (status to BUSY, a new target, ...) that must reach activated
    /// clients before the requester's reply.
    pub updates: Vec<ParamUpdate>,
}

impl DeviceReply {
    /// An answer that is only an error.
    pub fn error(error: SecopError) -> Self {
        DeviceReply {
            result: Err(error),
            updates: Vec::new(),
        }
    }
}

/// Values a device pushes on its own (polling, a move in progress).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceUpdates(pub Vec<ParamUpdate>);

/// Identifies a subscriber of a device.
pub type SubscriberId = u64;

/// Subscribe to a device's updates; answered with a snapshot of all current values,
/// so the node's cache is complete before clients connect.
#[derive(Message)]
#[rtype(result = "Vec<ParamUpdate>")]
pub struct Subscribe {
    pub id: SubscriberId,
    pub sink: Recipient<DeviceUpdates>,
    /// Told when the device's modules change (remote nodes only).
    pub on_change: Option<Recipient<DeviceModulesChanged>>,
}

/// The modules of a device changed (a remote node's description changed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceModulesChanged(pub DeviceHandle);

/// Stop the device (a reload removed or changed it): its actor ends and its link is
/// closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDevice;

/// Keep only the modules in `modules` (all if `None`), without the accessibles named
/// in `hide` (`module:accessible`): what [`DeviceHandle::restricted`] leaves, also for
/// checking a configuration without devices.
pub fn restrict(list: &mut Vec<ModuleDescription>, modules: Option<&[String]>, hide: &[String]) {
    list.retain(|m| modules.is_none_or(|names| names.iter().any(|n| n == &m.name)));
    for m in list.iter_mut() {
        m.accessibles
            .retain(|a| !hide.iter().any(|h| *h == format!("{}:{}", m.name, a.name)));
    }
}

/// Everything a node needs to reach a device: its modules and one recipient per
/// message type, so that any actor type can be a device.
#[derive(Clone)]
pub struct DeviceHandle {
    pub name: Arc<str>,
    pub modules: Vec<ModuleDescription>,
    /// The device answers `check` itself (a remote node knows best what it accepts).
    pub checks: bool,
    pub requests: Recipient<DeviceRequest>,
    pub subscribe: Recipient<Subscribe>,
    pub stop: Recipient<StopDevice>,
    /// For a device whose modules change at run time (a remote node): its modules as
    /// they are now, kept up to date by the device, so that a reload hands nodes the
    /// current list and not the one from when the device started.
    pub live_modules: Option<Arc<std::sync::Mutex<Vec<ModuleDescription>>>>,
}

impl DeviceHandle {
    /// This handle with the device's modules as they are now (see `live_modules`).
    pub fn current(&self) -> DeviceHandle {
        let mut handle = self.clone();
        if let Some(live) = &self.live_modules {
            handle.modules = match live.lock() {
                Ok(m) => m.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
        }
        handle
    }

    /// The same device as another node sees it: only the modules in `modules` (all
    /// if `None`), without the accessibles named in `hide` (`module:accessible`).
    pub fn restricted(&self, modules: Option<&[String]>, hide: &[String]) -> DeviceHandle {
        let mut handle = self.clone();
        restrict(&mut handle.modules, modules, hide);
        handle
    }

    pub fn of<A>(name: &str, modules: Vec<ModuleDescription>, addr: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<DeviceRequest>
            + Handler<Subscribe>
            + Handler<StopDevice>,
    {
        DeviceHandle {
            name: Arc::from(name),
            modules,
            checks: false,
            requests: addr.clone().recipient(),
            subscribe: addr.clone().recipient(),
            stop: addr.clone().recipient(),
            live_modules: None,
        }
    }
}
