//! A simulated Communicator: `communicate` sends a line to a pretend SCPI
//! instrument and returns its answer, as a real serial-line Communicator would. An
//! answer is a result, whatever it says: the instrument's `ERR` to a command it does
//! not know is returned like any other (the line was sent and answered, so nothing
//! failed to communicate).
//! Like a real one it refuses lines that could not be sent as one command (control
//! characters, line ends, non-ASCII; see [`crate::ascii::line_safety`]), so that
//! clients meet the same rule against the simulation as against hardware.

use super::*;
use crate::builder::ModuleBuilder;
use secop_actors::device_actor::{Effects, Produced};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub const DRIVER: &str = "sim_communicator";

/// The line end of the pretend instrument.
const TERMINATORS: &[&str] = &["\n"];

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

    fn build(module: &ModuleConfig, s: Settings) -> Result<Self, ConfigError> {
        if !s.identification.is_ascii() || s.identification.contains('\n') {
            return Err(ConfigError::invalid(
                "identification",
                "must be one line of ASCII",
            ));
        }
        // It is the result of `communicate`, whose datainfo allows 1024 characters.
        let chars = s.identification.chars().count() as u64;
        crate::limits::count("identification", chars, 0, 1024, "characters")?;
        let text = json!({"type": "string", "maxchars": 1024});
        let desc = ModuleBuilder::new(module, "simulated line-based instrument", &["Communicator"])
            .command(
                "communicate",
                "send one command line, return the reply (*IDN?, VAL <x>, VAL?, ECHO <text>; ERR to anything else)",
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
    /// What the pretend instrument answers to one line.
    fn answer(&mut self, request: &str) -> String {
        let request = request.trim();
        // A test-only hook (debug builds, and only with the variable set): the tests of
        // what a panic inside an actor does to the process need a way to cause one.
        #[cfg(debug_assertions)]
        if request == "PANIC" && std::env::var_os("SECOP_GATEWAY_TEST_PANIC").is_some() {
            panic!("test hook: SECOP_GATEWAY_TEST_PANIC");
        }
        let (verb, rest) = request.split_once(' ').unwrap_or((request, ""));
        match verb.to_ascii_uppercase().as_str() {
            "*IDN?" => self.settings.identification.clone(),
            "VAL?" => self.register.clone(),
            "VAL" if !rest.is_empty() => {
                self.register = rest.to_owned();
                "OK".into()
            }
            "ECHO" => rest.to_owned(),
            _ => "ERR".into(),
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
                crate::ascii::line_safety::refuse_unsafe(line, TERMINATORS)?;
                Ok(Value::from(self.answer(line)))
            }
            other => Err(unknown_command(&self.name, other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn communicator() -> Communicator {
        let module = ModuleConfig {
            name: "io".into(),
            description: None,
            properties: Default::default(),
            settings: Value::Null,
        };
        Communicator::build(&module, Settings::default()).unwrap()
    }

    #[tokio::test]
    async fn a_line_cannot_carry_a_second_command() {
        let mut io = communicator();
        let mut fx = Effects::default();
        for bad in [
            "VAL 7\r\nSETP 1",
            "VAL 7\nVAL 8",
            "VAL 7\t",
            "VAL \u{7f}",
            "VAL é",
        ] {
            let e = io
                .execute("io", "communicate", json!(bad), &mut fx)
                .await
                .unwrap_err();
            assert_eq!(e.class, secop_proto::ErrorClass::RangeError, "{bad:?}: {e}");
            assert!(
                e.text.contains("cannot be sent to the instrument"),
                "{bad:?}: {e}"
            );
        }
        // Nothing of it was executed: the register is untouched.
        let register = io
            .execute("io", "communicate", json!("VAL?"), &mut fx)
            .await
            .unwrap();
        assert_eq!(register, json!("0"));
        let ok = io
            .execute("io", "communicate", json!("VAL 7"), &mut fx)
            .await
            .unwrap();
        assert_eq!(ok, json!("OK"));
    }

    /// The instrument answered: its `ERR` is the result of `communicate`, not a
    /// failure to communicate (issue 14, point 9).
    #[tokio::test]
    async fn an_err_answer_is_a_result() {
        let mut io = communicator();
        let mut fx = Effects::default();
        for unknown in ["BOGUS", "VAL", "*RST", ""] {
            let answer = io
                .execute("io", "communicate", json!(unknown), &mut fx)
                .await;
            assert_eq!(answer, Ok(json!("ERR")), "{unknown:?}");
        }
        // and the instrument goes on answering
        let echo = io
            .execute("io", "communicate", json!("ECHO still here"), &mut fx)
            .await;
        assert_eq!(echo, Ok(json!("still here")));
    }
}
