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
