//! Simulated instruments. Each is a [`Backend`] in a generic device actor, one actor
//! per simulated link, so they poll, queue and push updates like hardware does.

pub mod communicator;
pub mod power_supply;
pub mod pressure;
pub mod temperature;

use crate::limits::RangeError;
use crate::{ConfigError, ModuleConfig};
use actix::Actor;
use secop_actors::device::DeviceHandle;
use secop_actors::device_actor::{Backend, DeviceActor};
use secop_proto::{ModuleDescription, SecopError};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Instant;

/// A simulator built from its settings.
pub trait Simulator: Backend + Sized {
    type Settings: DeserializeOwned + Default;
    /// Errors name the key within `settings` (`ramp`, not `settings.ramp`).
    fn build(module: &ModuleConfig, settings: Self::Settings) -> Result<Self, ConfigError>;
}

/// The simulator of `module`; errors name the key within the module's section
/// (`settings.ramp: ...`, or `settings: ...` for the settings as a whole).
fn settings<S: Simulator>(module: &ModuleConfig) -> Result<S, ConfigError> {
    let settings: S::Settings = if module.settings.is_null() {
        S::Settings::default()
    } else {
        crate::from_json(module.settings.clone()).map_err(|e| e.within("settings"))?
    };
    S::build(module, settings).map_err(|e| e.within("settings"))
}

/// Build a simulator and start its device actor.
pub fn start<S: Simulator>(module: &ModuleConfig) -> Result<DeviceHandle, ConfigError> {
    let sim = settings::<S>(module)?;
    let modules = sim.modules();
    let addr = DeviceActor::new(&module.name, sim).start();
    Ok(DeviceHandle::of(&module.name, modules, &addr))
}

/// Only the description, for `check-config`.
pub fn describe<S: Simulator>(
    module: &ModuleConfig,
) -> Result<Vec<ModuleDescription>, ConfigError> {
    Ok(settings::<S>(module)?.modules())
}

/// Seconds since `since`, advancing it: the step of a physics update.
fn step(since: &mut Instant) -> f64 {
    let now = Instant::now();
    let dt = now.duration_since(*since).as_secs_f64();
    *since = now;
    dt
}

/// A JSON number from an f64, or an internal error for NaN/inf (never sent as null).
fn num(x: f64) -> Result<Value, SecopError> {
    secop_proto::json::number(x).ok_or_else(|| SecopError::internal("value is not a finite number"))
}

fn f64_of(value: &Value) -> Result<f64, SecopError> {
    value
        .as_f64()
        .ok_or_else(|| SecopError::wrong_type("expected a number"))
}

/// `[code, "text"]`.
fn status(code: i64, text: &str) -> Value {
    serde_json::json!([code, text])
}

/// The node rejects writes to read-only parameters before they get here; this answers
/// a device request that bypassed it all the same.
fn read_only(module: &str, parameter: &str) -> SecopError {
    SecopError::read_only(format!("{module}:{parameter} is read-only"))
}

/// One poll cycle of a simulator: the current value of each named parameter.
fn produce(
    module: &str,
    parameters: &[&str],
    value_of: impl Fn(&str) -> Result<Value, SecopError>,
) -> Vec<secop_actors::device_actor::Produced> {
    parameters
        .iter()
        .map(|p| (module.to_owned(), (*p).to_owned(), value_of(p)))
        .collect()
}

fn unknown_parameter(module: &str, parameter: &str) -> SecopError {
    SecopError::no_such_parameter(format!("{module} has no parameter {parameter:?}"))
}

fn unknown_command(module: &str, command: &str) -> SecopError {
    SecopError::no_such_command(format!("{module} has no command {command:?}"))
}

pub(crate) use crate::builder::pollinterval;

/// The `pollinterval` setting of a simulator, checked like a client's change.
fn pollinterval_setting(x: f64) -> Result<(), RangeError> {
    crate::limits::POLLINTERVAL.check("pollinterval", x)
}

const POLLINTERVAL_INFO: &str = "polling interval";

pub(crate) use crate::builder::pollinterval_datainfo;
