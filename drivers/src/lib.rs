//! Device backends. Each driver turns config into a device actor serving modules.
//!
//! Today: the simulated instruments (`sim_*`), which behave like hardware (they
//! poll, drift, ramp and fail) so that everything above them is exercised exactly as
//! it will be with real links.

pub mod ascii;
pub mod backoff;
pub mod builder;
pub mod configured;
pub mod drive;
pub mod error;
pub mod fit;
pub mod limits;
pub mod link;
pub mod modbus;
pub mod quoted;
pub mod remote;
pub mod sim;
pub mod state;
pub mod transport;

pub use error::ConfigError;
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
/// Errors name the offending setting (`settings.ramp`), within the module's section.
pub fn start(driver: &str, module: &ModuleConfig) -> Result<DeviceHandle, ConfigError> {
    match driver {
        sim::temperature::DRIVER => sim::start::<sim::temperature::TemperatureController>(module),
        sim::pressure::DRIVER => sim::start::<sim::pressure::PressureGauge>(module),
        sim::power_supply::DRIVER => sim::start::<sim::power_supply::PowerSupply>(module),
        sim::communicator::DRIVER => sim::start::<sim::communicator::Communicator>(module),
        other => Err(ConfigError::UnknownDriver(other.to_owned())),
    }
}

/// Build the module descriptions of a driver without starting anything
/// (`check-config`).
pub fn describe(
    driver: &str,
    module: &ModuleConfig,
) -> Result<Vec<secop_proto::ModuleDescription>, ConfigError> {
    match driver {
        sim::temperature::DRIVER => {
            sim::describe::<sim::temperature::TemperatureController>(module)
        }
        sim::pressure::DRIVER => sim::describe::<sim::pressure::PressureGauge>(module),
        sim::power_supply::DRIVER => sim::describe::<sim::power_supply::PowerSupply>(module),
        sim::communicator::DRIVER => sim::describe::<sim::communicator::Communicator>(module),
        other => Err(ConfigError::UnknownDriver(other.to_owned())),
    }
}

/// Parse each module's link-specific part for the link's protocol.
fn specs<T: serde::de::DeserializeOwned>(
    modules: &[(ModuleConfig, Value)],
) -> Result<Vec<(ModuleConfig, T)>, ConfigError> {
    modules
        .iter()
        .map(|(config, spec)| {
            from_json(spec.clone())
                .map(|parsed| (config.clone(), parsed))
                .map_err(|e| e.in_module(&config.name))
        })
        .collect()
}

/// Deserialize a part of the config; the error names the key within it
/// (`ramp: invalid type: ...`), or none if the part as a whole is wrong.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let reason = ConfigError::Invalid(e.into_inner().to_string());
        match path.as_str() {
            "." | "" => reason,
            _ => ConfigError::at(path, reason),
        }
    })
}

/// The device of a link (`[[link]]` plus the `[[module]]`s that name it), started
/// or just described. `modules` pairs each module's common config with its
/// link-specific part (`class`, `unit_id`, `parameter`, `command`, `drive`,
/// `pollinterval`).
fn with_link_backend<R>(
    link: &link::LinkConfig,
    modules: &[(ModuleConfig, Value)],
    use_backend: impl FnOnce(LinkBackend) -> R,
) -> Result<R, ConfigError> {
    link.validate()?;
    let parts = link.parts();
    let backend = match link.protocol {
        link::ProtocolKind::Ascii => {
            LinkBackend::Ascii(ascii::build(&parts, link.ascii.as_ref(), &specs(modules)?)?)
        }
        link::ProtocolKind::Modbus => LinkBackend::Modbus(modbus::build(
            &parts,
            link.modbus.as_ref(),
            &specs(modules)?,
        )?),
    };
    Ok(use_backend(backend))
}

enum LinkBackend {
    Ascii(ascii::AsciiDevice),
    Modbus(modbus::ModbusDevice),
}

/// The module descriptions of a link, without starting anything (`check-config`).
pub fn describe_link(
    link: &link::LinkConfig,
    modules: &[(ModuleConfig, Value)],
) -> Result<Vec<secop_proto::ModuleDescription>, ConfigError> {
    use secop_actors::device_actor::Backend;
    with_link_backend(link, modules, |backend| match backend {
        LinkBackend::Ascii(b) => b.modules(),
        LinkBackend::Modbus(b) => b.modules(),
    })
}

/// Start the device actor of a link. Must run inside an actix system.
/// `state` keeps the values of persisted parameters (`persist`), if a state file is
/// configured.
pub fn start_link(
    link: &link::LinkConfig,
    modules: &[(ModuleConfig, Value)],
    state: Option<&state::StateStore>,
) -> Result<DeviceHandle, ConfigError> {
    use actix::Actor;
    use secop_actors::device_actor::{Backend, DeviceActor};
    fn start<B: Backend>(name: &str, backend: B) -> DeviceHandle {
        let descriptions = backend.modules();
        let addr = DeviceActor::new(name, backend).start();
        DeviceHandle::of(name, descriptions, &addr)
    }
    with_link_backend(link, modules, |backend| match backend {
        LinkBackend::Ascii(b) => start(&link.name, b.with_state(state)),
        LinkBackend::Modbus(b) => start(&link.name, b.with_state(state)),
    })
}
