//! A simulated temperature controller (Drivable): the setpoint ramps to the target,
//! the sample follows with a first-order lag, the heater power follows the error.

use super::*;
use crate::builder::ModuleBuilder;
use secop_actors::device_actor::{Effects, Produced};
use secop_proto::status as st;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub const DRIVER: &str = "sim_temperature";

/// Settings of `sim_temperature` (all optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Start temperature (K).
    pub initial: f64,
    /// Absolute limits of `target` (K); `target_limits` may narrow them at run time.
    pub target_min: f64,
    pub target_max: f64,
    /// Ramp rate (K/min); 0 means jump.
    pub ramp: f64,
    /// Time constant of the sample following the setpoint (s).
    pub time_constant: f64,
    /// |value - target| below which the target counts as reached (K).
    pub tolerance: f64,
    /// Heater power at full output (W).
    pub heater_max: f64,
    /// Noise amplitude on the reading (K).
    pub noise: f64,
    /// Poll interval while idle (s); polling is faster while BUSY.
    pub pollinterval: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            initial: 295.0,
            target_min: 0.0,
            target_max: 400.0,
            ramp: 10.0,
            time_constant: 3.0,
            tolerance: 0.1,
            heater_max: 50.0,
            noise: 0.002,
            pollinterval: 1.0,
        }
    }
}

/// See the module documentation.
pub struct TemperatureController {
    name: String,
    settings: Settings,
    desc: ModuleDescription,
    temperature: f64,
    setpoint: f64,
    target: f64,
    limits: (f64, f64),
    ramp: f64,
    pollinterval: f64,
    busy: bool,
    stopped: bool,
    last_step: Instant,
}

const CODES: &[(&str, i64)] = &[
    ("IDLE", st::IDLE),
    ("WARN", st::WARN),
    ("BUSY", st::BUSY),
    ("RAMPING", st::RAMPING),
    ("STABILIZING", st::STABILIZING),
    ("ERROR", st::ERROR),
];

impl Simulator for TemperatureController {
    type Settings = Settings;

    fn build(module: &ModuleConfig, s: Settings) -> Result<Self, ConfigError> {
        use crate::limits::{finite, number, TIME_CONSTANT};
        finite("target_min", s.target_min)?;
        finite("target_max", s.target_max)?;
        if s.target_min >= s.target_max {
            return Err(ConfigError::invalid(
                "target_min",
                "must be below settings.target_max",
            ));
        }
        number("initial", s.initial, s.target_min, s.target_max, "K")?;
        number("ramp", s.ramp, 0.0, 1000.0, "K/min")?;
        TIME_CONSTANT.check("time_constant", s.time_constant)?;
        number("tolerance", s.tolerance, 1e-9, 1e6, "K")?;
        number("heater_max", s.heater_max, 1e-6, 1e9, "W")?;
        number("noise", s.noise, 0.0, 1e6, "K")?;
        pollinterval_setting(s.pollinterval)?;
        let temp = json!({"type": "double", "min": s.target_min, "max": s.target_max, "unit": "K", "fmtstr": "%.3f"});
        let desc = ModuleBuilder::new(
            module,
            "simulated temperature controller",
            &["TemperatureController", "Drivable"],
        )
        .readonly(
            "value",
            "sample temperature",
            json!({"type": "double", "unit": "K", "fmtstr": "%.3f"}),
        )?
        .status(CODES)
        .writable("target", "temperature to drive to", temp.clone())?
        .writable(
            "target_limits",
            "currently allowed range of target",
            json!({"type": "tuple", "members": [temp.clone(), temp.clone()]}),
        )?
        .writable(
            "ramp",
            "ramp rate of the setpoint; 0 jumps",
            json!({"type": "double", "min": 0, "max": 1000, "unit": "K/min"}),
        )?
        .readonly("setpoint", "current (ramping) setpoint", temp)?
        .readonly(
            "_heater_power",
            "heater output",
            json!({"type": "double", "min": 0, "max": s.heater_max, "unit": "W", "fmtstr": "%.2f"}),
        )?
        .writable("pollinterval", POLLINTERVAL_INFO, pollinterval_datainfo())?
        .constant(
            "_sensor",
            "sensor type",
            json!({"type": "string"}),
            json!("Pt100 (simulated)"),
        )?
        .command("stop", "stop at the current temperature", None, None)?
        .build();
        Ok(TemperatureController {
            name: module.name.clone(),
            desc,
            temperature: s.initial,
            setpoint: s.initial,
            target: s.initial,
            limits: (s.target_min, s.target_max),
            ramp: s.ramp,
            pollinterval: s.pollinterval,
            busy: false,
            stopped: false,
            settings: s,
            last_step: Instant::now(),
        })
    }
}

impl TemperatureController {
    fn advance(&mut self) {
        let dt = step(&mut self.last_step);
        if self.setpoint != self.target {
            if self.ramp == 0.0 {
                self.setpoint = self.target;
            } else {
                let max_step = self.ramp / 60.0 * dt;
                let delta = (self.target - self.setpoint).clamp(-max_step, max_step);
                self.setpoint += delta;
            }
        }
        let follow = 1.0 - (-dt / self.settings.time_constant).exp();
        self.temperature += (self.setpoint - self.temperature) * follow;
        if self.busy
            && self.setpoint == self.target
            && (self.temperature - self.target).abs() <= self.settings.tolerance
        {
            self.busy = false;
        }
    }

    fn reading(&self) -> f64 {
        let noise = self.settings.noise * (rand::random::<f64>() * 2.0 - 1.0);
        self.temperature + noise
    }

    fn heater_power(&self) -> f64 {
        let s = &self.settings;
        // Holding power grows with temperature; the error term drives the approach.
        let hold =
            s.heater_max * 0.4 * (self.setpoint - s.target_min) / (s.target_max - s.target_min);
        let drive = s.heater_max * (self.setpoint - self.temperature) / 10.0;
        (hold + drive).clamp(0.0, s.heater_max)
    }

    fn status(&self) -> Value {
        if self.busy {
            if self.setpoint != self.target {
                status(st::RAMPING, &format!("ramping to {}", self.target))
            } else {
                status(st::STABILIZING, &format!("stabilizing at {}", self.target))
            }
        } else if self.stopped {
            status(st::IDLE, "stopped")
        } else {
            status(st::IDLE, "at target")
        }
    }

    fn value_of(&self, parameter: &str) -> Result<Value, SecopError> {
        match parameter {
            "value" => num(self.reading()),
            "status" => Ok(self.status()),
            "target" => num(self.target),
            "target_limits" => Ok(json!([self.limits.0, self.limits.1])),
            "ramp" => num(self.ramp),
            "setpoint" => num(self.setpoint),
            "_heater_power" => num(self.heater_power()),
            "pollinterval" => num(self.pollinterval),
            other => Err(unknown_parameter(&self.name, other)),
        }
    }
}

const POLLED: &[&str] = &[
    "value",
    "status",
    "target",
    "target_limits",
    "ramp",
    "setpoint",
    "_heater_power",
    "pollinterval",
];

impl Backend for TemperatureController {
    fn modules(&self) -> Vec<ModuleDescription> {
        vec![self.desc.clone()]
    }

    fn poll_interval(&self) -> Duration {
        let secs = if self.busy {
            self.pollinterval.min(0.2)
        } else {
            self.pollinterval
        };
        crate::limits::duration(secs)
    }

    async fn poll(&mut self, _item: usize) -> Vec<Produced> {
        self.advance();
        produce(&self.name, POLLED, |p| self.value_of(p))
    }

    async fn read(&mut self, _module: &str, parameter: &str) -> Result<Value, SecopError> {
        self.advance();
        self.value_of(parameter)
    }

    async fn change(
        &mut self,
        _module: &str,
        parameter: &str,
        value: Value,
        fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        self.advance();
        match parameter {
            "target" => {
                let t = f64_of(&value)?;
                if t < self.limits.0 || t > self.limits.1 {
                    return Err(SecopError::range(format!(
                        "target {t} is outside target_limits {:?}",
                        self.limits
                    )));
                }
                self.target = t;
                self.busy = true;
                self.stopped = false;
                fx.push(&self.name, "status", Ok(self.status()));
            }
            "target_limits" => {
                let pair = value
                    .as_array()
                    .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
                let Some((lo, hi)) = pair else {
                    return Err(SecopError::wrong_type("target_limits is [min, max]"));
                };
                if lo > hi {
                    return Err(SecopError::range("target_limits: min must not exceed max"));
                }
                self.limits = (lo, hi);
            }
            "ramp" => self.ramp = f64_of(&value)?,
            "pollinterval" => self.pollinterval = super::pollinterval(&value)?,
            "value" | "status" | "setpoint" | "_heater_power" => {
                return Err(read_only(&self.name, parameter))
            }
            other => return Err(unknown_parameter(&self.name, other)),
        }
        self.value_of(parameter)
    }

    async fn execute(
        &mut self,
        _module: &str,
        command: &str,
        _argument: Value,
        fx: &mut Effects,
    ) -> Result<Value, SecopError> {
        self.advance();
        match command {
            "stop" => {
                let here = (self.temperature * 1000.0).round() / 1000.0;
                self.target = here.clamp(self.limits.0, self.limits.1);
                self.setpoint = self.target;
                let was_busy = self.busy;
                self.busy = false;
                self.stopped = was_busy || self.stopped;
                fx.push(&self.name, "target", num(self.target));
                fx.push(&self.name, "setpoint", num(self.setpoint));
                fx.push(&self.name, "status", Ok(self.status()));
                Ok(Value::Null)
            }
            other => Err(unknown_command(&self.name, other)),
        }
    }
}
