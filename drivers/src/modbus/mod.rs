//! Modbus devices defined in config: register maps per parameter (table, address,
//! type, word and byte order, scale, offset, bits, enums), read in coalesced blocks,
//! written with the function code that fits (5/6/15/16). Modbus TCP when the link
//! has `tcp`, Modbus RTU when it has `serial` (several units on one RS-485 bus).
//!
//! tokio-modbus has no timeouts of its own: every call is wrapped in the link's
//! deadline, and after a timeout the connection is dropped and reopened, because a
//! late reply would otherwise be taken as the answer to the next request.
//!
//! A reply is hostile input like any other: its register (or coil) count comes from
//! the device's byte count, not from our request. Reads therefore go through
//! `Client::call` (tokio-modbus's `read_*` helpers only `debug_assert!` the count) and
//! [`block_registers`] checks the count; every member is cut out of a block with
//! [`member_registers`], which checks the length. A short reply is a
//! `CommunicationFailed` ("reply too short"), never a panic.

pub mod codec;

use crate::builder::ModuleBuilder;
use crate::configured::{
    ConfiguredDevice, LinkParts, ModuleSpec, ParamId, ParamSpec, Poll, Protocol, Reading, Readings,
};
use crate::drive::{check_class_parameters, standard_accessibles, Abilities, DriveConfig};
use crate::transport::{Failure, Stream, Transport};
use crate::{ConfigError, ModuleConfig};
use codec::{CodecError, Order, RegType};
use secop_actors::device_actor::Outcome;
use secop_proto::{DataInfo, Kind, ModuleDescription, SecopError};
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_modbus::client::{Client, Context, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};

/// `[link.modbus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusLink {
    /// Default unit id of the modules on this link.
    #[serde(default = "one")]
    pub unit_id: u8,
    /// Largest gap (registers) bridged when coalescing reads into one block.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Largest block (registers; coils are limited to 2000).
    #[serde(default = "default_max_block")]
    pub max_block: u16,
}

fn one() -> u8 {
    1
}
fn default_max_gap() -> u16 {
    8
}
fn default_max_block() -> u16 {
    125
}

/// The part of a `[[module]]` that a Modbus link reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusModule {
    pub class: String,
    /// Unit id of this module (default: the link's).
    pub unit_id: Option<u8>,
    #[serde(default, rename = "parameter")]
    pub parameters: Vec<ModbusParameter>,
    #[serde(default, rename = "command")]
    pub commands: Vec<ModbusCommand>,
    pub drive: Option<DriveConfig>,
    /// Seconds between polls of this module (default: the link's `pollinterval`).
    pub pollinterval: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusParameter {
    pub name: String,
    pub description: Option<String>,
    pub datainfo: Value,
    /// `coil`, `discrete`, `input` or `holding`.
    pub table: String,
    pub address: u16,
    /// bool, u16, i16, u32, i32, u64, i64, f32, f64, string.
    #[serde(rename = "type", default = "u16_name")]
    pub kind: String,
    /// Registers of a string.
    pub length: Option<u16>,
    #[serde(default = "big")]
    pub word_order: String,
    #[serde(default = "big")]
    pub byte_order: String,
    /// value = raw * scale + offset (doubles).
    #[serde(default = "unit_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Take one bit of a register (a status word), as a bool.
    pub bit: Option<u8>,
    /// Clients may change it (coils and holding registers only).
    #[serde(default)]
    pub writable: bool,
    /// `normal`, `slow` or `never`.
    #[serde(default = "normal")]
    pub poll: String,
    /// Changes smaller than this are not sent as updates (numbers).
    #[serde(default)]
    pub deadband: f64,
    /// `restore` (written back to the device at start and after every reconnect) or
    /// `remember` (shown as the last set value); needs `[state] file`.
    pub persist: Option<String>,
}

fn u16_name() -> String {
    "u16".into()
}
fn big() -> String {
    "big".into()
}
fn unit_scale() -> f64 {
    1.0
}
fn normal() -> String {
    "normal".into()
}

/// A command writes a fixed value (or its argument) to a coil or holding register.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusCommand {
    pub name: String,
    pub description: Option<String>,
    pub table: String,
    pub address: u16,
    #[serde(rename = "type", default = "u16_name")]
    pub kind: String,
    /// The value written; without it the command takes an argument of `argument`.
    pub value: Option<Value>,
    pub argument: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Coil,
    Discrete,
    Input,
    Holding,
}

impl Table {
    /// The `table` key; the error names it.
    fn parse(name: &str) -> Result<Table, ConfigError> {
        Ok(match name {
            "coil" => Table::Coil,
            "discrete" => Table::Discrete,
            "input" => Table::Input,
            "holding" => Table::Holding,
            other => {
                return Err(ConfigError::invalid(
                    "table",
                    format!("{other:?} is not coil, discrete, input or holding"),
                ))
            }
        })
    }

    fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete input",
            Table::Input => "input register",
            Table::Holding => "holding register",
        }
    }
}

struct Param {
    name: String,
    datainfo: DataInfo,
    unit: u8,
    table: Table,
    address: u16,
    kind: RegType,
    order: Order,
    scale: f64,
    offset: f64,
    bit: Option<u8>,
}

struct Command {
    name: String,
    unit: u8,
    table: Table,
    address: u16,
    kind: RegType,
    value: Option<Value>,
}

struct Module {
    params: Vec<Param>,
    commands: Vec<Command>,
    /// The command that stops a move (`drive.stop`).
    stop: Option<String>,
}

/// One coalesced read.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    unit: u8,
    table: Table,
    start: u16,
    count: u16,
    /// (module, parameter)
    members: Vec<(usize, usize)>,
}

/// The Modbus protocol of one link (a TCP device, or the units on an RTU bus).
pub struct ModbusProtocol {
    transport: Transport,
    context: Option<Context>,
    rtu: bool,
    last_io: Instant,
    modules: Vec<Module>,
    max_gap: u16,
    max_block: u16,
}

/// A configured device on a Modbus link.
pub type ModbusDevice = ConfiguredDevice<ModbusProtocol>;

/// Coalesce single-parameter reads into blocks of at most `max_block` registers (2000
/// coils) with gaps of at most `max_gap`.
fn plan_blocks(mut reads: Vec<Block>, max_gap: u16, max_block: u16) -> Vec<Block> {
    reads.sort_by_key(|b| (b.unit, b.table, b.start));
    let mut blocks: Vec<Block> = Vec::new();
    for read in reads {
        let limit = if read.table.is_bits() {
            2000
        } else {
            max_block
        };
        if let Some(b) = blocks.last_mut() {
            let end = u32::from(b.start) + u32::from(b.count);
            let new_end = (u32::from(read.start) + u32::from(read.count)).max(end);
            if b.unit == read.unit
                && b.table == read.table
                && u32::from(read.start) <= end + u32::from(max_gap)
                && new_end - u32::from(b.start) <= u32::from(limit)
            {
                b.count = (new_end - u32::from(b.start)) as u16;
                b.members.extend(read.members);
                continue;
            }
        }
        blocks.push(read);
    }
    blocks
}

fn exception_error(code: tokio_modbus::ExceptionCode, what: &str) -> SecopError {
    use tokio_modbus::ExceptionCode as E;
    let number = u8::from(code);
    let text = format!("Modbus exception 0x{number:02X} ({code}) at {what}");
    match code {
        E::ServerDeviceBusy | E::Acknowledge => SecopError::is_busy(text),
        E::GatewayPathUnavailable | E::GatewayTargetDevice => {
            SecopError::communication_failed(text)
        }
        _ => SecopError::hardware(text),
    }
}

/// Build the device of a Modbus link from config; errors name the module and key.
pub fn build(
    link: &LinkParts,
    settings: Option<&ModbusLink>,
    modules: &[(ModuleConfig, ModbusModule)],
) -> Result<ModbusDevice, ConfigError> {
    let settings = settings.cloned().unwrap_or(ModbusLink {
        unit_id: 1,
        max_gap: default_max_gap(),
        max_block: default_max_block(),
    });
    let (gap, block) = (settings.max_gap, settings.max_block);
    crate::limits::count("modbus.max_block", block.into(), 1, 125, "registers")?;
    crate::limits::count("modbus.max_gap", gap.into(), 0, 125, "registers")?;
    let mut runtime = Vec::new();
    let mut specs = Vec::new();
    let mut descriptions = Vec::new();
    for (config, spec) in modules {
        let unit = spec.unit_id.unwrap_or(settings.unit_id);
        let (module, core, description) =
            build_module(config, spec, unit, link).map_err(|e| e.in_module(&config.name))?;
        runtime.push(module);
        specs.push(core);
        descriptions.push(description);
    }
    let protocol = ModbusProtocol {
        transport: Transport::new(link.transport.clone()),
        context: None,
        rtu: link.transport.serial.is_some(),
        last_io: Instant::now(),
        modules: runtime,
        max_gap: gap,
        max_block: block,
    };
    Ok(ConfiguredDevice::new(
        protocol,
        link.core,
        specs,
        descriptions,
    ))
}

impl ModbusProtocol {
    async fn context(&mut self) -> Result<&mut Context, Failure> {
        if !self.transport.is_open() {
            self.context = None;
        }
        if self.context.is_none() {
            let stream = self.transport.open_session().await?;
            self.context = Some(match stream {
                Stream::Tcp(s) => tokio_modbus::client::tcp::attach(s),
                Stream::Serial(s) => tokio_modbus::client::rtu::attach(s),
            });
        }
        self.context
            .as_mut()
            .ok_or_else(|| Failure::unsent(SecopError::internal("no Modbus context")))
    }

    /// RTU needs 3.5 character times of silence between frames.
    async fn inter_frame_gap(&mut self) {
        if !self.rtu {
            return;
        }
        let baud = f64::from(self.transport.settings().baud.max(1));
        let gap = if baud > 19200.0 {
            0.00175
        } else {
            3.5 * 11.0 / baud
        };
        let since = self.last_io.elapsed().as_secs_f64();
        if since < gap {
            tokio::time::sleep(Duration::from_secs_f64(gap - since)).await;
        }
    }

    fn lost(&mut self, reason: &str) {
        self.context = None;
        self.transport.drop_connection(reason);
    }

    /// Run one Modbus request under the link's deadline, counted as one exchange.
    ///
    /// A timeout ends a TCP session (a late reply must not answer the next request).
    /// On an RTU bus it does not: the bus is fine, one unit is silent, and
    /// tokio-modbus clears its input before each request and refuses a reply whose
    /// unit or function code differs, so a late reply cannot be taken for another's.
    async fn call<T, F>(&mut self, unit: u8, what: &str, f: F) -> Result<T, Failure>
    where
        F: for<'c> FnOnce(
            &'c mut Context,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = tokio_modbus::Result<T>> + 'c>,
        >,
    {
        self.inter_frame_gap().await;
        let timeout = self.transport.timeout();
        let ctx = self.context().await?;
        ctx.set_slave(Slave(unit));
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, f(ctx)).await;
        self.last_io = Instant::now();
        let took = started.elapsed();
        let failed = |outcome, error| Failure {
            outcome: Some(outcome),
            error,
            refused: false,
        };
        match result {
            Ok(Ok(Ok(v))) => {
                self.transport.record(Outcome::Ok, took);
                self.transport.proved();
                Ok(v)
            }
            Ok(Ok(Err(code))) => {
                // An exception is an answer: the device is there.
                self.transport.record(Outcome::Error, took);
                self.transport.proved();
                Err(Failure {
                    outcome: Some(Outcome::Error),
                    error: exception_error(code, what),
                    refused: true,
                })
            }
            Ok(Err(e)) => {
                self.transport.record(Outcome::Error, took);
                let reason = format!("Modbus I/O error at {what}: {e}");
                self.lost(&reason);
                Err(failed(
                    Outcome::Error,
                    SecopError::communication_failed(reason),
                ))
            }
            Err(_) => {
                self.transport.record(Outcome::Timeout, took);
                let reason = format!(
                    "no reply from unit {unit} at {what} within {} s",
                    timeout.as_secs_f64()
                );
                if !self.rtu {
                    self.lost(&reason);
                }
                Err(failed(Outcome::Timeout, SecopError::timeout(reason)))
            }
        }
    }

    async fn read_block(&mut self, b: &Block) -> Result<Vec<u16>, Failure> {
        let what = format!(
            "{} {}..{}",
            b.table.name(),
            b.start,
            (u32::from(b.start) + u32::from(b.count)).saturating_sub(1)
        );
        let (start, count) = (b.start, b.count);
        let table = b.table;
        let response = self
            .call(b.unit, &what, move |c| {
                Box::pin(c.call(match table {
                    Table::Coil => tokio_modbus::Request::ReadCoils(start, count),
                    Table::Discrete => tokio_modbus::Request::ReadDiscreteInputs(start, count),
                    Table::Input => tokio_modbus::Request::ReadInputRegisters(start, count),
                    Table::Holding => tokio_modbus::Request::ReadHoldingRegisters(start, count),
                }))
            })
            .await?;
        block_registers(b, response).map_err(|e| {
            self.transport.mark_garbled();
            Failure::garbled(SecopError::communication_failed(format!("{what}: {e}")))
        })
    }

    fn param(&self, id: ParamId) -> &Param {
        &self.modules[id.module].params[id.param]
    }

    /// The block that reads exactly these parameters (one unit, one table).
    fn block_of(&self, ids: &[ParamId]) -> Option<Block> {
        let first = self.param(*ids.first()?);
        let start = ids.iter().map(|&id| self.param(id).address).min()?;
        let end = ids
            .iter()
            .map(|&id| {
                let p = self.param(id);
                u32::from(p.address) + u32::from(p.kind.registers())
            })
            .max()?;
        Some(Block {
            unit: first.unit,
            table: first.table,
            start,
            count: u16::try_from(end - u32::from(start)).ok()?,
            members: ids.iter().map(|id| (id.module, id.param)).collect(),
        })
    }

    async fn write_raw(
        &mut self,
        unit: u8,
        table: Table,
        address: u16,
        kind: RegType,
        order: Order,
        raw: &Value,
    ) -> Result<(), Failure> {
        let what = format!("{} {address}", table.name());
        match table {
            Table::Coil => {
                let on = raw
                    .as_bool()
                    .or_else(|| raw.as_f64().map(|x| x != 0.0))
                    .unwrap_or(false);
                self.call(unit, &what, move |c| {
                    Box::pin(c.write_single_coil(address, on))
                })
                .await
            }
            Table::Holding => {
                let regs = codec::encode(raw, kind, order)
                    .map_err(|e| Failure::unsent(SecopError::range(format!("{what}: {e}"))))?;
                if let [word] = regs[..] {
                    self.call(unit, &what, move |c| {
                        Box::pin(c.write_single_register(address, word))
                    })
                    .await
                } else {
                    self.call(unit, &what, move |c| {
                        Box::pin(async move { c.write_multiple_registers(address, &regs).await })
                    })
                    .await
                }
            }
            _ => Err(Failure::unsent(SecopError::read_only(format!(
                "{what} cannot be written"
            )))),
        }
    }
}

impl Protocol for ModbusProtocol {
    fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Each unit on a bus fails on its own.
    fn domain(&self, id: ParamId) -> u32 {
        u32::from(self.param(id).unit)
    }

    fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// Coalesced blocks per unit and table.
    fn plan(&self, due: &[ParamId]) -> Vec<Vec<ParamId>> {
        let reads = due
            .iter()
            .map(|&id| {
                let p = self.param(id);
                Block {
                    unit: p.unit,
                    table: p.table,
                    start: p.address,
                    count: p.kind.registers(),
                    members: vec![(id.module, id.param)],
                }
            })
            .collect();
        plan_blocks(reads, self.max_gap, self.max_block)
            .into_iter()
            .map(|b| {
                b.members
                    .into_iter()
                    .map(|(module, param)| ParamId { module, param })
                    .collect()
            })
            .collect()
    }

    async fn read(&mut self, ids: &[ParamId]) -> Result<Readings, Failure> {
        let Some(block) = self.block_of(ids) else {
            return Ok(Vec::new());
        };
        let regs = self.read_block(&block).await?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let param = self.param(id);
            let value = member_registers(&regs, block.start, param.address, param.kind.registers())
                .map_err(|e| SecopError::communication_failed(format!("{}: {e}", param.name)))
                .and_then(|slice| {
                    let raw = format!("registers {slice:?}");
                    param
                        .reading(slice)
                        .map_err(|e| e.context(&param.name))
                        .map(|value| Reading { value, raw })
                });
            out.push((id, value));
        }
        Ok(out)
    }

    async fn write(&mut self, id: ParamId, value: &Value) -> Result<(), Failure> {
        let param = self.param(id);
        let raw = match (&param.datainfo.kind, value.as_f64()) {
            (Kind::Double { .. }, Some(x)) => {
                secop_proto::json::number((x - param.offset) / param.scale).unwrap_or(Value::Null)
            }
            _ => value.clone(),
        };
        let (unit, table, address, kind, order) = (
            param.unit,
            param.table,
            param.address,
            param.kind,
            param.order,
        );
        self.write_raw(unit, table, address, kind, order, &raw)
            .await
    }

    async fn command(
        &mut self,
        module: usize,
        command: &str,
        argument: &Value,
    ) -> Option<Result<Value, Failure>> {
        let name = match (command, &self.modules[module].stop) {
            ("stop", Some(configured))
                if !self.modules[module]
                    .commands
                    .iter()
                    .any(|c| c.name == "stop") =>
            {
                configured.clone()
            }
            _ => command.to_owned(),
        };
        let cmd = self.modules[module]
            .commands
            .iter()
            .find(|c| c.name == name)?;
        let value = cmd.value.clone().unwrap_or_else(|| argument.clone());
        let (unit, table, address, kind) = (cmd.unit, cmd.table, cmd.address, cmd.kind);
        let order = Order {
            big_words: true,
            big_bytes: true,
        };
        Some(
            self.write_raw(unit, table, address, kind, order, &value)
                .await
                .map(|()| Value::Null),
        )
    }
}

/// Why a reply gives no value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum ReplyError {
    #[error("unexpected reply {0}")]
    Unexpected(String),
    #[error("reply too short: {got} of {expected} values")]
    TooShort { got: usize, expected: usize },
    #[error("reply too long: {got} instead of {expected} values")]
    TooLong { got: usize, expected: usize },
    #[error("reply too short: {got} registers from {block_start}, {count} needed at {address}")]
    Missing {
        got: usize,
        block_start: u16,
        count: u16,
        address: u16,
    },
    #[error("reply too short: no register")]
    NoRegister,
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// `expected` is e.g. "a number".
    #[error("not {0}")]
    Not(&'static str),
    #[error("{0} is not a member of the enum")]
    NotMember(i64),
}

/// The registers (coils as 0/1) of a read reply, checked against what the block asked
/// for: fewer is an error, and so is the wrong kind of reply. Coil replies come in
/// whole bytes, so extra bits are cut off; extra registers are an error.
fn block_registers(b: &Block, response: tokio_modbus::Response) -> Result<Vec<u16>, ReplyError> {
    use tokio_modbus::Response as R;
    let expected = usize::from(b.count);
    let words: Vec<u16> = match (b.table, response) {
        (Table::Coil, R::ReadCoils(mut bits))
        | (Table::Discrete, R::ReadDiscreteInputs(mut bits)) => {
            if bits.len() >= expected {
                bits.truncate(expected);
            }
            bits.into_iter().map(u16::from).collect()
        }
        (Table::Input, R::ReadInputRegisters(words))
        | (Table::Holding, R::ReadHoldingRegisters(words)) => words,
        (_, other) => return Err(ReplyError::Unexpected(format!("{other:?}"))),
    };
    match words.len() {
        got if got < expected => Err(ReplyError::TooShort { got, expected }),
        got if got > expected => Err(ReplyError::TooLong { got, expected }),
        _ => Ok(words),
    }
}

/// The `count` registers at `address` out of a block read from `block_start`, or
/// "reply too short" if the block does not hold them.
fn member_registers(
    regs: &[u16],
    block_start: u16,
    address: u16,
    count: u16,
) -> Result<&[u16], ReplyError> {
    let slice = address.checked_sub(block_start).and_then(|offset| {
        let offset = usize::from(offset);
        regs.get(offset..offset + usize::from(count))
    });
    slice.ok_or(ReplyError::Missing {
        got: regs.len(),
        block_start,
        count,
        address,
    })
}

impl Param {
    fn reading(&self, regs: &[u16]) -> Result<Value, SecopError> {
        let mapping = RegisterMapping {
            kind: self.kind,
            order: self.order,
            scale: self.scale,
            offset: self.offset,
            bit: self.bit,
        };
        register_reading(&self.datainfo, &mapping, regs)
    }
}

/// How a parameter's value sits in its registers (the `type`, `word_order`,
/// `byte_order`, `scale`, `offset` and `bit` keys).
#[derive(Debug, Clone, Copy)]
pub struct RegisterMapping {
    pub kind: RegType,
    pub order: Order,
    pub scale: f64,
    pub offset: f64,
    pub bit: Option<u8>,
}

/// The value a parameter shows for the registers a device sent: decoded, scaled and
/// fitted to its datainfo, or `HardwareError` / `OutOfRange` naming the registers.
/// The registers are hostile input (any device, any reply): this never panics and
/// never returns a value outside the datainfo (fuzzed, `fuzz/checks/drivers.rs`).
pub fn register_reading(
    datainfo: &DataInfo,
    mapping: &RegisterMapping,
    regs: &[u16],
) -> Result<Value, SecopError> {
    let value =
        to_value(datainfo, mapping, regs).map_err(|e| SecopError::hardware(e.to_string()))?;
    crate::fit::register_value(datainfo, value, regs)
}

/// Registers of one parameter → its value.
fn to_value(
    datainfo: &DataInfo,
    param: &RegisterMapping,
    regs: &[u16],
) -> Result<Value, ReplyError> {
    if let Some(bit) = param.bit {
        let word = regs.first().ok_or(ReplyError::NoRegister)?;
        return Ok(Value::Bool(
            word.checked_shr(u32::from(bit)).unwrap_or(0) & 1 == 1,
        ));
    }
    let raw = codec::decode(regs, param.kind, param.order)?;
    match &datainfo.kind {
        Kind::Double { .. } => {
            let x = raw.as_f64().ok_or(ReplyError::Not("a number"))? * param.scale + param.offset;
            secop_proto::json::number(x).ok_or(ReplyError::Not("a finite number"))
        }
        Kind::Bool => Ok(Value::Bool(
            raw.as_f64()
                .map(|x| x != 0.0)
                .or(raw.as_bool())
                .unwrap_or(false),
        )),
        Kind::Enum { members } => {
            let n = raw.as_i64().ok_or(ReplyError::Not("an integer"))?;
            if members.iter().any(|(_, v)| *v == n) {
                Ok(Value::from(n))
            } else {
                Err(ReplyError::NotMember(n))
            }
        }
        _ => Ok(raw),
    }
}

fn build_module(
    config: &ModuleConfig,
    spec: &ModbusModule,
    unit: u8,
    link: &LinkParts,
) -> Result<(Module, ModuleSpec, ModuleDescription), ConfigError> {
    let classes: &[&str] = match spec.class.as_str() {
        "Readable" => &["Readable"],
        "Writable" => &["Writable"],
        "Drivable" => &["Drivable"],
        other => {
            return Err(ConfigError::invalid(
                "class",
                format!("{other:?} is not Readable, Writable or Drivable"),
            ))
        }
    };
    let mut builder = ModuleBuilder::new(config, "", classes);
    let mut params = Vec::new();
    let mut core = Vec::new();
    for (i, p) in spec.parameters.iter().enumerate() {
        let key = format!("parameter[{i}] ({:?})", p.name);
        if p.name == "status" || p.name == "pollinterval" {
            return Err(ConfigError::invalid(
                key,
                format!("{} is provided by the gateway", p.name),
            ));
        }
        let invalid =
            |sub: &str, reason: String| ConfigError::invalid(format!("{key}.{sub}"), reason);
        let datainfo = DataInfo::from_json(&p.datainfo)
            .map_err(|e| ConfigError::at(format!("{key}.datainfo"), e))?;
        let table = Table::parse(&p.table).map_err(|e| e.within(&key))?;
        let kind = RegType::parse(&p.kind, p.length)
            .map_err(|e| ConfigError::at(format!("{key}.type"), e))?;
        let order = Order::parse(&p.word_order, &p.byte_order).map_err(|e| e.within(&key))?;
        if table.is_bits() && kind != RegType::Bool {
            return Err(invalid(
                "type",
                format!("{} tables hold bools", table.name()),
            ));
        }
        if p.writable && !matches!(table, Table::Coil | Table::Holding) {
            return Err(invalid(
                "writable",
                format!("{} tables are read-only", table.name()),
            ));
        }
        if let Some(bit) = p.bit {
            if bit > 15 || kind != RegType::U16 || table.is_bits() {
                return Err(invalid("bit", "0..15 of a u16 register".into()));
            }
            if p.writable {
                return Err(invalid("bit", "single bits cannot be written".into()));
            }
        }
        if u32::from(p.address) + u32::from(kind.registers()) > 65536 {
            return Err(invalid(
                "address",
                "the value runs past register 65535".into(),
            ));
        }
        let poll = Poll::parse(&format!("{key}.poll"), &p.poll)?;
        if !(p.scale.is_finite() && p.scale != 0.0) {
            return Err(invalid("scale", "must be a non-zero number".into()));
        }
        crate::limits::finite(&format!("{key}.offset"), p.offset)?;
        crate::limits::number(&format!("{key}.deadband"), p.deadband, 0.0, f64::MAX, "")?;
        crate::fit::check_modbus_parameter(p, &datainfo, kind, &key)?;
        let description = p.description.clone().unwrap_or_else(|| p.name.clone());
        builder = builder
            .param(
                &p.name,
                &description,
                p.datainfo.clone(),
                !p.writable,
                p.writable,
            )
            .map_err(|e| ConfigError::at(&key, e))?;
        core.push(ParamSpec {
            name: p.name.clone(),
            datainfo: datainfo.clone(),
            readable: true,
            writable: p.writable,
            readback: true,
            poll,
            deadband: p.deadband,
            persist: crate::state::Persist::parse(
                &format!("{key}.persist"),
                p.persist.as_deref(),
                p.writable,
            )?,
        });
        params.push(Param {
            name: p.name.clone(),
            datainfo,
            unit,
            table,
            address: p.address,
            kind,
            order,
            scale: p.scale,
            offset: p.offset,
            bit: p.bit,
        });
    }
    builder = standard_accessibles(builder)?;
    let mut commands = Vec::new();
    for (i, c) in spec.commands.iter().enumerate() {
        let key = format!("command[{i}] ({:?})", c.name);
        let table = Table::parse(&c.table).map_err(|e| e.within(&key))?;
        if !matches!(table, Table::Coil | Table::Holding) {
            return Err(ConfigError::invalid(
                format!("{key}.table"),
                "commands write coils or holding registers",
            ));
        }
        let kind =
            RegType::parse(&c.kind, None).map_err(|e| ConfigError::at(format!("{key}.type"), e))?;
        if c.value.is_none() && c.argument.is_none() {
            return Err(ConfigError::invalid(
                key,
                "give the value to write, or an argument datainfo",
            ));
        }
        let description = c.description.clone().unwrap_or_else(|| c.name.clone());
        builder = builder
            .command(&c.name, &description, c.argument.clone(), None)
            .map_err(|e| ConfigError::at(&key, e))?;
        crate::fit::check_modbus_command(c, kind, table.is_bits(), &key)?;
        commands.push(Command {
            name: c.name.clone(),
            unit,
            table,
            address: c.address,
            kind,
            value: c.value.clone(),
        });
    }
    let drive = match (&spec.drive, spec.class.as_str()) {
        (Some(d), "Drivable") => {
            d.validate()?;
            if let Some(flag) = &d.done_parameter {
                if !params.iter().any(|p| &p.name == flag) {
                    return Err(ConfigError::invalid(
                        "drive.done_parameter",
                        format!("no parameter is named {flag:?}"),
                    ));
                }
            }
            if let Some(stop) = &d.stop {
                if !commands.iter().any(|c| &c.name == stop) {
                    return Err(ConfigError::invalid(
                        "drive.stop",
                        format!("no [[module.command]] is named {stop:?}"),
                    ));
                }
            }
            if !commands.iter().any(|c| c.name == "stop") {
                builder = builder.command("stop", "stop the move", None, None)?;
            }
            Some(d.clone())
        }
        (None, "Drivable") => {
            return Err(ConfigError::invalid(
                "drive",
                "a Drivable needs a [module.drive] section",
            ))
        }
        (Some(_), _) => {
            return Err(ConfigError::invalid(
                "drive",
                "only a Drivable has a [module.drive] section",
            ))
        }
        _ => None,
    };
    check_class_parameters(
        &spec.class,
        |name| {
            core.iter().find(|p| p.name == name).map(|p| Abilities {
                readable: true,
                writable: p.writable,
            })
        },
        "must be readable",
        "must be writable",
    )?;
    let mut description = builder.build();
    if config.description.is_none() {
        description.description = format!("{} on a Modbus link", spec.class);
    }
    let pollinterval = spec.pollinterval.unwrap_or(link.pollinterval);
    crate::limits::POLLINTERVAL.check("pollinterval", pollinterval)?;
    let stop = drive.as_ref().and_then(|d| d.stop.clone());
    Ok((
        Module {
            params,
            commands,
            stop,
        },
        ModuleSpec {
            name: config.name.clone(),
            params: core,
            drive,
            has_status: true,
            pollinterval,
        },
        description,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkConfig;
    use secop_actors::device_actor::Backend;

    #[test]
    fn blocks_coalesce_within_gap_and_size() {
        let read = |unit, table, start, count, member| Block {
            unit,
            table,
            start,
            count,
            members: vec![member],
        };
        let items = vec![
            read(1, Table::Holding, 0, 2, (0, 0)),
            read(1, Table::Holding, 4, 1, (0, 1)),
            read(1, Table::Holding, 20, 2, (0, 2)),
            read(1, Table::Input, 0, 1, (0, 3)),
            read(2, Table::Holding, 0, 1, (1, 0)),
        ];
        let blocks = plan_blocks(items, 8, 125);
        assert_eq!(blocks.len(), 4, "{blocks:?}");
        // sorted by unit, table (input before holding), address
        assert_eq!((blocks[0].table, blocks[0].start), (Table::Input, 0));
        assert_eq!((blocks[1].start, blocks[1].count), (0, 5));
        assert_eq!(blocks[1].members, vec![(0, 0), (0, 1)]);
        assert_eq!((blocks[2].start, blocks[2].count), (20, 2));
        assert_eq!(blocks[3].unit, 2);
        let many: Vec<_> = (0..200u16)
            .map(|a| read(1, Table::Holding, a, 1, (0, a as usize)))
            .collect();
        let blocks = plan_blocks(many, 8, 125);
        assert_eq!(
            blocks.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![125, 75]
        );
    }

    /// A fake Modbus TCP server on loopback that answers every read with `registers`
    /// registers (or `registers * 8` coils), whatever was asked for.
    async fn short_replying_server(registers: u8) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut header = [0u8; 7];
                    while s.read_exact(&mut header).await.is_ok() {
                        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
                        let mut pdu = vec![0u8; len.saturating_sub(1)];
                        if s.read_exact(&mut pdu).await.is_err() {
                            return;
                        }
                        let function = pdu.first().copied().unwrap_or(0);
                        let bytes = if function <= 2 {
                            registers
                        } else {
                            registers * 2
                        };
                        let mut reply = header[..4].to_vec();
                        reply.extend_from_slice(&(3 + u16::from(bytes)).to_be_bytes());
                        reply.extend_from_slice(&[header[6], function, bytes]);
                        reply.extend(std::iter::repeat_n(0x41u8, usize::from(bytes)));
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn backend(address: std::net::SocketAddr) -> ModbusDevice {
        let link: LinkConfig = serde_json::from_value(serde_json::json!({
            "name": "plc", "protocol": "modbus", "tcp": address.to_string(), "timeout": 2.0
        }))
        .unwrap();
        let spec: ModbusModule = serde_json::from_value(serde_json::json!({
            "class": "Readable",
            "parameter": [
                {"name": "value", "datainfo": {"type": "double"}, "table": "holding",
                 "address": 0, "type": "f64"},
                {"name": "_word", "datainfo": {"type": "int", "min": 0, "max": 65535},
                 "table": "input", "address": 4, "type": "u16"},
                {"name": "_bit", "datainfo": {"type": "bool"}, "table": "input",
                 "address": 9, "type": "u16", "bit": 3},
                {"name": "_flag", "datainfo": {"type": "bool"}, "table": "coil",
                 "address": 10, "type": "bool"},
            ]
        }))
        .unwrap();
        let config = ModuleConfig {
            name: "m".into(),
            description: None,
            properties: serde_json::Map::new(),
            settings: Value::Null,
        };
        build(&link.parts(), None, &[(config, spec)]).unwrap()
    }

    /// A device that answers with fewer registers (or coils) than asked for gets a
    /// `CommunicationFailed`, never a panic (slice out of range, tokio-modbus's
    /// debug_assert on the length).
    #[actix_rt::test]
    async fn short_replies_are_errors() {
        // (registers in each reply, parameter, expected error)
        let cases = [
            (0u8, "value", Some("too short")),
            (0, "_word", Some("too short")),
            (0, "_bit", Some("too short")),
            (0, "_flag", Some("too short")),
            (1, "value", Some("too short")),
            (1, "_word", None),
            (1, "_bit", None),
            (1, "_flag", None),
            (3, "value", Some("too short")),
            (3, "_word", Some("too long")),
            (3, "_flag", None), // 24 coils for 1: the rest of the byte is cut off
        ];
        for registers in [0u8, 1, 3] {
            let mut b = backend(short_replying_server(registers).await);
            for (_, parameter, expected) in cases.iter().filter(|c| c.0 == registers) {
                let result = b.read("m", parameter).await;
                let Some(expected) = expected else {
                    assert!(result.is_ok(), "{registers} {parameter}: {result:?}");
                    continue;
                };
                let e = result.expect_err(parameter);
                assert_eq!(
                    e.class,
                    secop_proto::ErrorClass::CommunicationFailed,
                    "{registers} {parameter}: {e}"
                );
                assert!(e.text.contains(expected), "{e}");
            }
            // A whole poll cycle over the coalesced blocks, too.
            let items = b.poll_items();
            for item in 0..items {
                for (_, name, value) in b.poll(item).await {
                    if registers == 0 && name != "status" && name != "pollinterval" {
                        assert!(value.is_err(), "{name}");
                    }
                }
            }
        }
    }

    /// Slicing a member out of a block checks the length first.
    #[test]
    fn member_registers_are_length_checked() {
        assert_eq!(member_registers(&[1, 2, 3], 10, 11, 2), Ok(&[2u16, 3][..]));
        for (regs, start, address, count) in [
            (&[][..], 0u16, 0u16, 1u16),
            (&[1u16][..], 0, 0, 2),
            (&[1, 2, 3][..], 10, 12, 2),
            (&[1, 2, 3][..], 10, 9, 1),
            (&[1, 2, 3][..], 0, 65535, 4),
        ] {
            let e = member_registers(regs, start, address, count).unwrap_err();
            assert!(e.to_string().starts_with("reply too short: "), "{e}");
        }
    }
}
