//! Device backends. Each driver turns config into a device actor serving modules.
//!
//! Today: the simulated instruments (`sim_*`), which behave like hardware (they
//! poll, drift, ramp and fail) so that everything above them is exercised exactly as
//! it will be with real links.

pub mod ascii;
pub mod builder;
pub mod link;
pub mod sim;

use secop_actors::device::DeviceHandle;
use serde_json::{Map, Value};

/// What the config says about one module, independent of its driver.
#[derive(Debug, Clone)]
pub struct ModuleConfig {
    pub name: String,
    /// Overrides the driver's default description.
    pub description: Option<String>,
    /// Further module properties (group, visibility, meaning, `_custom`).
    pub properties: Map<String, Value>,
    /// Driver-specific settings.
    pub settings: Value,
}

/// The drivers this build knows, for config validation and `--help` texts.
pub const DRIVERS: &[&str] = &[
    sim::temperature::DRIVER,
    sim::pressure::DRIVER,
    sim::power_supply::DRIVER,
    sim::communicator::DRIVER,
];

/// Start the device actor for one module. Must run inside an actix system.
/// Errors name the offending setting.
pub fn start(driver: &str, module: &ModuleConfig) -> Result<DeviceHandle, String> {
    match driver {
        sim::temperature::DRIVER => sim::start::<sim::temperature::TemperatureController>(module),
        sim::pressure::DRIVER => sim::start::<sim::pressure::PressureGauge>(module),
        sim::power_supply::DRIVER => sim::start::<sim::power_supply::PowerSupply>(module),
        sim::communicator::DRIVER => sim::start::<sim::communicator::Communicator>(module),
        other => Err(format!(
            "unknown driver {other:?}; known drivers: {}",
            DRIVERS.join(", ")
        )),
    }
}

/// Build the module descriptions of a driver without starting anything
/// (`check-config`).
pub fn describe(
    driver: &str,
    module: &ModuleConfig,
) -> Result<Vec<secop_proto::ModuleDescription>, String> {
    match driver {
        sim::temperature::DRIVER => {
            sim::describe::<sim::temperature::TemperatureController>(module)
        }
        sim::pressure::DRIVER => sim::describe::<sim::pressure::PressureGauge>(module),
        sim::power_supply::DRIVER => sim::describe::<sim::power_supply::PowerSupply>(module),
        sim::communicator::DRIVER => sim::describe::<sim::communicator::Communicator>(module),
        other => Err(format!(
            "unknown driver {other:?}; known drivers: {}",
            DRIVERS.join(", ")
        )),
    }
}

/// Build the backend of a link and its modules (`[[link]]` plus the `[[module]]`s
/// that name it). `modules` pairs each module's common config with its link-specific
/// part (`class`, `parameter`, `command`, `drive`).
fn link_backend(
    link: &link::LinkConfig,
    modules: &[(ModuleConfig, Value)],
) -> Result<ascii::AsciiBackend, String> {
    match link.protocol.as_str() {
        "ascii" => {
            let mut specs = Vec::new();
            for (config, spec) in modules {
                let parsed: ascii::AsciiModule = serde_json::from_value(spec.clone())
                    .map_err(|e| format!("module {:?}: {e}", config.name))?;
                specs.push((config.clone(), parsed));
            }
            ascii::AsciiBackend::build(link, &specs)
        }
        other => Err(format!(
            "protocol: {other:?} is not supported (use \"ascii\")"
        )),
    }
}

/// The module descriptions of a link, without starting anything (`check-config`).
pub fn describe_link(
    link: &link::LinkConfig,
    modules: &[(ModuleConfig, Value)],
) -> Result<Vec<secop_proto::ModuleDescription>, String> {
    use secop_actors::device_actor::Backend;
    Ok(link_backend(link, modules)?.modules())
}

/// Start the device actor of a link. Must run inside an actix system.
pub fn start_link(
    link: &link::LinkConfig,
    modules: &[(ModuleConfig, Value)],
) -> Result<DeviceHandle, String> {
    use actix::Actor;
    use secop_actors::device_actor::{Backend, DeviceActor};
    let backend = link_backend(link, modules)?;
    let descriptions = backend.modules();
    let addr = DeviceActor::new(&link.name, backend).start();
    Ok(DeviceHandle::of(&link.name, descriptions, &addr))
}
