//! A compact way for drivers to declare their modules' accessibles.

use crate::{ConfigError, ModuleConfig};
use secop_proto::{Accessible, DataInfo, ModuleDescription};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{LazyLock, Mutex};

/// Builds a [`ModuleDescription`], applying the module's config (name, description,
/// extra properties).
pub struct ModuleBuilder {
    desc: ModuleDescription,
}

/// Parsed datainfos by their JSON text, shared by every module that uses the same one
/// (a node of 1000 simulated modules has a few dozen distinct datainfos, not tens of
/// thousands).
static DATAINFOS: LazyLock<Mutex<HashMap<String, DataInfo>>> = LazyLock::new(Default::default);

fn shared<E>(key: String, make: impl FnOnce() -> Result<DataInfo, E>) -> Result<DataInfo, E> {
    let mut cache = DATAINFOS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = cache.get(&key) {
        return Ok(d.clone());
    }
    let d = make()?;
    cache.insert(key, d.clone());
    Ok(d)
}

fn status_datainfo(codes: &[(&str, i64)]) -> DataInfo {
    let Ok(d) = shared::<Infallible>(format!("status {codes:?}"), || {
        Ok(secop_proto::datainfo::status_datainfo(codes))
    });
    d
}

fn datainfo(json: Value) -> Result<DataInfo, ConfigError> {
    shared(json.to_string(), || {
        DataInfo::from_json(&json).map_err(|error| ConfigError::Declared {
            json: json.to_string(),
            error,
        })
    })
}

impl ModuleBuilder {
    pub fn new(config: &ModuleConfig, default_description: &str, classes: &[&str]) -> Self {
        ModuleBuilder {
            desc: ModuleDescription {
                name: config.name.clone(),
                description: config
                    .description
                    .clone()
                    .unwrap_or_else(|| default_description.to_owned()),
                interface_classes: classes.iter().map(|c| (*c).to_owned()).collect(),
                accessibles: Vec::new(),
                properties: config.properties.clone(),
            },
        }
    }

    /// A read-only parameter.
    pub fn readonly(
        self,
        name: &str,
        description: &str,
        datainfo: Value,
    ) -> Result<Self, ConfigError> {
        self.param(name, description, datainfo, true, false)
    }

    /// A writable parameter; `checkable` allows `check`.
    pub fn writable(
        self,
        name: &str,
        description: &str,
        datainfo: Value,
    ) -> Result<Self, ConfigError> {
        self.param(name, description, datainfo, false, true)
    }

    pub fn param(
        mut self,
        name: &str,
        description: &str,
        datainfo_json: Value,
        readonly: bool,
        checkable: bool,
    ) -> Result<Self, ConfigError> {
        let mut acc = Accessible::parameter(name, description, datainfo(datainfo_json)?, readonly);
        acc.checkable = checkable;
        self.desc.accessibles.push(acc);
        Ok(self)
    }

    /// A parameter whose value never changes (not sent on `activate`).
    pub fn constant(
        mut self,
        name: &str,
        description: &str,
        datainfo_json: Value,
        value: Value,
    ) -> Result<Self, ConfigError> {
        let mut acc = Accessible::parameter(name, description, datainfo(datainfo_json)?, true);
        acc.constant = Some(value);
        self.desc.accessibles.push(acc);
        Ok(self)
    }

    /// The standard `status` parameter with the given codes.
    pub fn status(mut self, codes: &[(&str, i64)]) -> Self {
        self.desc.accessibles.push(Accessible::parameter(
            "status",
            "current status of the module",
            status_datainfo(codes),
            true,
        ));
        self
    }

    /// A command with optional argument and result datainfo.
    pub fn command(
        mut self,
        name: &str,
        description: &str,
        argument: Option<Value>,
        result: Option<Value>,
    ) -> Result<Self, ConfigError> {
        let mut json = Map::new();
        json.insert("type".into(), Value::from("command"));
        if let Some(a) = argument {
            json.insert("argument".into(), a);
        }
        if let Some(r) = result {
            json.insert("result".into(), r);
        }
        let mut acc = Accessible::command(name, description, datainfo(Value::Object(json))?);
        acc.checkable = true;
        self.desc.accessibles.push(acc);
        Ok(self)
    }

    pub fn build(self) -> ModuleDescription {
        self.desc
    }
}

/// The datainfo of every `pollinterval` parameter (`limits::POLLINTERVAL`, written as
/// the description has always shown it).
pub fn pollinterval_datainfo() -> Value {
    serde_json::json!({"type": "double", "min": 0.1, "max": 3600, "unit": "s"})
}

/// A client's `pollinterval` change, checked against `limits::POLLINTERVAL`.
pub fn pollinterval(value: &Value) -> Result<f64, secop_proto::SecopError> {
    let x = value
        .as_f64()
        .ok_or_else(|| secop_proto::SecopError::wrong_type("expected a number"))?;
    let range = crate::limits::POLLINTERVAL;
    if !(range.min..=range.max).contains(&x) {
        return Err(secop_proto::SecopError::range(format!(
            "pollinterval must be within [{}, {}] s",
            range.min, range.max
        )));
    }
    Ok(x)
}
