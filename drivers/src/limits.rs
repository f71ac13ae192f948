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

/// `history.window`: from a second to a week.
pub const HISTORY_WINDOW: Seconds = Seconds {
    min: 1.0,
    max: 604800.0,
};

/// `history.resolution`: the time per point of the history.
pub const HISTORY_RESOLUTION: Seconds = Seconds {
    min: 0.01,
    max: 3600.0,
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

/// A value or bound of a range: a count (bytes, connections, registers ...) shown as
/// it is, or a real number shown by [`show`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Count(u64),
    Real(f64),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Count(n) => write!(f, "{n}"),
            Number::Real(x) => f.write_str(&show(*x)),
        }
    }
}

/// A configured number outside its valid range, naming the key: "`key`: 5 bytes is
/// outside the valid range 64 ..= 128 bytes".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    /// `value` is not within `min ..= max` (nor 0, where `zero_allowed`). `unit` is
    /// shown after each number, unless it is empty.
    #[error(
        "{key}: {value}{unit} is outside the valid range {min} ..= {max}{unit}{off}",
        unit = Unit(unit),
        off = if *zero_allowed { ", or 0 (off)" } else { "" }
    )]
    Outside {
        key: String,
        value: Number,
        min: Number,
        max: Number,
        unit: String,
        zero_allowed: bool,
    },
    /// NaN or an infinity where only a finite number will do.
    #[error("{key}: {} is not a finite number", show(*value))]
    NotFinite { key: String, value: f64 },
}

impl RangeError {
    /// The key the error names.
    pub fn key(&self) -> &str {
        match self {
            RangeError::Outside { key, .. } | RangeError::NotFinite { key, .. } => key,
        }
    }

    /// The same error with its key within `prefix` (`parameter[0]` + `offset`).
    pub fn within(mut self, prefix: &str) -> Self {
        let (RangeError::Outside { key, .. } | RangeError::NotFinite { key, .. }) = &mut self;
        *key = format!("{prefix}.{key}");
        self
    }
}

/// A unit after a number: " K", or nothing.
struct Unit<'a>(&'a str);

impl std::fmt::Display for Unit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            "" => Ok(()),
            unit => write!(f, " {unit}"),
        }
    }
}

impl Seconds {
    /// `Ok` if `x` lies within the range; else "`key`: ... is outside ...".
    pub fn check(&self, key: &str, x: f64) -> Result<(), RangeError> {
        if x.is_finite() && self.min <= x && x <= self.max {
            return Ok(());
        }
        Err(self.outside(key, x, false))
    }

    /// Like [`check`](Self::check), but 0 ("off") is valid as well.
    pub fn check_or_zero(&self, key: &str, x: f64) -> Result<(), RangeError> {
        if x == 0.0 || (x.is_finite() && self.min <= x && x <= self.max) {
            return Ok(());
        }
        Err(self.outside(key, x, true))
    }

    fn outside(&self, key: &str, x: f64, zero_allowed: bool) -> RangeError {
        RangeError::Outside {
            key: key.to_owned(),
            value: Number::Real(x),
            min: Number::Real(self.min),
            max: Number::Real(self.max),
            unit: "s".to_owned(),
            zero_allowed,
        }
    }
}

/// `Ok` if the count (bytes, connections, registers ...) lies within `min ..= max`.
pub fn count(key: &str, x: u64, min: u64, max: u64, unit: &str) -> Result<(), RangeError> {
    if (min..=max).contains(&x) {
        return Ok(());
    }
    Err(RangeError::Outside {
        key: key.to_owned(),
        value: Number::Count(x),
        min: Number::Count(min),
        max: Number::Count(max),
        unit: unit.to_owned(),
        zero_allowed: false,
    })
}

/// `Ok` if `x` is a finite number within `min ..= max` (physical quantities of the
/// simulators, scales, tolerances); `unit` is shown after the numbers.
pub fn number(key: &str, x: f64, min: f64, max: f64, unit: &str) -> Result<(), RangeError> {
    if x.is_finite() && min <= x && x <= max {
        return Ok(());
    }
    Err(RangeError::Outside {
        key: key.to_owned(),
        value: Number::Real(x),
        min: Number::Real(min),
        max: Number::Real(max),
        unit: unit.to_owned(),
        zero_allowed: false,
    })
}

/// A finite number (no NaN, no infinity), e.g. an offset.
pub fn finite(key: &str, x: f64) -> Result<(), RangeError> {
    if x.is_finite() {
        return Ok(());
    }
    Err(RangeError::NotFinite {
        key: key.to_owned(),
        value: x,
    })
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
            e.to_string(),
            "node.device_timeout: 1e19 s is outside the valid range 0.001 ..= 86400 s"
        );
        assert_eq!(e.key(), "node.device_timeout");
        assert!(TIMEOUT
            .check("t", f64::NAN)
            .unwrap_err()
            .to_string()
            .contains(": nan s"));
        assert!(TIMEOUT
            .check("t", f64::INFINITY)
            .unwrap_err()
            .to_string()
            .contains("inf"));
        assert!(AGE.check_or_zero("t", 0.0).is_ok());
        assert!(TIMEOUT.check_or_zero("t", 0.0).is_ok());
        assert_eq!(
            TIMEOUT.check_or_zero("t", 1e-9).unwrap_err().to_string(),
            "t: 1e-9 s is outside the valid range 0.001 ..= 86400 s, or 0 (off)"
        );
        assert_eq!(
            count("b", 5, 64, 128, "bytes").unwrap_err().to_string(),
            "b: 5 bytes is outside the valid range 64 ..= 128 bytes"
        );
        assert_eq!(
            count("b", u64::MAX, 64, 1 << 40, "bytes")
                .unwrap_err()
                .to_string(),
            "b: 18446744073709551615 bytes is outside the valid range 64 ..= 1099511627776 bytes"
        );
        assert!(number("x", 1.0, 0.0, 2.0, "K").is_ok());
        assert_eq!(
            number("x", -1.0, 0.0, 2.0, "").unwrap_err().to_string(),
            "x: -1 is outside the valid range 0 ..= 2"
        );
        assert_eq!(
            number("x", 3.0, 0.0, 2.0, "K")
                .unwrap_err()
                .within("p")
                .to_string(),
            "p.x: 3 K is outside the valid range 0 ..= 2 K"
        );
        assert_eq!(
            finite("x", f64::NAN).unwrap_err().to_string(),
            "x: nan is not a finite number"
        );
        assert_eq!(duration(f64::NAN), std::time::Duration::ZERO);
        assert_eq!(duration(1e300), std::time::Duration::MAX);
        assert_eq!(duration(1.5), std::time::Duration::from_millis(1500));
    }
}
