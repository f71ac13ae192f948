//! A simulated Communicator: `communicate` sends a line to a pretend SCPI
//! instrument and returns its answer, as a real serial-line Communicator would.

use super::*;
use crate::builder::ModuleBuilder;
use secop_actors::device_actor::{Effects, Produced};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub const DRIVER: &str = "sim_communicator";

/// Settings of `sim_communicator` (all optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// What the pretend instrument answers to `*IDN?`.
    pub identification: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            identification: "SIMULATED,SCPI-INSTRUMENT,0,1.0".into(),
        }
    }
}

/// See the module documentation.
pub struct Communicator {
    name: String,
    settings: Settings,
    desc: ModuleDescription,
    /// A register the pretend instrument keeps (`VAL <x>` / `VAL?`).
    register: String,
}

impl Simulator for Communicator {
    type Settings = Settings;

    fn build(module: &ModuleConfig, s: Settings) -> Result<Self, String> {
        if !s.identification.is_ascii() || s.identification.contains('\n') {
            return Err("settings.identification must be one line of ASCII".into());
        }
        let text = json!({"type": "string", "maxchars": 1024});
        let desc = ModuleBuilder::new(module, "simulated line-based instrument", &["Communicator"])
            .command(
                "communicate",
                "send one command line, return the reply (*IDN?, VAL <x>, VAL?, ECHO <text>)",
                Some(text.clone()),
                Some(text),
            )?
            .build();
        Ok(Communicator {
            name: module.name.clone(),
            settings: s,
            desc,
            register: "0".into(),
        })
    }
}

impl Communicator {
    fn answer(&mut self, request: &str) -> Result<String, SecopError> {
        let request = request.trim();
        let (verb, rest) = request.split_once(' ').unwrap_or((request, ""));
        match verb.to_ascii_uppercase().as_str() {
            "*IDN?" => Ok(self.settings.identification.clone()),
            "VAL?" => Ok(self.register.clone()),
            "VAL" if !rest.is_empty() => {
                self.register = rest.to_owned();
                Ok("OK".into())
            }
            "ECHO" => Ok(rest.to_owned()),
            _ => Err(SecopError::communication_failed(format!(
                "instrument answered ERR to {request:?}"
            ))),
        }
    }
}

impl Backend for Communicator {
    fn modules(&self) -> Vec<ModuleDescription> {
        vec![self.desc.clone()]
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn poll(&mut self, _item: usize) -> Vec<Produced> {
        Vec::new()
    }

    async fn read(&mut self, _module: &str, parameter: &str) -> Result<Value, SecopError> {
        Err(unknown_parameter(&self.name, parameter))
    }

    async fn change(
        &mut self,
        _module: &str,
        parameter: &str,
        _value: Value,
        _fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        Err(unknown_parameter(&self.name, parameter))
    }

    async fn execute(
        &mut self,
        _module: &str,
        command: &str,
        argument: Value,
        _fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        match command {
            "communicate" => {
                let line = argument
                    .as_str()
                    .ok_or_else(|| SecopError::wrong_type("expected a string"))?;
                self.answer(line).map(Value::from)
            }
            other => Err(unknown_command(&self.name, other)),
        }
    }
}
