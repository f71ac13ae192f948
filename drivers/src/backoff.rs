//! The reconnect backoff of links and remote nodes, in one place.
//!
//! After a failed attempt the next one waits `min`, then twice that, up to `max`; a
//! success starts over at `min`. "Failed" includes a session that opened but never got
//! an answer (a silent device or a wrong instrument): reconnecting such a device at
//! full speed would only flood the log and the device.

use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next_wait: Duration,
    next_attempt: Instant,
    failures: u64,
}

impl Backoff {
    /// `min` and `max` in seconds, already checked against their ranges.
    pub fn new(min: f64, max: f64) -> Backoff {
        let min = crate::limits::duration(min);
        let max = crate::limits::duration(max).max(min);
        Backoff {
            min,
            max,
            next_wait: min,
            next_attempt: Instant::now(),
            failures: 0,
        }
    }

    /// Whether an attempt may be made now.
    pub fn ready(&self) -> bool {
        Instant::now() >= self.next_attempt
    }

    /// An attempt failed: the next one waits the current wait, which then doubles.
    /// Returns the wait.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next_wait;
        self.next_attempt = secop_actors::deadline::after(Instant::now(), wait);
        self.next_wait = (self.next_wait * 2).min(self.max);
        self.failures += 1;
        wait
    }

    /// The wait before the next attempt, without counting a failure (for actors that
    /// schedule their own timer).
    pub fn next_delay(&mut self) -> Duration {
        self.failed()
    }

    /// An attempt succeeded: the next failure waits `min` again.
    pub fn succeeded(&mut self) {
        self.next_wait = self.min;
        self.failures = 0;
    }

    /// Allow the next attempt at once (a working session ended: reconnect now).
    pub fn now(&mut self) {
        self.next_attempt = Instant::now();
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::new(0.25, 1.0);
        assert!(b.ready());
        let waits: Vec<f64> = (0..5).map(|_| b.failed().as_secs_f64()).collect();
        assert_eq!(waits, vec![0.25, 0.5, 1.0, 1.0, 1.0]);
        assert!(!b.ready());
        assert_eq!(b.failures(), 5);
        b.succeeded();
        b.now();
        assert!(b.ready());
        assert_eq!(b.failed().as_secs_f64(), 0.25);
    }
}
