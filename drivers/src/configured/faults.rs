//! The fault policy of configured devices: what a client sees when an instrument
//! misbehaves, and when.
//!
//! ```text
//!                 read ok                              read fails (after `retries`)
//!   +--------+ <------------ +-----------------+ <------------------------------+
//!   |  OK    |               | FAULT, in grace  |   same class and text while    |
//!   | value  | ------------> | error_update of  | ---- it lasts: clients see ----+
//!   +--------+  read fails   | the parameter    |      it once
//!       ^       (after       | once; status     |
//!       |        retries)    | unchanged (BUSY  |
//!       |                    | stays BUSY)      |
//!       |                    +-----------------+
//!       |                            | `error_after_failures` consecutive failures
//!       |  read ok                   | and at least `error_after_seconds`
//!       |                            v
//!       |                    +-----------------+
//!       +------------------- | FAULT, persists  |  module status ERROR, once, with
//!                            | status ERROR     |  the episode's first text
//!                            +-----------------+
//! ```
//!
//! - A transaction that timed out, got no parseable reply, a value outside its datainfo
//!   or a Modbus exception is tried again up to `retries` times before it counts as one
//!   failure. A write is repeated only when the device refused it (a Modbus exception:
//!   not carried out); commands never are, since the device may have acted on them.
//! - An episode keeps its first error: a stalled device whose errors alternate between
//!   timeouts and refused connections, or whose texts name other register ranges,
//!   gives each client one `error_update` per parameter, not one per poll.
//! - A link that cannot be opened at all (refused, no such device) is down for sure:
//!   its modules go ERROR at once.
//! - Faults are per parameter, so one silent unit on a shared RS-485 bus leaves the
//!   modules of the other units alone; a unit (fault domain) that timed out is not asked
//!   again in the same poll cycle, and parameters already in an episode get no retries.
//! - Only reads that were tried count towards the grace: a read refused because the
//!   link waits for its next reconnect attempt is reported but not counted.

use secop_proto::SecopError;
use std::time::Instant;

/// `retries`, `error_after_failures`, `error_after_seconds` of a `[[link]]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPolicy {
    pub retries: u32,
    pub error_after_failures: u32,
    pub error_after_seconds: f64,
}

/// The fault state of one parameter.
#[derive(Debug, Clone, Default)]
pub struct Episode {
    failures: u32,
    since: Option<Instant>,
    shown: Option<SecopError>,
}

impl Episode {
    /// One more failure (`counted`: the read was tried; a read that could not be sent
    /// while the link waits for its next attempt is not counted); the error clients
    /// are shown (the episode's first).
    pub fn fail(&mut self, error: SecopError, counted: bool) -> SecopError {
        if counted {
            self.failures = self.failures.saturating_add(1);
        }
        self.since.get_or_insert_with(Instant::now);
        self.shown.get_or_insert(error).clone()
    }

    /// A success ends the episode.
    pub fn clear(&mut self) {
        *self = Episode::default();
    }

    /// The error shown during the episode, if there is one.
    pub fn error(&self) -> Option<&SecopError> {
        self.shown.as_ref()
    }

    /// Whether the fault has lasted long enough to show in the module's status.
    pub fn persists(&self, policy: &FaultPolicy) -> bool {
        match self.since {
            Some(since) => {
                self.failures >= policy.error_after_failures
                    && since.elapsed().as_secs_f64() >= policy.error_after_seconds
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_keeps_its_first_error_and_persists_after_the_grace() {
        let policy = FaultPolicy {
            retries: 1,
            error_after_failures: 3,
            error_after_seconds: 0.0,
        };
        let mut e = Episode::default();
        assert!(!e.persists(&policy));
        let first = e.fail(SecopError::timeout("no reply"), true);
        let second = e.fail(SecopError::communication_failed("link down: refused"), true);
        assert_eq!(first, second, "one error per episode");
        assert!(!e.persists(&policy));
        e.fail(
            SecopError::communication_failed("link down: waiting"),
            false,
        );
        assert!(
            !e.persists(&policy),
            "a read that was not tried does not count"
        );
        e.fail(SecopError::hardware("garbled"), true);
        assert!(e.persists(&policy));
        e.clear();
        assert!(e.error().is_none() && !e.persists(&policy));
        let timed = FaultPolicy {
            error_after_seconds: 60.0,
            ..policy
        };
        for _ in 0..5 {
            e.fail(SecopError::timeout("no reply"), true);
        }
        assert!(!e.persists(&timed), "not before the time grace is over");
    }
}
