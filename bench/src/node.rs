//! What the load generator knows about the node (from `*IDN?` and `describe`), and
//! the verification of every message it receives.

use crate::conn::{Reader, Writer};
use secop_proto::message::split;
use secop_proto::{DataInfo, Kind};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// The node as described by `describe`: the datainfo of every accessible, keyed by
/// `module:accessible`.
#[derive(Debug, Default)]
pub struct NodeInfo {
    pub idn: String,
    pub modules: Vec<String>,
    pub describing_bytes: usize,
    datainfo: HashMap<String, Result<DataInfo, String>>,
}

impl NodeInfo {
    /// Parse the `describing . {...}` line.
    pub fn from_describing(line: &str) -> Result<NodeInfo, String> {
        let msg = split(line);
        if msg.action != "describing" {
            return Err(format!("expected describing, got {}", abbrev(line)));
        }
        if msg.specifier != "." {
            return Err(format!(
                "describing must have specifier '.', got {:?}",
                msg.specifier
            ));
        }
        let json: Value = serde_json::from_str(msg.data.unwrap_or(""))
            .map_err(|e| format!("describing: bad JSON: {e}"))?;
        let modules = json
            .get("modules")
            .and_then(Value::as_object)
            .ok_or("describing: no \"modules\" object")?;
        let mut info = NodeInfo {
            describing_bytes: line.len(),
            ..NodeInfo::default()
        };
        for (mname, m) in modules {
            info.modules.push(mname.clone());
            let acc = m
                .get("accessibles")
                .and_then(Value::as_object)
                .ok_or_else(|| format!("module {mname}: no \"accessibles\" object"))?;
            for (aname, a) in acc {
                let di = a
                    .get("datainfo")
                    .ok_or_else(|| format!("{mname}:{aname}: no datainfo"))
                    .and_then(|d| DataInfo::from_json(&lenient(d)).map_err(|e| e.to_string()))
                    .map_err(|e| format!("{mname}:{aname}: {e}"));
                info.datainfo.insert(format!("{mname}:{aname}"), di);
            }
        }
        Ok(info)
    }

    pub fn datainfo(&self, spec: &str) -> Result<&DataInfo, String> {
        match self.datainfo.get(spec) {
            Some(Ok(d)) => Ok(d),
            Some(Err(e)) => Err(format!("unusable datainfo: {e}")),
            None => Err(format!("{spec} is not in the description")),
        }
    }

    /// `(min, max)` of a numeric parameter, where given.
    pub fn range(&self, spec: &str) -> (Option<f64>, Option<f64>) {
        match self.datainfo(spec).map(|d| &d.kind) {
            Ok(Kind::Double { min, max }) => (*min, *max),
            Ok(Kind::Int { min, max }) => (Some(*min as f64), Some(*max as f64)),
            Ok(Kind::Scaled { scale, min, max }) => {
                (Some(*min as f64 * scale), Some(*max as f64 * scale))
            }
            _ => (None, None),
        }
    }

    /// Check a data report `[value, {qualifiers}]` of parameter `spec` and return it.
    pub fn check_report(&self, spec: &str, data: Option<&str>) -> Result<Report, String> {
        let report = parse_report(data)?;
        let di = self.datainfo(spec)?;
        match &di.kind {
            Kind::Command { result, .. } => match result {
                Some(r) => r.validate(&report.value).map(|_| ()),
                None if report.value.is_null() => Ok(()),
                None => Err(secop_proto::SecopError::wrong_type(
                    "command without result returned a value",
                )),
            },
            _ => di.validate(&report.value).map(|_| ()),
        }
        .map_err(|e| {
            format!(
                "{spec}: value {} does not match its datainfo: {}",
                report.value, e.text
            )
        })?;
        Ok(report)
    }

    /// Verify a reply line: the expected action and specifier and a data report that
    /// matches the datainfo (when the specifier is a parameter).
    pub fn check_reply(&self, line: &str, action: &str, spec: &str) -> Result<Report, String> {
        let msg = split(line);
        if msg.action != action || msg.specifier != spec {
            return Err(format!("expected {action} {spec}, got {}", abbrev(line)));
        }
        self.check_report(spec, msg.data)
    }

    /// Verify an `update` (or `error_update`, which is an error here) line and return
    /// its specifier and report.
    pub fn check_update<'a>(&self, line: &'a str) -> Result<(&'a str, Report), String> {
        let msg = split(line);
        if msg.action != "update" {
            return Err(format!("expected update, got {}", abbrev(line)));
        }
        let report = self.check_report(msg.specifier, msg.data)?;
        Ok((msg.specifier, report))
    }
}

/// A data report: the value and the timestamp qualifier.
#[derive(Debug)]
pub struct Report {
    pub value: Value,
    pub t: Option<f64>,
}

pub fn parse_report(data: Option<&str>) -> Result<Report, String> {
    let data = data.ok_or("data report missing")?;
    let v: Value =
        serde_json::from_str(data).map_err(|e| format!("bad JSON in data report: {e}"))?;
    match v {
        Value::Array(mut a) if a.len() == 2 && a[1].is_object() => {
            let t = a[1].get("t").and_then(Value::as_f64);
            let value = a.swap_remove(0);
            Ok(Report { value, t })
        }
        _ => Err(format!(
            "data report must be [value, {{qualifiers}}], got {}",
            abbrev(data)
        )),
    }
}

/// frappy publishes a few datainfo properties outside the spec (e.g. `"unit": "$"` is
/// fine, but also properties of its own); drop unknown non-underscore properties so that
/// only the ones that matter for validation remain.
fn lenient(di: &Value) -> Value {
    let mut di = di.clone();
    let ty = di
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let known: &[&str] = match ty.as_str() {
        "double" | "scaled" => &[
            "min",
            "max",
            "scale",
            "unit",
            "fmtstr",
            "absolute_resolution",
            "relative_resolution",
        ],
        "int" => &["min", "max", "unit"],
        "enum" => &["members"],
        "string" => &["minchars", "maxchars", "isUTF8"],
        "blob" => &["minbytes", "maxbytes"],
        "array" => &["members", "minlen", "maxlen"],
        "tuple" | "struct" => &["members", "optional"],
        "matrix" => &["names", "maxlen", "elementtype", "compression"],
        "command" => &["argument", "result"],
        _ => &[],
    };
    if let Some(obj) = di.as_object_mut() {
        obj.retain(|k, _| k == "type" || k.starts_with('_') || known.contains(&k.as_str()));
        match ty.as_str() {
            "array" => {
                if let Some(m) = obj.get_mut("members") {
                    *m = lenient(m);
                }
            }
            "tuple" => {
                if let Some(Value::Array(items)) = obj.get_mut("members") {
                    for m in items.iter_mut() {
                        *m = lenient(m);
                    }
                }
            }
            "struct" => {
                if let Some(Value::Object(members)) = obj.get_mut("members") {
                    for (_, m) in members.iter_mut() {
                        *m = lenient(m);
                    }
                }
            }
            "command" => {
                for key in ["argument", "result"] {
                    if let Some(m @ Value::Object(_)) = obj.get_mut(key) {
                        *m = lenient(m);
                    }
                }
            }
            _ => {}
        }
    }
    di
}

/// A line shortened for error messages.
pub fn abbrev(line: &str) -> String {
    if line.len() <= 120 {
        line.to_owned()
    } else {
        let mut end = 120;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &line[..end], line.len())
    }
}

/// `*IDN?` and `describe` on a fresh connection.
pub async fn handshake(
    rd: &mut Reader,
    wr: &mut Writer,
    timeout: Duration,
) -> Result<NodeInfo, String> {
    wr.send("*IDN?")
        .await
        .map_err(|e| format!("send *IDN?: {e}"))?;
    let idn = rd
        .next_line_within(timeout)
        .await
        .map_err(|e| format!("*IDN?: {e}"))?
        .ok_or("connection closed before the *IDN? reply")?
        .to_owned();
    if !idn.contains("ISSE") || !idn.contains(",SECoP,") {
        return Err(format!("bad *IDN? reply {}", abbrev(&idn)));
    }
    wr.send("describe")
        .await
        .map_err(|e| format!("send describe: {e}"))?;
    let line = rd
        .next_line_within(timeout)
        .await
        .map_err(|e| format!("describe: {e}"))?
        .ok_or("connection closed before the describing reply")?;
    let mut info = NodeInfo::from_describing(line)?;
    info.idn = idn;
    Ok(info)
}

/// Is `e` a timeout (for the timeout counter)?
pub fn is_timeout(e: &str) -> bool {
    e.contains("no reply in time") || e.contains("timed out")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBING: &str = r#"describing . {"modules":{"ps":{"accessibles":{"target":{"datainfo":{"type":"double","min":0,"max":30,"unit":"V"}},"status":{"datainfo":{"type":"tuple","members":[{"type":"enum","members":{"IDLE":100}},{"type":"string"}]}},"stop":{"datainfo":{"type":"command"}},"odd":{"datainfo":{"type":"double","fancy":1}}}}}}"#;

    #[test]
    fn replies_are_checked_against_the_datainfo() {
        let node = NodeInfo::from_describing(DESCRIBING).unwrap();
        assert_eq!(node.modules, ["ps"]);
        assert_eq!(node.range("ps:target"), (Some(0.0), Some(30.0)));
        let r = node
            .check_reply(r#"reply ps:target [1.5,{"t":1.0}]"#, "reply", "ps:target")
            .unwrap();
        assert_eq!((r.value.as_f64(), r.t), (Some(1.5), Some(1.0)));
        // out of range, wrong specifier, error reply, no qualifiers
        assert!(node
            .check_reply(r#"reply ps:target [31,{}]"#, "reply", "ps:target")
            .is_err());
        assert!(node
            .check_reply(r#"reply ps:status [1.5,{}]"#, "reply", "ps:target")
            .is_err());
        assert!(node
            .check_reply(r#"error_read ps:target ["X","y",{}]"#, "reply", "ps:target")
            .is_err());
        assert!(node
            .check_reply(r#"reply ps:target 1.5"#, "reply", "ps:target")
            .is_err());
        assert!(node
            .check_update(r#"update ps:status [[100,"ok"],{}]"#)
            .is_ok());
        assert!(node
            .check_update(r#"update ps:status [[300,"ok"],{}]"#)
            .is_err());
        assert!(node
            .check_reply(r#"done ps:stop [null,{}]"#, "done", "ps:stop")
            .is_ok());
    }

    #[test]
    fn unknown_datainfo_properties_are_dropped() {
        // frappy-style extra properties must not make a parameter unusable
        let node = NodeInfo::from_describing(DESCRIBING).unwrap();
        assert!(node.datainfo("ps:odd").is_ok());
    }
}
