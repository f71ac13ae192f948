//! The node description (`describing . {...}`): node, modules and accessibles.
//!
//! The gateway builds these from config and from remote nodes; `describe` serialises
//! them once per node, since a description only changes when modules come or go.
//!
//! A description parsed from a remote node is hostile input: parsing returns an `Err`
//! for anything malformed and never panics, and the structural checks use hash sets,
//! so that a remote with 100 000 modules costs linear, not quadratic, time.

use crate::datainfo::{DataInfo, DataInfoError};
use crate::message::is_valid_name;
use serde_json::{Map, Value};

/// Parameter or command.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessibleKind {
    Parameter { readonly: bool },
    Command,
}

/// One accessible of a module.
#[derive(Debug, Clone, PartialEq)]
pub struct Accessible {
    pub name: String,
    pub description: String,
    pub datainfo: DataInfo,
    pub kind: AccessibleKind,
    pub checkable: bool,
    /// Value of a constant parameter: never read, written or sent on `activate`.
    pub constant: Option<Value>,
    /// Further properties (group, visibility, meaning, custom `_x`), emitted as given.
    pub properties: Map<String, Value>,
}

impl Accessible {
    pub fn parameter(name: &str, description: &str, datainfo: DataInfo, readonly: bool) -> Self {
        Accessible {
            name: name.to_owned(),
            description: description.to_owned(),
            datainfo,
            kind: AccessibleKind::Parameter { readonly },
            checkable: false,
            constant: None,
            properties: Map::new(),
        }
    }

    pub fn command(name: &str, description: &str, datainfo: DataInfo) -> Self {
        Accessible {
            name: name.to_owned(),
            description: description.to_owned(),
            datainfo,
            kind: AccessibleKind::Command,
            checkable: false,
            constant: None,
            properties: Map::new(),
        }
    }

    pub fn is_command(&self) -> bool {
        self.kind == AccessibleKind::Command
    }

    pub fn is_readonly(&self) -> bool {
        matches!(self.kind, AccessibleKind::Parameter { readonly: true })
    }

    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("description".into(), Value::from(self.description.clone()));
        obj.insert("datainfo".into(), self.datainfo.to_json().clone());
        if let AccessibleKind::Parameter { readonly } = self.kind {
            obj.insert("readonly".into(), Value::Bool(readonly));
        }
        if self.checkable {
            obj.insert("checkable".into(), Value::Bool(true));
        }
        if let Some(c) = &self.constant {
            obj.insert("constant".into(), c.clone());
        }
        for (k, v) in &self.properties {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }
}

/// One module.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleDescription {
    pub name: String,
    pub description: String,
    pub interface_classes: Vec<String>,
    pub accessibles: Vec<Accessible>,
    /// Further properties (features, visibility, group, meaning, implementation, `_x`).
    pub properties: Map<String, Value>,
}

impl ModuleDescription {
    pub fn accessible(&self, name: &str) -> Option<&Accessible> {
        self.accessibles.iter().find(|a| a.name == name)
    }

    pub fn accessible_index(&self, name: &str) -> Option<usize> {
        self.accessibles.iter().position(|a| a.name == name)
    }

    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("description".into(), Value::from(self.description.clone()));
        obj.insert(
            "interface_classes".into(),
            Value::from(self.interface_classes.clone()),
        );
        for (k, v) in &self.properties {
            obj.insert(k.clone(), v.clone());
        }
        let accessibles: Map<String, Value> = self
            .accessibles
            .iter()
            .map(|a| (a.name.clone(), a.to_json()))
            .collect();
        obj.insert("accessibles".into(), Value::Object(accessibles));
        Value::Object(obj)
    }
}

/// The whole node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDescription {
    pub equipment_id: String,
    pub description: String,
    pub modules: Vec<ModuleDescription>,
    /// Further properties (firmware, implementor, timeout, `_x`).
    pub properties: Map<String, Value>,
}

impl NodeDescription {
    pub fn module(&self, name: &str) -> Option<&ModuleDescription> {
        self.modules.iter().find(|m| m.name == name)
    }

    pub fn to_json(&self) -> Value {
        let mut obj = self.to_json_without_modules();
        let modules: Map<String, Value> = self
            .modules
            .iter()
            .map(|m| (m.name.clone(), m.to_json()))
            .collect();
        obj.insert("modules".into(), Value::Object(modules));
        Value::Object(obj)
    }

    /// The JSON of [`Self::to_json`], written module by module: the tree of a whole
    /// node with 1000 modules would take tens of megabytes for a moment, one module's
    /// only kilobytes. Same bytes as serialising `to_json()` (module names are unique;
    /// see [`Self::problems`]).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        // A property called "modules" would be replaced by the modules anyway.
        for (k, v) in self
            .to_json_without_modules()
            .iter()
            .filter(|(k, _)| *k != "modules")
        {
            crate::json::write_json(out, k);
            out.push(b':');
            crate::json::write_json(out, v);
            out.push(b',');
        }
        out.extend_from_slice(b"\"modules\":{");
        for (i, m) in self.modules.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            crate::json::write_json(out, &m.name);
            out.push(b':');
            crate::json::write_json(out, &m.to_json());
        }
        out.extend_from_slice(b"}}");
    }

    fn to_json_without_modules(&self) -> Map<String, Value> {
        let mut obj = Map::new();
        obj.insert(
            "equipment_id".into(),
            Value::from(self.equipment_id.clone()),
        );
        obj.insert("description".into(), Value::from(self.description.clone()));
        for (k, v) in &self.properties {
            obj.insert(k.clone(), v.clone());
        }
        obj
    }

    /// Check the structural rules of the spec: valid names, unique when lowercased,
    /// the accessibles each interface class requires. Returns every problem found,
    /// each naming its module and accessible, so a config author can fix all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.equipment_id.is_empty() {
            out.push("node: equipment_id is empty".to_owned());
        }
        let mut seen = std::collections::HashSet::<String>::new();
        for m in &self.modules {
            if !is_valid_name(&m.name) {
                out.push(format!(
                    "module {:?}: not a valid SECoP name ([A-Za-z_][A-Za-z0-9_]{{0,62}})",
                    m.name
                ));
            }
            if !seen.insert(m.name.to_lowercase()) {
                out.push(format!(
                    "module {:?}: another module has the same name (names must differ ignoring case)",
                    m.name
                ));
            }
            let mut acc_seen = std::collections::HashSet::<String>::new();
            for a in &m.accessibles {
                if !is_valid_name(&a.name) {
                    out.push(format!(
                        "module {}: accessible {:?} is not a valid name",
                        m.name, a.name
                    ));
                }
                if !acc_seen.insert(a.name.to_lowercase()) {
                    out.push(format!(
                        "module {}: accessible {:?} is not unique",
                        m.name, a.name
                    ));
                }
                if a.is_command() != a.datainfo.is_command() {
                    out.push(format!(
                        "module {}: accessible {}: commands and only commands have datainfo type command",
                        m.name, a.name
                    ));
                }
                if let Some(c) = &a.constant {
                    if let Err(e) = a.datainfo.validate(c) {
                        out.push(format!("module {}: constant {}: {e}", m.name, a.name));
                    }
                }
            }
            let base = m.interface_classes.last().map(String::as_str);
            let need: &[&str] = match base {
                Some("Drivable") => &["value", "status", "target", "stop"],
                Some("Writable") => &["value", "status", "target"],
                Some("Readable") => &["value", "status"],
                _ => &[],
            };
            for n in need {
                if m.accessible(n).is_none() {
                    out.push(format!(
                        "module {}: interface class {} needs accessible {n:?}",
                        m.name,
                        base.unwrap_or("")
                    ));
                }
            }
        }
        out
    }
}

/// Why a description that a remote node sent was refused. A problem inside a module
/// or accessible is wrapped in [`DescriptionError::Module`] or
/// [`DescriptionError::Accessible`], which prefix its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptionError {
    #[error("the description is not a JSON object")]
    NotAnObject,
    #[error("the description has no string {0:?}")]
    NoText(&'static str),
    #[error("the description has no \"modules\" object")]
    NoModules,
    #[error("module {name}: {inner}")]
    Module {
        name: String,
        inner: Box<DescriptionError>,
    },
    /// A module or accessible that is not a JSON object.
    #[error("not a JSON object")]
    NotJsonObject,
    #[error("no \"accessibles\" object")]
    NoAccessibles,
    #[error("{name}: {inner}")]
    Accessible {
        name: String,
        inner: Box<DescriptionError>,
    },
    #[error("no datainfo")]
    NoDataInfo,
    #[error(transparent)]
    DataInfo(#[from] DataInfoError),
}

/// Parsing a description that a remote node sent (`describing . {...}`), leniently:
/// unknown properties are kept as they are, unknown datainfo properties ignored.
impl NodeDescription {
    pub fn from_json(json: &Value) -> Result<NodeDescription, DescriptionError> {
        let obj = json.as_object().ok_or(DescriptionError::NotAnObject)?;
        let text = |key: &'static str| -> Result<String, DescriptionError> {
            obj.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(DescriptionError::NoText(key))
        };
        let modules_json = obj
            .get("modules")
            .and_then(Value::as_object)
            .ok_or(DescriptionError::NoModules)?;
        let mut modules = Vec::with_capacity(modules_json.len());
        for (name, m) in modules_json {
            modules.push(ModuleDescription::from_json(name, m).map_err(|e| {
                DescriptionError::Module {
                    name: name.clone(),
                    inner: Box::new(e),
                }
            })?);
        }
        let properties = obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "equipment_id" | "description" | "modules"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(NodeDescription {
            equipment_id: text("equipment_id")?,
            description: text("description").unwrap_or_default(),
            modules,
            properties,
        })
    }
}

impl ModuleDescription {
    pub fn from_json(name: &str, json: &Value) -> Result<ModuleDescription, DescriptionError> {
        let obj = json.as_object().ok_or(DescriptionError::NotJsonObject)?;
        let accessibles_json = obj
            .get("accessibles")
            .and_then(Value::as_object)
            .ok_or(DescriptionError::NoAccessibles)?;
        let mut accessibles = Vec::with_capacity(accessibles_json.len());
        for (aname, a) in accessibles_json {
            accessibles.push(Accessible::from_json(aname, a).map_err(|e| {
                DescriptionError::Accessible {
                    name: aname.clone(),
                    inner: Box::new(e),
                }
            })?);
        }
        let interface_classes = obj
            .get("interface_classes")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let properties = obj
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "description" | "interface_classes" | "accessibles"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(ModuleDescription {
            name: name.to_owned(),
            description: obj
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            interface_classes,
            accessibles,
            properties,
        })
    }
}

impl Accessible {
    pub fn from_json(name: &str, json: &Value) -> Result<Accessible, DescriptionError> {
        let obj = json.as_object().ok_or(DescriptionError::NotJsonObject)?;
        let datainfo =
            DataInfo::from_remote_json(obj.get("datainfo").ok_or(DescriptionError::NoDataInfo)?)?;
        let kind = if datainfo.is_command() {
            AccessibleKind::Command
        } else {
            AccessibleKind::Parameter {
                readonly: obj.get("readonly").and_then(Value::as_bool).unwrap_or(true),
            }
        };
        let properties = obj
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "description" | "datainfo" | "readonly" | "checkable" | "constant"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Accessible {
            name: name.to_owned(),
            description: obj
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            datainfo,
            kind,
            checkable: obj
                .get("checkable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            constant: obj.get("constant").cloned(),
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn module() -> ModuleDescription {
        let dbl = DataInfo::from_json(&json!({"type":"double","unit":"K"})).unwrap();
        ModuleDescription {
            name: "T".into(),
            description: "a sensor".into(),
            interface_classes: vec!["Readable".into()],
            accessibles: vec![
                Accessible::parameter("value", "the value", dbl, true),
                Accessible::parameter(
                    "status",
                    "the status",
                    crate::datainfo::status_datainfo(&[("IDLE", 100)]),
                    true,
                ),
            ],
            properties: Map::new(),
        }
    }

    #[test]
    fn json_layout_keeps_order() {
        let node = NodeDescription {
            equipment_id: "test_eq".into(),
            description: "d".into(),
            modules: vec![module()],
            properties: Map::new(),
        };
        let text = crate::json::to_json(&node.to_json());
        let mut streamed = Vec::new();
        node.write_json(&mut streamed);
        assert_eq!(String::from_utf8_lossy(&streamed), text);
        let mut two = node.clone();
        let mut other = module();
        other.name = "T2".into();
        two.modules.push(other);
        two.properties.insert("_x".into(), json!({"a": [1, "é"]}));
        let mut streamed = Vec::new();
        two.write_json(&mut streamed);
        assert_eq!(
            String::from_utf8_lossy(&streamed),
            crate::json::to_json(&two.to_json())
        );
        assert!(text.starts_with(r#"{"equipment_id":"test_eq","description":"d","modules":{"T":{"description":"a sensor","interface_classes":["Readable"],"accessibles":{"value":{"description":"the value","datainfo":{"type":"double","unit":"K"},"readonly":true},"status""#), "{text}");
        assert!(node.problems().is_empty(), "{:?}", node.problems());
    }

    #[test]
    fn parses_what_it_emits() {
        let node = NodeDescription {
            equipment_id: "eq".into(),
            description: "d".into(),
            modules: vec![module()],
            properties: Map::new(),
        };
        let back = NodeDescription::from_json(&node.to_json()).unwrap();
        assert_eq!(back, node);
        let lenient = json!({"equipment_id": "x", "description": "", "modules": {"m": {
            "description": "", "interface_classes": ["Readable"], "accessibles": {
                "value": {"description": "", "datainfo": {"type": "double", "frappy_only": 1}, "readonly": true}}}}});
        assert!(NodeDescription::from_json(&lenient).is_ok());
        assert!(NodeDescription::from_json(&json!({"modules": {}})).is_err());
    }

    #[test]
    fn problems_are_named() {
        let mut m = module();
        m.interface_classes = vec!["Drivable".into()];
        m.accessibles.push(m.accessibles[0].clone());
        let mut m2 = module();
        m2.name = "t".into();
        let node = NodeDescription {
            equipment_id: "".into(),
            description: "".into(),
            modules: vec![m, m2],
            properties: Map::new(),
        };
        let p = node.problems().join("\n");
        assert!(p.contains("equipment_id"), "{p}");
        assert!(p.contains("accessible \"value\" is not unique"), "{p}");
        assert!(p.contains("needs accessible \"target\""), "{p}");
        assert!(p.contains("module \"t\": another module"), "{p}");
    }

    /// Whatever a remote sends as its description: an `Err`, never a panic.
    #[test]
    fn hostile_descriptions_are_errors() {
        for text in [
            r#"null"#,
            r#"[]"#,
            r#"{"modules": []}"#,
            r#"{"equipment_id": 1, "modules": {}}"#,
            r#"{"equipment_id": "x", "modules": {"m": 1}}"#,
            r#"{"equipment_id": "x", "modules": {"m": {"accessibles": []}}}"#,
            r#"{"equipment_id": "x", "modules": {"m": {"accessibles": {"a": {}}}}}"#,
            r#"{"equipment_id": "x", "modules": {"m": {"accessibles": {"a": {"datainfo": {"type": "double", "fmtstr": "%.é"}}}}}}"#,
            r#"{"equipment_id": "x", "modules": {"m": {"accessibles": {"a": {"datainfo": {"type": "matrix", "names": ["x"], "maxlen": [1], "elementtype": "<é"}}}}}}"#,
            r#"{"equipment_id": "x", "modules": {"m": {"accessibles": {"a": {"datainfo": {"type": "string", "minchars": 18446744073709551615}}}}}}"#,
        ] {
            let json: Value = serde_json::from_str(text).unwrap();
            assert!(NodeDescription::from_json(&json).is_err(), "{text}");
        }
    }

    /// The structural checks are linear: 20 000 modules with a duplicate.
    #[test]
    fn many_modules_are_checked_quickly() {
        let mut node = NodeDescription {
            equipment_id: "eq".into(),
            description: "d".into(),
            modules: (0..20_000)
                .map(|i| {
                    let mut m = module();
                    m.name = format!("m{i}");
                    m
                })
                .collect(),
            properties: Map::new(),
        };
        assert!(node.problems().is_empty());
        let mut dup = module();
        dup.name = "M7".into();
        node.modules.push(dup);
        assert_eq!(node.problems().len(), 1, "{:?}", node.problems());
    }
}
