//! The valid range of every duration and size in the configuration, in one place.
//!
//! A value outside its range is a configuration error (`check-config` and `run` refuse
//! it alike), so no later `Duration::from_secs_f64`, `Instant + Duration` or timer can
//! panic or overflow on it. The ranges are documented in docs/configuration.md and in
//! config/gateway.toml; keep the three in step.

/// A closed range of seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds {
    pub min: f64,
    pub max: f64,
}

/// Timeouts: of a request to a device, a transaction on a link, a client's write or
/// handshake, a remote node's answer.
pub const TIMEOUT: Seconds = Seconds {
    min: 0.001,
    max: 86400.0,
};

/// Poll intervals (also the range of every `pollinterval` parameter).
pub const POLLINTERVAL: Seconds = Seconds {
    min: 0.1,
    max: 3600.0,
};

/// The WebSocket ping interval.
pub const PING_INTERVAL: Seconds = Seconds {
    min: 0.1,
    max: 3600.0,
};

/// The first wait before reconnecting a link or a remote node.
pub const RECONNECT_MIN: Seconds = Seconds {
    min: 0.01,
    max: 3600.0,
};

/// The longest wait before reconnecting (and at least `reconnect_min`).
pub const RECONNECT_MAX: Seconds = Seconds {
    min: 0.01,
    max: 86400.0,
};

/// Ages and settle times, where 0 means "none".
pub const AGE: Seconds = Seconds {
    min: 0.0,
    max: 86400.0,
};

/// How long a move of a Drivable may take before it ends in WARN (slow magnets and
/// furnaces take hours).
pub const MOVE_TIMEOUT: Seconds = Seconds {
    min: 0.001,
    max: 604800.0,
};

/// A time constant of a simulation.
pub const TIME_CONSTANT: Seconds = Seconds {
    min: 0.001,
    max: 86400.0,
};

/// A number as the config showed it: plain where that is short, else in exponent form.
pub fn show(x: f64) -> String {
    if x.is_nan() {
        "nan".to_owned()
    } else if x == 0.0 || (x.is_finite() && (1e-3..1e7).contains(&x.abs())) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

impl Seconds {
    /// `Ok` if `x` lies within the range; else "`key`: ... is outside ...".
    pub fn check(&self, key: &str, x: f64) -> Result<(), String> {
        if x.is_finite() && self.min <= x && x <= self.max {
            return Ok(());
        }
        Err(format!(
            "{key}: {} s is outside the valid range {} ..= {} s",
            show(x),
            show(self.min),
            show(self.max)
        ))
    }

    /// Like [`check`](Self::check), but 0 ("off") is valid as well.
    pub fn check_or_zero(&self, key: &str, x: f64) -> Result<(), String> {
        if x == 0.0 {
            return Ok(());
        }
        self.check(key, x).map_err(|e| format!("{e}, or 0 (off)"))
    }
}

/// `Ok` if the count (bytes, connections, registers ...) lies within `min ..= max`.
pub fn count(key: &str, x: u64, min: u64, max: u64, unit: &str) -> Result<(), String> {
    if (min..=max).contains(&x) {
        return Ok(());
    }
    Err(format!(
        "{key}: {x} {unit} is outside the valid range {min} ..= {max} {unit}"
    ))
}

/// `Ok` if `x` is a finite number within `min ..= max` (physical quantities of the
/// simulators, scales, tolerances); `unit` is shown after the numbers.
pub fn number(key: &str, x: f64, min: f64, max: f64, unit: &str) -> Result<(), String> {
    if x.is_finite() && min <= x && x <= max {
        return Ok(());
    }
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    Err(format!(
        "{key}: {}{unit} is outside the valid range {} ..= {}{unit}",
        show(x),
        show(min),
        show(max)
    ))
}

/// A finite number (no NaN, no infinity), e.g. an offset.
pub fn finite(key: &str, x: f64) -> Result<(), String> {
    if x.is_finite() {
        return Ok(());
    }
    Err(format!("{key}: {} is not a finite number", show(x)))
}

/// A number of seconds as a `Duration`, for values already checked against their
/// range; whatever slips through is clamped (NaN and negatives to zero, the huge to
/// `Duration::MAX`) instead of panicking like `Duration::from_secs_f64`.
pub fn duration(seconds: f64) -> std::time::Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::try_from_secs_f64(seconds).unwrap_or(std::time::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_key_value_and_bounds() {
        assert!(TIMEOUT.check("t", 10.0).is_ok());
        let e = TIMEOUT.check("node.device_timeout", 1e19).unwrap_err();
        assert_eq!(
            e,
            "node.device_timeout: 1e19 s is outside the valid range 0.001 ..= 86400 s"
        );
        assert!(TIMEOUT
            .check("t", f64::NAN)
            .unwrap_err()
            .contains(": nan s"));
        assert!(TIMEOUT
            .check("t", f64::INFINITY)
            .unwrap_err()
            .contains("inf"));
        assert!(AGE.check_or_zero("t", 0.0).is_ok());
        assert!(TIMEOUT.check_or_zero("t", 0.0).is_ok());
        assert!(TIMEOUT
            .check_or_zero("t", 1e-9)
            .unwrap_err()
            .ends_with("or 0 (off)"));
        assert_eq!(
            count("b", 5, 64, 128, "bytes").unwrap_err(),
            "b: 5 bytes is outside the valid range 64 ..= 128 bytes"
        );
        assert!(number("x", 1.0, 0.0, 2.0, "K").is_ok());
        assert!(finite("x", f64::NAN).is_err());
        assert_eq!(duration(f64::NAN), std::time::Duration::ZERO);
        assert_eq!(duration(1e300), std::time::Duration::MAX);
        assert_eq!(duration(1.5), std::time::Duration::from_millis(1500));
    }
}
