//! One timer for many deadlines: an actor with requests in flight wakes up when the
//! earliest of their deadlines passes, not on a fixed sweep (which answers up to a
//! sweep late and wakes an idle gateway many times a second) and not with a timer per
//! request (which actix would poll on every wake-up).

use actix::prelude::*;
use std::time::Instant;

/// An actor whose requests in flight have deadlines.
pub trait Deadlines: Actor<Context = Context<Self>> {
    /// The actor's timer.
    fn timer(&mut self) -> &mut DeadlineTimer;
    /// Answer what is past its deadline; the earliest deadline still pending.
    fn expire_due(&mut self) -> Option<Instant>;
}

/// See the module documentation. The owner calls [`DeadlineTimer::want`] for each new
/// deadline (cheap: it only remembers the earliest) and [`arm`] at the end of a
/// handler, where the context is at hand.
#[derive(Default)]
pub struct DeadlineTimer {
    armed: Option<(Instant, SpawnHandle)>,
    wanted: Option<Instant>,
}

impl DeadlineTimer {
    /// Be woken by `deadline` (kept only if earlier than what is armed or wanted).
    pub fn want(&mut self, deadline: Instant) {
        let earlier = |t: Instant| deadline < t;
        if self.armed.as_ref().is_none_or(|(t, _)| earlier(*t)) && self.wanted.is_none_or(earlier) {
            self.wanted = Some(deadline);
        }
    }
}

/// `start + duration`: a deadline. Where that cannot be represented (a duration of
/// centuries), a year after `start`, which is "never" in practice; never a panic.
pub fn after(start: Instant, duration: std::time::Duration) -> Instant {
    start
        .checked_add(duration)
        .or_else(|| start.checked_add(std::time::Duration::from_secs(365 * 86400)))
        .unwrap_or(start)
}

/// Arm the actor's timer for the deadline it wants, if any (replacing an armed later
/// one). When it fires, what is due expires and the timer is armed for the next.
pub fn arm<A: Deadlines>(act: &mut A, ctx: &mut Context<A>) {
    let timer = act.timer();
    let Some(deadline) = timer.wanted.take() else {
        return;
    };
    if let Some((_, handle)) = timer.armed.take() {
        ctx.cancel_future(handle);
    }
    let after = deadline.saturating_duration_since(Instant::now());
    let handle = ctx.run_later(after, |act: &mut A, ctx| {
        act.timer().armed = None;
        if let Some(next) = act.expire_due() {
            act.timer().want(next);
        }
        arm(act, ctx);
    });
    act.timer().armed = Some((deadline, handle));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now);
        assert!(after(now, Duration::from_secs_f64(1e19)) > now);
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[test]
    fn only_the_earliest_deadline_is_wanted() {
        let t = Instant::now();
        let mut timer = DeadlineTimer::default();
        timer.want(t + Duration::from_secs(2));
        timer.want(t + Duration::from_secs(1));
        timer.want(t + Duration::from_secs(3));
        assert_eq!(timer.wanted, Some(t + Duration::from_secs(1)));
    }

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>;

    /// Has deadlines and records (deadline, when it expired).
    struct Asker {
        timer: DeadlineTimer,
        deadlines: Vec<Instant>,
        seen: Seen,
    }

    impl Actor for Asker {
        type Context = Context<Self>;
    }

    impl Deadlines for Asker {
        fn timer(&mut self) -> &mut DeadlineTimer {
            &mut self.timer
        }
        fn expire_due(&mut self) -> Option<Instant> {
            let now = Instant::now();
            let (mut due, left): (Vec<Instant>, Vec<Instant>) =
                self.deadlines.iter().partition(|d| **d <= now);
            due.sort();
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.extend(due.iter().map(|d| (*d, now)));
            self.deadlines = left;
            if self.deadlines.is_empty() {
                System::current().stop();
            }
            self.deadlines.iter().min().copied()
        }
    }

    #[test]
    fn every_deadline_expires_in_order_and_not_before_its_time() {
        let sys = System::new();
        let t = Instant::now();
        let deadlines: Vec<Instant> = [30, 10, 20]
            .iter()
            .map(|ms| t + Duration::from_millis(*ms))
            .collect();
        let seen = Seen::default();
        let record = seen.clone();
        sys.block_on(async move {
            Asker::create(move |ctx| {
                // a timer that never fires must not hang the test
                ctx.run_later(Duration::from_secs(5), |_, _| System::current().stop());
                let mut a = Asker {
                    timer: DeadlineTimer::default(),
                    deadlines: deadlines.clone(),
                    seen: record,
                };
                for d in &deadlines {
                    a.timer.want(*d);
                }
                arm(&mut a, ctx);
                a
            });
        });
        let _ = sys.run();
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let order: Vec<Instant> = seen.iter().map(|(d, _)| *d).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(seen.len(), 3, "every deadline expired: {seen:?}");
        assert_eq!(order, sorted, "in the order of their deadlines");
        assert!(seen.iter().all(|(d, at)| at >= d), "none early: {seen:?}");
    }
}
