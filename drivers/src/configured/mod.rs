//! The shared core of config-defined devices (ASCII, Modbus, and any protocol to
//! come): parameter state, the poll plan, the fault policy, status and Drivable logic
//! live here once. A protocol supplies a small [`Protocol`] interface (read a group
//! of parameters in one transaction, write one, run a command) over its
//! [`Transport`].
//!
//! What the core guarantees for every protocol:
//! - every value sent matches its datainfo ([`validate`]): a reply outside the range,
//!   too long, of the wrong type or non-ASCII becomes an error naming the raw reply;
//! - the fault policy of [`faults`]: retries, one error per parameter per episode,
//!   status ERROR only when a fault persists or the link cannot be opened, a moving
//!   Drivable stays BUSY through transient faults;
//! - per-module `pollinterval` (clients change one module's, not the link's);
//! - status "ok" only after the module's values were read in the current session;
//! - truthful metrics: the transport counts every exchange, cache hits are apart.

pub mod faults;

use crate::drive::{module_status, Drive, DriveConfig};
use crate::transport::{Failure, Transport};
use crate::ConfigError;
use faults::{Episode, FaultPolicy};
use secop_actors::device_actor::{Backend, Effects, Outcome, Produced, WireStats};
use secop_proto::status as st;
use secop_proto::{DataInfo, ModuleDescription, SecopError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A parameter of a module, by index: (module, parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParamId {
    pub module: usize,
    pub param: usize,
}

/// A value read from the device, with the raw reply for error texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub value: Value,
    pub raw: String,
}

/// What one read transaction gave for each of its parameters.
pub type Readings = Vec<(ParamId, Result<Reading, SecopError>)>;

/// How often a parameter is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    Normal,
    /// Every `slow_factor` cycles of its module.
    Slow,
    Never,
}

impl Poll {
    /// The `poll` key; the error names it.
    pub fn parse(key: &str, text: &str) -> Result<Poll, ConfigError> {
        match text {
            "normal" => Ok(Poll::Normal),
            "slow" => Ok(Poll::Slow),
            "never" => Ok(Poll::Never),
            other => Err(ConfigError::invalid(
                key,
                format!("{other:?} is not normal, slow or never"),
            )),
        }
    }
}

/// What the core needs to know of a parameter.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub datainfo: DataInfo,
    /// The protocol can read it (a query, a register).
    pub readable: bool,
    pub writable: bool,
    /// After a write, read it again for the `changed` reply.
    pub readback: bool,
    pub poll: Poll,
    /// Changes smaller than this are not sent as updates (numbers).
    pub deadband: f64,
    /// Whether the last written value is kept in the state file.
    pub persist: crate::state::Persist,
}

/// What the core needs to know of a module.
#[derive(Debug, Clone)]
pub struct ModuleSpec {
    pub name: String,
    pub params: Vec<ParamSpec>,
    pub drive: Option<DriveConfig>,
    /// Whether the module has `status` and `pollinterval` (not a Communicator).
    pub has_status: bool,
    /// Seconds between polls of this module.
    pub pollinterval: f64,
}

/// Settings of the link that the core applies.
#[derive(Debug, Clone, Copy)]
pub struct CoreSettings {
    pub policy: FaultPolicy,
    pub slow_factor: u32,
    /// A client `read` is answered from the last value if that is younger (seconds).
    pub max_age: f64,
}

/// What a protocol's builder takes from its `[[link]]`.
#[derive(Debug, Clone)]
pub struct LinkParts {
    pub transport: crate::transport::TransportSettings,
    pub core: CoreSettings,
    /// The default `pollinterval` of the link's modules.
    pub pollinterval: f64,
}

/// The protocol side of a configured device: a few transactions over a transport.
/// Futures are not `Send`: device actors run on one thread.
#[allow(async_fn_in_trait)]
pub trait Protocol: 'static {
    fn transport(&self) -> &Transport;
    fn transport_mut(&mut self) -> &mut Transport;
    /// Group the parameters due for polling into read transactions (one query each,
    /// or coalesced register blocks).
    fn plan(&self, due: &[ParamId]) -> Vec<Vec<ParamId>>;
    /// One read transaction. A failure of the whole exchange is `Err`; a reply that
    /// gives no value for one parameter is that parameter's `Err`.
    async fn read(&mut self, ids: &[ParamId]) -> Result<Readings, Failure>;
    /// Write one parameter (the client's value, already checked against its
    /// datainfo; the protocol converts it to the device's form).
    async fn write(&mut self, id: ParamId, value: &Value) -> Result<(), Failure>;
    /// Run a command configured for the module (for `stop` also a configured stop
    /// action); `None` if it has none of that name.
    async fn command(
        &mut self,
        module: usize,
        command: &str,
        argument: &Value,
    ) -> Option<Result<Value, Failure>>;
    /// The fault domain of a parameter: the unit on a shared bus (faults of one unit
    /// say nothing about the others); 0 when the link is one device.
    fn domain(&self, _id: ParamId) -> u32 {
        0
    }
}

struct ParamState {
    spec: ParamSpec,
    value: Option<Value>,
    read_at: Option<Instant>,
    fault: Episode,
}

struct ModuleState {
    name: String,
    params: Vec<ParamState>,
    drive: Option<Drive>,
    has_status: bool,
    pollinterval: f64,
    next_due: Instant,
    cycle: u64,
    /// The transport session in which the module's parameters were all polled (the
    /// slow ones included), and in which a value was read.
    polled_in: Option<u64>,
    confirmed_in: Option<u64>,
    /// The status last reported.
    status: Value,
}

/// A configured device: the core around a protocol. Implements the device actor's
/// [`Backend`].
pub struct ConfiguredDevice<P: Protocol> {
    protocol: P,
    settings: CoreSettings,
    modules: Vec<ModuleState>,
    descriptions: Vec<ModuleDescription>,
    /// The read transactions of the current poll cycle, and its modules.
    plan: Vec<Vec<ParamId>>,
    planned: Vec<usize>,
    /// Fault domains that timed out in the current poll cycle, with the failure.
    timed_out: Vec<(u32, Failure)>,
    cache_hits: u64,
    /// Where persisted values are kept, and the values to write back after each
    /// (re)connect.
    state: Option<crate::state::StateStore>,
    restore: Vec<(ParamId, Value)>,
    restored_in: Option<u64>,
    /// `remember` values, shown with the first poll (then forgotten here).
    remembered: Vec<ParamId>,
}

/// The shortest time between two polls of a moving Drivable, so that clients see a
/// move progress and end promptly.
const MOVING_POLL: f64 = 0.2;

impl<P: Protocol> ConfiguredDevice<P> {
    pub fn new(
        protocol: P,
        settings: CoreSettings,
        modules: Vec<ModuleSpec>,
        descriptions: Vec<ModuleDescription>,
    ) -> Self {
        let now = Instant::now();
        let modules = modules
            .into_iter()
            .map(|m| ModuleState {
                name: m.name,
                params: m
                    .params
                    .into_iter()
                    .map(|spec| ParamState {
                        spec,
                        value: None,
                        read_at: None,
                        fault: Episode::default(),
                    })
                    .collect(),
                drive: m.drive.map(Drive::new),
                has_status: m.has_status,
                pollinterval: m.pollinterval,
                next_due: now,
                cycle: 0,
                polled_in: None,
                confirmed_in: None,
                status: json!([st::WARN, "no value read yet"]),
            })
            .collect();
        ConfiguredDevice {
            protocol,
            settings,
            modules,
            descriptions,
            plan: Vec::new(),
            planned: Vec::new(),
            timed_out: Vec::new(),
            cache_hits: 0,
            state: None,
            restore: Vec::new(),
            restored_in: None,
            remembered: Vec::new(),
        }
    }

    /// Take the persisted values from `state`: each must still fit its parameter's
    /// datainfo (after a config change it may not: then it is dropped with a
    /// warning). `restore` values are written back at start and after each reconnect;
    /// `remember` values are shown until the device is read.
    pub fn with_state(mut self, state: Option<&crate::state::StateStore>) -> Self {
        use crate::state::Persist;
        let Some(state) = state else { return self };
        for m in 0..self.modules.len() {
            for p in 0..self.modules[m].params.len() {
                let id = ParamId {
                    module: m,
                    param: p,
                };
                let spec = &self.param(id).spec;
                if spec.persist == Persist::No {
                    continue;
                }
                let key = format!("{}:{}", self.modules[m].name, spec.name);
                let Some(value) = state.get(&key) else {
                    continue;
                };
                match spec.datainfo.validate(&value) {
                    Ok(value) => {
                        if spec.persist == Persist::Restore {
                            self.restore.push((id, value.clone()));
                        } else {
                            self.remembered.push(id);
                        }
                        self.param_mut(id).value = Some(value);
                    }
                    Err(e) => {
                        tracing::warn!(parameter = %key, "persisted value {value} dropped: it no longer fits the datainfo ({e})");
                        state.remove(&key);
                    }
                }
            }
        }
        self.state = Some(state.clone());
        self
    }

    /// Write the `restore` values to the device, once per session: at start and after
    /// each reconnect. The values written, as produced values.
    async fn restore_values(&mut self) -> Vec<Produced> {
        let transport = self.protocol.transport();
        let due = !self.restore.is_empty()
            && (!transport.is_open() || self.restored_in != Some(transport.session()));
        if !due {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (id, value) in self.restore.clone() {
            let name = self.param(id).spec.name.clone();
            let module = self.modules[id.module].name.clone();
            match self.write_with_retries(id, &value).await {
                Ok(()) => {
                    tracing::info!(module, parameter = name, "restored {value}");
                    let stored = self.store(id, value);
                    if name == "target" {
                        if let Some(d) = self.modules[id.module].drive.as_mut() {
                            d.start();
                        }
                    }
                    out.push((module, name, Ok(stored)));
                }
                Err(e) => {
                    tracing::debug!(module, parameter = name, "not restored yet: {e}");
                    return out;
                }
            }
        }
        self.restored_in = Some(self.protocol.transport().session());
        out
    }

    fn module(&self, name: &str) -> Result<usize, SecopError> {
        self.modules
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| SecopError::no_such_module(name.to_owned()))
    }

    fn find(&self, module: &str, parameter: &str) -> Result<ParamId, SecopError> {
        let m = self.module(module)?;
        let p = self.modules[m]
            .params
            .iter()
            .position(|p| p.spec.name == parameter)
            .ok_or_else(|| {
                SecopError::no_such_parameter(format!("{module} has no parameter {parameter:?}"))
            })?;
        Ok(ParamId {
            module: m,
            param: p,
        })
    }

    fn param(&self, id: ParamId) -> &ParamState {
        &self.modules[id.module].params[id.param]
    }

    fn param_mut(&mut self, id: ParamId) -> &mut ParamState {
        &mut self.modules[id.module].params[id.param]
    }

    fn param_value(&self, m: usize, name: &str) -> Option<Value> {
        self.modules[m]
            .params
            .iter()
            .find(|p| p.spec.name == name)
            .and_then(|p| p.value.clone())
    }

    /// The time between two polls of module `m`.
    fn period(&self, m: usize) -> Duration {
        let module = &self.modules[m];
        let moving = module.drive.as_ref().is_some_and(Drive::is_busy);
        let secs = if moving {
            module.pollinterval.min(MOVING_POLL)
        } else {
            module.pollinterval
        };
        crate::limits::duration(secs)
    }

    /// One read transaction with the fault policy's retries; the values (or the
    /// episode's errors) to report. In a poll cycle (`in_cycle`), a fault domain (a
    /// bus unit) that timed out earlier in the cycle is not asked again: its
    /// transactions fail with that timeout, so one silent unit costs one timeout per
    /// cycle and the bus stays free for the others.
    async fn read_transaction(&mut self, ids: &[ParamId], in_cycle: bool) -> Vec<Produced> {
        let domain = ids.first().map(|&id| self.protocol.domain(id));
        let skipped = match domain {
            Some(d) if in_cycle => self
                .timed_out
                .iter()
                .find(|(x, _)| *x == d)
                .map(|(_, f)| f.clone()),
            _ => None,
        };
        let results = match skipped {
            Some(failure) => Err(failure),
            None => self.read_with_retries(ids).await,
        };
        if let (Err(f), Some(d), true) = (&results, domain, in_cycle) {
            if f.outcome == Some(Outcome::Timeout) && !self.timed_out.iter().any(|(x, _)| *x == d) {
                self.timed_out.push((d, f.clone()));
            }
        }
        let session = self.protocol.transport().session();
        // A read that could not even be tried (the link waits for its next attempt)
        // is reported but does not count towards a persisting fault.
        let (results, counted) = match results {
            Ok(values) => (values, true),
            Err(failure) => (
                ids.iter()
                    .map(|&id| (id, Err(failure.error.clone())))
                    .collect(),
                failure.outcome.is_some(),
            ),
        };
        let mut out = Vec::with_capacity(results.len());
        for (id, result) in results {
            let reported = match result {
                Ok(value) => {
                    self.modules[id.module].confirmed_in = Some(session);
                    Ok(self.store(id, value))
                }
                Err(e) => {
                    let e = SecopError::new(e.class, ascii_only(&e.text));
                    Err(self.param_mut(id).fault.fail(e, counted))
                }
            };
            out.push((
                self.modules[id.module].name.clone(),
                self.param(id).spec.name.clone(),
                reported,
            ));
        }
        out
    }

    /// A read on the wire, tried again (up to `retries`) when it timed out, was
    /// garbled or refused, unless its parameters are in a fault episode already
    /// (retries are for transient faults; a device that keeps failing is not asked
    /// twice as often).
    async fn read_with_retries(
        &mut self,
        ids: &[ParamId],
    ) -> Result<Vec<(ParamId, Result<Value, SecopError>)>, Failure> {
        let retries = if ids.iter().all(|&id| self.param(id).fault.error().is_none()) {
            self.settings.policy.retries
        } else {
            0
        };
        let mut attempt = 0;
        // When every attempt fails, the first failure is the one reported: a retry's
        // failure is often a consequence of the first (a late reply meeting the
        // identification of the new session).
        let mut first_failure: Option<Failure> = None;
        loop {
            let results = match self.protocol.read(ids).await {
                Ok(readings) => Ok(readings
                    .into_iter()
                    .map(|(id, r)| (id, r.and_then(|r| validate(&self.param(id).spec, r))))
                    .collect::<Vec<_>>()),
                Err(failure) => Err(failure),
            };
            let retry = match &results {
                Err(f) => f.retryable(),
                Ok(values) => {
                    let bad = values.iter().any(|(_, v)| v.is_err());
                    if bad {
                        self.protocol.transport_mut().mark_garbled();
                    }
                    bad
                }
            };
            if retry && attempt < retries {
                attempt += 1;
                tracing::debug!(attempt, "retrying a read transaction");
                if let Err(f) = results {
                    first_failure.get_or_insert(f);
                }
                continue;
            }
            return match (results, first_failure) {
                (Err(_), Some(first)) => Err(first),
                (results, _) => results,
            };
        }
    }

    /// Write a parameter. A write is tried again only when the device refused it (a
    /// Modbus exception: it was not carried out); after a timeout or a garbled reply it
    /// may have taken effect, so it is not repeated.
    async fn write_with_retries(&mut self, id: ParamId, value: &Value) -> Result<(), SecopError> {
        let mut attempt = 0;
        loop {
            match self.protocol.write(id, value).await {
                Ok(()) => return Ok(()),
                Err(f) if f.refused && attempt < self.settings.policy.retries => {
                    attempt += 1;
                    tracing::debug!(attempt, "retrying a refused write");
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// Remember a value read or written; within the deadband the old value stands,
    /// so no update is sent.
    fn store(&mut self, id: ParamId, value: Value) -> Value {
        let param = self.param_mut(id);
        param.fault.clear();
        let keep_old = match (&param.value, value.as_f64()) {
            (Some(old), Some(new)) if param.spec.deadband > 0.0 => old
                .as_f64()
                .is_some_and(|o| (o - new).abs() < param.spec.deadband),
            _ => false,
        };
        if !keep_old {
            param.value = Some(value);
        }
        param.read_at = Some(Instant::now());
        param.value.clone().unwrap_or(Value::Null)
    }

    /// Advance the drive state of module `m` after new values.
    fn update_drive(&mut self, m: usize) {
        let Some(drive) = &self.modules[m].drive else {
            return;
        };
        let flag = drive
            .config
            .done_parameter
            .as_deref()
            .and_then(|p| self.param_value(m, p));
        let value = self.param_value(m, "value").and_then(|v| v.as_f64());
        let target = self.param_value(m, "target").and_then(|v| v.as_f64());
        if let Some(drive) = self.modules[m].drive.as_mut() {
            drive.observe(value, target, flag.as_ref());
        }
    }

    /// The status of module `m` by the fault policy; an ERROR keeps its first text
    /// while it lasts, and before the module's values were read in this session the
    /// last status stands (no "ok" for a device that has not answered yet).
    fn status(&mut self, m: usize) -> Value {
        let transport = self.protocol.transport();
        let session = transport.session();
        let down = transport
            .open_failed()
            .map(|reason| ascii_only(&format!("link down: {reason}")));
        let module = &self.modules[m];
        let persisting = module
            .params
            .iter()
            .find(|p| p.fault.persists(&self.settings.policy))
            .and_then(|p| p.fault.error().map(|e| (p, e)));
        let computed = match (down, persisting) {
            (Some(reason), _) => json!([st::ERROR, reason]),
            (None, Some((p, e))) => json!([st::ERROR, named(&p.spec.name, &e.text)]),
            (None, None) if module.confirmed_in != Some(session) && module.has_readable() => {
                return module.status.clone()
            }
            (None, None) => module_status(None, None, module.drive.as_ref()),
        };
        let module = &mut self.modules[m];
        let was_error = is_error(&module.status);
        if !(was_error && is_error(&computed)) {
            module.status = computed;
        }
        module.status.clone()
    }

    fn pollinterval_value(&self, m: usize) -> Result<Value, SecopError> {
        secop_proto::json::number(self.modules[m].pollinterval)
            .ok_or_else(|| SecopError::internal("pollinterval"))
    }

    /// Write the current value as target: a Drivable without a stop action holds
    /// where it is.
    async fn hold_in_place(&mut self, m: usize, fx: &mut Effects) -> Result<(), SecopError> {
        let Some(here) = self.param_value(m, "value") else {
            return Ok(());
        };
        let Ok(target) = self.find(&self.modules[m].name.clone(), "target") else {
            return Ok(());
        };
        if !self.param(target).spec.writable {
            return Ok(());
        }
        self.write_with_retries(target, &here).await?;
        let stored = self.store(target, here);
        fx.push(&self.modules[m].name.clone(), "target", Ok(stored));
        Ok(())
    }
}

impl ModuleState {
    fn has_readable(&self) -> bool {
        self.params.iter().any(|p| p.spec.readable)
    }
}

/// `text` with every character that is not printable ASCII escaped (`\u{fffd}`):
/// clients such as frappy drop messages with other characters.
pub fn ascii_only(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    out
}

/// An error text for the module's status, naming the parameter once: the drivers'
/// error texts mostly name it already (`value: reply "480.96" is above max 100`).
fn named(parameter: &str, text: &str) -> String {
    match text.strip_prefix(parameter) {
        Some(rest) if rest.starts_with(": ") => text.to_owned(),
        _ => format!("{parameter}: {text}"),
    }
}

fn is_error(status: &Value) -> bool {
    status
        .get(0)
        .and_then(Value::as_i64)
        .is_some_and(|code| (st::ERROR..st::ERROR + 100).contains(&code))
}

/// A value from the device must fit its datainfo before it leaves the gateway: else
/// an error naming the raw reply, in ASCII.
pub fn validate(spec: &ParamSpec, reading: Reading) -> Result<Value, SecopError> {
    crate::fit::device_value(&spec.datainfo, reading.value, &reading.raw)
        .map_err(|e| SecopError::new(e.class, format!("{}: {}", spec.name, e.text)))
}

impl<P: Protocol> Backend for ConfiguredDevice<P> {
    fn modules(&self) -> Vec<ModuleDescription> {
        self.descriptions.clone()
    }

    fn poll_interval(&self) -> Duration {
        let now = Instant::now();
        self.modules
            .iter()
            .map(|m| m.next_due.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(10))
    }

    fn nominal_poll_interval(&self) -> Duration {
        (0..self.modules.len())
            .map(|m| self.period(m))
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    fn poll_items(&mut self) -> usize {
        // A little early is on time: the timer does not fire to the microsecond.
        let now = Instant::now() + Duration::from_millis(5);
        let session = self.protocol.transport().session();
        let slow_factor = u64::from(self.settings.slow_factor.max(1));
        let mut due = Vec::new();
        self.planned.clear();
        for (m, module) in self.modules.iter_mut().enumerate() {
            if module.next_due > now {
                continue;
            }
            self.planned.push(m);
            // After a reconnect every parameter is polled again, the slow ones included.
            let slow_turn =
                module.cycle.is_multiple_of(slow_factor) || module.polled_in != Some(session);
            module.cycle += 1;
            module.polled_in = Some(session);
            for (p, param) in module.params.iter().enumerate() {
                let turn = match param.spec.poll {
                    Poll::Normal => true,
                    Poll::Slow => slow_turn,
                    Poll::Never => false,
                };
                if turn && param.spec.readable {
                    due.push(ParamId {
                        module: m,
                        param: p,
                    });
                }
            }
        }
        self.plan = self.protocol.plan(&due);
        self.timed_out.clear();
        // One extra item reports status and pollinterval, even while the link is down.
        self.plan.len() + 1
    }

    async fn poll(&mut self, item: usize) -> Vec<Produced> {
        // A new session first gets the persisted setpoints back.
        let mut restored = if item == 0 {
            self.restore_values().await
        } else {
            Vec::new()
        };
        // `remember` values are shown (not written) until the device is read.
        for id in std::mem::take(&mut self.remembered) {
            if let Some(value) = self.param(id).value.clone() {
                let module = self.modules[id.module].name.clone();
                restored.push((module, self.param(id).spec.name.clone(), Ok(value)));
            }
        }
        let mut out = self.poll_item(item).await;
        if !restored.is_empty() {
            out.splice(0..0, restored);
        }
        out
    }

    fn link_up(&self) -> bool {
        self.protocol.transport().is_up()
    }

    fn take_reconnects(&mut self) -> u64 {
        self.protocol.transport_mut().take_reconnects()
    }

    fn take_wire_stats(&mut self) -> Option<WireStats> {
        let mut stats = self.protocol.transport_mut().take_stats();
        stats.cache_hits = std::mem::take(&mut self.cache_hits);
        Some(stats)
    }

    async fn read(&mut self, module: &str, parameter: &str) -> Result<Value, SecopError> {
        self.read_parameter(module, parameter).await
    }

    async fn change(
        &mut self,
        module: &str,
        parameter: &str,
        value: Value,
        fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        self.change_parameter(module, parameter, value, fx).await
    }

    async fn execute(
        &mut self,
        module: &str,
        command: &str,
        argument: Value,
        fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        self.run(module, command, argument, fx).await
    }
}

impl<P: Protocol> ConfiguredDevice<P> {
    /// One item of the poll cycle: a read transaction, or the last item (statuses).
    async fn poll_item(&mut self, item: usize) -> Vec<Produced> {
        if let Some(ids) = self.plan.get(item).cloned() {
            let mut out = self.read_transaction(&ids, true).await;
            let mut touched: Vec<usize> = ids.iter().map(|id| id.module).collect();
            touched.dedup();
            for m in touched {
                self.update_drive(m);
                if self.modules[m].has_status {
                    let status = self.status(m);
                    out.push((self.modules[m].name.clone(), "status".into(), Ok(status)));
                }
            }
            return out;
        }
        // The last item: the polled modules are due again one period from now, and
        // every module reports its status (a link going down concerns them all).
        let now = Instant::now();
        for m in std::mem::take(&mut self.planned) {
            let period = self.period(m);
            self.modules[m].next_due = secop_actors::deadline::after(now, period);
        }
        let mut out = Vec::new();
        for m in 0..self.modules.len() {
            if self.modules[m].has_status {
                let name = self.modules[m].name.clone();
                let status = self.status(m);
                out.push((name.clone(), "status".to_owned(), Ok(status)));
                out.push((name, "pollinterval".to_owned(), self.pollinterval_value(m)));
            }
        }
        out
    }

    async fn read_parameter(&mut self, module: &str, parameter: &str) -> Result<Value, SecopError> {
        let m = self.module(module)?;
        if self.modules[m].has_status {
            match parameter {
                "status" => return Ok(self.status(m)),
                "pollinterval" => return self.pollinterval_value(m),
                _ => {}
            }
        }
        let id = self.find(module, parameter)?;
        let param = self.param(id);
        if !param.spec.readable {
            return param.value.clone().ok_or_else(|| {
                SecopError::read_failed(format!(
                    "{parameter} cannot be read from the device and was never set"
                ))
            });
        }
        let max_age = self.settings.max_age;
        if let (Some(v), Some(at)) = (&param.value, param.read_at) {
            if max_age > 0.0
                && at.elapsed().as_secs_f64() <= max_age
                && param.fault.error().is_none()
            {
                let v = v.clone();
                self.cache_hits += 1;
                return Ok(v);
            }
        }
        let mut produced = self.read_transaction(&[id], false).await;
        self.update_drive(m);
        produced
            .pop()
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| Err(SecopError::internal("nothing read")))
    }

    async fn change_parameter(
        &mut self,
        module: &str,
        parameter: &str,
        value: Value,
        fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        let m = self.module(module)?;
        if parameter == "pollinterval" && self.modules[m].has_status {
            let secs = crate::builder::pollinterval(&value)?;
            let module = &mut self.modules[m];
            module.pollinterval = secs;
            // The new interval counts from now (a shorter one takes effect at once).
            let next = secop_actors::deadline::after(Instant::now(), self.period(m));
            self.modules[m].next_due = self.modules[m].next_due.min(next);
            return self.pollinterval_value(m);
        }
        let id = self.find(module, parameter)?;
        if !self.param(id).spec.writable {
            return Err(SecopError::read_only(format!(
                "{module}:{parameter} is read-only"
            )));
        }
        self.write_with_retries(id, &value).await?;
        if self.param(id).spec.persist != crate::state::Persist::No {
            if let Some(state) = &self.state {
                state.set(&format!("{module}:{parameter}"), value.clone());
            }
            if self.param(id).spec.persist == crate::state::Persist::Restore {
                self.restore.retain(|(x, _)| *x != id);
                self.restore.push((id, value.clone()));
            }
        }
        let spec = &self.param(id).spec;
        let result = if spec.readback && spec.readable {
            // The device took the value: a failed read-back does not make the change
            // fail. The written value is the reply, and the next poll reads it again.
            let mut produced = self.read_transaction(&[id], false).await;
            match produced.pop().map(|(_, _, v)| v) {
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    tracing::info!(module, parameter, "read-back after a write failed: {e}");
                    self.store(id, value)
                }
                None => self.store(id, value),
            }
        } else {
            self.store(id, value)
        };
        if parameter == "target" {
            if let Some(d) = self.modules[m].drive.as_mut() {
                d.start();
            }
            let period = self.period(m);
            let next = secop_actors::deadline::after(Instant::now(), period);
            self.modules[m].next_due = self.modules[m].next_due.min(next);
        }
        if self.modules[m].has_status {
            fx.push(module, "status", Ok(self.status(m)));
        }
        Ok(result)
    }

    async fn run(
        &mut self,
        module: &str,
        command: &str,
        argument: Value,
        fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        let m = self.module(module)?;
        let is_stop = command == "stop" && self.modules[m].drive.is_some();
        let result = match self.protocol.command(m, command, &argument).await {
            Some(result) => result.map_err(|f| f.error)?,
            None if is_stop => {
                self.hold_in_place(m, fx).await?;
                Value::Null
            }
            None => {
                return Err(SecopError::no_such_command(format!(
                    "{module} has no command {command:?}"
                )))
            }
        };
        if is_stop {
            if let Some(d) = self.modules[m].drive.as_mut() {
                d.stop();
            }
        }
        if self.modules[m].has_status {
            fx.push(module, "status", Ok(self.status(m)));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_for_clients_are_printable_ascii() {
        assert_eq!(
            ascii_only("reply \"\u{fffd}0\"\r"),
            "reply \"\\u{fffd}0\"\\u{d}"
        );
        assert_eq!(ascii_only("ok"), "ok");
    }

    #[test]
    fn a_status_names_the_parameter_once() {
        assert_eq!(
            named("value", "value: reply \"480.96\" is above max 100"),
            "value: reply \"480.96\" is above max 100"
        );
        assert_eq!(named("value", "no reply"), "value: no reply");
        assert_eq!(named("value", "values: x"), "value: values: x");
    }
}
