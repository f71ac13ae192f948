//! The fit between what an instrument speaks and what a parameter declares: its
//! `datainfo` against the register type, the reply text and the write template
//! (issue 14, points 5 and 6).
//!
//! Three jobs, shared by the ASCII and Modbus backends:
//!
//! * **Config checks** ([`check_ascii_parameter`], [`check_ascii_command`],
//!   [`check_modbus_parameter`], [`check_modbus_command`]): `check-config` refuses a
//!   datainfo that the instrument side cannot deliver or take, naming the key
//!   (`parameter[2] ("_count").datainfo: int max 100000 does not fit a u16 register
//!   (0 ..= 65535)`). The refusals:
//!   - ASCII and Modbus: `scale`/`offset` other than 1/0 on a datainfo that is not
//!     `double` (they were silently ignored); `deadband` on a datainfo that is not a
//!     number (`double`, `int`, `scaled`).
//!   - ASCII: a `write` (or command `send`) template whose format does not fit the
//!     datainfo (of the parameter, or of the command's argument): `{value:.Nf}` and
//!     `{value:.Ne}` only for `double` and `scaled`; `{value:d}` and `{value:x}` for
//!     `int`, `enum` and `bool`, for a `double` only with `scale`/`offset` (the raw
//!     value is then meant to be rounded), for a `scaled` only with a whole-number
//!     scale; `string`, `blob` and the structured types only with a plain `{value}`.
//!     A command `result` without a `reply` pattern (the result could never arrive).
//!   - Modbus: a bool register (`type = "bool"`, coils, discrete inputs, `bit`) needs
//!     a `bool` datainfo; a `bool` datainfo needs a bool or integer register (not a
//!     float or string one); `int` and `scaled` whose min/max exceed the integer
//!     register's range (negative min on `u16`/`u32`/`u64`, max 100000 on `u16`);
//!     `scaled` on a float register (the wire value of `scaled` is the register's
//!     integer); `enum` on a float or string register, or with a member the
//!     register cannot hold; `string` only on `string` registers, with a `maxchars`
//!     (required) of at most 2 × `length` and without `isUTF8` (register strings
//!     are ASCII); a number datainfo on a `string` register; `blob`, `array`,
//!     `tuple`, `struct` and `matrix` on any register. Commands: the same for the
//!     `argument` datainfo; a fixed `value` that its register cannot hold; `value`
//!     and `argument` together (the argument would be ignored).
//!   - An `int` on a float register is accepted (integers beyond 2^24 lose
//!     exactness in an `f32`); an `int` range narrower than the register is fine
//!     (values outside it are caught when read, below).
//!
//! * **Device values** ([`device_value`], [`register_value`]): every value read from
//!   an instrument is validated against its datainfo before it leaves the gateway. A
//!   number outside min/max is an `OutOfRange` error (the spec's class for "the value
//!   read from the hardware is out of sensor or calibration range"; retryable: the
//!   next poll may be fine); anything else that does not fit (not an enum member, a
//!   string too long or not ASCII where `isUTF8` is false, wrong JSON shape) is a
//!   `HardwareError`. The text is ASCII only and names the instrument's raw reply
//!   (cut after [`QUOTE_MAX`] characters) and the reason:
//!   `value: reply "480.96" is above max 100`.
//!
//! * **Conversions** ([`convert`], [`command_result`], [`instrument_value`]): reply
//!   text into a value of the datainfo, and a client's value into what the
//!   instrument gets. `scaled` on an ASCII link is the **physical** number both ways:
//!   a reply `4.25` with `scale = 0.01` is the wire integer 425 (rounded to the
//!   nearest step), and 425 is written as `4.25`. Instruments print physical numbers,
//!   and that is what a user reads on the front panel and writes in a template; the
//!   integer is a detail of the SECoP wire form. On Modbus the register's integer is
//!   the wire integer (a PLC register in 0.01 units is exactly a `scaled` with
//!   `scale = 0.01`).

use crate::ascii::line_safety::Quoted;
use crate::ascii::template::{Format, Template};
use crate::ascii::{AsciiCommand, AsciiParameter};
use crate::modbus::codec::{self, Order, RegType};
use crate::modbus::{ModbusCommand, ModbusParameter};
use crate::ConfigError;
use secop_proto::{DataInfo, Kind, SecopError};
use serde_json::Value;
use std::fmt;

/// Characters of instrument text quoted in an error; longer replies are cut (`...`).
pub const QUOTE_MAX: usize = 80;

/// Registers shown in an error; more are cut (`...`).
const REGISTERS_SHOWN: usize = 8;

// ---------------------------------------------------------------------------------
// Device values
// ---------------------------------------------------------------------------------

/// Instrument text for an error: quoted in ASCII, cut after [`QUOTE_MAX`] characters.
struct Raw<'a>(&'a str);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTE_MAX) {
            Some((end, _)) => write!(f, "{}...", Quoted(&self.0[..end])),
            None => write!(f, "{}", Quoted(self.0)),
        }
    }
}

/// Where a device value came from, for error texts.
enum Source<'a> {
    Reply(&'a str),
    Registers(&'a [u16]),
}

/// `text` with every character outside printable ASCII escaped (`\u{e9}`): error
/// texts may quote what the device sent, and clients drop non-ASCII messages.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' '..='~' => out.push(c),
            c => out.extend(c.escape_default()),
        }
    }
    out
}

/// A number for a message: `100`, `0.5`, `1e300`.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:?}")
    }
}

/// Decimals needed to write `scale` exactly (0.01 → 2, 0.25 → 2, 10 → 0).
fn decimals(scale: f64) -> usize {
    (0..=17)
        .find(|d| format!("{scale:.*}", d).parse::<f64>() == Ok(scale))
        .unwrap_or(17)
}

/// The physical value of the wire integer `n` of a `scaled`: n × scale, rounded to the
/// decimals of the scale (3 × 0.1 is 0.3, not 0.30000000000000004).
fn physical(n: f64, scale: f64) -> f64 {
    let x = n * scale;
    format!("{x:.*}", decimals(scale)).parse().unwrap_or(x)
}

/// An integer value as i128 (covers i64 and u64; a float with no fraction counts).
fn integer(value: &Value) -> Option<i128> {
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
        .or_else(|| {
            value
                .as_f64()
                .filter(|x| x.fract() == 0.0 && x.abs() < 1e38)
                .map(|x| x as i128)
        })
}

/// The number a value stands for, in physical units (a `scaled` multiplied out).
fn physical_number(datainfo: &DataInfo, value: &Value) -> Option<f64> {
    match &datainfo.kind {
        Kind::Scaled { scale, .. } => value.as_f64().map(|n| physical(n, *scale)),
        _ => value.as_f64(),
    }
}

/// Why a number is outside its datainfo's min/max, if it is.
fn out_of_range(datainfo: &DataInfo, value: &Value) -> Option<String> {
    let (below, above) = match &datainfo.kind {
        Kind::Double { min, max } => {
            let x = value.as_f64()?;
            (
                min.filter(|m| x < *m).map(num),
                max.filter(|m| x > *m).map(num),
            )
        }
        Kind::Int { min, max } => {
            let n = integer(value)?;
            (
                (n < i128::from(*min)).then(|| min.to_string()),
                (n > i128::from(*max)).then(|| max.to_string()),
            )
        }
        Kind::Scaled { scale, min, max } => {
            let n = integer(value)?;
            let show = |m: i64| num(physical(m as f64, *scale));
            (
                (n < i128::from(*min)).then(|| show(*min)),
                (n > i128::from(*max)).then(|| show(*max)),
            )
        }
        _ => return None,
    };
    match (below, above) {
        (Some(min), _) => Some(format!("is below min {min}")),
        (_, Some(max)) => Some(format!("is above max {max}")),
        _ => None,
    }
}

/// `reply "T=4.8 K" (= 4.8)` or `registers [0x01E0] (= 480)`: what the device sent,
/// with the value it gave where that is not plain from the text.
fn phrase(datainfo: &DataInfo, value: &Value, source: &Source) -> String {
    match source {
        Source::Reply(raw) => {
            let x = physical_number(datainfo, value);
            match x {
                Some(x) if raw.trim().parse::<f64>().ok() != Some(x) => {
                    format!("reply {} (= {})", Raw(raw), num(x))
                }
                _ => format!("reply {}", Raw(raw)),
            }
        }
        Source::Registers(regs) => {
            let mut words: Vec<String> = regs
                .iter()
                .take(REGISTERS_SHOWN)
                .map(|r| format!("0x{r:04X}"))
                .collect();
            if regs.len() > REGISTERS_SHOWN {
                words.push("...".into());
            }
            let shown = match (physical_number(datainfo, value), value) {
                (Some(x), _) => num(x),
                (None, Value::String(s)) => Raw(s).to_string(),
                (None, other) => Raw(&other.to_string()).to_string(),
            };
            format!("registers [{}] (= {shown})", words.join(" "))
        }
    }
}

fn checked(datainfo: &DataInfo, value: Value, source: &Source) -> Result<Value, SecopError> {
    if let Some(reason) = out_of_range(datainfo, &value) {
        let text = format!("{} {reason}", phrase(datainfo, &value, source));
        return Err(SecopError::out_of_range(ascii(&text)));
    }
    datainfo.validate(&value).map_err(|e| {
        let text = format!("{}: {}", phrase(datainfo, &value, source), e.text);
        SecopError::hardware(ascii(&text))
    })
}

/// A value converted from the instrument's reply `raw`, validated against its
/// datainfo and returned in canonical wire form. A number outside min/max is
/// `OutOfRange`, any other misfit `HardwareError`; the text is ASCII and names `raw`
/// (`reply "480.96" is above max 100`). Callers prefix the parameter name with
/// [`SecopError::context`].
pub fn device_value(datainfo: &DataInfo, value: Value, raw: &str) -> Result<Value, SecopError> {
    checked(datainfo, value, &Source::Reply(raw))
}

/// [`device_value`] for a value decoded from Modbus registers; the text names them
/// (`registers [0x01F4] (= 500) is above max 100`).
pub fn register_value(
    datainfo: &DataInfo,
    value: Value,
    registers: &[u16],
) -> Result<Value, SecopError> {
    checked(datainfo, value, &Source::Registers(registers))
}

// ---------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------

/// Why reply text is not a value of the datainfo's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// `expected` is e.g. "a number".
    #[error("{} is not {expected}", Raw(text))]
    Not {
        text: String,
        expected: &'static str,
    },
    #[error("{} is not JSON: {reason}", Raw(text))]
    NotJson { text: String, reason: String },
    #[error(
        "{} has {got} comma-separated items, the tuple has {expected} members",
        Raw(text)
    )]
    Count {
        text: String,
        expected: usize,
        got: usize,
    },
}

/// A whole number as an i64 JSON value, if it is one.
fn whole(x: f64) -> Option<Value> {
    (x.is_finite()
        && x.fract() == 0.0
        && (-9.223372036854776e18..9.223372036854776e18).contains(&x))
    .then(|| Value::from(x as i64))
}

/// Types whose reply is one token (they can be items of a comma-separated list).
fn is_scalar(datainfo: &DataInfo) -> bool {
    matches!(
        datainfo.kind,
        Kind::Double { .. }
            | Kind::Scaled { .. }
            | Kind::Int { .. }
            | Kind::Bool
            | Kind::Enum { .. }
            | Kind::String { .. }
    )
}

fn json(text: &str) -> Result<Value, ConvertError> {
    serde_json::from_str(text).map_err(|e| ConvertError::NotJson {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// The comma-separated items of a list reply (none for an empty reply).
fn items(text: &str) -> Vec<&str> {
    if text.trim().is_empty() {
        Vec::new()
    } else {
        text.split(',').map(str::trim).collect()
    }
}

/// Reply text (already cut out by the reply pattern and trimmed) as a value of
/// `datainfo`, not yet validated (see [`device_value`]):
///
/// * `double`: a number; value = number × `scale` + `offset`.
/// * `scaled`: the physical number; the wire integer is number / scale, rounded.
/// * `int`: an integer (`12`, `12.0`, `1.2e1`).
/// * `bool`: `1`/`0`, `on`/`off`, `true`/`false`, `yes`/`no` (any case).
/// * `enum`: a member's number or name (any case).
/// * `string`: the text; `blob`: the text as base64 (the SECoP wire form).
/// * `array`, `tuple`: JSON (`[1, 2]`), or comma-separated items (`1.5,2,3`) when
///   the members are of the types above.
/// * `struct`, `matrix`: JSON in SECoP wire form.
pub fn convert(
    datainfo: &DataInfo,
    text: &str,
    scale: f64,
    offset: f64,
) -> Result<Value, ConvertError> {
    let not = |expected| ConvertError::Not {
        text: text.to_owned(),
        expected,
    };
    let number = || text.parse::<f64>().map_err(|_| not("a number"));
    match &datainfo.kind {
        Kind::Double { .. } => {
            let x = number()? * scale + offset;
            secop_proto::json::number(x).ok_or_else(|| not("a finite number"))
        }
        Kind::Scaled { scale, .. } => {
            whole((number()? / scale).round()).ok_or_else(|| not("a finite number"))
        }
        Kind::Int { .. } => {
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Value::from(n));
            }
            whole(number()?).ok_or_else(|| not("an integer"))
        }
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Ok(Value::Bool(true)),
            "0" | "false" | "off" | "no" => Ok(Value::Bool(false)),
            _ => Err(not("a bool (1/0, on/off, true/false)")),
        },
        Kind::Enum { members } => {
            if let Ok(n) = text.parse::<i64>() {
                if members.iter().any(|(_, v)| *v == n) {
                    return Ok(Value::from(n));
                }
            }
            members
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(text))
                .map(|(_, v)| Value::from(*v))
                .ok_or_else(|| not("a member of the enum"))
        }
        Kind::String { .. } | Kind::Blob { .. } => Ok(Value::from(text)),
        Kind::Array { members, .. } if !text.starts_with('[') && is_scalar(members) => items(text)
            .into_iter()
            .map(|item| convert(members, item, 1.0, 0.0))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Kind::Tuple { members } if !text.starts_with('[') && members.iter().all(is_scalar) => {
            let items = items(text);
            if items.len() != members.len() {
                return Err(ConvertError::Count {
                    text: text.to_owned(),
                    expected: members.len(),
                    got: items.len(),
                });
            }
            items
                .into_iter()
                .zip(members)
                .map(|(item, member)| convert(member, item, 1.0, 0.0))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        _ => json(text),
    }
}

/// The result of an ASCII command from the text its reply pattern cut out: `null`
/// without a `result` datainfo (the reply only confirms), else the text converted
/// like a parameter reply ([`convert`]) and validated ([`device_value`]). Errors are
/// `HardwareError` (or `OutOfRange`) naming the text.
pub fn command_result(result: Option<&DataInfo>, text: &str) -> Result<Value, SecopError> {
    let Some(datainfo) = result else {
        return Ok(Value::Null);
    };
    let text = text.trim();
    let value = convert(datainfo, text, 1.0, 0.0)
        .map_err(|e| SecopError::hardware(ascii(&format!("reply {e}"))))?;
    device_value(datainfo, value, text)
}

/// What the instrument gets for a client's (validated, wire-form) value: a `double`
/// with `scale`/`offset` as raw = (value − offset) / scale, a `scaled` as its physical
/// number (425 with scale 0.01 → 4.25), everything else as it is.
pub fn instrument_value(datainfo: &DataInfo, scale: f64, offset: f64, value: &Value) -> Value {
    match (&datainfo.kind, value.as_f64()) {
        (Kind::Double { .. }, Some(x)) if scale != 1.0 || offset != 0.0 => {
            secop_proto::json::number((x - offset) / scale).unwrap_or(Value::Null)
        }
        (Kind::Scaled { scale, .. }, Some(n)) => {
            secop_proto::json::number(physical(n, *scale)).unwrap_or(Value::Null)
        }
        _ => value.clone(),
    }
}

/// The datainfos of an ASCII command, parsed when the config is loaded.
#[derive(Debug, Clone, Default)]
pub struct CommandTypes {
    pub argument: Option<DataInfo>,
    pub result: Option<DataInfo>,
}

impl CommandTypes {
    /// The argument as the `send` template gets it ([`instrument_value`]).
    pub fn instrument_argument(&self, argument: Value) -> Value {
        match &self.argument {
            Some(datainfo) => instrument_value(datainfo, 1.0, 0.0, &argument),
            None => argument,
        }
    }

    /// The command's result from its reply text ([`command_result`]).
    pub fn result(&self, text: &str) -> Result<Value, SecopError> {
        command_result(self.result.as_ref(), text)
    }
}

// ---------------------------------------------------------------------------------
// Config checks
// ---------------------------------------------------------------------------------

/// Why a datainfo does not fit its instrument; `check-config` shows it under the
/// offending key ([`ConfigError::Misfit`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Misfit {
    /// `scale` or `offset` (`name`) on a datainfo that is not a double.
    #[error("{name} = {} applies to double datainfos only, this one is {type_name:?}{}", num(*value), if *scaled { " (a scaled datainfo has its own scale)" } else { "" })]
    NotDouble {
        name: &'static str,
        value: f64,
        type_name: String,
        scaled: bool,
    },
    #[error("a deadband applies to numbers (double, int, scaled), the datainfo is {type_name:?}")]
    DeadbandNotNumber { type_name: String },
    #[error("{placeholder} writes a floating-point number, the datainfo is {type_name:?} (use {{value}} or {{value:d}})")]
    FloatFormat {
        placeholder: String,
        type_name: String,
    },
    #[error("{placeholder} formats a number, the datainfo is {type_name:?} (use {{value}})")]
    NumberFormat {
        placeholder: String,
        type_name: String,
    },
    #[error("{placeholder} rounds a double to an integer; declare an int datainfo, or give scale/offset that make the raw value an integer")]
    RoundsDouble { placeholder: String },
    #[error("{placeholder} rounds the physical value of a scaled datainfo (scale {}) to an integer; use {{value:.{decimals}f}}", num(*scale))]
    RoundsScaled {
        placeholder: String,
        scale: f64,
        decimals: usize,
    },
    #[error("the result is read from the reply, but no reply pattern is given (e.g. reply = \"^(.*)$\")")]
    ResultWithoutReply,
    /// A min, max or enum member (`what`) outside the register's range.
    #[error("{type_name} {what} {n} does not fit {register} ({lo} ..= {hi})")]
    OutsideRegister {
        type_name: String,
        what: String,
        n: i64,
        register: String,
        lo: i128,
        hi: i128,
    },
    #[error("a bool datainfo needs a bool or integer register (non-zero is true), not {register}")]
    BoolOnRegister { register: String },
    #[error("{register} gives true or false: declare datainfo = {{ type = \"bool\" }}, not {type_name:?}")]
    BoolRegister { register: String, type_name: String },
    #[error("{register} holds text, not {}", a(type_name))]
    TextRegister { register: String, type_name: String },
    #[error("the wire value of a scaled datainfo is the register's integer, {register} holds a float: declare a double (with scale/offset if needed)")]
    ScaledOnFloat { register: String },
    #[error("an enum needs an integer register, not {register}")]
    EnumOnFloat { register: String },
    #[error("a string datainfo needs type = \"string\" registers (with length), not {register}")]
    StringOnNumber { register: String },
    #[error("give maxchars (at most {}: {length} registers of 2 characters), so that clients know the limit", usize::from(*length) * 2)]
    NoMaxchars { length: u16 },
    #[error("maxchars {maxchars} is more than the {} characters {length} registers hold", usize::from(*length) * 2)]
    MaxcharsTooLarge { maxchars: usize, length: u16 },
    #[error("register strings are ASCII: drop isUTF8")]
    Utf8Register,
    #[error("a register holds one number, bool or string, not {}", a(type_name))]
    NotScalar { type_name: String },
    #[error("give either a value (written as is) or an argument, not both: the argument would be ignored")]
    ValueAndArgument,
    #[error("{value} does not fit {register}")]
    ValueDoesNotFit { value: Value, register: String },
}

fn type_name(datainfo: &DataInfo) -> String {
    datainfo
        .to_json()
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// `misfit` at `key.sub`.
fn refuse(key: &str, sub: &str, misfit: Misfit) -> ConfigError {
    ConfigError::at(format!("{key}.{sub}"), misfit)
}

/// `scale`, `offset` and `deadband` against the datainfo (both link protocols).
fn check_number_keys(
    datainfo: &DataInfo,
    scale: f64,
    offset: f64,
    deadband: f64,
    key: &str,
) -> Result<(), ConfigError> {
    if !matches!(datainfo.kind, Kind::Double { .. }) {
        for (name, value, default) in [("scale", scale, 1.0), ("offset", offset, 0.0)] {
            if value != default {
                let misfit = Misfit::NotDouble {
                    name,
                    value,
                    type_name: type_name(datainfo),
                    scaled: matches!(datainfo.kind, Kind::Scaled { .. }),
                };
                return Err(refuse(key, name, misfit));
            }
        }
    }
    if deadband != 0.0 && !datainfo.is_numeric() {
        let misfit = Misfit::DeadbandNotNumber {
            type_name: type_name(datainfo),
        };
        return Err(refuse(key, "deadband", misfit));
    }
    Ok(())
}

/// The placeholder as written in a template: `{value:.3f}`.
fn placeholder(format: &Format) -> String {
    match format {
        Format::Plain => "{value}".into(),
        Format::Fixed(n) => format!("{{value:.{n}f}}"),
        Format::Exponent(n) => format!("{{value:.{n}e}}"),
        Format::Integer => "{value:d}".into(),
        Format::Hex => "{value:x}".into(),
    }
}

/// Whether a template placeholder fits the datainfo of the value it formats; `raw`
/// says the value is first turned into a raw value by `scale`/`offset`.
fn format_fits(datainfo: &DataInfo, format: &Format, raw: bool) -> Result<(), Misfit> {
    let float = matches!(format, Format::Fixed(_) | Format::Exponent(_));
    let integer = matches!(format, Format::Integer | Format::Hex);
    let placeholder = placeholder(format);
    match &datainfo.kind {
        _ if !float && !integer => Ok(()),
        Kind::Double { .. } if float || raw => Ok(()),
        Kind::Double { .. } => Err(Misfit::RoundsDouble { placeholder }),
        Kind::Scaled { scale, .. } if float || scale.fract() == 0.0 => Ok(()),
        Kind::Scaled { scale, .. } => Err(Misfit::RoundsScaled {
            placeholder,
            scale: *scale,
            decimals: decimals(*scale),
        }),
        Kind::Int { .. } | Kind::Enum { .. } | Kind::Bool if integer => Ok(()),
        Kind::Int { .. } | Kind::Enum { .. } | Kind::Bool => Err(Misfit::FloatFormat {
            placeholder,
            type_name: type_name(datainfo),
        }),
        _ => Err(Misfit::NumberFormat {
            placeholder,
            type_name: type_name(datainfo),
        }),
    }
}

/// Refuses an ASCII parameter whose `scale`, `offset`, `deadband` or `write` template
/// does not fit its datainfo. `key` is the parameter's (`parameter[2] ("_x")`).
pub fn check_ascii_parameter(
    parameter: &AsciiParameter,
    datainfo: &DataInfo,
    write: Option<&Template>,
    key: &str,
) -> Result<(), ConfigError> {
    check_number_keys(
        datainfo,
        parameter.scale,
        parameter.offset,
        parameter.deadband,
        key,
    )?;
    let raw = parameter.scale != 1.0 || parameter.offset != 0.0;
    for format in write.into_iter().flat_map(Template::value_formats) {
        format_fits(datainfo, format, raw).map_err(|m| refuse(key, "write", m))?;
    }
    Ok(())
}

/// Refuses an ASCII command whose `send` template does not fit its argument, or whose
/// result could never be read; returns its datainfos. `key` is the command's.
pub fn check_ascii_command(
    command: &AsciiCommand,
    send: &Template,
    key: &str,
) -> Result<CommandTypes, ConfigError> {
    let parse = |json: &Option<Value>, sub: &str| {
        json.as_ref()
            .map(DataInfo::from_json)
            .transpose()
            .map_err(|e| ConfigError::at(format!("{key}.{sub}"), e))
    };
    let types = CommandTypes {
        argument: parse(&command.argument, "argument")?,
        result: parse(&command.result, "result")?,
    };
    if let Some(argument) = &types.argument {
        for format in send.value_formats() {
            format_fits(argument, format, false).map_err(|m| refuse(key, "send", m))?;
        }
    }
    if types.result.is_some() && command.reply.is_none() {
        return Err(refuse(key, "result", Misfit::ResultWithoutReply));
    }
    Ok(types)
}

/// The range of an integer register type.
fn register_range(kind: RegType) -> Option<(i128, i128)> {
    Some(match kind {
        RegType::U16 => (0, i128::from(u16::MAX)),
        RegType::I16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        RegType::U32 => (0, i128::from(u32::MAX)),
        RegType::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        RegType::U64 => (0, i128::from(u64::MAX)),
        RegType::I64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
        RegType::Bool | RegType::F32 | RegType::F64 | RegType::Str(_) => return None,
    })
}

/// `word` with its indefinite article: "an int", "an f32 register", "a u16 register".
fn a(word: &str) -> String {
    let vowel =
        word.starts_with(['a', 'e', 'i', 'o']) || word.starts_with("f3") || word.starts_with("f6");
    format!("{} {word}", if vowel { "an" } else { "a" })
}

/// The register type with its article: "a u16 register", "a string of 4 registers".
fn register_name(kind: RegType) -> String {
    let name = match kind {
        RegType::Bool => "bool",
        RegType::U16 => "u16",
        RegType::I16 => "i16",
        RegType::U32 => "u32",
        RegType::I32 => "i32",
        RegType::U64 => "u64",
        RegType::I64 => "i64",
        RegType::F32 => "f32",
        RegType::F64 => "f64",
        RegType::Str(n) => return format!("a string of {n} registers"),
    };
    a(&format!("{name} register"))
}

/// Whether a datainfo fits a register type (`bit`: one bit of it, a bool).
fn register_fit(datainfo: &DataInfo, kind: RegType, bit: bool) -> Result<(), Misfit> {
    let register = if bit {
        "a bit".to_owned()
    } else {
        register_name(kind)
    };
    let range = register_range(kind);
    let is_float = matches!(kind, RegType::F32 | RegType::F64);
    let is_bool = bit || kind == RegType::Bool;
    let fits = |what: &str, n: i64| match range {
        Some((lo, hi)) if !(lo..=hi).contains(&i128::from(n)) => Err(Misfit::OutsideRegister {
            type_name: type_name(datainfo),
            what: what.to_owned(),
            n,
            register: register.clone(),
            lo,
            hi,
        }),
        _ => Ok(()),
    };
    match &datainfo.kind {
        Kind::Bool if is_bool || range.is_some() => Ok(()),
        Kind::Bool => Err(Misfit::BoolOnRegister { register }),
        _ if is_bool => Err(Misfit::BoolRegister {
            register,
            type_name: type_name(datainfo),
        }),
        Kind::Double { .. } | Kind::Int { .. } | Kind::Scaled { .. } | Kind::Enum { .. }
            if matches!(kind, RegType::Str(_)) =>
        {
            Err(Misfit::TextRegister {
                register,
                type_name: type_name(datainfo),
            })
        }
        Kind::Double { .. } => Ok(()),
        Kind::Int { min, max } => fits("min", *min).and_then(|_| fits("max", *max)),
        Kind::Scaled { .. } if is_float => Err(Misfit::ScaledOnFloat { register }),
        Kind::Scaled { min, max, .. } => fits("min", *min).and_then(|_| fits("max", *max)),
        Kind::Enum { .. } if is_float => Err(Misfit::EnumOnFloat { register }),
        Kind::Enum { members } => members
            .iter()
            .try_for_each(|(name, n)| fits(&format!("member {name:?} ="), *n)),
        Kind::String {
            maxchars, is_utf8, ..
        } => {
            let RegType::Str(length) = kind else {
                return Err(Misfit::StringOnNumber { register });
            };
            match maxchars {
                None => Err(Misfit::NoMaxchars { length }),
                Some(m) if *m > usize::from(length) * 2 => Err(Misfit::MaxcharsTooLarge {
                    maxchars: *m,
                    length,
                }),
                _ if *is_utf8 => Err(Misfit::Utf8Register),
                _ => Ok(()),
            }
        }
        _ => Err(Misfit::NotScalar {
            type_name: type_name(datainfo),
        }),
    }
}

/// Refuses a Modbus parameter whose datainfo does not fit its register type, or whose
/// `scale`, `offset` or `deadband` does not fit the datainfo. `key` is the
/// parameter's.
pub fn check_modbus_parameter(
    parameter: &ModbusParameter,
    datainfo: &DataInfo,
    kind: RegType,
    key: &str,
) -> Result<(), ConfigError> {
    register_fit(datainfo, kind, parameter.bit.is_some())
        .map_err(|m| refuse(key, "datainfo", m))?;
    check_number_keys(
        datainfo,
        parameter.scale,
        parameter.offset,
        parameter.deadband,
        key,
    )
}

/// Refuses a Modbus command whose argument datainfo or fixed value does not fit its
/// register (`bits`: a coil), or that has both. `key` is the command's.
pub fn check_modbus_command(
    command: &ModbusCommand,
    kind: RegType,
    bits: bool,
    key: &str,
) -> Result<(), ConfigError> {
    let kind = if bits { RegType::Bool } else { kind };
    if command.value.is_some() && command.argument.is_some() {
        return Err(ConfigError::at(key, Misfit::ValueAndArgument));
    }
    if let Some(json) = &command.argument {
        let datainfo =
            DataInfo::from_json(json).map_err(|e| ConfigError::at(format!("{key}.argument"), e))?;
        register_fit(&datainfo, kind, false).map_err(|m| refuse(key, "argument", m))?;
    }
    if let Some(value) = &command.value {
        let order = Order {
            big_words: true,
            big_bytes: true,
        };
        let fits = match kind {
            RegType::Bool => value.is_boolean() || value.is_number(),
            _ => codec::encode(value, kind, order).is_ok(),
        };
        if !fits {
            let misfit = Misfit::ValueDoesNotFit {
                value: value.clone(),
                register: register_name(kind),
            };
            return Err(refuse(key, "value", misfit));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ascii::AsciiModule;
    use crate::link::LinkConfig;
    use crate::modbus::ModbusModule;
    use crate::ModuleConfig;
    use secop_proto::ErrorClass;
    use serde_json::json;

    fn di(json: Value) -> DataInfo {
        DataInfo::from_json(&json).expect("datainfo")
    }

    // --- device values --------------------------------------------------------

    #[test]
    fn numbers_outside_the_declared_range_are_out_of_range() {
        let d = di(json!({"type": "double", "min": 0, "max": 100}));
        let e = device_value(&d, json!(480.96), "480.96").unwrap_err();
        assert_eq!(e.class, ErrorClass::OutOfRange);
        assert_eq!(e.text, "reply \"480.96\" is above max 100");
        assert_eq!(
            e.context("value").text,
            "value: reply \"480.96\" is above max 100"
        );
        let e = device_value(&d, json!(-0.5), "T=-0.5 K").unwrap_err();
        assert_eq!(e.text, "reply \"T=-0.5 K\" (= -0.5) is below min 0");
        // The value after scale/offset is named when it differs from the text.
        let e = device_value(&d, json!(480.96), "4809.6").unwrap_err();
        assert_eq!(e.text, "reply \"4809.6\" (= 480.96) is above max 100");
        let i = di(json!({"type": "int", "min": -5, "max": 5}));
        let e = device_value(&i, json!(6), "6").unwrap_err();
        assert_eq!(
            (e.class, e.text.as_str()),
            (ErrorClass::OutOfRange, "reply \"6\" is above max 5")
        );
        let s = di(json!({"type": "scaled", "scale": 0.01, "min": 0, "max": 100}));
        let e = device_value(&s, json!(480), "4.8").unwrap_err();
        assert_eq!(e.text, "reply \"4.8\" is above max 1");
        // In range: the canonical wire form comes back.
        assert_eq!(device_value(&d, json!(50.5), "50.5"), Ok(json!(50.5)));
        assert_eq!(device_value(&i, json!(5.0), "5.0"), Ok(json!(5)));
        let e = device_value(&i, json!(u64::MAX), "18446744073709551615").unwrap_err();
        assert_eq!(e.class, ErrorClass::OutOfRange, "{e}");
    }

    #[test]
    fn other_misfits_are_hardware_errors_in_ascii() {
        let ascii_only = di(json!({"type": "string"}));
        let e = device_value(&ascii_only, json!("café"), "café").unwrap_err();
        assert_eq!(e.class, ErrorClass::HardwareError);
        assert!(e.text.is_ascii(), "{e}");
        assert!(
            e.text.starts_with("reply \"caf\\u{e9}\": ") && e.text.contains("7-bit ASCII"),
            "{e}"
        );
        let utf8 = di(json!({"type": "string", "isUTF8": true}));
        assert_eq!(
            device_value(&utf8, json!("café"), "café"),
            Ok(json!("café"))
        );
        let short = di(json!({"type": "string", "maxchars": 3}));
        let e = device_value(&short, json!("abcd"), "abcd").unwrap_err();
        assert_eq!(e.class, ErrorClass::HardwareError);
        assert!(e.text.contains("4 characters, allowed 0..3"), "{e}");
        let en = di(json!({"type": "enum", "members": {"off": 0, "on": 1}}));
        let e = register_value(&en, json!(7), &[7]).unwrap_err();
        assert_eq!(e.class, ErrorClass::HardwareError);
        assert!(
            e.text
                .starts_with("registers [0x0007] (= 7): 7 is not a member"),
            "{e}"
        );
        // A non-ASCII name in a structured reply is escaped, too.
        let st =
            di(json!({"type": "struct", "members": {"a": {"type": "int", "min": 0, "max": 1}}}));
        let e = device_value(&st, json!({"ä": 1}), "{\"ä\": 1}").unwrap_err();
        assert!(e.text.is_ascii(), "{e}");
    }

    #[test]
    fn registers_are_named_and_long_replies_cut() {
        let d = di(json!({"type": "int", "min": 0, "max": 100}));
        let e = register_value(&d, json!(500), &[0x01F4]).unwrap_err();
        assert_eq!(e.class, ErrorClass::OutOfRange);
        assert_eq!(e.text, "registers [0x01F4] (= 500) is above max 100");
        let s = di(json!({"type": "string", "maxchars": 2}));
        let e = register_value(&s, json!("ABCD"), &[0x4142, 0x4344]).unwrap_err();
        assert!(
            e.text
                .starts_with("registers [0x4142 0x4344] (= \"ABCD\"): "),
            "{e}"
        );
        let many = [0u16; 20];
        let e = register_value(&d, json!(500), &many).unwrap_err();
        assert!(e.text.contains("0x0000 ...] (= 500)"), "{e}");
        let long = "9".repeat(500);
        let e = device_value(&d, json!(500), &long).unwrap_err();
        assert!(e.text.len() < 150, "{e}");
        assert!(
            e.text
                .contains(&format!("\"{}\"...", "9".repeat(QUOTE_MAX))),
            "{e}"
        );
    }

    // --- conversions ----------------------------------------------------------

    #[test]
    fn scalar_replies() {
        let d = di(json!({"type": "double"}));
        assert_eq!(convert(&d, "+1.5E+1", 2.0, 1.0), Ok(json!(31.0)));
        assert!(convert(&d, "inf", 1.0, 0.0).is_err());
        let i = di(json!({"type": "int", "min": -10, "max": 10000}));
        assert_eq!(convert(&i, "12", 1.0, 0.0), Ok(json!(12)));
        assert_eq!(convert(&i, "12.0", 1.0, 0.0), Ok(json!(12)));
        assert_eq!(convert(&i, "1e3", 1.0, 0.0), Ok(json!(1000)));
        assert_eq!(
            convert(&i, "12.5", 1.0, 0.0).unwrap_err().to_string(),
            "\"12.5\" is not an integer"
        );
        assert!(convert(&i, "1e300", 1.0, 0.0).is_err());
        let b = di(json!({"type": "bool"}));
        assert_eq!(convert(&b, "ON", 1.0, 0.0), Ok(json!(true)));
        let en = di(json!({"type": "enum", "members": {"off": 0, "on": 1}}));
        assert_eq!(convert(&en, "on", 1.0, 0.0), Ok(json!(1)));
        assert_eq!(convert(&en, "0", 1.0, 0.0), Ok(json!(0)));
        assert!(convert(&en, "2", 1.0, 0.0).is_err());
    }

    /// A scaled reply is the physical number; the wire value is its integer.
    #[test]
    fn scaled_is_physical_on_ascii() {
        let s = di(json!({"type": "scaled", "scale": 0.01, "min": -100000, "max": 100000}));
        assert_eq!(convert(&s, "4.25", 1.0, 0.0), Ok(json!(425)));
        assert_eq!(convert(&s, "4.253", 1.0, 0.0), Ok(json!(425)));
        assert_eq!(convert(&s, "-0.005", 1.0, 0.0), Ok(json!(-1)));
        assert_eq!(instrument_value(&s, 1.0, 0.0, &json!(425)), json!(4.25));
        let tenth = di(json!({"type": "scaled", "scale": 0.1, "min": 0, "max": 100}));
        assert_eq!(instrument_value(&tenth, 1.0, 0.0, &json!(3)), json!(0.3));
        let quarter = di(json!({"type": "scaled", "scale": 0.25, "min": 0, "max": 100}));
        assert_eq!(instrument_value(&quarter, 1.0, 0.0, &json!(3)), json!(0.75));
        assert_eq!(command_result(Some(&s), " 4.25 "), Ok(json!(425)));
        let e = command_result(Some(&tenth), "10.5").unwrap_err();
        assert_eq!(e.class, ErrorClass::OutOfRange);
        assert_eq!(e.text, "reply \"10.5\" is above max 10");
        // Rounded to the scale's step: the message shows the value that was checked.
        let e = command_result(Some(&tenth), "10.46").unwrap_err();
        assert_eq!(e.text, "reply \"10.46\" (= 10.5) is above max 10");
        // Doubles with scale/offset: raw = (value - offset) / scale.
        let d = di(json!({"type": "double"}));
        assert_eq!(instrument_value(&d, 0.5, 1.0, &json!(3.0)), json!(4.0));
        assert_eq!(instrument_value(&d, 1.0, 0.0, &json!(3.5)), json!(3.5));
    }

    #[test]
    fn command_results_arrive_in_their_type() {
        assert_eq!(command_result(None, "anything"), Ok(Value::Null));
        let st = di(json!({"type": "struct", "members": {
            "x": {"type": "double"},
            "mode": {"type": "enum", "members": {"a": 1, "b": 2}}}}));
        assert_eq!(
            command_result(Some(&st), r#"{"x": 1.5, "mode": "b"}"#),
            Ok(json!({"x": 1.5, "mode": 2}))
        );
        let e = command_result(Some(&st), r#"{"x": 1.5}"#).unwrap_err();
        assert_eq!(e.class, ErrorClass::HardwareError);
        assert!(e.text.contains("\"mode\" is missing"), "{e}");
        let e = command_result(Some(&st), "x=1.5").unwrap_err();
        assert_eq!(e.class, ErrorClass::HardwareError);
        assert!(e.text.starts_with("reply \"x=1.5\" is not JSON: "), "{e}");
        let arr = di(json!({"type": "array", "members": {"type": "double"}, "maxlen": 3}));
        assert_eq!(command_result(Some(&arr), "[1, 2.5]"), Ok(json!([1, 2.5])));
        assert_eq!(
            command_result(Some(&arr), "1,2.5, 3"),
            Ok(json!([1.0, 2.5, 3.0]))
        );
        assert_eq!(command_result(Some(&arr), ""), Ok(json!([])));
        let e = command_result(Some(&arr), "1,2,3,4").unwrap_err();
        assert!(e.text.contains("4 elements, allowed 0..3"), "{e}");
        let e = command_result(Some(&arr), "1,x").unwrap_err();
        assert_eq!(e.text, "reply \"x\" is not a number");
        let tup = di(
            json!({"type": "tuple", "members": [{"type": "int", "min": 0, "max": 9},
                                                         {"type": "string"}]}),
        );
        assert_eq!(command_result(Some(&tup), "3, ok"), Ok(json!([3, "ok"])));
        assert_eq!(
            command_result(Some(&tup), "[3, \"ok\"]"),
            Ok(json!([3, "ok"]))
        );
        let e = command_result(Some(&tup), "3").unwrap_err();
        assert_eq!(
            e.text,
            "reply \"3\" has 1 comma-separated items, the tuple has 2 members"
        );
        let blob = di(json!({"type": "blob", "maxbytes": 4}));
        assert_eq!(command_result(Some(&blob), "AQID"), Ok(json!("AQID")));
        let e = command_result(Some(&blob), "not base64!").unwrap_err();
        assert_eq!(e.class, ErrorClass::HardwareError);
        assert!(e.text.contains("invalid base64"), "{e}");
        let e = command_result(Some(&blob), "AQIDBAUG").unwrap_err();
        assert!(e.text.contains("6 bytes, allowed 0..4"), "{e}");
        let m = di(json!({"type": "matrix", "names": ["x"], "maxlen": [4], "elementtype": "<u1"}));
        assert_eq!(
            command_result(Some(&m), r#"{"len": [2], "blob": "AQI="}"#),
            Ok(json!({"len": [2], "blob": "AQI="}))
        );
        let s = di(json!({"type": "string"}));
        assert_eq!(command_result(Some(&s), " a, b "), Ok(json!("a, b")));
        let en = di(json!({"type": "enum", "members": {"off": 0, "on": 1}}));
        let e = command_result(Some(&en), "maybe").unwrap_err();
        assert_eq!(e.text, "reply \"maybe\" is not a member of the enum");
    }

    // --- config checks (through the backends' builders) -----------------------

    fn module() -> ModuleConfig {
        ModuleConfig {
            name: "X".into(),
            description: None,
            properties: Default::default(),
            settings: Value::Null,
        }
    }

    /// An ASCII Readable `X` with `value` and the given extra parameters/commands.
    fn ascii(parameters: Value, commands: Value) -> Result<(), String> {
        let link: LinkConfig =
            crate::from_json(json!({"name": "dev", "protocol": "ascii", "tcp": "127.0.0.1:9"}))
                .map_err(|e| e.to_string())?;
        let mut all = vec![json!({"name": "value", "datainfo": {"type": "double"}, "query": "V?"})];
        all.extend(parameters.as_array().cloned().unwrap_or_default());
        let spec: AsciiModule =
            crate::from_json(json!({"class": "Readable", "parameter": all, "command": commands}))
                .map_err(|e| e.to_string())?;
        crate::ascii::build(&link.parts(), link.ascii.as_ref(), &[(module(), spec)])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn ascii_param(p: Value) -> Result<(), String> {
        ascii(json!([p]), json!([]))
    }

    #[test]
    fn ascii_refusals_name_key_and_reason() {
        let cases = [
            (
                json!({"name": "_n", "datainfo": {"type": "int", "min": 0, "max": 9},
                       "query": "N?", "scale": 2}),
                "module \"X\": parameter[1] (\"_n\").scale: scale = 2 applies to double datainfos only, this one is \"int\"",
            ),
            (
                json!({"name": "_n", "datainfo": {"type": "scaled", "scale": 0.1, "min": 0, "max": 9},
                       "query": "N?", "offset": 1}),
                "parameter[1] (\"_n\").offset: offset = 1 applies to double datainfos only, this one is \"scaled\" (a scaled datainfo has its own scale)",
            ),
            (
                json!({"name": "_s", "datainfo": {"type": "string"}, "query": "S?", "deadband": 1}),
                "parameter[1] (\"_s\").deadband: a deadband applies to numbers (double, int, scaled), the datainfo is \"string\"",
            ),
            (
                json!({"name": "_m", "datainfo": {"type": "enum", "members": {"a": 0}},
                       "write": "M {value:.2f}"}),
                "parameter[1] (\"_m\").write: {value:.2f} writes a floating-point number, the datainfo is \"enum\" (use {value} or {value:d})",
            ),
            (
                json!({"name": "_b", "datainfo": {"type": "bool"}, "write": "B {value:.1e}"}),
                "parameter[1] (\"_b\").write: {value:.1e} writes a floating-point number, the datainfo is \"bool\"",
            ),
            (
                json!({"name": "_i", "datainfo": {"type": "int", "min": 0, "max": 9},
                       "write": "I {value:.0f}"}),
                "parameter[1] (\"_i\").write: {value:.0f} writes a floating-point number, the datainfo is \"int\"",
            ),
            (
                json!({"name": "_l", "datainfo": {"type": "string", "maxchars": 8},
                       "write": "L {value:.2f}"}),
                "parameter[1] (\"_l\").write: {value:.2f} formats a number, the datainfo is \"string\" (use {value})",
            ),
            (
                json!({"name": "_l", "datainfo": {"type": "string"}, "write": "L {value:x}"}),
                "parameter[1] (\"_l\").write: {value:x} formats a number, the datainfo is \"string\"",
            ),
            (
                json!({"name": "_d", "datainfo": {"type": "double"}, "write": "D {value:d}"}),
                "parameter[1] (\"_d\").write: {value:d} rounds a double to an integer",
            ),
            (
                json!({"name": "_c", "datainfo": {"type": "scaled", "scale": 0.01, "min": 0, "max": 9},
                       "write": "C {value:d}"}),
                "parameter[1] (\"_c\").write: {value:d} rounds the physical value of a scaled datainfo (scale 0.01) to an integer; use {value:.2f}",
            ),
        ];
        for (param, expected) in cases {
            let e = ascii_param(param.clone()).expect_err(&param.to_string());
            assert!(e.contains(expected), "{param}:\n{e}\nexpected {expected}");
        }
        let commands = [
            (
                json!({"name": "_go", "send": "GO {value:.3f}", "argument": {"type": "string"}}),
                "module \"X\": command[0] (\"_go\").send: {value:.3f} formats a number, the datainfo is \"string\"",
            ),
            (
                json!({"name": "_id", "send": "*IDN?", "result": {"type": "string"}}),
                "command[0] (\"_id\").result: the result is read from the reply, but no reply pattern is given",
            ),
        ];
        for (command, expected) in commands {
            let e = ascii(json!([]), json!([command.clone()])).expect_err(&command.to_string());
            assert!(e.contains(expected), "{command}:\n{e}\nexpected {expected}");
        }
    }

    #[test]
    fn ascii_fits_are_accepted() {
        for p in [
            json!({"name": "_s", "datainfo": {"type": "string", "maxchars": 8}, "write": "S {value}"}),
            json!({"name": "_e", "datainfo": {"type": "enum", "members": {"a": 0}}, "write": "E {value:d}"}),
            json!({"name": "_b", "datainfo": {"type": "bool"}, "write": "B{value:x}"}),
            json!({"name": "_d", "datainfo": {"type": "double"}, "write": "D {value:.3f}", "deadband": 0.1}),
            json!({"name": "_r", "datainfo": {"type": "double"}, "write": "R {value:d}", "scale": 0.1}),
            json!({"name": "_c", "datainfo": {"type": "scaled", "scale": 0.01, "min": 0, "max": 9},
                   "write": "C {value:.2f}", "deadband": 1}),
            json!({"name": "_k", "datainfo": {"type": "scaled", "scale": 10, "min": 0, "max": 9},
                   "write": "K {value:d}"}),
            json!({"name": "_a", "datainfo": {"type": "array", "members": {"type": "double"}, "maxlen": 3},
                   "write": "A {value}"}),
        ] {
            assert_eq!(ascii_param(p.clone()), Ok(()), "{p}");
        }
        let commands = json!([
            {"name": "_go", "send": "GO {value:.3f}", "argument": {"type": "double"}},
            {"name": "_id", "send": "*IDN?", "reply": "^(.*)$"},
            {"name": "_st", "send": "ST?", "reply": "^(.*)$",
             "result": {"type": "struct", "members": {"a": {"type": "double"}}}},
        ]);
        assert_eq!(ascii(json!([]), commands), Ok(()));
    }

    /// A Modbus Readable `X` with `value` and the given extra parameters/commands.
    fn modbus(parameters: Value, commands: Value) -> Result<(), String> {
        let link: LinkConfig =
            crate::from_json(json!({"name": "plc", "protocol": "modbus", "tcp": "127.0.0.1:9"}))
                .map_err(|e| e.to_string())?;
        let mut all = vec![json!({"name": "value", "datainfo": {"type": "double"},
                                  "table": "input", "address": 0, "type": "f32"})];
        all.extend(parameters.as_array().cloned().unwrap_or_default());
        let spec: ModbusModule =
            crate::from_json(json!({"class": "Readable", "parameter": all, "command": commands}))
                .map_err(|e| e.to_string())?;
        crate::modbus::build(&link.parts(), link.modbus.as_ref(), &[(module(), spec)])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A Modbus parameter `_p` at holding register 10 of `type` with `datainfo`.
    fn register(kind: &str, datainfo: Value, more: Value) -> Value {
        let mut p = json!({"name": "_p", "datainfo": datainfo, "table": "holding",
                           "address": 10, "type": kind});
        if let (Some(p), Some(more)) = (p.as_object_mut(), more.as_object()) {
            p.extend(more.clone());
        }
        p
    }

    #[test]
    fn modbus_refusals_name_key_and_reason() {
        let key = "module \"X\": parameter[1] (\"_p\")";
        let cases = [
            (
                register("u16", json!({"type": "int", "min": 0, "max": 100000}), json!({})),
                format!("{key}.datainfo: int max 100000 does not fit a u16 register (0 ..= 65535)"),
            ),
            (
                register("u32", json!({"type": "int", "min": -1, "max": 10}), json!({})),
                format!("{key}.datainfo: int min -1 does not fit a u32 register (0 ..= 4294967295)"),
            ),
            (
                register("i16", json!({"type": "scaled", "scale": 0.1, "min": -40000, "max": 0}), json!({})),
                format!("{key}.datainfo: scaled min -40000 does not fit an i16 register (-32768 ..= 32767)"),
            ),
            (
                register("u16", json!({"type": "enum", "members": {"a": 0, "big": 70000}}), json!({})),
                format!("{key}.datainfo: enum member \"big\" = 70000 does not fit a u16 register"),
            ),
            (
                register("f32", json!({"type": "enum", "members": {"a": 0}}), json!({})),
                format!("{key}.datainfo: an enum needs an integer register, not an f32 register"),
            ),
            (
                register("f32", json!({"type": "scaled", "scale": 0.1, "min": 0, "max": 9}), json!({})),
                format!("{key}.datainfo: the wire value of a scaled datainfo is the register's integer, an f32 register holds a float"),
            ),
            (
                register("f64", json!({"type": "bool"}), json!({})),
                format!("{key}.datainfo: a bool datainfo needs a bool or integer register (non-zero is true), not an f64 register"),
            ),
            (
                json!({"name": "_p", "datainfo": {"type": "int", "min": 0, "max": 1},
                       "table": "coil", "address": 3, "type": "bool"}),
                format!("{key}.datainfo: a bool register gives true or false: declare datainfo = {{ type = \"bool\" }}, not \"int\""),
            ),
            (
                register("u16", json!({"type": "enum", "members": {"a": 0}}), json!({"bit": 2})),
                format!("{key}.datainfo: a bit gives true or false"),
            ),
            (
                register("string", json!({"type": "string"}), json!({"length": 4})),
                format!("{key}.datainfo: give maxchars (at most 8: 4 registers of 2 characters)"),
            ),
            (
                register("string", json!({"type": "string", "maxchars": 9}), json!({"length": 4})),
                format!("{key}.datainfo: maxchars 9 is more than the 8 characters 4 registers hold"),
            ),
            (
                register("string", json!({"type": "string", "maxchars": 8, "isUTF8": true}), json!({"length": 4})),
                format!("{key}.datainfo: register strings are ASCII: drop isUTF8"),
            ),
            (
                register("u16", json!({"type": "string", "maxchars": 2}), json!({})),
                format!("{key}.datainfo: a string datainfo needs type = \"string\" registers (with length), not a u16 register"),
            ),
            (
                register("string", json!({"type": "double"}), json!({"length": 2})),
                format!("{key}.datainfo: a string of 2 registers holds text, not a double"),
            ),
            (
                register("u16", json!({"type": "array", "members": {"type": "double"}, "maxlen": 2}), json!({})),
                format!("{key}.datainfo: a register holds one number, bool or string, not an array"),
            ),
            (
                register("u16", json!({"type": "int", "min": 0, "max": 9}), json!({"scale": 0.1})),
                format!("{key}.scale: scale = 0.1 applies to double datainfos only, this one is \"int\""),
            ),
            (
                register("u16", json!({"type": "bool"}), json!({"deadband": 0.5})),
                format!("{key}.deadband: a deadband applies to numbers"),
            ),
        ];
        for (param, expected) in cases {
            let e = modbus(json!([param.clone()]), json!([])).expect_err(&param.to_string());
            assert!(e.contains(&expected), "{param}:\n{e}\nexpected {expected}");
        }
        let commands = [
            (
                json!({"name": "_c", "table": "holding", "address": 5, "value": 70000}),
                "command[0] (\"_c\").value: 70000 does not fit a u16 register",
            ),
            (
                json!({"name": "_c", "table": "holding", "address": 5, "value": 1,
                       "argument": {"type": "int", "min": 0, "max": 1}}),
                "command[0] (\"_c\"): give either a value (written as is) or an argument, not both",
            ),
            (
                json!({"name": "_c", "table": "holding", "address": 5,
                       "argument": {"type": "int", "min": -1, "max": 1}}),
                "command[0] (\"_c\").argument: int min -1 does not fit a u16 register",
            ),
            (
                json!({"name": "_c", "table": "coil", "address": 5, "value": "on"}),
                "command[0] (\"_c\").value: \"on\" does not fit a bool register",
            ),
        ];
        for (command, expected) in commands {
            let e = modbus(json!([]), json!([command.clone()])).expect_err(&command.to_string());
            assert!(e.contains(expected), "{command}:\n{e}\nexpected {expected}");
        }
    }

    #[test]
    fn modbus_fits_are_accepted() {
        let params = json!([
            register(
                "u16",
                json!({"type": "int", "min": 0, "max": 65535}),
                json!({"address": 20})
            ),
            register(
                "i64",
                json!({"type": "int", "min": -9007199254740991_i64, "max": 9007199254740991_i64}),
                json!({"name": "_big", "address": 30})
            ),
            register(
                "u64",
                json!({"type": "int", "min": 0, "max": 9007199254740991_i64}),
                json!({"name": "_u", "address": 40})
            ),
            register(
                "f32",
                json!({"type": "int", "min": -100000000, "max": 100000000}),
                json!({"name": "_f", "address": 50})
            ),
            register(
                "u16",
                json!({"type": "bool"}),
                json!({"name": "_b", "address": 60})
            ),
            register(
                "u16",
                json!({"type": "bool"}),
                json!({"name": "_bit", "address": 60, "bit": 3})
            ),
            register(
                "i16",
                json!({"type": "scaled", "scale": 0.01, "min": -32768, "max": 32767}),
                json!({"name": "_s", "address": 70})
            ),
            register(
                "u16",
                json!({"type": "enum", "members": {"off": 0, "on": 65535}}),
                json!({"name": "_e", "address": 80})
            ),
            register(
                "string",
                json!({"type": "string", "maxchars": 8}),
                json!({"name": "_t", "address": 90, "length": 4})
            ),
            register(
                "i16",
                json!({"type": "double"}),
                json!({"name": "_d", "address": 100, "scale": 0.01,
                                                               "deadband": 0.1})
            ),
            json!({"name": "_coil", "datainfo": {"type": "bool"}, "table": "coil", "address": 1,
                   "type": "bool"}),
        ]);
        let commands = json!([
            {"name": "_reset", "table": "coil", "address": 10, "type": "bool", "value": true},
            {"name": "_go", "table": "holding", "address": 11, "value": 1},
            {"name": "_set", "table": "holding", "address": 12, "type": "i32",
             "argument": {"type": "int", "min": -5, "max": 5}},
        ]);
        assert_eq!(modbus(params, commands), Ok(()));
    }
}
