//! A simulated power supply (Writable): the output follows the target at once,
//! within the limits of the `_limits` struct and the `mode`.

use super::*;
use crate::builder::ModuleBuilder;
use secop_actors::device_actor::{Effects, Produced};
use secop_proto::status as st;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub const DRIVER: &str = "sim_power_supply";

/// Settings of `sim_power_supply` (all optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Highest voltage the supply can output (V).
    pub max_voltage: f64,
    /// Highest current (A).
    pub max_current: f64,
    /// Resistance of the simulated load (Ohm).
    pub load: f64,
    pub pollinterval: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_voltage: 30.0,
            max_current: 5.0,
            load: 10.0,
            pollinterval: 1.0,
        }
    }
}

const OFF: i64 = 0;
const CONSTANT_VOLTAGE: i64 = 1;
const CONSTANT_CURRENT: i64 = 2;

/// See the module documentation.
pub struct PowerSupply {
    name: String,
    settings: Settings,
    desc: ModuleDescription,
    target: f64,
    mode: i64,
    voltage_limit: f64,
    current_limit: f64,
    pollinterval: f64,
}

impl Simulator for PowerSupply {
    type Settings = Settings;

    fn build(module: &ModuleConfig, s: Settings) -> Result<Self, ConfigError> {
        use crate::limits::number;
        number("max_voltage", s.max_voltage, 1e-6, 1e6, "V")?;
        number("max_current", s.max_current, 1e-6, 1e6, "A")?;
        number("load", s.load, 1e-6, 1e12, "Ohm")?;
        pollinterval_setting(s.pollinterval)?;
        let volts = json!({"type": "double", "min": 0, "max": s.max_voltage, "unit": "V", "fmtstr": "%.3f"});
        let amps = json!({"type": "double", "min": 0, "max": s.max_current, "unit": "A", "fmtstr": "%.3f"});
        let desc = ModuleBuilder::new(module, "simulated power supply", &["PowerSupply", "Writable"])
            .readonly("value", "output voltage", volts.clone())?
            .status(&[("DISABLED", st::DISABLED), ("IDLE", st::IDLE), ("WARN", st::WARN)])
            .writable("target", "voltage setpoint", volts.clone())?
            .writable(
                "mode",
                "output mode",
                json!({"type": "enum", "members": {"off": OFF, "constant_voltage": CONSTANT_VOLTAGE, "constant_current": CONSTANT_CURRENT}}),
            )?
            .readonly("_current", "output current", amps.clone())?
            .writable(
                "_limits",
                "protection limits; a change may give only one of them",
                json!({"type": "struct", "members": {"voltage": volts, "current": amps}, "optional": ["voltage", "current"]}),
            )?
            .writable("pollinterval", POLLINTERVAL_INFO, pollinterval_datainfo())?
            .build();
        Ok(PowerSupply {
            name: module.name.clone(),
            desc,
            target: 0.0,
            mode: OFF,
            voltage_limit: s.max_voltage,
            current_limit: s.max_current,
            pollinterval: s.pollinterval,
            settings: s,
        })
    }
}

impl PowerSupply {
    /// (voltage, current, current-limited?)
    fn output(&self) -> (f64, f64, bool) {
        if self.mode == OFF {
            return (0.0, 0.0, false);
        }
        let v = self.target.min(self.voltage_limit);
        let i = v / self.settings.load;
        if i > self.current_limit {
            (
                self.current_limit * self.settings.load,
                self.current_limit,
                true,
            )
        } else {
            (v, i, false)
        }
    }

    fn value_of(&self, parameter: &str) -> Result<Value, SecopError> {
        let (v, i, limited) = self.output();
        match parameter {
            "value" => num(v),
            "_current" => num(i),
            "status" if self.mode == OFF => Ok(status(st::DISABLED, "output off")),
            "status" if limited => Ok(status(st::WARN, "current limit reached")),
            "status" if self.target > self.voltage_limit => {
                Ok(status(st::WARN, "voltage limit reached"))
            }
            "status" => Ok(status(st::IDLE, "output on")),
            "target" => num(self.target),
            "mode" => Ok(Value::from(self.mode)),
            "_limits" => Ok(json!({"voltage": self.voltage_limit, "current": self.current_limit})),
            "pollinterval" => num(self.pollinterval),
            other => Err(unknown_parameter(&self.name, other)),
        }
    }

    fn output_effects(&self, fx: &mut Effects) {
        for p in ["value", "_current", "status"] {
            fx.push(&self.name, p, self.value_of(p));
        }
    }
}

impl Backend for PowerSupply {
    fn modules(&self) -> Vec<ModuleDescription> {
        vec![self.desc.clone()]
    }

    fn poll_interval(&self) -> Duration {
        crate::limits::duration(self.pollinterval)
    }

    async fn poll(&mut self, _item: usize) -> Vec<Produced> {
        produce(
            &self.name,
            &[
                "value",
                "status",
                "target",
                "mode",
                "_current",
                "_limits",
                "pollinterval",
            ],
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
            "target" => self.target = f64_of(&value)?,
            "mode" => {
                self.mode = value
                    .as_i64()
                    .ok_or_else(|| SecopError::wrong_type("mode is an enum"))?;
            }
            "_limits" => {
                // The node fills omitted members from the current value.
                if let Some(v) = value.get("voltage") {
                    self.voltage_limit = f64_of(v)?;
                }
                if let Some(i) = value.get("current") {
                    self.current_limit = f64_of(i)?;
                }
            }
            "pollinterval" => {
                self.pollinterval = super::pollinterval(&value)?;
                return self.value_of(parameter);
            }
            "value" | "status" | "_current" => return Err(read_only(&self.name, parameter)),
            other => return Err(unknown_parameter(&self.name, other)),
        }
        self.output_effects(fx);
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
