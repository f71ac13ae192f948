//! A simulated pressure gauge (Readable) with noise, and a fault that a client can
//! switch on through `_fault` to see how a sensor failure looks on the wire.

use super::*;
use crate::builder::ModuleBuilder;
use secop_actors::device_actor::{Effects, Produced};
use secop_proto::status as st;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub const DRIVER: &str = "sim_pressure";

/// Settings of `sim_pressure` (all optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Mean pressure (mbar).
    pub pressure: f64,
    /// Relative noise (0.02 = 2 %).
    pub noise: f64,
    /// Start with the fault active.
    pub fault: bool,
    pub pollinterval: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pressure: 1.0e-6,
            noise: 0.02,
            fault: false,
            pollinterval: 1.0,
        }
    }
}

/// See the module documentation.
pub struct PressureGauge {
    name: String,
    desc: ModuleDescription,
    pressure: f64,
    noise: f64,
    fault: bool,
    pollinterval: f64,
}

impl Simulator for PressureGauge {
    type Settings = Settings;

    fn build(module: &ModuleConfig, s: Settings) -> Result<Self, ConfigError> {
        crate::limits::number("pressure", s.pressure, 1e-15, 1e9, "mbar")?;
        if !(0.0..1.0).contains(&s.noise) {
            return Err(ConfigError::invalid(
                "noise",
                format!(
                    "{} is outside the valid range 0 ..< 1",
                    crate::limits::show(s.noise)
                ),
            ));
        }
        pollinterval_setting(s.pollinterval)?;
        let desc = ModuleBuilder::new(
            module,
            "simulated pressure gauge",
            &["PressureSensor", "Readable"],
        )
        .readonly(
            "value",
            "pressure",
            json!({"type": "double", "min": 0, "unit": "mbar", "fmtstr": "%.3e"}),
        )?
        .status(&[("IDLE", st::IDLE), ("ERROR", st::ERROR)])
        .writable("pollinterval", POLLINTERVAL_INFO, pollinterval_datainfo())?
        .writable(
            "_fault",
            "simulate a broken gauge (reads fail while true)",
            json!({"type": "bool"}),
        )?
        .build();
        Ok(PressureGauge {
            name: module.name.clone(),
            desc,
            pressure: s.pressure,
            noise: s.noise,
            fault: s.fault,
            pollinterval: s.pollinterval,
        })
    }
}

impl PressureGauge {
    fn value_of(&self, parameter: &str) -> Result<Value, SecopError> {
        match parameter {
            "value" if self.fault => Err(SecopError::hardware(
                "gauge filament broken (simulated fault)",
            )),
            "value" => {
                num(self.pressure * (1.0 + self.noise * (rand::random::<f64>() * 2.0 - 1.0)))
            }
            "status" if self.fault => Ok(status(st::ERROR, "gauge filament broken")),
            "status" => Ok(status(st::IDLE, "ok")),
            "pollinterval" => num(self.pollinterval),
            "_fault" => Ok(Value::Bool(self.fault)),
            other => Err(unknown_parameter(&self.name, other)),
        }
    }
}

impl Backend for PressureGauge {
    fn modules(&self) -> Vec<ModuleDescription> {
        vec![self.desc.clone()]
    }

    fn poll_interval(&self) -> Duration {
        crate::limits::duration(self.pollinterval)
    }

    async fn poll(&mut self, _item: usize) -> Vec<Produced> {
        produce(
            &self.name,
            &["value", "status", "pollinterval", "_fault"],
            |p| self.value_of(p),
        )
    }

    async fn read(&mut self, _module: &str, parameter: &str) -> Result<Value, SecopError> {
        self.value_of(parameter)
    }

    async fn change(
        &mut self,
        _module: &str,
        parameter: &str,
        value: Value,
        fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        match parameter {
            "_fault" => {
                self.fault = value
                    .as_bool()
                    .ok_or_else(|| SecopError::wrong_type("expected a bool"))?;
                fx.push(&self.name, "status", self.value_of("status"));
                fx.push(&self.name, "value", self.value_of("value"));
            }
            "pollinterval" => self.pollinterval = super::pollinterval(&value)?,
            "value" | "status" => return Err(read_only(&self.name, parameter)),
            other => return Err(unknown_parameter(&self.name, other)),
        }
        self.value_of(parameter)
    }

    async fn execute(
        &mut self,
        _module: &str,
        command: &str,
        _argument: Value,
        _fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        Err(unknown_command(&self.name, command))
    }
}
