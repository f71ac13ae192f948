//! Line-based (ASCII) instruments defined in config: query and write templates per
//! parameter, reply patterns, commands, over a serial line or a TCP socket. No Rust
//! per instrument: a LakeShore, a Keithley or a home-made controller is a `[[link]]`
//! and a few `[[module]]` sections.
//!
//! This file is only the protocol: how a parameter is queried and written and how a
//! reply becomes a value. Parameter state, polling, the fault policy, status and
//! Drivable logic are the shared core's ([`crate::configured`]); the line exchange,
//! deadlines and reconnects are the transport's ([`crate::transport`]).
//!
//! Every line sent goes through [`line_safety`]: constant text when the config is
//! loaded, formatted lines before they are written, so that no value can inject a
//! second command into the instrument.

pub mod line_safety;
pub mod template;

use crate::builder::ModuleBuilder;
use crate::configured::{
    ConfiguredDevice, LinkParts, ModuleSpec, ParamId, ParamSpec, Poll, Protocol, Reading, Readings,
};
use crate::drive::{check_class_parameters, standard_accessibles, Abilities, DriveConfig};
use crate::transport::{Failure, Transport};
use crate::{ConfigError, ModuleConfig};
use line_safety::Quoted;
use regex::Regex;
use secop_proto::{DataInfo, ModuleDescription, SecopError};
use serde::Deserialize;
use serde_json::Value;
use template::Template;

/// `[link.ascii]`: line settings of an ASCII instrument.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsciiLink {
    /// Appended to every command (escapes: write "\r\n" in TOML strings).
    #[serde(default = "default_terminator")]
    pub write_terminator: String,
    /// Ends every reply.
    #[serde(default = "default_terminator")]
    pub read_terminator: String,
    /// Sent after connecting; the reply must match `identify_expect`.
    pub identify: Option<String>,
    /// Regular expression the identification reply must match.
    pub identify_expect: Option<String>,
    /// Commands sent after connecting (no reply expected).
    #[serde(default)]
    pub init: Vec<String>,
}

fn default_terminator() -> String {
    "\n".into()
}

/// The part of a `[[module]]` that an ASCII link reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsciiModule {
    /// Readable, Writable, Drivable or Communicator.
    pub class: String,
    #[serde(default, rename = "parameter")]
    pub parameters: Vec<AsciiParameter>,
    #[serde(default, rename = "command")]
    pub commands: Vec<AsciiCommand>,
    pub drive: Option<DriveConfig>,
    /// Seconds between polls of this module (default: the link's `pollinterval`).
    pub pollinterval: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsciiParameter {
    pub name: String,
    pub description: Option<String>,
    pub datainfo: Value,
    /// Command whose reply holds the value.
    pub query: Option<String>,
    /// Regular expression for the reply; the value is the group `value`, else group 1,
    /// else the whole match. Without it the whole (trimmed) reply is the value.
    pub reply: Option<String>,
    /// Template to set the value (makes the parameter writable).
    pub write: Option<String>,
    /// Whether a write is answered by one line (read and checked against `reply`).
    #[serde(default)]
    pub write_reply: bool,
    /// After a write, query the value again for the `changed` reply (default true).
    #[serde(default = "yes")]
    pub readback: bool,
    /// value = raw * scale + offset (doubles).
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// `normal`, `slow` (every slow_factor cycles) or `never`.
    #[serde(default = "normal")]
    pub poll: String,
    /// Changes smaller than this are not sent as updates (numbers).
    #[serde(default)]
    pub deadband: f64,
    /// `restore` (written back to the device at start and after every reconnect) or
    /// `remember` (shown as the last set value); needs `[state] file`.
    pub persist: Option<String>,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn normal() -> String {
    "normal".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsciiCommand {
    pub name: String,
    pub description: Option<String>,
    /// Template sent to the instrument; `{value}` is the argument.
    pub send: String,
    /// Regular expression for a reply line; without it no reply is read.
    pub reply: Option<String>,
    pub argument: Option<Value>,
    pub result: Option<Value>,
}

/// How one parameter is queried and written.
struct Param {
    name: String,
    datainfo: DataInfo,
    query: Option<String>,
    reply: Option<Regex>,
    write: Option<Template>,
    write_reply: bool,
    scale: f64,
    offset: f64,
}

struct Command {
    name: String,
    send: Template,
    reply: Option<Regex>,
    types: crate::fit::CommandTypes,
}

struct Module {
    params: Vec<Param>,
    commands: Vec<Command>,
    /// The line that stops a move (`drive.stop`).
    stop: Option<String>,
}

/// The ASCII protocol of one link, serving all its modules.
pub struct AsciiProtocol {
    transport: Transport,
    ascii: AsciiLink,
    identify_expect: Option<Regex>,
    modules: Vec<Module>,
}

/// A configured device on an ASCII link.
pub type AsciiDevice = ConfiguredDevice<AsciiProtocol>;

/// Build the device of an ASCII link from config; errors name the module and key.
pub fn build(
    link: &LinkParts,
    ascii: Option<&AsciiLink>,
    modules: &[(ModuleConfig, AsciiModule)],
) -> Result<AsciiDevice, ConfigError> {
    let ascii = ascii.cloned().unwrap_or(AsciiLink {
        write_terminator: default_terminator(),
        read_terminator: default_terminator(),
        identify: None,
        identify_expect: None,
        init: Vec::new(),
    });
    if ascii.read_terminator.is_empty() {
        return Err(ConfigError::invalid(
            "ascii.read_terminator",
            "must not be empty",
        ));
    }
    let terminators = [
        ascii.write_terminator.as_str(),
        ascii.read_terminator.as_str(),
    ];
    if let Some(identify) = &ascii.identify {
        constant_line(identify, "ascii.identify", &terminators)?;
    }
    for (i, command) in ascii.init.iter().enumerate() {
        constant_line(command, &format!("ascii.init[{i}]"), &terminators)?;
    }
    let identify_expect = ascii
        .identify_expect
        .as_deref()
        .map(|r| regex(r, "ascii.identify_expect"))
        .transpose()?;
    let mut runtime = Vec::new();
    let mut specs = Vec::new();
    let mut descriptions = Vec::new();
    for (config, spec) in modules {
        let (module, core, description) = build_module(config, spec, &terminators, link)
            .map_err(|e| e.in_module(&config.name))?;
        runtime.push(module);
        specs.push(core);
        descriptions.push(description);
    }
    let protocol = AsciiProtocol {
        transport: Transport::new(link.transport.clone()),
        identify_expect,
        ascii,
        modules: runtime,
    };
    Ok(ConfiguredDevice::new(
        protocol,
        link.core,
        specs,
        descriptions,
    ))
}

impl AsciiProtocol {
    /// The link's terminators: no character of them may appear in a line.
    fn terminators(&self) -> [&str; 2] {
        [&self.ascii.write_terminator, &self.ascii.read_terminator]
    }

    /// Open the link if needed; identify and initialise a fresh session. The session
    /// counts as proved (the link as connected) once the identification matched.
    async fn connect(&mut self) -> Result<(), Failure> {
        if !self.transport.ensure().await? {
            return Ok(());
        }
        let wt = self.ascii.write_terminator.clone();
        let rt = self.ascii.read_terminator.clone();
        if let Some(query) = self.ascii.identify.clone() {
            let reply = self
                .transport
                .transact(&query, &wt, Some(&rt))
                .await?
                .unwrap_or_default();
            if let Some(expect) = &self.identify_expect {
                if !expect.is_match(&reply) {
                    let reason = format!(
                        "unexpected identification {} (expected /{}/)",
                        Quoted(&reply),
                        expect.as_str()
                    );
                    self.transport.mark_garbled();
                    self.transport.drop_connection(&reason);
                    return Err(Failure::garbled(SecopError::communication_failed(reason)));
                }
            }
            self.transport.proved();
        }
        for command in self.ascii.init.clone() {
            self.transport.transact(&command, &wt, None).await?;
        }
        Ok(())
    }

    /// The only way a line reaches the instrument: checked by [`line_safety`] (again,
    /// for lines rendered before), then written with the write terminator; with
    /// `reply`, one reply line is read. Any reply proves the session.
    async fn line(&mut self, line: &str, reply: bool) -> Result<Option<String>, Failure> {
        line_safety::refuse_unsafe(line, &self.terminators()).map_err(Failure::unsent)?;
        self.connect().await?;
        let wt = self.ascii.write_terminator.clone();
        let rt = self.ascii.read_terminator.clone();
        let answer = self
            .transport
            .transact(line, &wt, reply.then_some(rt.as_str()))
            .await?;
        if answer.is_some() {
            self.transport.proved();
        }
        Ok(answer)
    }

    /// `template` filled with `value`, refused (nothing sent) if the line must not be
    /// sent.
    fn render(&self, template: &Template, value: &Value) -> Result<String, Failure> {
        template
            .render_line(value, &self.terminators())
            .map_err(Failure::unsent)
    }

    async fn run_command(
        &mut self,
        m: usize,
        c: usize,
        argument: &Value,
    ) -> Result<Value, Failure> {
        let command = &self.modules[m].commands[c];
        let argument = command.types.instrument_argument(argument.clone());
        let line = self.render(&command.send, &argument)?;
        let wants_reply = command.reply.is_some();
        let reply = self.line(&line, wants_reply).await?;
        let command = &self.modules[m].commands[c];
        let (Some(reply), Some(re)) = (reply, &command.reply) else {
            return Ok(Value::Null);
        };
        let result = extract(Some(re), &reply)
            .map_err(|e| SecopError::hardware(format!("{}: {e}", command.name)))
            .and_then(|text| {
                command
                    .types
                    .result(text)
                    .map_err(|e| e.context(&command.name))
            });
        result.map_err(|e| {
            self.transport.mark_garbled();
            Failure::garbled(e)
        })
    }
}

impl Protocol for AsciiProtocol {
    fn transport(&self) -> &Transport {
        &self.transport
    }

    fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// One query per transaction.
    fn plan(&self, due: &[ParamId]) -> Vec<Vec<ParamId>> {
        due.iter().map(|&id| vec![id]).collect()
    }

    async fn read(&mut self, ids: &[ParamId]) -> Result<Readings, Failure> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(query) = self.modules[id.module].params[id.param].query.clone() else {
                out.push((
                    id,
                    Err(SecopError::read_failed("this parameter has no query")),
                ));
                continue;
            };
            let reply = self.line(&query, true).await?.unwrap_or_default();
            let param = &self.modules[id.module].params[id.param];
            let value = parse_reply(param, &reply).map(|value| Reading { value, raw: reply });
            out.push((id, value));
        }
        Ok(out)
    }

    async fn write(&mut self, id: ParamId, value: &Value) -> Result<(), Failure> {
        let param = &self.modules[id.module].params[id.param];
        let Some(template) = param.write.clone() else {
            return Err(Failure::unsent(SecopError::read_only(format!(
                "{} is read-only",
                param.name
            ))));
        };
        let raw = raw_for_write(param, value);
        // Refused before connecting: nothing is sent for a value that cannot be.
        let line = self.render(&template, &raw)?;
        let wants_reply = param.write_reply;
        let reply = self.line(&line, wants_reply).await?;
        let param = &self.modules[id.module].params[id.param];
        if let (Some(reply), Some(re)) = (reply, &param.reply) {
            if !re.is_match(&reply) {
                let error = SecopError::hardware(format!(
                    "{}: the device answered {} to {}",
                    param.name,
                    Quoted(&reply),
                    Quoted(&line)
                ));
                self.transport.mark_garbled();
                return Err(Failure::garbled(error));
            }
        }
        Ok(())
    }

    async fn command(
        &mut self,
        module: usize,
        command: &str,
        argument: &Value,
    ) -> Option<Result<Value, Failure>> {
        let configured = self.modules[module]
            .commands
            .iter()
            .position(|c| c.name == command);
        if let Some(c) = configured {
            return Some(self.run_command(module, c, argument).await);
        }
        if command == "stop" {
            if let Some(stop) = self.modules[module].stop.clone() {
                return Some(self.line(&stop, false).await.map(|_| Value::Null));
            }
        }
        None
    }
}

fn regex(text: &str, key: &str) -> Result<Regex, ConfigError> {
    Regex::new(text).map_err(|e| ConfigError::at(key, e))
}

/// A command line from the config (query, init, stop) that is sent as it is.
fn constant_line(text: &str, key: &str, terminators: &[&str]) -> Result<(), ConfigError> {
    line_safety::check(text, terminators).map_err(|error| {
        ConfigError::at(
            key,
            ConfigError::Line {
                text: text.to_owned(),
                error,
            },
        )
    })
}

/// A template from the config whose constant text can be sent on this link.
fn template(text: &str, key: &str, terminators: &[&str]) -> Result<Template, ConfigError> {
    let template = Template::parse(text).map_err(|e| ConfigError::at(key, e))?;
    template.check_text(terminators).map_err(|e| {
        let error = template::TemplateError {
            text: text.to_owned(),
            problem: e.into(),
        };
        ConfigError::at(key, error)
    })?;
    Ok(template)
}

/// Why a reply line gives no value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum ReplyError {
    #[error("reply {} does not match /{pattern}/", Quoted(reply))]
    NoMatch { reply: String, pattern: String },
    /// `expected` is e.g. "a number".
    #[error("{} is not {expected}", Quoted(text))]
    Not {
        text: String,
        expected: &'static str,
    },
    #[error("{} is not JSON: {reason}", Quoted(text))]
    NotJson { text: String, reason: String },
    #[error(transparent)]
    Fit(crate::fit::ConvertError),
}

fn parse_reply(param: &Param, reply: &str) -> Result<Value, SecopError> {
    let text = extract(param.reply.as_ref(), reply)
        .map_err(|e| SecopError::hardware(format!("{}: {e}", param.name)))?;
    convert(&param.datainfo, text.trim(), param.scale, param.offset)
        .map_err(|e| SecopError::hardware(format!("{}: reply {}: {e}", param.name, Quoted(reply))))
        .and_then(|v| {
            crate::fit::device_value(&param.datainfo, v, reply).map_err(|e| e.context(&param.name))
        })
}

fn extract<'a>(pattern: Option<&Regex>, reply: &'a str) -> Result<&'a str, ReplyError> {
    let Some(re) = pattern else {
        return Ok(reply);
    };
    let caps = re.captures(reply).ok_or_else(|| ReplyError::NoMatch {
        reply: reply.to_owned(),
        pattern: re.as_str().to_owned(),
    })?;
    Ok(caps
        .name("value")
        .or_else(|| caps.get(1))
        .or_else(|| caps.get(0))
        .map_or("", |m| m.as_str()))
}

fn convert(datainfo: &DataInfo, text: &str, scale: f64, offset: f64) -> Result<Value, ReplyError> {
    use crate::fit::ConvertError as E;
    crate::fit::convert(datainfo, text, scale, offset).map_err(|e| match e {
        E::Not { text, expected } => ReplyError::Not { text, expected },
        E::NotJson { text, reason } => ReplyError::NotJson { text, reason },
        other => ReplyError::Fit(other),
    })
}

/// The raw value to write for a client's value (inverse of scale/offset).
fn raw_for_write(param: &Param, value: &Value) -> Value {
    crate::fit::instrument_value(&param.datainfo, param.scale, param.offset, value)
}

fn build_module(
    config: &ModuleConfig,
    spec: &AsciiModule,
    terminators: &[&str],
    link: &LinkParts,
) -> Result<(Module, ModuleSpec, ModuleDescription), ConfigError> {
    let classes: &[&str] = match spec.class.as_str() {
        "Readable" => &["Readable"],
        "Writable" => &["Writable"],
        "Drivable" => &["Drivable"],
        "Communicator" => &["Communicator"],
        other => {
            return Err(ConfigError::invalid(
                "class",
                format!("{other:?} is not Readable, Writable, Drivable or Communicator"),
            ))
        }
    };
    let has_status = spec.class != "Communicator";
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
        let datainfo = DataInfo::from_json(&p.datainfo)
            .map_err(|e| ConfigError::at(format!("{key}.datainfo"), e))?;
        let reply = p
            .reply
            .as_deref()
            .map(|r| regex(r, &format!("{key}.reply")))
            .transpose()?;
        if let Some(query) = &p.query {
            constant_line(query, &format!("{key}.query"), terminators)?;
        }
        let write = p
            .write
            .as_deref()
            .map(|t| template(t, &format!("{key}.write"), terminators))
            .transpose()?;
        let poll = Poll::parse(&format!("{key}.poll"), &p.poll)?;
        if p.query.is_none() && write.is_none() {
            return Err(ConfigError::invalid(
                key,
                "needs a query, a write template, or both",
            ));
        }
        if !(p.scale.is_finite() && p.scale != 0.0) {
            return Err(ConfigError::invalid(
                format!("{key}.scale"),
                "must be a non-zero number",
            ));
        }
        crate::limits::finite(&format!("{key}.offset"), p.offset)?;
        crate::limits::number(&format!("{key}.deadband"), p.deadband, 0.0, f64::MAX, "")?;
        crate::fit::check_ascii_parameter(p, &datainfo, write.as_ref(), &key)?;
        let description = p.description.clone().unwrap_or_else(|| p.name.clone());
        builder = builder
            .param(
                &p.name,
                &description,
                p.datainfo.clone(),
                write.is_none(),
                write.is_some(),
            )
            .map_err(|e| ConfigError::at(&key, e))?;
        core.push(ParamSpec {
            name: p.name.clone(),
            datainfo: datainfo.clone(),
            readable: p.query.is_some(),
            writable: write.is_some(),
            readback: p.readback && p.query.is_some(),
            poll,
            deadband: p.deadband,
            persist: crate::state::Persist::parse(
                &format!("{key}.persist"),
                p.persist.as_deref(),
                write.is_some(),
            )?,
        });
        params.push(Param {
            name: p.name.clone(),
            datainfo,
            query: p.query.clone(),
            reply,
            write,
            write_reply: p.write_reply,
            scale: p.scale,
            offset: p.offset,
        });
    }
    if has_status {
        builder = standard_accessibles(builder)?;
    }
    let mut commands = Vec::new();
    for (i, c) in spec.commands.iter().enumerate() {
        let key = format!("command[{i}] ({:?})", c.name);
        let send = template(&c.send, &format!("{key}.send"), terminators)?;
        let reply = c
            .reply
            .as_deref()
            .map(|r| regex(r, &format!("{key}.reply")))
            .transpose()?;
        if send.has_value() && c.argument.is_none() {
            return Err(ConfigError::invalid(
                key,
                "send uses {value} but no argument datainfo is given",
            ));
        }
        let description = c.description.clone().unwrap_or_else(|| c.name.clone());
        builder = builder
            .command(&c.name, &description, c.argument.clone(), c.result.clone())
            .map_err(|e| ConfigError::at(&key, e))?;
        let types = crate::fit::check_ascii_command(c, &send, &key)?;
        commands.push(Command {
            name: c.name.clone(),
            send,
            reply,
            types,
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
                Template::parse(stop).map_err(|e| ConfigError::at("drive.stop", e))?;
                constant_line(stop, "drive.stop", terminators)?;
            }
            if !commands.iter().any(|c| c.name == "stop") {
                builder = builder.command("stop", "stop the move", None, None)?;
            }
            Some(d.clone())
        }
        (None, "Drivable") => {
            return Err(ConfigError::invalid(
                "drive",
                "a Drivable needs a [module.drive] section (tolerance, ...)",
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
            params.iter().find(|p| p.name == name).map(|p| Abilities {
                readable: p.query.is_some(),
                writable: p.write.is_some(),
            })
        },
        "needs a query",
        "needs a write template",
    )?;
    let mut description = builder.build();
    if config.description.is_none() {
        description.description = format!("{} on an ASCII link", spec.class);
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
            has_status,
            pollinterval,
        },
        description,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkConfig;
    use secop_actors::device_actor::{Backend, Effects};

    /// A garbled reply (lossily decoded: U+FFFD) reaches error and status texts as
    /// ASCII, so that clients do not drop the message.
    #[test]
    fn garbled_replies_give_ascii_error_texts() {
        let e = ReplyError::NoMatch {
            reply: "\u{fffd}0".into(),
            pattern: "^T=(.*)$".into(),
        };
        assert!(e.to_string().is_ascii(), "{e}");
        let e = ReplyError::Not {
            text: "1\u{fffd}".into(),
            expected: "a number",
        };
        assert!(e.to_string().is_ascii(), "{e}");
    }
    use serde_json::json;

    #[test]
    fn conversions() {
        let dbl = DataInfo::from_json(&json!({"type": "double"})).unwrap();
        assert_eq!(convert(&dbl, "+1.5E+1", 2.0, 1.0).unwrap(), json!(31.0));
        assert!(convert(&dbl, "abc", 1.0, 0.0)
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        let en =
            DataInfo::from_json(&json!({"type": "enum", "members": {"off": 0, "on": 1}})).unwrap();
        assert_eq!(convert(&en, "ON", 1.0, 0.0).unwrap(), json!(1));
        assert_eq!(convert(&en, "0", 1.0, 0.0).unwrap(), json!(0));
        let b = DataInfo::from_json(&json!({"type": "bool"})).unwrap();
        assert_eq!(convert(&b, "1", 1.0, 0.0).unwrap(), json!(true));
        let re = Regex::new(r"^T=(?P<value>\S+) K$").unwrap();
        assert_eq!(extract(Some(&re), "T=4.2 K").unwrap(), "4.2");
        assert_eq!(
            extract(Some(&re), "garbage").unwrap_err().to_string(),
            "reply \"garbage\" does not match /^T=(?P<value>\\S+) K$/"
        );
    }

    /// A link on `tcp` with one Writable module `X`: a string `_label` written with
    /// `LABEL {value}` and a `communicate` command that sends its argument as is.
    fn label_link(tcp: &str, ascii: Value, extra: Value) -> Result<AsciiDevice, ConfigError> {
        let mut link = json!({"name": "dev", "protocol": "ascii", "tcp": tcp, "timeout": 0.5});
        link["ascii"] = ascii;
        let link: LinkConfig = crate::from_json(link)?;
        let mut spec = json!({
            "class": "Writable",
            "parameter": [
                {"name": "value", "datainfo": {"type": "double"}, "query": "VAL?"},
                {"name": "target", "datainfo": {"type": "double"}, "write": "VAL {value}",
                 "readback": false},
                {"name": "_label", "datainfo": {"type": "string", "isUTF8": true},
                 "write": "LABEL {value}"},
            ],
            "command": [
                {"name": "communicate", "send": "{value}", "reply": "^(.*)$",
                 "argument": {"type": "string", "isUTF8": true}, "result": {"type": "string"}},
            ],
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                match (spec.get_mut(k), v) {
                    (Some(Value::Array(list)), Value::Array(more)) => list.extend(more.clone()),
                    _ => {
                        spec.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let spec: AsciiModule = crate::from_json(spec)?;
        let config = ModuleConfig {
            name: "X".into(),
            description: None,
            properties: Default::default(),
            settings: Value::Null,
        };
        link.validate()?;
        build(&link.parts(), link.ascii.as_ref(), &[(config, spec)])
    }

    fn build_error(ascii: Value, extra: Value) -> String {
        match label_link("127.0.0.1:9", ascii, extra) {
            Ok(_) => panic!("the config was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_refuses_templates_that_would_send_forbidden_characters() {
        let tab = build_error(
            json!(null),
            json!({"parameter": [{"name": "_t", "datainfo": {"type": "double"},
                                  "write": "SETP\t{value}"}]}),
        );
        assert!(
            tab.contains("module \"X\": parameter[3] (\"_t\").write: template")
                && tab.contains("character 0x09 (TAB) cannot be sent to the instrument"),
            "{tab}"
        );
        let umlaut = build_error(
            json!(null),
            json!({"command": [{"name": "_go", "send": "GRÜN"}]}),
        );
        assert!(
            umlaut.contains("command[1] (\"_go\").send: template")
                && umlaut.contains("character U+00DC ('Ü') cannot be sent to the instrument"),
            "{umlaut}"
        );
        let query = build_error(
            json!(null),
            json!({"parameter": [{"name": "_q", "datainfo": {"type": "double"},
                                  "query": "A?\r\nB?"}]}),
        );
        assert!(
            query.contains("parameter[3] (\"_q\").query: ")
                && query.contains("character 0x0D (CR) cannot be sent to the instrument"),
            "{query}"
        );
        // A printable terminator is refused in the text: it would end the line early.
        let custom = build_error(
            json!({"write_terminator": ";", "read_terminator": "#"}),
            json!({"command": [{"name": "_two", "send": "A;B"}]}),
        );
        assert!(
            custom.contains("command[1] (\"_two\").send: template")
                && custom.contains("character 0x3B (';') cannot be sent to the instrument"),
            "{custom}"
        );
        let read_term = build_error(
            json!({"write_terminator": ";", "read_terminator": "#"}),
            json!({"command": [{"name": "_hash", "send": "A#{value}",
                                "argument": {"type": "int"}}]}),
        );
        assert!(read_term.contains("character 0x23 ('#')"), "{read_term}");
        let init = build_error(json!({"init": ["MODE 1", "MODE\u{7}2"]}), json!({}));
        assert!(
            init.contains("ascii.init[1]: ")
                && init.contains("character 0x07 (BEL) cannot be sent to the instrument"),
            "{init}"
        );
        let identify = build_error(json!({"identify": "*IDN?\n"}), json!({}));
        assert!(
            identify.contains("ascii.identify: ") && identify.contains("0x0A (LF)"),
            "{identify}"
        );
        let stop = build_error(
            json!(null),
            json!({"class": "Drivable", "drive": {"tolerance": 1.0, "stop": "STOP\u{7f}"}}),
        );
        assert!(
            stop.contains("drive.stop: ") && stop.contains("character 0x7F (DEL)"),
            "{stop}"
        );
        // Printable ASCII, placeholders and escaped braces stay fine.
        assert!(label_link(
            "127.0.0.1:9",
            json!({"init": ["MODE 1"], "identify": "*IDN?"}),
            json!({"command": [{"name": "_b", "send": "{{x}} ~ !"}]}),
        )
        .is_ok());
    }

    /// Accepts one connection on a loopback port and collects every byte it receives.
    async fn instrument() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut chunk = [0u8; 1024];
            while let Ok(n) = socket.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                log.lock().unwrap().extend_from_slice(&chunk[..n]);
                // Answer every query-like line so that commands with a reply finish.
                if chunk[..n].ends_with(b"?\n") {
                    let _ = socket.write_all(b"7\n").await;
                }
            }
        });
        (addr, received)
    }

    fn received(log: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>) -> String {
        String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
    }

    #[tokio::test]
    async fn a_value_cannot_inject_a_second_command() {
        let (addr, log) = instrument().await;
        let mut backend = label_link(&addr, json!(null), json!({})).unwrap();
        let mut fx = Effects::default();
        let mut values: Vec<(String, String)> = (0u8..0x20)
            .chain([0x7F])
            .map(|b| {
                (
                    format!("x{}SETP 9999.000", char::from(b)),
                    format!("0x{b:02X}"),
                )
            })
            .collect();
        values.push(("café".into(), "U+00E9 ('é')".into()));
        for (value, named) in &values {
            let e = backend
                .change("X", "_label", json!(value), &mut fx)
                .await
                .unwrap_err();
            assert_eq!(
                e.class,
                secop_proto::ErrorClass::RangeError,
                "{value:?}: {e}"
            );
            assert!(
                e.text.contains(&format!("character {named}"))
                    && e.text.contains("cannot be sent to the instrument"),
                "{value:?}: {e}"
            );
            let e = backend
                .execute("X", "communicate", json!(value), &mut fx)
                .await
                .unwrap_err();
            assert_eq!(
                e.class,
                secop_proto::ErrorClass::RangeError,
                "{value:?}: {e}"
            );
        }
        let e = backend
            .execute("X", "communicate", json!("VAL 7\r\nSETP 1"), &mut fx)
            .await
            .unwrap_err();
        assert!(e.text.contains("character 0x0D (CR)"), "{e}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(received(&log), "", "nothing may reach the instrument");
        // A clean value goes out as one line.
        backend
            .change("X", "_label", json!("x SETP 1"), &mut fx)
            .await
            .unwrap();
        let reply = backend
            .execute("X", "communicate", json!("VAL?"), &mut fx)
            .await
            .unwrap();
        assert_eq!(reply, json!("7"));
        assert_eq!(received(&log), "LABEL x SETP 1\nVAL?\n");
    }
}
