//! What SECoP 2.0 allows a configuration to put into a description: module
//! properties, accessible names and the `*IDN?` reply.
//!
//! From the specification (`protocol/specification/descriptive.rst` and
//! `accessibles.rst` of SampleEnvironment/SECoP) and its 2.0 schema
//! (`schema/version-2.0.yaml`): anything that is not predefined there must start with
//! `_`. Only what this gateway defines itself is checked this strictly; descriptions of
//! remote nodes are passed on as they come.

use secop_proto::{Accessible, ModuleDescription};
use serde_json::{Map, Value};

/// Parameters predefined by SECoP 2.0 (the schema's `parameters`, `target_limits`, and
/// the acquisition parameters `goal` and `roi`).
pub const PREDEFINED_PARAMETERS: &[&str] = &[
    "value",
    "status",
    "target",
    "pollinterval",
    "ramp",
    "setpoint",
    "time_to_target",
    "mode",
    "offset",
    "controlled_by",
    "control_active",
    "target_limits",
    "goal",
    "roi",
];

/// Commands predefined by SECoP 2.0 (the schema's `commands`, `communicate`, and the
/// acquisition commands `prepare` and `get_data`).
pub const PREDEFINED_COMMANDS: &[&str] = &[
    "stop",
    "go",
    "hold",
    "prepare",
    "shutdown",
    "reset",
    "clear_errors",
    "control_off",
    "communicate",
    "get_data",
];

/// Parameter postfixes (SECoP 2.0): `<parameter>_min` etc. of a parameter of the same
/// module.
pub const POSTFIXES: &[&str] = &["_limits", "_min", "_max", "_enable"];

/// Module visibilities: the 2.0 three-character form (expert, advanced, user), and the
/// old words, which clients must still accept.
pub const VISIBILITIES: &[&str] = &[
    "www", "wwr", "ww-", "wrr", "wr-", "w--", "rrr", "rr-", "r--", "---", "user", "advanced",
    "expert",
];

/// The keys of a `meaning` object.
const MEANING_KEYS: &[&str] = &["function", "importance", "belongs_to", "link", "key"];

/// Why an accessible may not carry its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// A predefined name of the other kind (a parameter named `stop`).
    #[error("accessible {name:?}: SECoP predefines {name:?} as a {other_kind}, not a {kind}")]
    OtherKind {
        name: String,
        kind: &'static str,
        other_kind: &'static str,
    },
    /// `<base><postfix>` without a parameter `<base>`.
    #[error(
        "accessible {name:?}: a {postfix} postfix needs a parameter {base:?} in the module; \
         custom accessibles start with \"_\" (e.g. \"_{name}\")"
    )]
    Postfix {
        name: String,
        postfix: &'static str,
        base: String,
    },
    #[error(
        "accessible {name:?} is not predefined by SECoP; custom accessibles start with \
         \"_\" (e.g. \"_{name}\")"
    )]
    NotPredefined { name: String },
}

/// Whether accessible `a` of module `m` may carry its name: `_custom`, predefined, or a
/// postfix of another parameter of the module. The error says why not.
pub fn accessible_name(m: &ModuleDescription, a: &Accessible) -> Result<(), NameError> {
    let name = a.name.as_str();
    if name.starts_with('_') {
        return Ok(());
    }
    let (own, other, kind, other_kind) = if a.is_command() {
        (
            PREDEFINED_COMMANDS,
            PREDEFINED_PARAMETERS,
            "command",
            "parameter",
        )
    } else {
        (
            PREDEFINED_PARAMETERS,
            PREDEFINED_COMMANDS,
            "parameter",
            "command",
        )
    };
    if own.contains(&name) {
        return Ok(());
    }
    if other.contains(&name) {
        return Err(NameError::OtherKind {
            name: name.to_owned(),
            kind,
            other_kind,
        });
    }
    if !a.is_command() {
        for postfix in POSTFIXES {
            let Some(base) = name.strip_suffix(postfix) else {
                continue;
            };
            if m.accessible(base).is_some_and(|b| !b.is_command()) {
                return Ok(());
            }
            return Err(NameError::Postfix {
                name: name.to_owned(),
                postfix,
                base: base.to_owned(),
            });
        }
    }
    Err(NameError::NotPredefined {
        name: name.to_owned(),
    })
}

/// The problems of `[module.properties]`, each as "key: reason" with the key below
/// `properties` (`visibility: ...`). `modules` are the names of all modules (a group
/// must not be named like one).
pub fn module_properties(properties: &Map<String, Value>, modules: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in properties {
        let problem = match key.as_str() {
            k if k.starts_with('_') => None,
            "group" => group(value, modules),
            "visibility" => match value.as_str() {
                Some(v) if VISIBILITIES.contains(&v) => None,
                _ => Some(format!(
                    "{} is not a visibility: use \"www\", \"wwr\", \"ww-\", \"wrr\", \"wr-\", \
                     \"w--\", \"rrr\", \"rr-\", \"r--\" or \"---\" (expert, advanced, user; \
                     the old words user, advanced and expert are accepted too)",
                    short(value)
                )),
            },
            "meaning" => {
                for (sub, p) in meaning(value) {
                    match sub.as_str() {
                        "" => out.push(format!("meaning: {p}")),
                        _ => out.push(format!("meaning.{sub}: {p}")),
                    }
                }
                None
            }
            "features" => match value.as_array() {
                Some(list) if list.iter().all(|f| f.as_str().is_some_and(is_name)) => None,
                _ => Some(format!(
                    "{} must be a list of feature names (e.g. [\"HasOffset\"])",
                    short(value)
                )),
            },
            "implementor" | "implementation" => match value {
                Value::String(_) => None,
                _ => Some(format!("{} must be a string", short(value))),
            },
            "description" | "interface_classes" | "accessibles" => Some(format!(
                "is set by the gateway (the module's own `{}` key, where there is one), \
                 not a property to configure",
                key
            )),
            _ => Some(format!(
                "is not a SECoP module property (group, visibility, meaning, features, \
                 implementor, implementation); custom properties start with \"_\" (e.g. \
                 \"_{key}\")"
            )),
        };
        if let Some(p) = problem {
            out.push(format!("{key}: {p}"));
        }
    }
    out
}

fn group(value: &Value, modules: &[&str]) -> Option<String> {
    let Some(text) = value.as_str() else {
        return Some(format!("{} must be a string", short(value)));
    };
    if text.is_empty() {
        return Some("must not be empty".into());
    }
    let clash = text.split(':').find(|part| {
        modules
            .iter()
            .any(|m| m.to_lowercase() == part.to_lowercase())
    });
    clash.map(|part| {
        format!("{text:?}: a group (or a part of it before/after \":\") must not be named like a module ({part:?})")
    })
}

/// The problems of a `meaning` object, as (key below `meaning`, reason).
fn meaning(value: &Value) -> Vec<(String, String)> {
    let Some(obj) = value.as_object() else {
        return vec![(
            String::new(),
            format!(
                "{} must be an object such as {{ function = \"temperature\", importance = 20, \
                 belongs_to = \"sample\" }}",
                short(value)
            ),
        )];
    };
    let mut out = Vec::new();
    for (k, v) in obj {
        let problem = match k.as_str() {
            "function" | "belongs_to" | "link" | "key" => {
                (!v.is_string()).then(|| format!("{} must be a string", short(v)))
            }
            "importance" => match v.as_i64() {
                Some(0..=50) => None,
                _ => Some(format!("{} must be an integer within 0 ..= 50", short(v))),
            },
            _ => Some(format!(
                "is not a key of a meaning ({})",
                MEANING_KEYS.join(", ")
            )),
        };
        if let Some(p) = problem {
            out.push((k.clone(), p));
        }
    }
    let has = |k: &str| obj.contains_key(k);
    if !has("function") && !has("link") {
        out.push((String::new(), "needs a \"function\" or a \"link\"".into()));
    }
    for k in ["importance", "belongs_to"] {
        if has(k) && !has("function") {
            out.push((k.into(), "only goes with a \"function\"".into()));
        }
    }
    if has("key") && !has("link") {
        out.push(("key".into(), "only goes with a \"link\"".into()));
    }
    out
}

/// Why an `*IDN?` reply is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentificationError {
    #[error("must be one line of printable ASCII")]
    NotOneLine,
    #[error(
        "{0:?} must have four comma-separated fields like \"ISSE,SECoP,,v2.0\" (the first \
         containing ISSE, the second SECoP)"
    )]
    Fields(String),
}

/// The `*IDN?` reply: four comma-separated fields, the first naming ISSE and the
/// second "SECoP" (clients such as frappy's and ISIS's EPICS bridge refuse others).
pub fn identification(idn: &str) -> Result<(), IdentificationError> {
    if !idn.is_ascii() || idn.chars().any(|c| c.is_ascii_control()) {
        return Err(IdentificationError::NotOneLine);
    }
    let fields: Vec<&str> = idn.split(',').collect();
    if fields.len() != 4 || !fields[0].contains("ISSE") || fields[1] != "SECoP" {
        return Err(IdentificationError::Fields(idn.to_owned()));
    }
    Ok(())
}

fn is_name(text: &str) -> bool {
    secop_proto::message::is_valid_name(text)
}

/// A value for a message, cut short.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Vec<String> {
        module_properties(v.as_object().unwrap(), &["T", "p"])
    }

    #[test]
    fn module_properties_are_typed() {
        let ok = json!({"group": "cryostat:sample", "visibility": "ww-",
            "meaning": {"function": "temperature", "importance": 20, "belongs_to": "sample"},
            "features": ["HasOffset"], "implementor": "example.org", "_custom": [1, {"a": null}]});
        assert!(props(ok).is_empty());
        assert!(props(json!({"visibility": "expert"})).is_empty());
        assert!(props(json!({"meaning": {"link": "https://w3id.org/x", "key": "k"}})).is_empty());
        let bad = props(
            json!({"visibilty": "www", "group": 5, "meaning": "nonsense",
            "visibility": "everyone", "features": "HasOffset", "description": "x"}),
        );
        let text = bad.join("\n");
        for expected in [
            "visibilty: is not a SECoP module property",
            "\"_visibilty\"",
            "group: 5 must be a string",
            "meaning: \"nonsense\" must be an object",
            "visibility: \"everyone\" is not a visibility",
            "features: \"HasOffset\" must be a list",
            "description: is set by the gateway",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let text =
            props(json!({"group": "p", "meaning": {"importance": 99, "colour": 1}})).join("\n");
        for expected in [
            "group: \"p\": a group",
            "meaning.importance: 99 must be an integer within 0 ..= 50",
            "meaning.colour: is not a key",
            "meaning: needs a \"function\" or a \"link\"",
            "meaning.importance: only goes with a \"function\"",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
    }

    #[test]
    fn identification_has_four_fields() {
        assert!(identification("ISSE,SECoP,,v2.0").is_ok());
        assert!(identification("ISSE&SINE2020,SECoP,V2019-09-16,v1.0").is_ok());
        for bad in [
            "ISSE,SECoP",
            "ISSE,SECoP,,v2.0,x",
            "FOO,SECoP,,v2.0",
            "ISSE,secop,,v2.0",
            "ISSE,SECoP,\t,v2.0",
        ] {
            assert!(identification(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            identification("ISSE").unwrap_err().to_string(),
            "\"ISSE\" must have four comma-separated fields like \"ISSE,SECoP,,v2.0\" (the \
             first containing ISSE, the second SECoP)"
        );
    }

    #[test]
    fn custom_accessibles_start_with_an_underscore() {
        let d = secop_proto::DataInfo::from_json(&json!({"type": "double"})).unwrap();
        let c = secop_proto::DataInfo::from_json(&json!({"type": "command"})).unwrap();
        let p = |n: &str| Accessible::parameter(n, "", d.clone(), true);
        let m = ModuleDescription {
            name: "T".into(),
            description: String::new(),
            interface_classes: vec!["Readable".into()],
            accessibles: vec![p("value"), p("target"), p("ramp")],
            properties: Map::new(),
        };
        for ok in [
            "value",
            "_heater",
            "target_limits",
            "target_min",
            "ramp_enable",
            "pollinterval",
        ] {
            assert!(accessible_name(&m, &p(ok)).is_ok(), "{ok}");
        }
        assert!(accessible_name(&m, &Accessible::command("stop", "", c.clone())).is_ok());
        let e = accessible_name(&m, &p("heater")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "accessible \"heater\" is not predefined by SECoP; custom accessibles start with \
             \"_\" (e.g. \"_heater\")"
        );
        assert_eq!(
            accessible_name(&m, &p("setpoint_limits"))
                .unwrap_err()
                .to_string(),
            "accessible \"setpoint_limits\": a _limits postfix needs a parameter \"setpoint\" \
             in the module; custom accessibles start with \"_\" (e.g. \"_setpoint_limits\")"
        );
        assert_eq!(
            accessible_name(&m, &p("stop")).unwrap_err().to_string(),
            "accessible \"stop\": SECoP predefines \"stop\" as a command, not a parameter"
        );
        assert!(accessible_name(&m, &Accessible::command("value", "", c)).is_err());
    }
}
