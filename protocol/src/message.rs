//! Parsing of requests and formatting of replies and events.
//!
//! A SECoP line is `action[ specifier[ data]]`: it is split at the first two spaces
//! only, the rest of the line is JSON. Replies echo the request's action and specifier
//! byte for byte, because clients match replies to requests by exactly those.

#[cfg(test)]
use crate::error::ErrorClass;
use crate::error::SecopError;
use crate::json::write_json;
use serde_json::Value;

/// The identification reply of SECoP 2.0.
pub const IDN_REPLY_V2: &str = "ISSE,SECoP,,v2.0";

/// The three parts of a line, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMessage<'a> {
    pub action: &'a str,
    pub specifier: &'a str,
    /// The JSON part with surrounding blanks removed; `None` when absent or empty.
    pub data: Option<&'a str>,
}

/// Split a line (without its LF; a trailing CR is tolerated) into its three parts.
pub fn split(line: &str) -> RawMessage<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (action, rest) = match line.split_once(' ') {
        Some((a, r)) => (a, Some(r)),
        None => (line, None),
    };
    let (specifier, data) = match rest {
        None => ("", None),
        Some(rest) => match rest.split_once(' ') {
            Some((s, d)) => (s, Some(d)),
            None => (rest, None),
        },
    };
    let data = data.map(str::trim).filter(|d| !d.is_empty());
    RawMessage {
        action,
        specifier,
        data,
    }
}

/// The remote logging levels of the `logging` message, most verbose first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Debug,
    Info,
    Error,
    Off,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Error => "error",
            LogLevel::Off => "off",
        }
    }

    /// Whether an event of `event` level passes a connection set to `self`.
    pub fn admits(self, event: LogLevel) -> bool {
        self != LogLevel::Off && event != LogLevel::Off && event >= self
    }

    fn from_json(value: &Value) -> Result<LogLevel, SecopError> {
        match value {
            Value::String(s) => match s.as_str() {
                "debug" => Ok(LogLevel::Debug),
                "info" => Ok(LogLevel::Info),
                "error" => Ok(LogLevel::Error),
                "off" => Ok(LogLevel::Off),
                other => Err(SecopError::range(format!(
                    "unknown logging level {other:?}: use \"debug\", \"info\", \"error\" or \"off\""
                ))),
            },
            // The spec's own example (and older clients) use `false` for "off".
            Value::Bool(false) => Ok(LogLevel::Off),
            _ => Err(SecopError::wrong_type(
                "logging level must be a string: \"debug\", \"info\", \"error\" or \"off\"",
            )),
        }
    }
}

/// A request, interpreted. Names are owned so that a request can travel to an actor.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Identify,
    Describe,
    /// `activate` (module `None`) or module-wise `activate m`.
    Activate {
        module: Option<String>,
    },
    Deactivate {
        module: Option<String>,
    },
    Read {
        module: String,
        parameter: String,
    },
    Change {
        module: String,
        parameter: String,
        value: Value,
    },
    Do {
        module: String,
        command: String,
        argument: Value,
    },
    Ping {
        token: String,
    },
    Check {
        module: String,
        accessible: String,
        value: Value,
    },
    /// `logging` for the whole node (module `None`) or one module.
    Logging {
        module: Option<String>,
        level: LogLevel,
    },
}

/// A parsed request together with the exact action and specifier to echo.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub action: String,
    pub specifier: String,
    pub request: Request,
}

/// A request that could not be interpreted, with what is needed to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRequest {
    pub action: String,
    pub specifier: String,
    pub error: SecopError,
}

impl RejectedRequest {
    /// The `error_<action> <specifier> [...]` line for this rejection.
    pub fn to_line(&self) -> Vec<u8> {
        error_reply(&self.action, &self.specifier, &self.error)
    }
}

/// Outcome of [`parse_request`]: empty lines are no request at all.
pub type ParseResult = Option<Result<ParsedRequest, RejectedRequest>>;

/// Interpret one line (without LF). Returns `None` for an empty line, which the
/// specification reserves (telnet users pressing return) and which gets no answer.
pub fn parse_request(line: &str) -> ParseResult {
    let raw = split(line);
    if raw.action.is_empty() && raw.specifier.is_empty() && raw.data.is_none() {
        return None;
    }
    let reject = |error: SecopError| RejectedRequest {
        action: raw.action.to_owned(),
        specifier: raw.specifier.to_owned(),
        error,
    };
    Some(
        interpret(&raw)
            .map_err(reject)
            .map(|request| ParsedRequest {
                action: raw.action.to_owned(),
                specifier: raw.specifier.to_owned(),
                request,
            }),
    )
}

fn interpret(raw: &RawMessage<'_>) -> Result<Request, SecopError> {
    match raw.action {
        "*IDN?" => Ok(Request::Identify),
        // Extra words after `describe` are ignored (must-accept).
        "describe" => Ok(Request::Describe),
        "activate" => Ok(Request::Activate {
            module: module_only(raw.specifier)?,
        }),
        "deactivate" => Ok(Request::Deactivate {
            module: module_only(raw.specifier)?,
        }),
        // The token is the specifier; anything after it is ignored.
        "ping" => Ok(Request::Ping {
            token: raw.specifier.to_owned(),
        }),
        "read" => {
            let (module, parameter) = module_and_accessible(raw.specifier)?;
            Ok(Request::Read { module, parameter })
        }
        "change" => {
            let (module, parameter) = module_and_accessible(raw.specifier)?;
            Ok(Request::Change {
                module,
                parameter,
                value: json_or_null(raw.data)?,
            })
        }
        "do" => {
            let (module, command) = module_and_accessible(raw.specifier)?;
            Ok(Request::Do {
                module,
                command,
                argument: json_or_null(raw.data)?,
            })
        }
        "check" => {
            let (module, accessible) = module_and_accessible(raw.specifier)?;
            Ok(Request::Check {
                module,
                accessible,
                value: json_or_null(raw.data)?,
            })
        }
        "logging" => {
            let module = module_only(raw.specifier)?;
            let level = LogLevel::from_json(&json_or_null(raw.data)?)?;
            Ok(Request::Logging { module, level })
        }
        "" => Err(SecopError::protocol("empty action")),
        other => Err(SecopError::protocol(format!("unknown action {other:?}"))),
    }
}

/// Missing data is treated as `null` (must-accept rule 4); present data must be JSON.
fn json_or_null(data: Option<&str>) -> Result<Value, SecopError> {
    match data {
        None => Ok(Value::Null),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| SecopError::bad_json(format!("data is not valid JSON: {e}"))),
    }
}

/// `m`, `m:p` (widened to `m`, rule 5) or empty (the whole node).
fn module_only(specifier: &str) -> Result<Option<String>, SecopError> {
    let module = specifier.split(':').next().unwrap_or("");
    if module.is_empty() {
        if specifier.is_empty() {
            return Ok(None);
        }
        return Err(SecopError::protocol(format!(
            "malformed specifier {specifier:?}: expected a module name"
        )));
    }
    Ok(Some(module.to_owned()))
}

/// `m:a`, with further `:` parts ignored (rule 5).
fn module_and_accessible(specifier: &str) -> Result<(String, String), SecopError> {
    let mut parts = specifier.split(':');
    let module = parts.next().unwrap_or("");
    let accessible = parts.next().unwrap_or("");
    if module.is_empty() || accessible.is_empty() {
        return Err(SecopError::protocol(format!(
            "malformed specifier {specifier:?}: expected <module>:<accessible>"
        )));
    }
    Ok((module.to_owned(), accessible.to_owned()))
}

/// Whether `name` is a valid SECoP name: `[A-Za-z_][A-Za-z0-9_]{0,62}`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
        _ => return false,
    }
    bytes.len() <= 63
        && bytes
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

// ----------------------------------------------------------------------------------
// Formatting

/// `action[ specifier[ data]]\n`. An empty specifier followed by data gives the two
/// spaces in a row that the specification asks for (`pong  [...]`).
pub fn line(action: &str, specifier: &str, data: Option<&[u8]>) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(action.len() + specifier.len() + data.map_or(0, |d| d.len()) + 3);
    out.extend_from_slice(action.as_bytes());
    if !specifier.is_empty() || data.is_some() {
        out.push(b' ');
        out.extend_from_slice(specifier.as_bytes());
    }
    if let Some(data) = data {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
    out
}

/// The qualifiers of a data report.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Qualifiers {
    /// UNIX time in seconds when the value was obtained.
    pub timestamp: Option<f64>,
    /// Uncertainty, in the unit of the value.
    pub uncertainty: Option<f64>,
}

impl Qualifiers {
    pub fn at(timestamp: f64) -> Self {
        Qualifiers {
            timestamp: Some(timestamp),
            uncertainty: None,
        }
    }

    /// `{"t":...,"e":...}` with the finite ones (JSON has no NaN or infinity), written
    /// directly: a report is formatted for every value the node gets.
    fn write_to(self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for (key, x) in [
            (&b"\"t\":"[..], self.timestamp),
            (&b"\"e\":"[..], self.uncertainty),
        ] {
            if let Some(x) = x.filter(|x| x.is_finite()) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(key);
                write_json(out, &x);
            }
        }
        out.push(b'}');
    }
}

/// `[value,{qualifiers}]`, serialised once so that the same bytes can go to every client.
pub fn data_report(value: &Value, qualifiers: Qualifiers) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.push(b'[');
    write_json(&mut out, value);
    out.push(b',');
    qualifiers.write_to(&mut out);
    out.push(b']');
    out
}

/// `["Class","text",{info}]`, optionally with a timestamp in the info object.
pub fn error_report(error: &SecopError, timestamp: Option<f64>) -> Vec<u8> {
    let mut info = error.info.as_deref().cloned().unwrap_or_default();
    if let Some(t) = timestamp.and_then(crate::json::number) {
        info.insert("t".into(), t);
    }
    let mut out = Vec::with_capacity(64);
    out.push(b'[');
    write_json(&mut out, error.class.as_str());
    out.push(b',');
    write_json(&mut out, &error.text);
    out.push(b',');
    write_json(&mut out, &info);
    out.push(b']');
    out
}

/// `error_<action> <specifier> [...]\n`: the reply to any failed request.
pub fn error_reply(action: &str, specifier: &str, error: &SecopError) -> Vec<u8> {
    let action = sanitize_token(action);
    line(
        &format!("error_{action}"),
        &sanitize_token(specifier),
        Some(&error_report(error, None)),
    )
}

/// An action or specifier we echo must not break the line format: what we got from a
/// client is already free of spaces and LF, but may hold control or non-ASCII
/// characters (after lossy UTF-8 decoding); those are replaced by `?` so that our
/// output stays 7-bit clean.
fn sanitize_token(token: &str) -> std::borrow::Cow<'_, str> {
    if token.bytes().all(|b| b.is_ascii_graphic()) {
        std::borrow::Cow::Borrowed(token)
    } else {
        std::borrow::Cow::Owned(
            token
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect(),
        )
    }
}

/// `pong <token> [null,{"t":...}]\n`.
pub fn pong(token: &str, now: f64) -> Vec<u8> {
    line(
        "pong",
        token,
        Some(&data_report(&Value::Null, Qualifiers::at(now))),
    )
}

/// `log <module>:<level> "<text>"\n`.
pub fn log_event(module: &str, level: LogLevel, text: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(text.len() + 2);
    write_json(&mut data, text);
    line("log", &format!("{module}:{}", level.as_str()), Some(&data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(line: &str) -> ParsedRequest {
        match parse_request(line) {
            Some(Ok(p)) => p,
            other => panic!("{line:?} → {other:?}"),
        }
    }

    fn err(line: &str) -> RejectedRequest {
        match parse_request(line) {
            Some(Err(r)) => r,
            other => panic!("{line:?} → {other:?}"),
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn split_at_first_two_spaces_only() {
        let m = split("change m:p [1, 2,  3] ");
        assert_eq!(m.action, "change");
        assert_eq!(m.specifier, "m:p");
        assert_eq!(m.data, Some("[1, 2,  3]"));
        let m = split("ping");
        assert_eq!((m.action, m.specifier, m.data), ("ping", "", None));
        let m = split("pong  [null,{}]");
        assert_eq!(
            (m.action, m.specifier, m.data),
            ("pong", "", Some("[null,{}]"))
        );
        assert_eq!(split("read m:p\r").specifier, "m:p");
    }

    #[test]
    fn every_request_form() {
        assert_eq!(ok("*IDN?").request, Request::Identify);
        assert_eq!(ok("describe").request, Request::Describe);
        assert_eq!(ok("activate").request, Request::Activate { module: None });
        assert_eq!(
            ok("activate T").request,
            Request::Activate {
                module: Some("T".into())
            }
        );
        assert_eq!(
            ok("deactivate").request,
            Request::Deactivate { module: None }
        );
        assert_eq!(
            ok("deactivate T").request,
            Request::Deactivate {
                module: Some("T".into())
            }
        );
        assert_eq!(
            ok("read T:value").request,
            Request::Read {
                module: "T".into(),
                parameter: "value".into()
            }
        );
        assert_eq!(
            ok("change T:target 12.5").request,
            Request::Change {
                module: "T".into(),
                parameter: "target".into(),
                value: json!(12.5)
            }
        );
        assert_eq!(
            ok(r#"do T:setpid {"p": 1, "i": 2}"#).request,
            Request::Do {
                module: "T".into(),
                command: "setpid".into(),
                argument: json!({"p":1,"i":2})
            }
        );
        assert_eq!(
            ok("ping abc").request,
            Request::Ping {
                token: "abc".into()
            }
        );
        assert_eq!(
            ok("check T:target 3").request,
            Request::Check {
                module: "T".into(),
                accessible: "target".into(),
                value: json!(3)
            }
        );
        assert_eq!(
            ok(r#"logging T "debug""#).request,
            Request::Logging {
                module: Some("T".into()),
                level: LogLevel::Debug
            }
        );
        assert_eq!(
            ok(r#"logging  "info""#).request,
            Request::Logging {
                module: None,
                level: LogLevel::Info
            }
        );
    }

    #[test]
    fn must_accept_rules() {
        // extra words are ignored
        assert_eq!(ok("describe foo bar").request, Request::Describe);
        assert_eq!(
            ok("ping tok extra").request,
            Request::Ping {
                token: "tok".into()
            }
        );
        assert_eq!(
            ok("activate m extra").request,
            Request::Activate {
                module: Some("m".into())
            }
        );
        assert_eq!(
            ok("read m:p extra").request,
            Request::Read {
                module: "m".into(),
                parameter: "p".into()
            }
        );
        // more specifier parts than understood
        let p = ok("read m:p:extra");
        assert_eq!(
            p.request,
            Request::Read {
                module: "m".into(),
                parameter: "p".into()
            }
        );
        assert_eq!(p.specifier, "m:p:extra", "specifier echoed byte for byte");
        assert_eq!(
            ok("activate m:p").request,
            Request::Activate {
                module: Some("m".into())
            }
        );
        // do without argument equals do with null
        assert_eq!(ok("do m:stop").request, ok("do m:stop null").request);
        // logging false means off
        assert_eq!(
            ok("logging m false").request,
            Request::Logging {
                module: Some("m".into()),
                level: LogLevel::Off
            }
        );
        // empty lines are no request
        assert!(parse_request("").is_none());
        assert!(parse_request("\r").is_none());
    }

    #[test]
    fn rejections_carry_the_right_class_and_echo() {
        let r = err("foo bar");
        assert_eq!(r.error.class, ErrorClass::ProtocolError);
        assert!(text(r.to_line()).starts_with("error_foo bar [\"ProtocolError\","));
        let r = err("meas:volt?");
        assert_eq!(
            text(r.to_line()),
            "error_meas:volt?  [\"ProtocolError\",\"unknown action \\\"meas:volt?\\\"\",{}]\n"
        );
        assert_eq!(err("read m").error.class, ErrorClass::ProtocolError);
        assert_eq!(err("read :p").error.class, ErrorClass::ProtocolError);
        assert_eq!(err("read m:").error.class, ErrorClass::ProtocolError);
        assert_eq!(err("change m:p {bad").error.class, ErrorClass::BadJSON);
        assert_eq!(err("do m:c [1,").error.class, ErrorClass::BadJSON);
        assert_eq!(err("logging m 5").error.class, ErrorClass::WrongType);
        assert_eq!(
            err("logging m \"loud\"").error.class,
            ErrorClass::RangeError
        );
        assert_eq!(err("logging m {").error.class, ErrorClass::BadJSON);
        assert_eq!(err(" x").error.class, ErrorClass::ProtocolError);
    }

    #[test]
    fn formatting() {
        assert_eq!(text(line("active", "", None)), "active\n");
        assert_eq!(text(line("active", "T", None)), "active T\n");
        assert_eq!(text(pong("", 1.5)), "pong  [null,{\"t\":1.5}]\n");
        assert_eq!(text(pong("x1", 2.0)), "pong x1 [null,{\"t\":2.0}]\n");
        assert_eq!(
            text(data_report(&json!([100, "Ä"]), Qualifiers::at(3.25))),
            "[[100,\"\\u00c4\"],{\"t\":3.25}]"
        );
        let both = Qualifiers {
            timestamp: Some(1.0e9),
            uncertainty: Some(0.25),
        };
        assert_eq!(
            text(data_report(&json!(1), both)),
            "[1,{\"t\":1000000000.0,\"e\":0.25}]"
        );
        // JSON has no NaN: a qualifier that is not finite is left out
        let odd = Qualifiers {
            timestamp: Some(f64::NAN),
            uncertainty: Some(0.5),
        };
        assert_eq!(text(data_report(&json!(1), odd)), "[1,{\"e\":0.5}]");
        assert_eq!(
            text(data_report(&json!(null), Qualifiers::default())),
            "[null,{}]"
        );
        let e = SecopError::range("too big").with_info("closest_valid", json!(10));
        assert_eq!(
            text(error_reply("change", "T:target", &e)),
            "error_change T:target [\"RangeError\",\"too big\",{\"closest_valid\":10}]\n"
        );
        assert_eq!(
            text(error_report(&SecopError::hardware("x"), Some(7.0))),
            "[\"HardwareError\",\"x\",{\"t\":7.0}]"
        );
        assert_eq!(
            text(log_event("T", LogLevel::Info, "hi \"there\"")),
            "log T:info \"hi \\\"there\\\"\"\n"
        );
        // non-ASCII garbage in echoed parts never leaves the gateway raw
        assert!(text(error_reply("fö", "x", &SecopError::protocol("p"))).is_ascii());
    }

    #[test]
    fn names() {
        assert!(is_valid_name("T"));
        assert!(is_valid_name("_custom1"));
        assert!(!is_valid_name("1abc"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a-b"));
        assert!(is_valid_name(&"a".repeat(63)));
        assert!(!is_valid_name(&"a".repeat(64)));
    }

    #[test]
    fn log_levels() {
        assert!(LogLevel::Debug.admits(LogLevel::Info));
        assert!(LogLevel::Info.admits(LogLevel::Error));
        assert!(!LogLevel::Error.admits(LogLevel::Info));
        assert!(!LogLevel::Off.admits(LogLevel::Error));
    }
}
