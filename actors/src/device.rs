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
use std::time::{SystemTime, UNIX_EPOCH};

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

/// A request for one module of a device.
#[derive(Debug, Message)]
#[rtype(result = "DeviceReply")]
pub struct DeviceRequest {
    pub module: Arc<str>,
    pub action: DeviceAction,
    /// The subscriber that asked; it gets the side effects in the reply and is left out
    /// when the device broadcasts them to its other subscribers.
    pub origin: Option<SubscriberId>,
}

/// The outcome of a [`DeviceRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReply {
    /// Read-back value (read, change) or command result (do), with its timestamp.
    pub result: Result<(Value, f64), SecopError>,
    /// Side effects (status to BUSY, a new target, ...) that must reach activated
    /// clients before the requester's reply.
    pub updates: Vec<ParamUpdate>,
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
}

impl DeviceHandle {
    /// The same device as another node sees it: only the modules in `modules` (all
    /// if `None`), without the accessibles named in `hide` (`module:accessible`).
    pub fn restricted(&self, modules: Option<&[String]>, hide: &[String]) -> DeviceHandle {
        let mut handle = self.clone();
        handle
            .modules
            .retain(|m| modules.is_none_or(|list| list.iter().any(|n| n == &m.name)));
        for m in handle.modules.iter_mut() {
            m.accessibles
                .retain(|a| !hide.iter().any(|h| *h == format!("{}:{}", m.name, a.name)));
        }
        handle
    }

    pub fn of<A>(name: &str, modules: Vec<ModuleDescription>, addr: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<DeviceRequest> + Handler<Subscribe>,
    {
        DeviceHandle {
            name: Arc::from(name),
            modules,
            checks: false,
            requests: addr.clone().recipient(),
            subscribe: addr.clone().recipient(),
        }
    }
}
