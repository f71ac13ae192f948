//! `[[link]]` in the config: where an instrument is (serial line or TCP socket), the
//! protocol it speaks with that protocol's section, and the fault policy. This file
//! only reads and checks the section and splits it into the parts that the transport
//! ([`crate::transport`]), the shared core ([`crate::configured`]) and the protocol
//! take; it holds no connection.

use crate::configured::faults::FaultPolicy;
use crate::configured::{CoreSettings, LinkParts};
use crate::limits;
use crate::transport::TransportSettings;
use crate::ConfigError;
use serde::Deserialize;

/// The protocols a link can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolKind {
    /// Line-based instruments (`[link.ascii]`).
    Ascii,
    /// Modbus TCP or RTU (`[link.modbus]`).
    Modbus,
}

impl ProtocolKind {
    fn name(self) -> &'static str {
        match self {
            ProtocolKind::Ascii => "ascii",
            ProtocolKind::Modbus => "modbus",
        }
    }
}

/// `[[link]]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub name: String,
    /// `ascii` or `modbus`; only that protocol's section may be given.
    pub protocol: ProtocolKind,
    /// Serial device path, e.g. `/dev/ttyUSB0`.
    pub serial: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    #[serde(default = "default_parity")]
    pub parity: String,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `host:port` of a LAN instrument or serial-to-Ethernet converter.
    pub tcp: Option<String>,
    /// Seconds one transaction may take.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Reconnect backoff: first and largest wait (seconds).
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: f64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: f64,
    /// Default seconds between polls of each module (a module may set its own;
    /// clients change one module's via its `pollinterval`).
    #[serde(default = "default_pollinterval")]
    pub pollinterval: f64,
    /// Parameters with `poll = "slow"` are polled every this many cycles.
    #[serde(default = "default_slow_factor")]
    pub slow_factor: u32,
    /// A client `read` is answered from the last poll if that is younger than this
    /// (seconds); 0 always asks the device.
    #[serde(default)]
    pub max_age: f64,
    /// Extra attempts for a read that timed out, did not parse or got a Modbus
    /// exception, and for a write the device refused (Modbus exception).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// A module's status turns ERROR after this many consecutive failed reads of
    /// one of its parameters ...
    #[serde(default = "default_error_after_failures")]
    pub error_after_failures: u32,
    /// ... that lasted at least this long (seconds).
    #[serde(default)]
    pub error_after_seconds: f64,
    /// Settings of the `ascii` protocol.
    pub ascii: Option<crate::ascii::AsciiLink>,
    /// Settings of the `modbus` protocol (TCP with `tcp`, RTU with `serial`).
    pub modbus: Option<crate::modbus::ModbusLink>,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> String {
    "none".into()
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> f64 {
    1.0
}
fn default_reconnect_min() -> f64 {
    0.5
}
fn default_reconnect_max() -> f64 {
    30.0
}
fn default_pollinterval() -> f64 {
    1.0
}
fn default_slow_factor() -> u32 {
    10
}
fn default_retries() -> u32 {
    1
}
fn default_error_after_failures() -> u32 {
    3
}

impl LinkConfig {
    /// Checks that serde cannot express; errors name the key within `[[link]]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.serial, &self.tcp) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give either serial or tcp, not both".into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "serial (a device path) or tcp (host:port) is required".into(),
                ))
            }
            _ => {}
        }
        if !matches!(self.parity.as_str(), "none" | "odd" | "even") {
            return Err(ConfigError::invalid(
                "parity",
                format!("{:?} is not none, odd or even", self.parity),
            ));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(ConfigError::invalid("data_bits", "must be 5, 6, 7 or 8"));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(ConfigError::invalid("stop_bits", "must be 1 or 2"));
        }
        limits::count("baud", u64::from(self.baud), 50, 12_000_000, "baud")?;
        limits::TIMEOUT.check("timeout", self.timeout)?;
        limits::RECONNECT_MIN.check("reconnect_min", self.reconnect_min)?;
        limits::RECONNECT_MAX.check("reconnect_max", self.reconnect_max)?;
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::invalid(
                "reconnect_max",
                "must not be below reconnect_min",
            ));
        }
        limits::POLLINTERVAL.check("pollinterval", self.pollinterval)?;
        limits::count(
            "slow_factor",
            u64::from(self.slow_factor),
            1,
            10_000,
            "cycles",
        )?;
        limits::AGE.check("max_age", self.max_age)?;
        limits::count("retries", u64::from(self.retries), 0, 10, "attempts")?;
        limits::count(
            "error_after_failures",
            u64::from(self.error_after_failures),
            1,
            1000,
            "failures",
        )?;
        limits::AGE.check("error_after_seconds", self.error_after_seconds)?;
        let sections = [
            (ProtocolKind::Ascii, self.ascii.is_some()),
            (ProtocolKind::Modbus, self.modbus.is_some()),
        ];
        for (kind, given) in sections {
            if given && kind != self.protocol {
                return Err(ConfigError::invalid(
                    kind.name(),
                    format!(
                        "[link.{}] belongs to protocol = {:?}, but this link has protocol = {:?}",
                        kind.name(),
                        kind.name(),
                        self.protocol.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The parts the transport, the core and the protocol take (after
    /// [`validate`](Self::validate)).
    pub fn parts(&self) -> LinkParts {
        LinkParts {
            transport: TransportSettings {
                name: self.name.clone(),
                serial: self.serial.clone(),
                baud: self.baud,
                data_bits: self.data_bits,
                parity: self.parity.clone(),
                stop_bits: self.stop_bits,
                tcp: self.tcp.clone(),
                timeout: self.timeout,
                reconnect_min: self.reconnect_min,
                reconnect_max: self.reconnect_max,
            },
            core: CoreSettings {
                policy: FaultPolicy {
                    retries: self.retries,
                    error_after_failures: self.error_after_failures,
                    error_after_seconds: self.error_after_seconds,
                },
                slow_factor: self.slow_factor,
                max_age: self.max_age,
            },
            pollinterval: self.pollinterval,
        }
    }
}
