//! Datainfo: the type system of SECoP values.
//!
//! A [`DataInfo`] is parsed from its JSON description (from config or from a remote
//! node), keeps that JSON for `describe`, and validates values that clients send.
//! Validation returns the value in its canonical wire form (enum names become their
//! numbers, `5.0` for an int becomes `5`), or the error class the spec asks for:
//! `WrongType` when the JSON kind is wrong, `RangeError` when the kind is right but the
//! value is outside what the datainfo allows.
//!
//! Datainfos come from remote SEC nodes and config files, so parsing treats them as
//! hostile: every malformed one is an `Err`, never a panic. Strings are never sliced
//! at byte offsets (a `fmtstr` of `"%.é"` must not split the `é`), nesting is limited
//! to [`MAX_DEPTH`] (a `Value` built from TOML or in code has no recursion limit of its
//! own), uniqueness checks use hash sets (a remote enum with 100 000 members must not
//! cost 10^10 comparisons), and a datainfo whose smallest value would exceed
//! [`MAX_SMALLEST_VALUE`] bytes is refused, so that [`DataInfo::default_value`] never
//! allocates more than a few megabytes whatever `minchars`, `minbytes` or `minlen` say.

use crate::error::SecopError;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// Deepest nesting of datainfos (array of struct of tuple ...) accepted. Real ones
/// nest two or three levels; the limit keeps parsing and validation off the end of
/// the stack.
pub const MAX_DEPTH: usize = 32;

/// Largest size, in bytes of compact JSON, that the smallest valid value of a datainfo
/// may have (`minchars`, `minbytes`, `minlen`, summed over members). A value that big
/// could not travel in a message of the default line limit (1 MiB) anyway; the bound
/// keeps [`DataInfo::default_value`] small.
pub const MAX_SMALLEST_VALUE: usize = 1024 * 1024;

/// Element type of a `matrix`: byte order, kind and size, e.g. `<f4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementType {
    pub little_endian: bool,
    pub kind: char,
    pub size: usize,
}

impl ElementType {
    fn parse(text: &str) -> Result<ElementType, DataInfoError> {
        // Matched as bytes, never sliced: text may hold any character.
        let (order, kind, size) = match text.as_bytes() {
            [order, kind, digit] if digit.is_ascii_digit() => {
                (*order, *kind, usize::from(digit - b'0'))
            }
            _ => (b'?', b'?', 0),
        };
        let valid = matches!(order, b'<' | b'>')
            && matches!(kind, b'i' | b'u' | b'f')
            && matches!(size, 1 | 2 | 4 | 8)
            && !(kind == b'f' && size < 4);
        if !valid {
            return Err(DataInfoError::ElementType(text.to_owned()));
        }
        Ok(ElementType {
            little_endian: order == b'<',
            kind: kind as char,
            size,
        })
    }
}

/// Why a datainfo description was refused. The texts name the offending property; a
/// problem inside a member is [`DataInfoError::Member`], which prefixes the path
/// (`members.x: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataInfoError {
    #[error("datainfos nested too deep (more than {MAX_DEPTH} levels)")]
    TooDeep,
    #[error("datainfo must be an object with a \"type\"")]
    NotAnObject,
    #[error("datainfo has no string \"type\"")]
    NoType,
    #[error("unknown datainfo type {0:?}")]
    UnknownType(String),
    #[error("{type_name}: unknown property {key:?}")]
    UnknownProperty { type_name: String, key: String },
    /// A property of `type_name` with a value that is not allowed.
    #[error("{type_name}: {reason}")]
    Property { type_name: String, reason: String },
    /// A number property of the wrong JSON kind (`expected` is e.g. "a number").
    #[error("{key} must be {expected}")]
    NotA { key: String, expected: &'static str },
    #[error("elementtype {0:?} is not one of '<'/'>' + 'i'/'u'/'f' + 1/2/4/8 (floats 4 or 8)")]
    ElementType(String),
    #[error(
        "{type_name}: its smallest value would take {bytes} bytes, more than {MAX_SMALLEST_VALUE}"
    )]
    TooLarge { type_name: String, bytes: usize },
    /// A problem in a nested datainfo; `path` is `members`, `members[0]`,
    /// `members.x`, `argument` or `result`.
    #[error("{path}: {inner}")]
    Member {
        path: String,
        inner: Box<DataInfoError>,
    },
}

impl DataInfoError {
    fn property(type_name: &str, reason: impl Into<String>) -> Self {
        DataInfoError::Property {
            type_name: type_name.to_owned(),
            reason: reason.into(),
        }
    }

    /// The problem itself, below any [`DataInfoError::Member`] wrappers.
    pub fn innermost(&self) -> &DataInfoError {
        match self {
            DataInfoError::Member { inner, .. } => inner.innermost(),
            other => other,
        }
    }

    fn member(path: impl Into<String>, inner: DataInfoError) -> Self {
        DataInfoError::Member {
            path: path.into(),
            inner: Box::new(inner),
        }
    }
}

/// The structure of a datainfo, without the descriptive properties.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Double {
        min: Option<f64>,
        max: Option<f64>,
    },
    Scaled {
        scale: f64,
        min: i64,
        max: i64,
    },
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Enum {
        members: Vec<(String, i64)>,
    },
    String {
        minchars: usize,
        maxchars: Option<usize>,
        is_utf8: bool,
    },
    Blob {
        minbytes: usize,
        maxbytes: usize,
    },
    Array {
        members: Box<DataInfo>,
        minlen: usize,
        maxlen: usize,
    },
    Tuple {
        members: Vec<DataInfo>,
    },
    Struct {
        members: Vec<(String, DataInfo)>,
        optional: Vec<String>,
    },
    Matrix {
        names: Vec<String>,
        maxlen: Vec<usize>,
        elementtype: ElementType,
    },
    Command {
        argument: Option<Box<DataInfo>>,
        result: Option<Box<DataInfo>>,
    },
}

/// A parsed datainfo together with its JSON description. Shared, not copied: every
/// stage that holds a module's description (driver, device handle, node, description
/// cache) clones it, and a node with 1000 modules has tens of thousands of datainfos.
#[derive(Debug, Clone, PartialEq)]
pub struct DataInfo(Arc<DataInfoParts>);

/// What a [`DataInfo`] is made of; reached through `Deref` (`datainfo.kind`).
#[derive(Debug, PartialEq)]
pub struct DataInfoParts {
    pub kind: Kind,
    json: Value,
    /// Bytes of compact JSON of the smallest valid value (saturating); see
    /// [`MAX_SMALLEST_VALUE`].
    smallest: usize,
}

impl std::ops::Deref for DataInfo {
    type Target = DataInfoParts;
    fn deref(&self) -> &DataInfoParts {
        &self.0
    }
}

impl DataInfo {
    fn of(kind: Kind, json: Value) -> Self {
        let smallest = smallest_value_bytes(&kind);
        DataInfo(Arc::new(DataInfoParts {
            kind,
            json,
            smallest,
        }))
    }
}

/// An upper estimate of the compact JSON size of [`DataInfo::default_value`] (which is
/// the smallest value), saturating instead of overflowing.
fn smallest_value_bytes(kind: &Kind) -> usize {
    // "[a,b,c]": each element plus a separator, plus the brackets.
    let list = |sizes: &mut dyn Iterator<Item = usize>| {
        sizes.fold(2usize, |acc, n| acc.saturating_add(n).saturating_add(1))
    };
    match kind {
        Kind::Double { .. } | Kind::Scaled { .. } | Kind::Int { .. } | Kind::Enum { .. } => 24,
        Kind::Bool => 5,
        Kind::String { minchars, .. } => minchars.saturating_add(2),
        Kind::Blob { minbytes, .. } => minbytes.div_ceil(3).saturating_mul(4).saturating_add(2),
        Kind::Array {
            members, minlen, ..
        } => minlen
            .saturating_mul(members.smallest.saturating_add(1))
            .saturating_add(2),
        Kind::Tuple { members } => list(&mut members.iter().map(|m| m.smallest)),
        Kind::Struct { members, .. } => list(
            &mut members
                .iter()
                .map(|(name, m)| name.len().saturating_add(3).saturating_add(m.smallest)),
        ),
        Kind::Matrix { names, .. } => names.len().saturating_mul(2).saturating_add(20),
        Kind::Command { .. } => 4,
    }
}

/// The data properties each type knows (besides `type`); unknown ones are an error in
/// our own config, unless they are custom (`_name`).
fn known_properties(type_name: &str) -> &'static [&'static str] {
    match type_name {
        "double" => &[
            "min",
            "max",
            "unit",
            "fmtstr",
            "absolute_resolution",
            "relative_resolution",
        ],
        "scaled" => &[
            "scale",
            "min",
            "max",
            "unit",
            "fmtstr",
            "absolute_resolution",
            "relative_resolution",
        ],
        "int" => &["min", "max", "unit"],
        "bool" => &[],
        "enum" => &["members"],
        "string" => &["minchars", "maxchars", "isUTF8"],
        "blob" => &["minbytes", "maxbytes"],
        "array" => &["members", "minlen", "maxlen"],
        "tuple" => &["members"],
        "struct" => &["members", "optional"],
        "matrix" => &["names", "maxlen", "elementtype", "compression"],
        "command" => &["argument", "result"],
        _ => &[],
    }
}

impl DataInfo {
    /// Parse a datainfo description. Errors name the offending property; nested errors
    /// are prefixed with the path (`members.x: ...`).
    pub fn from_json(json: &Value) -> Result<DataInfo, DataInfoError> {
        DataInfo::parse(json, true, 0)
    }

    /// Parse a datainfo that a remote node sent: unknown properties are ignored
    /// (must-accept rule 2), everything else is checked as strictly as our own.
    pub fn from_remote_json(json: &Value) -> Result<DataInfo, DataInfoError> {
        DataInfo::parse(json, false, 0)
    }

    fn parse(json: &Value, strict: bool, depth: usize) -> Result<DataInfo, DataInfoError> {
        use DataInfoError as E;
        if depth >= MAX_DEPTH {
            return Err(E::TooDeep);
        }
        let from_json = |v: &Value| DataInfo::parse(v, strict, depth + 1);
        let obj = json.as_object().ok_or(E::NotAnObject)?;
        let type_name = obj.get("type").and_then(Value::as_str).ok_or(E::NoType)?;
        let known = known_properties(type_name);
        for key in obj.keys() {
            if strict && key != "type" && !key.starts_with('_') && !known.contains(&key.as_str()) {
                return Err(E::UnknownProperty {
                    type_name: type_name.to_owned(),
                    key: key.clone(),
                });
            }
        }
        for key in ["unit", "fmtstr"] {
            if let Some(v) = obj.get(key) {
                if !v.is_string() {
                    return Err(E::property(type_name, format!("{key} must be a string")));
                }
            }
        }
        if let Some(Value::String(f)) = obj.get("fmtstr") {
            if !valid_fmtstr(f) {
                return Err(E::property(
                    type_name,
                    format!("fmtstr {f:?} must look like %.3f, %.6g or %.2e"),
                ));
            }
        }
        for key in ["absolute_resolution", "relative_resolution"] {
            if let Some(v) = obj.get(key) {
                if !v.as_f64().is_some_and(|x| x >= 0.0) {
                    return Err(E::property(
                        type_name,
                        format!("{key} must be a number >= 0"),
                    ));
                }
            }
        }
        let kind = match type_name {
            "double" => {
                let min = opt_f64(obj, "min")?;
                let max = opt_f64(obj, "max")?;
                if let (Some(a), Some(b)) = (min, max) {
                    if a > b {
                        return Err(E::property("double", format!("min {a} > max {b}")));
                    }
                }
                Kind::Double { min, max }
            }
            "scaled" => {
                let scale = opt_f64(obj, "scale")?
                    .ok_or_else(|| E::property("scaled", "\"scale\" is mandatory"))?;
                if scale <= 0.0 {
                    return Err(E::property("scaled", "scale must be > 0"));
                }
                let (min, max) = int_limits(obj, "scaled")?;
                Kind::Scaled { scale, min, max }
            }
            "int" => {
                let (min, max) = int_limits(obj, "int")?;
                Kind::Int { min, max }
            }
            "bool" => Kind::Bool,
            "enum" => {
                let members = obj
                    .get("members")
                    .and_then(Value::as_object)
                    .ok_or_else(|| {
                        E::property("enum", "\"members\" must be an object {name: number}")
                    })?;
                if members.is_empty() {
                    return Err(E::property("enum", "\"members\" is empty"));
                }
                let mut list = Vec::with_capacity(members.len());
                let mut names = HashSet::with_capacity(members.len());
                let mut numbers = HashSet::with_capacity(members.len());
                for (name, v) in members {
                    let n = v.as_i64().ok_or_else(|| {
                        E::property("enum", format!("member {name:?} must be an integer"))
                    })?;
                    if !numbers.insert(n) || !names.insert(name.to_lowercase()) {
                        return Err(E::property(
                            "enum",
                            format!("member {name:?}={n} is not unique"),
                        ));
                    }
                    list.push((name.clone(), n));
                }
                Kind::Enum { members: list }
            }
            "string" => {
                let minchars = opt_usize(obj, "minchars")?.unwrap_or(0);
                let maxchars = opt_usize(obj, "maxchars")?;
                if maxchars.is_some_and(|m| m < minchars) {
                    return Err(E::property("string", "maxchars < minchars"));
                }
                let is_utf8 = match obj.get("isUTF8") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(E::property("string", "isUTF8 must be true or false")),
                };
                Kind::String {
                    minchars,
                    maxchars,
                    is_utf8,
                }
            }
            "blob" => {
                let maxbytes = opt_usize(obj, "maxbytes")?
                    .ok_or_else(|| E::property("blob", "\"maxbytes\" is mandatory"))?;
                let minbytes = opt_usize(obj, "minbytes")?.unwrap_or(0);
                if maxbytes < minbytes {
                    return Err(E::property("blob", "maxbytes < minbytes"));
                }
                Kind::Blob { minbytes, maxbytes }
            }
            "array" => {
                let members = obj
                    .get("members")
                    .ok_or_else(|| E::property("array", "\"members\" is mandatory"))?;
                let members = from_json(members).map_err(|e| E::member("members", e))?;
                if members.is_command() {
                    return Err(E::property("array", "members cannot be a command"));
                }
                let maxlen = opt_usize(obj, "maxlen")?
                    .ok_or_else(|| E::property("array", "\"maxlen\" is mandatory"))?;
                let minlen = opt_usize(obj, "minlen")?.unwrap_or(0);
                if maxlen < minlen {
                    return Err(E::property("array", "maxlen < minlen"));
                }
                Kind::Array {
                    members: Box::new(members),
                    minlen,
                    maxlen,
                }
            }
            "tuple" => {
                let members = obj
                    .get("members")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        E::property("tuple", "\"members\" must be a list of datainfos")
                    })?;
                let members = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| from_json(m).map_err(|e| E::member(format!("members[{i}]"), e)))
                    .collect::<Result<Vec<_>, _>>()?;
                if members.iter().any(DataInfo::is_command) {
                    return Err(E::property("tuple", "members cannot be commands"));
                }
                if members.is_empty() {
                    return Err(E::property("tuple", "\"members\" is empty"));
                }
                Kind::Tuple { members }
            }
            "struct" => {
                let members = obj
                    .get("members")
                    .and_then(Value::as_object)
                    .ok_or_else(|| {
                        E::property("struct", "\"members\" must be an object {name: datainfo}")
                    })?;
                if members.is_empty() {
                    return Err(E::property("struct", "\"members\" is empty"));
                }
                let mut list: Vec<(String, DataInfo)> = Vec::with_capacity(members.len());
                let mut lowercase = HashSet::with_capacity(members.len());
                for (name, m) in members {
                    if !lowercase.insert(name.to_lowercase()) {
                        return Err(E::property(
                            "struct",
                            format!("member {name:?} is not unique"),
                        ));
                    }
                    let di = from_json(m).map_err(|e| E::member(format!("members.{name}"), e))?;
                    if di.is_command() {
                        return Err(E::property(
                            "struct",
                            format!("member {name:?} cannot be a command"),
                        ));
                    }
                    list.push((name.clone(), di));
                }
                let optional = match obj.get("optional") {
                    None => Vec::new(),
                    Some(Value::Array(names)) => {
                        let mut out = Vec::new();
                        for n in names {
                            let n = n
                                .as_str()
                                .ok_or_else(|| E::property("struct", "optional must list names"))?;
                            if !members.contains_key(n) {
                                return Err(E::property(
                                    "struct",
                                    format!("optional names unknown member {n:?}"),
                                ));
                            }
                            out.push(n.to_owned());
                        }
                        out
                    }
                    Some(_) => {
                        return Err(E::property("struct", "optional must be a list of names"))
                    }
                };
                Kind::Struct {
                    members: list,
                    optional,
                }
            }
            "matrix" => {
                let names: Vec<String> = obj
                    .get("names")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(|n| n.as_str().map(str::to_owned)).collect())
                    .ok_or_else(|| {
                        E::property("matrix", "\"names\" must be a list of dimension names")
                    })?;
                let maxlen: Vec<usize> = obj
                    .get("maxlen")
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .map(|n| n.as_u64().and_then(|n| usize::try_from(n).ok()))
                            .collect()
                    })
                    .ok_or_else(|| E::property("matrix", "\"maxlen\" must be a list of lengths"))?;
                if names.is_empty() || names.len() != maxlen.len() {
                    return Err(E::property(
                        "matrix",
                        "names and maxlen must have the same, non-zero length",
                    ));
                }
                let elementtype = obj
                    .get("elementtype")
                    .and_then(Value::as_str)
                    .ok_or_else(|| E::property("matrix", "\"elementtype\" is mandatory"))
                    .and_then(ElementType::parse)?;
                Kind::Matrix {
                    names,
                    maxlen,
                    elementtype,
                }
            }
            "command" => {
                let sub = |key: &str| -> Result<Option<Box<DataInfo>>, DataInfoError> {
                    match obj.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(v) => {
                            let di = from_json(v).map_err(|e| E::member(key, e))?;
                            if di.is_command() {
                                return Err(E::property(
                                    "command",
                                    format!("{key} cannot be a command"),
                                ));
                            }
                            Ok(Some(Box::new(di)))
                        }
                    }
                };
                Kind::Command {
                    argument: sub("argument")?,
                    result: sub("result")?,
                }
            }
            other => return Err(E::UnknownType(other.to_owned())),
        };
        let parsed = DataInfo::of(kind, json.clone());
        if parsed.smallest > MAX_SMALLEST_VALUE {
            return Err(E::TooLarge {
                type_name: type_name.to_owned(),
                bytes: parsed.smallest,
            });
        }
        Ok(parsed)
    }

    /// The JSON description, as given (for `describe`).
    pub fn to_json(&self) -> &Value {
        &self.json
    }

    pub fn is_command(&self) -> bool {
        matches!(self.kind, Kind::Command { .. })
    }

    /// The `unit` property, if any.
    pub fn unit(&self) -> Option<&str> {
        self.json.get("unit").and_then(Value::as_str)
    }

    /// Whether the type is a scalar number (where `_min`/`_max`/`_limits` apply).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self.kind,
            Kind::Double { .. } | Kind::Scaled { .. } | Kind::Int { .. }
        )
    }

    /// A value that every datainfo accepts, used to fill a cache before the first poll
    /// and to check that a config default fits.
    pub fn default_value(&self) -> Value {
        match &self.kind {
            Kind::Double { min, max } => {
                let x = if min.is_some_and(|m| m > 0.0) || max.is_some_and(|m| m < 0.0) {
                    min.or(*max).unwrap_or(0.0)
                } else {
                    0.0
                };
                crate::json::number(x).unwrap_or(Value::from(0))
            }
            Kind::Scaled { min, max, .. } | Kind::Int { min, max } => {
                Value::from(0.clamp(*min, *max))
            }
            Kind::Bool => Value::Bool(false),
            Kind::Enum { members } => Value::from(members.first().map_or(0, |(_, n)| *n)),
            Kind::String { minchars, .. } => Value::String("_".repeat(*minchars)),
            Kind::Blob { minbytes, .. } => Value::String(
                base64::engine::general_purpose::STANDARD.encode(vec![0u8; *minbytes]),
            ),
            Kind::Array {
                members, minlen, ..
            } => Value::Array(vec![members.default_value(); *minlen]),
            Kind::Tuple { members } => {
                Value::Array(members.iter().map(DataInfo::default_value).collect())
            }
            Kind::Struct { members, .. } => Value::Object(
                members
                    .iter()
                    .map(|(n, d)| (n.clone(), d.default_value()))
                    .collect(),
            ),
            Kind::Matrix { names, .. } => {
                serde_json::json!({"len": vec![0; names.len()], "blob": ""})
            }
            Kind::Command { .. } => Value::Null,
        }
    }

    /// Validate a value sent by a client (`change`, `do`, `check`) and return it in
    /// canonical wire form.
    pub fn validate(&self, value: &Value) -> Result<Value, SecopError> {
        match &self.kind {
            Kind::Double { min, max } => {
                let x = as_number(value)?;
                check_range_f64(x, *min, *max)?;
                Ok(value.clone())
            }
            Kind::Scaled { scale, min, max } => {
                let n = as_integer(value)?;
                if n < *min || n > *max {
                    return Err(SecopError::range(format!(
                        "{n} (= {}) is outside [{min}, {max}] (= [{}, {}])",
                        n as f64 * scale,
                        *min as f64 * scale,
                        *max as f64 * scale
                    )));
                }
                Ok(Value::from(n))
            }
            Kind::Int { min, max } => {
                let n = as_integer(value)?;
                if n < *min || n > *max {
                    return Err(SecopError::range(format!("{n} is outside [{min}, {max}]")));
                }
                Ok(Value::from(n))
            }
            Kind::Bool => match value {
                Value::Bool(_) => Ok(value.clone()),
                _ => Err(SecopError::wrong_type(format!(
                    "expected true or false, got {}",
                    kind_name(value)
                ))),
            },
            Kind::Enum { members } => match value {
                Value::String(name) => members
                    .iter()
                    .find(|(m, _)| m == name)
                    .map(|(_, n)| Value::from(*n))
                    .ok_or_else(|| {
                        SecopError::range(format!(
                            "{name:?} is not a member of the enum ({})",
                            enum_members(members)
                        ))
                    }),
                Value::Number(_) => {
                    let n = as_integer(value)?;
                    if members.iter().any(|(_, m)| *m == n) {
                        Ok(Value::from(n))
                    } else {
                        Err(SecopError::range(format!(
                            "{n} is not a member of the enum ({})",
                            enum_members(members)
                        )))
                    }
                }
                _ => Err(SecopError::wrong_type(format!(
                    "expected an enum member (number or name), got {}",
                    kind_name(value)
                ))),
            },
            Kind::String {
                minchars,
                maxchars,
                is_utf8,
            } => {
                let s = value.as_str().ok_or_else(|| {
                    SecopError::wrong_type(format!("expected a string, got {}", kind_name(value)))
                })?;
                if !is_utf8 && !s.is_ascii() {
                    return Err(SecopError::range(
                        "string must be 7-bit ASCII (isUTF8 is false)",
                    ));
                }
                let n = s.chars().count();
                if n < *minchars || maxchars.is_some_and(|m| n > m) {
                    return Err(SecopError::range(format!(
                        "string has {n} characters, allowed {minchars}..{}",
                        maxchars.map_or("".into(), |m| m.to_string())
                    )));
                }
                Ok(value.clone())
            }
            Kind::Blob { minbytes, maxbytes } => {
                let s = value.as_str().ok_or_else(|| {
                    SecopError::wrong_type(format!(
                        "expected a base64 string, got {}",
                        kind_name(value)
                    ))
                })?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| SecopError::wrong_type(format!("invalid base64: {e}")))?;
                if bytes.len() < *minbytes || bytes.len() > *maxbytes {
                    return Err(SecopError::range(format!(
                        "blob has {} bytes, allowed {minbytes}..{maxbytes}",
                        bytes.len()
                    )));
                }
                Ok(value.clone())
            }
            Kind::Array {
                members,
                minlen,
                maxlen,
            } => {
                let items = value.as_array().ok_or_else(|| {
                    SecopError::wrong_type(format!("expected an array, got {}", kind_name(value)))
                })?;
                if items.len() < *minlen || items.len() > *maxlen {
                    return Err(SecopError::range(format!(
                        "array has {} elements, allowed {minlen}..{maxlen}",
                        items.len()
                    )));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        members
                            .validate(v)
                            .map_err(|e| e.context(&format!("[{i}]")))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            Kind::Tuple { members } => {
                let items = value.as_array().ok_or_else(|| {
                    SecopError::wrong_type(format!(
                        "expected a tuple (JSON array), got {}",
                        kind_name(value)
                    ))
                })?;
                if items.len() != members.len() {
                    return Err(SecopError::wrong_type(format!(
                        "tuple needs exactly {} elements, got {}",
                        members.len(),
                        items.len()
                    )));
                }
                items
                    .iter()
                    .zip(members)
                    .enumerate()
                    .map(|(i, (v, m))| m.validate(v).map_err(|e| e.context(&format!("[{i}]"))))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            Kind::Struct { members, optional } => {
                let obj = value.as_object().ok_or_else(|| {
                    SecopError::wrong_type(format!(
                        "expected a struct (JSON object), got {}",
                        kind_name(value)
                    ))
                })?;
                // Hash lookups, not scans: both sides may have thousands of members.
                let declared = self.json.get("members").and_then(Value::as_object);
                let is_member = |k: &str| match declared {
                    Some(d) => d.contains_key(k),
                    None => members.iter().any(|(m, _)| m == k),
                };
                if let Some(unknown) = obj.keys().find(|k| !is_member(k)) {
                    return Err(SecopError::wrong_type(format!(
                        "unknown struct member {unknown:?}"
                    )));
                }
                let optional: HashSet<&str> = if obj.len() < members.len() {
                    optional.iter().map(String::as_str).collect()
                } else {
                    HashSet::new()
                };
                let mut out = Map::with_capacity(obj.len());
                for (name, di) in members {
                    match obj.get(name) {
                        Some(v) => {
                            out.insert(name.clone(), di.validate(v).map_err(|e| e.context(name))?);
                        }
                        None if optional.contains(name.as_str()) => {}
                        None => {
                            return Err(SecopError::wrong_type(format!(
                                "struct member {name:?} is missing"
                            )))
                        }
                    }
                }
                Ok(Value::Object(out))
            }
            Kind::Matrix {
                names,
                maxlen,
                elementtype,
            } => validate_matrix(value, names, maxlen, elementtype),
            Kind::Command { .. } => Err(SecopError::wrong_type("a command has no value; use do")),
        }
    }

    /// For a struct `change` that omits optional members: fill them from the current
    /// value, so the device always gets a complete struct (datainfo.rst).
    pub fn fill_optional(&self, value: Value, current: Option<&Value>) -> Value {
        match (&self.kind, value, current) {
            (Kind::Struct { members, .. }, Value::Object(mut obj), Some(Value::Object(cur))) => {
                for (name, _) in members {
                    if !obj.contains_key(name) {
                        if let Some(v) = cur.get(name) {
                            obj.insert(name.clone(), v.clone());
                        }
                    }
                }
                // Keep the declared member order.
                let ordered = members
                    .iter()
                    .filter_map(|(n, _)| obj.remove(n).map(|v| (n.clone(), v)))
                    .collect();
                Value::Object(ordered)
            }
            (_, value, _) => value,
        }
    }
}

fn valid_fmtstr(f: &str) -> bool {
    let Some(rest) = f.strip_prefix("%.") else {
        return false;
    };
    // strip_suffix, not slicing: `rest` may end in any character.
    let Some(digits) = rest.strip_suffix(['e', 'f', 'g']) else {
        return false;
    };
    (1..=2).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn validate_matrix(
    value: &Value,
    names: &[String],
    maxlen: &[usize],
    elementtype: &ElementType,
) -> Result<Value, SecopError> {
    let obj = value.as_object().ok_or_else(|| {
        SecopError::wrong_type(format!(
            "expected a matrix {{\"len\":[..],\"blob\":\"..\"}}, got {}",
            kind_name(value)
        ))
    })?;
    let lens: Vec<usize> = obj
        .get("len")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .map(|n| n.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect()
        })
        .ok_or_else(|| SecopError::wrong_type("matrix \"len\" must be a list of lengths"))?;
    if lens.len() != names.len() {
        return Err(SecopError::wrong_type(format!(
            "matrix has {} dimensions ({}), \"len\" gives {}",
            names.len(),
            names.join(", "),
            lens.len()
        )));
    }
    for ((len, max), name) in lens.iter().zip(maxlen).zip(names) {
        if len > max {
            return Err(SecopError::range(format!(
                "matrix dimension {name:?} has length {len}, at most {max}"
            )));
        }
    }
    let blob = obj
        .get("blob")
        .and_then(Value::as_str)
        .ok_or_else(|| SecopError::wrong_type("matrix \"blob\" must be a base64 string"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|e| SecopError::wrong_type(format!("matrix blob is not base64: {e}")))?;
    let expected = lens
        .iter()
        .try_fold(elementtype.size, |acc, n| acc.checked_mul(*n))
        .ok_or_else(|| SecopError::range("matrix is too large"))?;
    if bytes.len() != expected {
        return Err(SecopError::wrong_type(format!(
            "matrix blob has {} bytes, {:?} x {} bytes per element needs {expected}",
            bytes.len(),
            lens,
            elementtype.size
        )));
    }
    if let Some(unknown) = obj.keys().find(|k| *k != "len" && *k != "blob") {
        return Err(SecopError::wrong_type(format!(
            "unknown matrix key {unknown:?}"
        )));
    }
    Ok(value.clone())
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn enum_members(members: &[(String, i64)]) -> String {
    members
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn as_number(value: &Value) -> Result<f64, SecopError> {
    value.as_f64().ok_or_else(|| {
        SecopError::wrong_type(format!("expected a number, got {}", kind_name(value)))
    })
}

/// An integer, accepting `5.0` as 5 but refusing `5.5` (never truncate silently).
fn as_integer(value: &Value) -> Result<i64, SecopError> {
    let Value::Number(n) = value else {
        return Err(SecopError::wrong_type(format!(
            "expected an integer, got {}",
            kind_name(value)
        )));
    };
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(SecopError::range(format!("{n} is too large")));
    }
    let x = n.as_f64().unwrap_or(f64::NAN);
    if x.fract() != 0.0 {
        return Err(SecopError::wrong_type(format!(
            "expected an integer, got {n}"
        )));
    }
    if x < i64::MIN as f64 || x >= i64::MAX as f64 {
        return Err(SecopError::range(format!("{n} is too large")));
    }
    Ok(x as i64)
}

fn check_range_f64(x: f64, min: Option<f64>, max: Option<f64>) -> Result<(), SecopError> {
    if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
        let show = |v: Option<f64>| v.map_or("..".to_owned(), |v| v.to_string());
        return Err(SecopError::range(format!(
            "{x} is outside [{}, {}]",
            show(min),
            show(max)
        )));
    }
    Ok(())
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, DataInfoError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| DataInfoError::NotA {
            key: key.to_owned(),
            expected: "a number",
        }),
    }
}

fn opt_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>, DataInfoError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| DataInfoError::NotA {
                key: key.to_owned(),
                expected: "a non-negative integer",
            }),
    }
}

fn int_limits(obj: &Map<String, Value>, type_name: &str) -> Result<(i64, i64), DataInfoError> {
    let get = |key: &str| {
        obj.get(key)
            .ok_or_else(|| DataInfoError::property(type_name, format!("\"{key}\" is mandatory")))?
            .as_i64()
            .ok_or_else(|| DataInfoError::property(type_name, format!("{key} must be an integer")))
    };
    let (min, max) = (get("min")?, get("max")?);
    if min > max {
        return Err(DataInfoError::property(
            type_name,
            format!("min {min} > max {max}"),
        ));
    }
    Ok((min, max))
}

/// Datainfo of a standard `status` parameter with the given codes: a tuple of an enum
/// and a string (accessibles.rst).
pub fn status_datainfo(codes: &[(&str, i64)]) -> DataInfo {
    let members: Map<String, Value> = codes
        .iter()
        .map(|(n, c)| ((*n).to_owned(), Value::from(*c)))
        .collect();
    let code_json = serde_json::json!({"type": "enum", "members": members});
    let text_json = serde_json::json!({"type": "string"});
    let code = DataInfo::of(
        Kind::Enum {
            members: codes.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
        },
        code_json.clone(),
    );
    let text = DataInfo::of(
        Kind::String {
            minchars: 0,
            maxchars: None,
            is_utf8: false,
        },
        text_json.clone(),
    );
    DataInfo::of(
        Kind::Tuple {
            members: vec![code, text],
        },
        serde_json::json!({"type": "tuple", "members": [code_json, text_json]}),
    )
}

#[cfg(test)]
mod tests;
