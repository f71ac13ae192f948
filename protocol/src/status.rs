//! Status codes (accessibles.rst): the hundreds give the group, the tens a sub-state.

pub const DISABLED: i64 = 0;
pub const IDLE: i64 = 100;
pub const STANDBY: i64 = 130;
pub const PREPARED: i64 = 150;
pub const WARN: i64 = 200;
pub const BUSY: i64 = 300;
pub const PREPARING: i64 = 340;
pub const RAMPING: i64 = 370;
pub const STABILIZING: i64 = 380;
pub const ERROR: i64 = 400;

/// The group of a status code: DISABLED, IDLE, WARN, BUSY or ERROR (as its base code).
pub fn group(code: i64) -> i64 {
    (code / 100).clamp(0, 4) * 100
}

pub fn is_busy(code: i64) -> bool {
    group(code) == BUSY
}

pub fn is_error(code: i64) -> bool {
    group(code) == ERROR
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups() {
        assert_eq!(super::group(376), 300);
        assert!(super::is_busy(super::RAMPING));
        assert!(!super::is_busy(super::IDLE));
        assert!(super::is_error(430));
        assert_eq!(super::group(0), 0);
    }
}
