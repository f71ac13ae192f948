//! What config-defined Drivables and their status have in common, whatever the
//! protocol: a move starts when `target` is written, ends when the value stayed
//! within tolerance for the settle time, and ends in WARN after the timeout.

use crate::ConfigError;
use secop_proto::status as st;
use secop_proto::SecopError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;

/// `[module.drive]`: how a Drivable knows it arrived.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// |value - target| within which the target counts as reached.
    pub tolerance: f64,
    /// Seconds the value must stay within tolerance.
    #[serde(default)]
    pub settle: f64,
    /// Seconds after which a move that did not arrive ends in WARN.
    #[serde(default = "default_drive_timeout")]
    pub timeout: f64,
    /// ASCII: a command line that stops a move. Modbus: the name of a
    /// `[[module.command]]` to run. Without it, `stop` writes the current value as
    /// target.
    pub stop: Option<String>,
    /// Instead of the tolerance: the move is done when this parameter (a status bit,
    /// an "in position" reply) equals `done_value`.
    pub done_parameter: Option<String>,
    #[serde(default = "default_done_value")]
    pub done_value: Value,
}

fn default_drive_timeout() -> f64 {
    3600.0
}

fn default_done_value() -> Value {
    Value::Bool(true)
}

/// How long a "done" flag is not trusted after a move started, unless it was seen
/// "not done" before: devices take a poll cycle or two to raise their busy bit.
const DONE_FLAG_GRACE: f64 = 1.0;

impl DriveConfig {
    /// Errors name the key within `[module.drive]` (`drive.tolerance`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.tolerance > 0.0 && self.tolerance.is_finite()) {
            return Err(ConfigError::invalid(
                "drive.tolerance",
                format!(
                    "{} must be a positive number",
                    crate::limits::show(self.tolerance)
                ),
            ));
        }
        crate::limits::AGE.check("drive.settle", self.settle)?;
        crate::limits::MOVE_TIMEOUT.check("drive.timeout", self.timeout)?;
        Ok(())
    }
}

/// The state of a move.
#[derive(Debug, Clone)]
pub struct Drive {
    pub config: DriveConfig,
    busy: bool,
    started: Instant,
    within_since: Option<Instant>,
    warning: Option<String>,
    seen_moving: bool,
}

impl Drive {
    pub fn new(config: DriveConfig) -> Drive {
        Drive {
            config,
            busy: false,
            started: Instant::now(),
            within_since: None,
            warning: None,
            seen_moving: false,
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// A new target was written.
    pub fn start(&mut self) {
        self.busy = true;
        self.started = Instant::now();
        self.within_since = None;
        self.warning = None;
        self.seen_moving = false;
    }

    pub fn stop(&mut self) {
        self.busy = false;
    }

    /// New readings while moving: the value and target (if known) and the done flag
    /// parameter's value (if one is configured and known).
    pub fn observe(&mut self, value: Option<f64>, target: Option<f64>, flag: Option<&Value>) {
        if !self.busy {
            return;
        }
        let now = Instant::now();
        if self.config.done_parameter.is_some() {
            match flag {
                Some(f) if *f == self.config.done_value => {
                    let grace_over =
                        now.duration_since(self.started).as_secs_f64() >= DONE_FLAG_GRACE;
                    if self.seen_moving || grace_over {
                        self.busy = false;
                    }
                }
                Some(_) => self.seen_moving = true,
                None => {}
            }
            self.check_timeout(now, target.unwrap_or(f64::NAN));
            return;
        }
        let (Some(value), Some(target)) = (value, target) else {
            return;
        };
        if (value - target).abs() <= self.config.tolerance {
            let since = *self.within_since.get_or_insert(now);
            if now.duration_since(since).as_secs_f64() >= self.config.settle {
                self.busy = false;
            }
        } else {
            self.within_since = None;
            self.check_timeout(now, target);
        }
    }

    fn check_timeout(&mut self, now: Instant, target: f64) {
        if self.busy && now.duration_since(self.started).as_secs_f64() > self.config.timeout {
            self.busy = false;
            self.warning = Some(format!(
                "target {target} not reached within {} s",
                self.config.timeout
            ));
        }
    }
}

/// The status of a config-defined module: ERROR while its link is down or a value
/// could not be read, BUSY while moving, WARN after a move timed out, else IDLE.
pub fn module_status(
    link_down: Option<String>,
    error: Option<&SecopError>,
    drive: Option<&Drive>,
) -> Value {
    if let Some(reason) = link_down {
        return json!([st::ERROR, format!("link down: {reason}")]);
    }
    if let Some(e) = error {
        return json!([st::ERROR, e.text]);
    }
    if let Some(d) = drive {
        if d.busy {
            return json!([st::BUSY, "moving"]);
        }
        if let Some(w) = &d.warning {
            return json!([st::WARN, w]);
        }
    }
    json!([st::IDLE, "ok"])
}

/// The status codes config-defined modules use.
pub const STATUS_CODES: &[(&str, i64)] = &[
    ("IDLE", st::IDLE),
    ("WARN", st::WARN),
    ("BUSY", st::BUSY),
    ("ERROR", st::ERROR),
];

/// What a parameter of a config-defined module can do.
pub struct Abilities {
    pub readable: bool,
    pub writable: bool,
}

/// Check that a module has the parameters its interface class needs: `value` that
/// can be read, and for Writable and Drivable a `target` that can be written.
/// `abilities` looks a parameter up; the hints say how to fix it for the protocol.
pub fn check_class_parameters(
    class: &str,
    abilities: impl Fn(&str) -> Option<Abilities>,
    read_hint: &str,
    write_hint: &str,
) -> Result<(), ConfigError> {
    let need: &[&str] = match class {
        "Readable" => &["value"],
        "Writable" | "Drivable" => &["value", "target"],
        _ => &[],
    };
    for name in need {
        match abilities(name) {
            None => {
                return Err(ConfigError::Invalid(format!(
                    "a {class} needs a parameter {name:?}"
                )))
            }
            Some(a) if *name == "target" && !a.writable => {
                return Err(ConfigError::Invalid(format!(
                    "parameter \"target\" {write_hint}"
                )))
            }
            Some(a) if *name == "value" && !a.readable => {
                return Err(ConfigError::Invalid(format!(
                    "parameter \"value\" {read_hint}"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The accessibles the gateway adds to every config-defined module: `status` and its
/// `pollinterval`.
pub fn standard_accessibles(
    builder: crate::builder::ModuleBuilder,
) -> Result<crate::builder::ModuleBuilder, ConfigError> {
    builder.status(STATUS_CODES).writable(
        "pollinterval",
        "polling interval of the module",
        crate::builder::pollinterval_datainfo(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_done_flag_ends_the_move_once_seen_moving() {
        let mut d = Drive::new(DriveConfig {
            tolerance: 0.5,
            settle: 0.0,
            timeout: 60.0,
            stop: None,
            done_parameter: Some("_in_position".into()),
            done_value: Value::Bool(true),
        });
        d.start();
        d.observe(None, None, Some(&Value::Bool(true)));
        assert!(
            d.is_busy(),
            "a stale done flag right after the start is not trusted"
        );
        d.observe(None, None, Some(&Value::Bool(false)));
        assert!(d.is_busy());
        d.observe(None, None, Some(&Value::Bool(true)));
        assert!(!d.is_busy());
    }

    #[test]
    fn moves_settle_and_time_out() {
        let mut d = Drive::new(DriveConfig {
            tolerance: 0.5,
            settle: 0.0,
            timeout: 0.05,
            stop: None,
            done_parameter: None,
            done_value: Value::Bool(true),
        });
        d.start();
        d.observe(Some(10.0), Some(20.0), None);
        assert!(d.is_busy());
        d.observe(Some(19.8), Some(20.0), None);
        assert!(!d.is_busy());
        d.start();
        std::thread::sleep(std::time::Duration::from_millis(80));
        d.observe(Some(10.0), Some(20.0), None);
        assert!(!d.is_busy());
        assert_eq!(module_status(None, None, Some(&d))[0], 200);
        assert_eq!(module_status(Some("x".into()), None, Some(&d))[0], 400);
    }
}
