//! The SECoP node actor: owns the modules, the value cache and the description,
//! answers requests and fans updates out to the activated sessions.
//!
//! Ordering guarantee: updates are pushed straight into each session's [`Outbox`]
//! while a request is being handled, and the reply is returned afterwards for the
//! requesting session to queue; so every side effect of a `change`/`do` reaches every
//! activated client (the requester included) before the `changed`/`done`.

mod access;
mod audit_trail;
mod batch;
mod validation;

pub use access::{Access, ClientInfo, SessionTransport};

pub use batch::{BatchItem, SessionBatch};

use crate::audit::AuditLog;
use crate::deadline::DeadlineTimer;
use crate::device::DeviceModulesChanged;
use crate::device::{
    DeviceAction, DeviceDone, DeviceHandle, DeviceReply, DeviceRequest, DeviceUpdates, ParamUpdate,
    Subscribe, SubscriberId,
};
use crate::history::{History, HistoryError, HistorySettings, Numeric, Snapshot};
use crate::metrics::{metrics, RECEIVED_ACTIONS};
use crate::outbox::{CloseReason, Outbox, UpdateKey};
use actix::prelude::*;
use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};
use secop_proto::message::{self, data_report, error_report, line, Qualifiers};
use secop_proto::{
    LogLevel, ModuleDescription, NodeDescription, ParsedRequest, Request, SecopError,
};
use serde_json::Value;
use std::collections::HashMap;

type FastHash = foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Identifies a client session, unique within the process.
pub type SessionId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id for a session or a device subscription.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Node-level settings from config.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The `*IDN?` answer (`ISSE,SECoP,,v2.0` unless a site needs the 1.0 string).
    pub identification: String,
    /// How long a device may take for one request before the client gets `TimeoutError`.
    pub device_timeout: Duration,
    /// A read-only view: every parameter is read-only, `change` answers `ReadOnly` and
    /// `do` answers `Disabled`; updates flow as usual.
    pub read_only: bool,
    /// The modules this node exports (all if `None`).
    pub export: Option<Vec<String>>,
    /// Accessibles this node does not export, as `module:accessible`.
    pub hide: Vec<String>,
    /// Where every `change` and `do` is recorded (none in tests and tools).
    pub audit: Option<AuditLog>,
    /// The value history of numeric parameters (`GET /history`); `None`: off.
    pub history: Option<HistorySettings>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            identification: message::IDN_REPLY_V2.to_owned(),
            device_timeout: Duration::from_secs(10),
            read_only: false,
            export: None,
            hide: Vec::new(),
            audit: None,
            history: None,
        }
    }
}

/// Cached state of one parameter.
struct ParamState {
    /// `[value,{qualifiers}]` or `["Class","text",{info}]`, serialised once.
    report: Bytes,
    /// The full `update ...`/`error_update ...` line, shared by all sessions; built
    /// when first needed after a change (empty until then), so values nobody has
    /// activated cost no formatting.
    update_line: Bytes,
    value: Result<Value, SecopError>,
    /// The parameter's series in the node's history (numeric parameters).
    series: Option<usize>,
}

struct ModuleState {
    name: Arc<str>,
    device: Recipient<DeviceRequest>,
    /// Index of that device in the node's device list: calls of one batch for the same
    /// device travel in one request.
    device_index: usize,
    /// The device answers `check` itself.
    checks: bool,
    /// Aligned with the description's accessibles; `None` for commands and constants.
    params: Vec<Option<ParamState>>,
}

struct SessionEntry {
    outbox: Arc<Outbox>,
    /// Who the client is and what it may do.
    client: ClientInfo,
    /// Activation per module index.
    active: Vec<bool>,
    /// Remote logging level per module index.
    logging: Vec<LogLevel>,
}

/// A client session registers its outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub session: SessionId,
    pub outbox: Arc<Outbox>,
    pub client: ClientInfo,
}

/// A client session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub session: SessionId,
}

/// A reload: this node's new settings, description text, properties and devices.
/// The node reassembles its description; values of modules it still exports stay in
/// its cache, devices in `fresh` (started by this reload) are subscribed to. Answered
/// with whether the description changed: then its sessions have been closed (over TCP
/// and WebSocket, closing is how SECoP tells a client that the description changed;
/// `error_closed` is for serial lines), so that clients reconnect and describe again.
/// Sessions of a node whose description did not change are not touched.
#[derive(Message)]
#[rtype(result = "Result<bool, Vec<String>>")]
pub struct Reconfigure {
    pub settings: NodeSettings,
    pub description: String,
    pub properties: serde_json::Map<String, Value>,
    pub devices: Vec<DeviceHandle>,
    pub fresh: Vec<Arc<str>>,
}

/// Subscribe to all devices and fill the cache; answered once the cache is complete.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start;

/// Close every session (shutdown, or a description change).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSessions;

/// The node is gone (a reload removed it): its sessions are closed and the actor ends,
/// so that it neither holds its history nor keeps taking the devices' updates (the
/// devices drop a subscriber whose node has ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopNode;

/// The node's description, as `check-config` and status pages show it.
#[derive(Message)]
#[rtype(result = "Arc<NodeDescription>")]
pub struct GetDescription;

/// The history of the numeric parameters (`GET /history`): a copy of the points newer
/// than `since` (UNIX seconds), of one parameter (`module:parameter`) or of all; the
/// asker makes the JSON document of it ([`Snapshot::to_json`]).
#[derive(Message)]
#[rtype(result = "Result<Snapshot, HistoryError>")]
pub struct GetHistory {
    pub since: Option<f64>,
    pub parameter: Option<String>,
}

/// See the module documentation.
pub struct NodeActor {
    settings: NodeSettings,
    /// The equipment id as audit records carry it (shared, not copied per record).
    audit_node: Arc<str>,
    description: Arc<NodeDescription>,
    describing: Bytes,
    /// The `describing` line for read-only clients, built when first needed.
    describing_read_only: Option<Bytes>,
    modules: Vec<ModuleState>,
    // foldhash (here and below): looked up for every request; the keys are the
    // configuration's module names and ids this actor hands out.
    module_index: HashMap<String, usize, FastHash>,
    devices: Vec<DeviceHandle>,
    sessions: HashMap<SessionId, SessionEntry, FastHash>,
    subscriber_id: SubscriberId,
    /// Batches with device requests outstanding, by batch id.
    in_flight: HashMap<u64, batch::InFlight, FastHash>,
    next_batch: u64,
    /// One timer for the deadlines of all batches in flight (the node's one device
    /// timeout: a later batch never has an earlier deadline).
    expiry: DeadlineTimer,
    /// Where devices send their answers (this actor; set when it starts).
    done_sink: Option<Recipient<DeviceDone>>,
    /// Request counter and duration per action ([`RECEIVED_ACTIONS`] order), resolved
    /// once: they are on every request's path.
    request_metrics: Vec<(IntCounter, Histogram)>,
    updates_emitted: IntCounter,
    /// The status gauge of each module (by index).
    module_status: Vec<IntGauge>,
    /// Per module: how many sessions have it activated, and how many asked for its
    /// log. Kept so that an update nobody receives costs no walk over all sessions.
    interest: Vec<Interest>,
    /// The value history of numeric parameters, if on.
    history: Option<History>,
}

/// See [`NodeActor::interest`].
#[derive(Debug, Clone, Copy, Default)]
struct Interest {
    active: u32,
    logging: u32,
}

/// What a request needs after the synchronous checks.
enum Next {
    Reply(Bytes),
    Device {
        module: usize,
        action: DeviceAction,
        /// Whether all resulting updates are sent even if values did not change.
        force: bool,
    },
}

impl NodeActor {
    /// Build a node from its description properties and devices. Fails with a list of
    /// problems (invalid names, missing accessibles) when the description is invalid.
    pub fn new(
        settings: NodeSettings,
        equipment_id: &str,
        description: &str,
        properties: serde_json::Map<String, Value>,
        devices: Vec<DeviceHandle>,
    ) -> Result<NodeActor, Vec<String>> {
        let mut node = NodeActor {
            settings,
            audit_node: Arc::from(equipment_id),
            description: Arc::new(NodeDescription {
                equipment_id: equipment_id.to_owned(),
                description: description.to_owned(),
                modules: Vec::new(),
                properties,
            }),
            describing: Bytes::new(),
            describing_read_only: None,
            modules: Vec::new(),
            module_index: HashMap::default(),
            devices,
            sessions: HashMap::default(),
            subscriber_id: next_id(),
            in_flight: HashMap::default(),
            next_batch: 0,
            expiry: DeadlineTimer::default(),
            done_sink: None,
            request_metrics: RECEIVED_ACTIONS
                .iter()
                .map(|action| {
                    let labels = [equipment_id, action];
                    (
                        metrics().requests.with_label_values(&labels),
                        metrics().request_duration.with_label_values(&labels),
                    )
                })
                .collect(),
            updates_emitted: metrics().updates_emitted.with_label_values(&[equipment_id]),
            module_status: Vec::new(),
            interest: Vec::new(),
            history: None,
        };
        if let Some(h) = node.settings.history {
            let gauges = (
                metrics().history_points.with_label_values(&[equipment_id]),
                metrics().history_bytes.with_label_values(&[equipment_id]),
            );
            node.history = Some(History::new(h, Some(gauges)));
        }
        node.assemble()?;
        Ok(node)
    }

    /// (Re)build the description and the cache from the devices, as this node exports
    /// them (module subset, hidden accessibles, read-only view).
    fn assemble(&mut self) -> Result<(), Vec<String>> {
        let mut modules = Vec::new();
        let mut states = Vec::new();
        // The numeric parameters, in the order of their series.
        let mut numeric = Vec::new();
        for (device_index, device) in self.devices.iter().enumerate() {
            let exported = exported_modules(&self.settings, device.modules.clone());
            for m in exported {
                states.push(ModuleState {
                    name: Arc::from(m.name.as_str()),
                    device: device.requests.clone(),
                    device_index,
                    checks: device.checks,
                    params: m
                        .accessibles
                        .iter()
                        .map(|a| {
                            (!a.is_command() && a.constant.is_none()).then(|| {
                                let err = SecopError::read_failed("no value read yet");
                                let series = Numeric::of(&a.datainfo).map(|kind| {
                                    numeric
                                        .push((Arc::from(format!("{}:{}", m.name, a.name)), kind));
                                    numeric.len() - 1
                                });
                                ParamState {
                                    report: Bytes::from(error_report(&err, None)),
                                    update_line: Bytes::new(),
                                    value: Err(err),
                                    series,
                                }
                            })
                        })
                        .collect(),
                });
                modules.push(m);
            }
        }
        let description = NodeDescription {
            equipment_id: self.description.equipment_id.clone(),
            description: self.description.description.clone(),
            modules,
            properties: self.description.properties.clone(),
        };
        let problems = description.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut json = Vec::new();
        description.write_json(&mut json);
        self.describing = Bytes::from(line("describing", ".", Some(&json)));
        self.describing_read_only = None;
        self.module_index = description
            .modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        self.module_status = description
            .modules
            .iter()
            .map(|m| {
                metrics()
                    .module_status
                    .with_label_values(&[description.equipment_id.as_str(), &m.name])
            })
            .collect();
        self.description = Arc::new(description);
        self.modules = states;
        if let Some(h) = &mut self.history {
            h.rebuild(numeric);
        }
        // Count the sessions afresh (they keep their connection when what this node
        // exports is unchanged).
        self.interest = vec![Interest::default(); self.modules.len()];
        for entry in self.sessions.values_mut() {
            entry.active.resize(self.interest.len(), false);
            entry.logging.resize(self.interest.len(), LogLevel::Off);
            count_interest(&mut self.interest, entry, true);
        }
        Ok(())
    }

    /// Change a session's activation or logging, keeping [`Interest`] right.
    fn change_session(&mut self, session: SessionId, change: impl FnOnce(&mut SessionEntry)) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        count_interest(&mut self.interest, entry, false);
        change(entry);
        count_interest(&mut self.interest, entry, true);
    }

    /// Forget every session (they are being closed).
    fn drop_sessions(&mut self) -> Vec<SessionEntry> {
        self.interest
            .iter_mut()
            .for_each(|i| *i = Interest::default());
        self.sessions.drain().map(|(_, s)| s).collect()
    }

    pub fn description(&self) -> Arc<NodeDescription> {
        self.description.clone()
    }

    /// The `update` line of parameter `p` of module `m`, built if it is stale.
    fn update_line(&mut self, m: usize, p: usize) -> Option<Bytes> {
        let ModuleState {
            name: module,
            params,
            ..
        } = &mut self.modules[m];
        let state = params[p].as_mut()?;
        if state.update_line.is_empty() {
            let name = &self.description.modules[m].accessibles[p].name;
            let action = if state.value.is_ok() {
                "update"
            } else {
                "error_update"
            };
            state.update_line = Bytes::from(line(
                action,
                &format!("{module}:{name}"),
                Some(&state.report),
            ));
        }
        Some(state.update_line.clone())
    }

    /// Store a value in the cache; send it to activated sessions if it changed or
    /// `force` is set. Returns the stored report.
    fn apply(&mut self, update: &ParamUpdate, force: bool) -> Option<Bytes> {
        let m = *self.module_index.get(&*update.module)?;
        let p = self.description.modules[m].accessible_index(&update.parameter)?;
        let state = self.modules[m].params[p].as_mut()?;
        let changed = state.value != update.value;
        state.report = Bytes::from(match &update.value {
            Ok(v) => data_report(v, Qualifiers::at(update.timestamp)),
            Err(e) => error_report(e, Some(update.timestamp)),
        });
        state.value = update.value.clone();
        state.update_line = Bytes::new();
        // A value passed on again unchanged (the device's refresh of `t`) moves the
        // series' last point on (a flat run is two points), so that a steady parameter
        // still shows in the window.
        if let (Some(history), Some(series)) = (&mut self.history, state.series) {
            history.record(
                series,
                &update.value,
                update.timestamp,
                crate::device::now(),
            );
        }
        let report = state.report.clone();
        if update.parameter.as_ref() == "status" {
            if let Some(code) = update
                .value
                .as_ref()
                .ok()
                .and_then(|v| v.get(0))
                .and_then(Value::as_i64)
            {
                self.module_status[m].set(code);
            }
        }
        if changed || force {
            self.updates_emitted.inc();
            self.fan_out(m, p);
            let level = if update.value.is_ok() {
                LogLevel::Debug
            } else {
                LogLevel::Error
            };
            // The log text is only built when a client asked for it.
            if self.interest[m].logging > 0
                && self.sessions.values().any(|s| s.logging[m].admits(level))
            {
                let text = match &update.value {
                    Ok(v) => format!("{} = {}", update.parameter, secop_proto::json::to_json(v)),
                    Err(e) => format!("{}: {e}", update.parameter),
                };
                self.log(m, level, &text);
            }
        }
        Some(report)
    }

    fn fan_out(&mut self, m: usize, p: usize) {
        if self.interest[m].active == 0 {
            return;
        }
        let Some(update_line) = self.update_line(m, p) else {
            return;
        };
        let key: UpdateKey = (m as u32, p as u32);
        for session in self.sessions.values() {
            if session.active[m] {
                session.outbox.push_update(key, update_line.clone());
            }
        }
    }

    /// Send a `log` event to the sessions that asked for this module's logging.
    fn log(&self, m: usize, level: LogLevel, text: &str) {
        if self.interest[m].logging == 0 {
            return;
        }
        let mut event: Option<Bytes> = None;
        for session in self.sessions.values() {
            if session.logging[m].admits(level) {
                let e = event.get_or_insert_with(|| {
                    Bytes::from(message::log_event(&self.modules[m].name, level, text))
                });
                session.outbox.push_event(e.clone());
            }
        }
    }

    /// Queue the current value of every parameter of module `m` for one session.
    fn send_module_values(&mut self, outbox: &Outbox, m: usize) {
        for p in 0..self.modules[m].params.len() {
            if let Some(update_line) = self.update_line(m, p) {
                outbox.push_update((m as u32, p as u32), update_line);
            }
        }
    }

    fn module(&self, name: &str) -> Result<usize, SecopError> {
        self.module_index
            .get(name)
            .copied()
            .ok_or_else(|| SecopError::no_such_module(format!("no module {name:?}")))
    }

    /// Look up a parameter for read/change/check.
    fn parameter(&self, module: &str, name: &str) -> Result<(usize, usize), SecopError> {
        let m = self.module(module)?;
        let desc = &self.description.modules[m];
        match desc.accessible_index(name) {
            Some(p) if !desc.accessibles[p].is_command() => Ok((m, p)),
            Some(_) => Err(SecopError::no_such_parameter(format!(
                "{module}:{name} is a command; use do"
            ))),
            None => Err(SecopError::no_such_parameter(format!(
                "module {module} has no parameter {name:?}"
            ))),
        }
    }

    fn command(&self, module: &str, name: &str) -> Result<(usize, usize), SecopError> {
        let m = self.module(module)?;
        let desc = &self.description.modules[m];
        match desc.accessible_index(name) {
            Some(p) if desc.accessibles[p].is_command() => Ok((m, p)),
            Some(_) => Err(SecopError::no_such_command(format!(
                "{module}:{name} is a parameter; use read or change"
            ))),
            None => Err(SecopError::no_such_command(format!(
                "module {module} has no command {name:?}"
            ))),
        }
    }

    /// Everything that can be answered without a device.
    fn prepare(&mut self, session: SessionId, req: &ParsedRequest) -> Result<Next, SecopError> {
        let spec = req.specifier.as_str();
        match &req.request {
            Request::Identify => {
                self.change_session(session, |s| {
                    s.active.iter_mut().for_each(|a| *a = false);
                    s.logging.iter_mut().for_each(|l| *l = LogLevel::Off);
                });
                Ok(Next::Reply(Bytes::from(format!(
                    "{}\n",
                    self.settings.identification
                ))))
            }
            Request::Describe => Ok(Next::Reply(self.describing_for(session))),
            Request::Ping { token } => Ok(Next::Reply(Bytes::from(message::pong(
                token,
                crate::device::now(),
            )))),
            Request::Activate { module } => {
                let target = module.as_deref().map(|m| self.module(m)).transpose()?;
                let Some(entry) = self.sessions.get(&session) else {
                    return Err(SecopError::internal("session is not registered"));
                };
                let outbox = entry.outbox.clone();
                let range = match target {
                    Some(m) => m..m + 1,
                    None => 0..self.modules.len(),
                };
                for m in range.clone() {
                    self.send_module_values(&outbox, m);
                }
                self.change_session(session, |entry| range.for_each(|m| entry.active[m] = true));
                let reply = match module {
                    Some(m) => line("active", m, None),
                    None => line("active", "", None),
                };
                Ok(Next::Reply(Bytes::from(reply)))
            }
            Request::Deactivate { module } => {
                let target = module.as_deref().map(|m| self.module(m)).transpose()?;
                self.change_session(session, |entry| match target {
                    Some(m) => entry.active[m] = false,
                    None => entry.active.iter_mut().for_each(|a| *a = false),
                });
                let reply = match module {
                    Some(m) => line("inactive", m, None),
                    None => line("inactive", "", None),
                };
                Ok(Next::Reply(Bytes::from(reply)))
            }
            Request::Logging { module, level } => {
                let target = module.as_deref().map(|m| self.module(m)).transpose()?;
                self.change_session(session, |entry| match target {
                    Some(m) => entry.logging[m] = *level,
                    None => entry.logging.iter_mut().for_each(|l| *l = *level),
                });
                let data = secop_proto::json::to_json(level.as_str());
                // `m:p` is widened to `m`: we log per module.
                let reply = line(
                    "logging",
                    module.as_deref().unwrap_or(""),
                    Some(data.as_bytes()),
                );
                Ok(Next::Reply(Bytes::from(reply)))
            }
            Request::Read { module, parameter } => {
                let (m, p) = self.parameter(module, parameter)?;
                let acc = &self.description.modules[m].accessibles[p];
                if let Some(c) = &acc.constant {
                    let report = data_report(c, Qualifiers::default());
                    return Ok(Next::Reply(Bytes::from(line("reply", spec, Some(&report)))));
                }
                Ok(Next::Device {
                    module: m,
                    action: DeviceAction::Read {
                        parameter: parameter.clone(),
                    },
                    force: false,
                })
            }
            Request::Change {
                module,
                parameter,
                value,
            } => {
                let (m, p) = self.parameter(module, parameter)?;
                self.may_change(session, spec)?;
                let value = self.check_change(m, p, value)?;
                self.log(
                    m,
                    LogLevel::Info,
                    &format!(
                        "change {parameter} to {}",
                        secop_proto::json::to_json(&value)
                    ),
                );
                Ok(Next::Device {
                    module: m,
                    action: DeviceAction::Change {
                        parameter: parameter.clone(),
                        value,
                    },
                    force: true,
                })
            }
            Request::Do {
                module,
                command,
                argument,
            } => {
                let (m, c) = self.command(module, command)?;
                self.may_run(session, spec)?;
                let argument = self.check_argument(m, c, argument)?;
                self.log(m, LogLevel::Info, &format!("do {command}"));
                Ok(Next::Device {
                    module: m,
                    action: DeviceAction::Do {
                        command: command.clone(),
                        argument,
                    },
                    force: true,
                })
            }
            Request::Check {
                module,
                accessible,
                value,
            } => {
                let m = self.module(module)?;
                let desc: &ModuleDescription = &self.description.modules[m];
                let a = desc.accessible_index(accessible).ok_or_else(|| {
                    SecopError::no_such_parameter(format!(
                        "module {module} has no accessible {accessible:?}"
                    ))
                })?;
                if !desc.accessibles[a].checkable {
                    return Err(SecopError::not_checkable(format!(
                        "{module}:{accessible} is not checkable"
                    )));
                }
                if desc.accessibles[a].is_command() {
                    self.may_run(session, spec)?;
                }
                let checked = if desc.accessibles[a].is_command() {
                    self.check_argument(m, a, value)?
                } else {
                    self.check_change(m, a, value)?
                };
                if self.modules[m].checks {
                    // The remote node has the last word (Impossible, its own limits).
                    return Ok(Next::Device {
                        module: m,
                        action: DeviceAction::Check {
                            accessible: accessible.clone(),
                            value: checked,
                        },
                        force: false,
                    });
                }
                let report = data_report(&checked, Qualifiers::default());
                Ok(Next::Reply(Bytes::from(line(
                    "checked",
                    spec,
                    Some(&report),
                ))))
            }
        }
    }

    /// Turn a device's answer into the reply line, after applying its side effects.
    fn finish(
        &mut self,
        session: SessionId,
        req: &ParsedRequest,
        m: usize,
        force: bool,
        reply: DeviceReply,
    ) -> Bytes {
        self.audit(session, req, reply.result.as_ref().map(|(v, _)| v));
        // The read-back of a read or change is among the updates, with the reply's value
        // and timestamp: its report, formatted for the cache, is the reply's data too.
        let target = match &req.request {
            Request::Read { parameter, .. } | Request::Change { parameter, .. } => {
                Some(parameter.as_str())
            }
            _ => None,
        };
        let mut read_back = None;
        for update in &reply.updates {
            let report = self.apply(update, force);
            if target == Some(update.parameter.as_ref()) && *update.module == *self.modules[m].name
            {
                read_back = report.zip(Some(update));
            }
        }
        let spec = &req.specifier;
        match reply.result {
            Ok((value, t)) => {
                let action = match req.request {
                    Request::Read { .. } => "reply",
                    Request::Change { .. } => "changed",
                    Request::Check { .. } => "checked",
                    _ => "done",
                };
                let data = match read_back {
                    Some((report, update))
                        if update.timestamp == t && update.value.as_ref() == Ok(&value) =>
                    {
                        report
                    }
                    _ => Bytes::from(data_report(&value, Qualifiers::at(t))),
                };
                Bytes::from(line(action, spec, Some(&data)))
            }
            Err(e) => {
                self.log(m, LogLevel::Error, &format!("{} {spec}: {e}", req.action));
                Bytes::from(message::error_reply(&req.action, spec, &e))
            }
        }
    }
}

/// The modules of a device as a node with these settings exports them: only the
/// exported modules, without hidden accessibles, read-only in a read-only view. The
/// node's description is made of these; `check-config` builds it the same way.
/// What is wrong with the description a node would assemble from these devices'
/// modules (duplicate module names, ...): exactly what [`Reconfigure`] would refuse, so
/// that a reload can be refused before it changes anything.
pub fn assembly_problems(
    settings: &NodeSettings,
    equipment_id: &str,
    description: &str,
    properties: &serde_json::Map<String, Value>,
    devices: &[Vec<ModuleDescription>],
) -> Vec<String> {
    NodeDescription {
        equipment_id: equipment_id.to_owned(),
        description: description.to_owned(),
        modules: devices
            .iter()
            .flat_map(|modules| exported_modules(settings, modules.clone()))
            .collect(),
        properties: properties.clone(),
    }
    .problems()
}

pub fn exported_modules(
    settings: &NodeSettings,
    mut modules: Vec<ModuleDescription>,
) -> Vec<ModuleDescription> {
    crate::device::restrict(&mut modules, settings.export.as_deref(), &settings.hide);
    if settings.read_only {
        access::make_read_only(&mut modules);
    }
    modules
}

/// Add (or remove) what one session contributes to the per-module interest.
fn count_interest(interest: &mut [Interest], entry: &SessionEntry, add: bool) {
    for (m, i) in interest.iter_mut().enumerate() {
        let active = u32::from(entry.active.get(m).copied().unwrap_or(false));
        let logging = u32::from(entry.logging.get(m).is_some_and(|l| *l != LogLevel::Off));
        if add {
            i.active += active;
            i.logging += logging;
        } else {
            i.active = i.active.saturating_sub(active);
            i.logging = i.logging.saturating_sub(logging);
        }
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Updates are the node's lifeblood; keep its mailbox roomy.
        ctx.set_mailbox_capacity(4096);
        self.done_sink = Some(ctx.address().recipient());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        tracing::info!(node = %self.description.equipment_id, "node actor ended");
    }
}

impl Handler<Start> for NodeActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Start, ctx: &mut Self::Context) -> Self::Result {
        let sink = ctx.address().recipient::<DeviceUpdates>();
        let changes = ctx.address().recipient::<DeviceModulesChanged>();
        let id = self.subscriber_id;
        let requests: Vec<_> = self
            .devices
            .iter()
            .map(|d| {
                let name = d.name.clone();
                let fut = d.subscribe.send(Subscribe {
                    id,
                    sink: sink.clone(),
                    on_change: Some(changes.clone()),
                });
                async move { (name, fut.await) }
            })
            .collect();
        Box::pin(
            futures_util::future::join_all(requests)
                .into_actor(self)
                .map(|results, act, _| {
                    for (name, result) in results {
                        match result {
                            Ok(snapshot) => {
                                for update in &snapshot {
                                    act.apply(update, false);
                                }
                            }
                            Err(e) => tracing::error!(device = %name, "device did not answer: {e}"),
                        }
                    }
                }),
        )
    }
}

impl Handler<Connect> for NodeActor {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) {
        let n = self.modules.len();
        self.sessions.insert(
            msg.session,
            SessionEntry {
                outbox: msg.outbox,
                client: msg.client,
                active: vec![false; n],
                logging: vec![LogLevel::Off; n],
            },
        );
    }
}

impl Handler<Disconnect> for NodeActor {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) {
        if let Some(entry) = self.sessions.remove(&msg.session) {
            count_interest(&mut self.interest, &entry, false);
        }
    }
}

impl Handler<CloseSessions> for NodeActor {
    type Result = ();

    fn handle(&mut self, _: CloseSessions, _: &mut Self::Context) {
        for s in self.drop_sessions() {
            s.outbox.close(CloseReason::Kicked);
        }
    }
}

impl Handler<StopNode> for NodeActor {
    type Result = ();

    fn handle(&mut self, _: StopNode, ctx: &mut Self::Context) {
        for s in self.drop_sessions() {
            s.outbox.close(CloseReason::Kicked);
        }
        self.done_sink = None;
        ctx.stop();
    }
}

impl Handler<GetDescription> for NodeActor {
    type Result = Arc<NodeDescription>;

    fn handle(&mut self, _: GetDescription, _: &mut Self::Context) -> Self::Result {
        self.description.clone()
    }
}

impl Handler<GetHistory> for NodeActor {
    type Result = Result<Snapshot, HistoryError>;

    fn handle(&mut self, msg: GetHistory, _: &mut Self::Context) -> Self::Result {
        let history = self.history.as_ref().ok_or(HistoryError::Disabled)?;
        let only = match &msg.parameter {
            None => None,
            Some(spec) => {
                let unknown = || HistoryError::UnknownParameter(spec.clone());
                let (module, parameter) = spec.split_once(':').ok_or_else(unknown)?;
                let (m, p) = self.parameter(module, parameter).map_err(|_| unknown())?;
                let state = self.modules[m].params[p].as_ref();
                let series = state.and_then(|s| s.series);
                Some(series.ok_or_else(|| HistoryError::NotNumeric(spec.clone()))?)
            }
        };
        Ok(history.snapshot(crate::device::now(), msg.since, only))
    }
}

impl NodeActor {
    /// After a reassembly: keep the cached values of the parameters still exported, and
    /// drop the status series of modules no longer exported (an ERROR gauge of a module
    /// that is gone would keep an alert firing).
    fn carry_over(&mut self, old_description: &NodeDescription, old_modules: Vec<ModuleState>) {
        for (old, module) in old_description.modules.iter().zip(old_modules) {
            let Some(&m) = self.module_index.get(&old.name) else {
                continue;
            };
            for (a, state) in old.accessibles.iter().zip(module.params) {
                let Some(state) = state else { continue };
                if let Some(p) = self.description.modules[m].accessible_index(&a.name) {
                    if let Some(slot) = self.modules[m].params[p].as_mut() {
                        *slot = state;
                    }
                }
            }
        }
        for old in &old_description.modules {
            if !self.module_index.contains_key(&old.name) {
                metrics().forget_module(&self.description.equipment_id, &old.name);
            }
        }
    }
}

impl Handler<DeviceModulesChanged> for NodeActor {
    type Result = ();

    /// A device's modules changed (a remote node was reconfigured), or a device tells a
    /// new subscriber its modules as they are now: rebuild the description (cached
    /// values of what stays are kept) and, if it changed, disconnect this node's
    /// clients, so that they read it again.
    fn handle(&mut self, msg: DeviceModulesChanged, _: &mut Self::Context) {
        let name = msg.0.name.clone();
        let old_description = self.description.clone();
        let old_modules = std::mem::take(&mut self.modules);
        let old_devices = self.devices.clone();
        match self.devices.iter_mut().find(|d| d.name == name) {
            Some(d) => *d = msg.0,
            None => self.devices.push(msg.0),
        }
        let before = self.describing.clone();
        match self.assemble() {
            Ok(()) => {
                self.carry_over(&old_description, old_modules);
                if self.describing != before {
                    tracing::warn!(node = %self.description.equipment_id, device = %name,
                        "description changed; disconnecting this node's clients");
                    for s in self.drop_sessions() {
                        s.outbox.close(CloseReason::Kicked);
                    }
                }
                // Else nothing this node exports changed: its clients keep their
                // connection and see no gap.
            }
            Err(problems) => {
                self.devices = old_devices;
                self.modules = old_modules;
                tracing::error!(node = %self.description.equipment_id, device = %name,
                    "the new modules do not fit this node: {}", problems.join("; "));
            }
        }
    }
}

impl Handler<Reconfigure> for NodeActor {
    type Result = ResponseActFuture<Self, Result<bool, Vec<String>>>;

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Self::Context) -> Self::Result {
        let old_description = self.description.clone();
        let old_modules = std::mem::take(&mut self.modules);
        let old_settings = std::mem::replace(&mut self.settings, msg.settings);
        // (Each with its modules as they are now: a remote's may have changed since the
        // reload read them, and this node may have heard of that already.)
        let devices = msg.devices.iter().map(DeviceHandle::current).collect();
        let old_devices = std::mem::replace(&mut self.devices, devices);
        let before = self.describing.clone();
        // The new description text and properties, through the same assembly.
        self.description = Arc::new(NodeDescription {
            equipment_id: old_description.equipment_id.clone(),
            description: msg.description,
            modules: Vec::new(),
            properties: msg.properties,
        });
        if let Err(problems) = self.assemble() {
            self.settings = old_settings;
            self.devices = old_devices;
            self.description = old_description;
            self.modules = old_modules;
            return Box::pin(fut::ready(Err(problems)));
        }
        self.carry_over(&old_description, old_modules);
        let changed = self.describing != before;
        if changed {
            tracing::warn!(node = %self.description.equipment_id,
                "description changed by a reload; closing this node's clients");
            for s in self.drop_sessions() {
                s.outbox.close(CloseReason::Kicked);
            }
        }
        let sink = ctx.address().recipient::<DeviceUpdates>();
        let changes = ctx.address().recipient::<DeviceModulesChanged>();
        let id = self.subscriber_id;
        let requests: Vec<_> = self
            .devices
            .iter()
            .filter(|d| msg.fresh.contains(&d.name))
            .map(|d| {
                let name = d.name.clone();
                let fut = d.subscribe.send(Subscribe {
                    id,
                    sink: sink.clone(),
                    on_change: Some(changes.clone()),
                });
                async move { (name, fut.await) }
            })
            .collect();
        Box::pin(
            futures_util::future::join_all(requests)
                .into_actor(self)
                .map(move |results, act, _| {
                    for (name, result) in results {
                        match result {
                            Ok(snapshot) => {
                                for update in &snapshot {
                                    act.apply(update, false);
                                }
                            }
                            Err(e) => tracing::error!(device = %name, "device did not answer: {e}"),
                        }
                    }
                    Ok(changed)
                }),
        )
    }
}

impl Handler<DeviceUpdates> for NodeActor {
    type Result = ();

    fn handle(&mut self, msg: DeviceUpdates, _: &mut Self::Context) {
        for update in &msg.0 {
            self.apply(update, false);
        }
    }
}
