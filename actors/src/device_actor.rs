//! A generic device actor: one per link, around a [`Backend`] that does the I/O.
//!
//! The actor owns the backend exclusively and runs one transaction at a time: client
//! requests wait in a queue (each with the deadline after which its asker has given
//! up; such a request is answered without touching the link) and one worker takes
//! them in order; the backend sits behind an async mutex that the poll cycle takes
//! per poll item, so polls and client requests interleave. The actor polls on its own
//! timer, remembers the last value of every parameter so that polls push only
//! changes (and an unchanged value again at most every [`REFRESH_INTERVAL`], so that
//! the node's cache carries the time the value was last confirmed: a client that
//! activates gets a recent `t`, not the time the value last changed; the node sends
//! clients only changes), and fans values out to every subscribed node.

use crate::device::{
    now, DeviceAction, DeviceCall, DeviceReply, DeviceRequest, DeviceUpdates, ParamUpdate,
    StopDevice, Subscribe, SubscriberId,
};
use crate::metrics::metrics;
use actix::prelude::*;
use prometheus::{Gauge, Histogram, IntCounter, IntGauge};
use secop_proto::{ModuleDescription, SecopError};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

type FastHash = foldhash::fast::RandomState;

/// A parameter of a device: (module, parameter), interned.
type ParamKey = (Arc<str>, Arc<str>);

/// A value produced by a backend: (module, parameter, value or error).
pub type Produced = (String, String, Result<Value, SecopError>);

/// Side effects of a transaction (status to BUSY, a changed target, ...).
#[derive(Debug, Default)]
pub struct Effects(pub Vec<Produced>);

impl Effects {
    pub fn push(&mut self, module: &str, parameter: &str, value: Result<Value, SecopError>) {
        self.0
            .push((module.to_owned(), parameter.to_owned(), value));
    }
}

/// How one exchange on the wire ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply that made sense (or a command that needs none, sent).
    Ok,
    /// No (complete) reply within the deadline.
    Timeout,
    /// The link failed (I/O error, closed connection), or the instrument answered with
    /// an error (a Modbus exception, an error reply).
    Error,
    /// A reply came but made no sense (wrong format, bad checksum, wrong echo).
    Garbled,
}

impl Outcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Timeout,
        Outcome::Error,
        Outcome::Garbled,
    ];

    /// Its value of the `result` label of `secop_gateway_device_transactions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Garbled => "garbled",
        }
    }
}

/// What happened on the wire since the last `take_wire_stats`: one entry per exchange
/// (a query and its reply, a command line, a Modbus request), and the reads answered
/// from the `max_age` cache without touching the wire.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WireStats {
    pub exchanges: Vec<(Outcome, std::time::Duration)>,
    pub cache_hits: u64,
}

/// The I/O side of a device. Implemented by the simulators and, later, by serial,
/// Modbus and remote-node drivers.
///
/// Futures are not `Send`: device actors run on one actix arbiter thread.
#[allow(async_fn_in_trait)]
pub trait Backend: 'static {
    /// The modules this device serves.
    fn modules(&self) -> Vec<ModuleDescription>;
    /// Time until the next poll cycle (may change when a client sets `pollinterval`).
    fn poll_interval(&self) -> Duration;
    /// The shortest time a poll cycle is meant to take at most: a cycle that takes
    /// longer overran (`poll_overruns_total`). The same as `poll_interval` for
    /// backends that poll everything every cycle.
    fn nominal_poll_interval(&self) -> Duration {
        self.poll_interval()
    }
    /// How many transactions one poll cycle has. Each runs on its own, so client
    /// requests queued meanwhile are served between them: polls never starve clients.
    fn poll_items(&mut self) -> usize {
        1
    }
    /// Poll item `item` of this cycle (0..poll_items()): the values it produced.
    async fn poll(&mut self, item: usize) -> Vec<Produced>;
    /// Whether the link is up (the `device_up` metric; `/readyz`).
    fn link_up(&self) -> bool {
        true
    }
    /// Reconnects since the last call (the `device_reconnects_total` metric).
    fn take_reconnects(&mut self) -> u64 {
        0
    }
    /// What happened on the wire since the last call, for backends that know it (the
    /// config-defined ASCII and Modbus links). The actor drains it after every poll
    /// item and every client call, while it holds the backend, and then counts the
    /// backend only from it: each exchange in `device_transactions_total` and the
    /// duration histogram, cache hits in `device_cache_hits_total`. `None` (the
    /// default: simulators) has the actor count each client call and each poll cycle
    /// as one transaction instead.
    fn take_wire_stats(&mut self) -> Option<WireStats> {
        None
    }
    async fn read(&mut self, module: &str, parameter: &str) -> Result<Value, SecopError>;
    async fn change(
        &mut self,
        module: &str,
        parameter: &str,
        value: Value,
        effects: &mut Effects,
    ) -> Result<Value, SecopError>;
    async fn execute(
        &mut self,
        module: &str,
        command: &str,
        argument: Value,
        effects: &mut Effects,
    ) -> Result<Value, SecopError>;
}

/// The metrics of one device, with their labels resolved once: they are updated on
/// every transaction.
struct DeviceMetrics {
    up: IntGauge,
    reconnects: IntCounter,
    last_success: Gauge,
    /// `device_transactions_total` by [`Outcome`] (`outcome as usize`).
    transactions: [IntCounter; 4],
    cache_hits: IntCounter,
    duration: Histogram,
    poll_cycle: Histogram,
    poll_overruns: IntCounter,
}

impl DeviceMetrics {
    fn new(device: &str) -> Self {
        let m = metrics();
        let d = [device];
        DeviceMetrics {
            up: m.device_up.with_label_values(&d),
            reconnects: m.device_reconnects.with_label_values(&d),
            last_success: m.device_last_success.with_label_values(&d),
            transactions: Outcome::ALL.map(|o| {
                m.device_transactions
                    .with_label_values(&[device, o.label()])
            }),
            cache_hits: m.device_cache_hits.with_label_values(&d),
            duration: m.device_transaction_duration.with_label_values(&d),
            poll_cycle: m.poll_cycle_duration.with_label_values(&d),
            poll_overruns: m.poll_overruns.with_label_values(&d),
        }
    }

    /// Account for one exchange (or one transaction of a backend without wire stats).
    fn count(&self, outcome: Outcome, took: Duration, t: f64) {
        if outcome == Outcome::Ok {
            self.last_success.set(t);
        }
        self.transactions[outcome as usize].inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Account for one transaction of a backend without wire stats by its result.
    fn count_transaction(&self, took: Duration, result: &Result<Value, SecopError>, t: f64) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(e) if e.class == secop_proto::ErrorClass::TimeoutError => Outcome::Timeout,
            Err(_) => Outcome::Error,
        };
        self.count(outcome, took, t);
    }

    /// Account for a backend's wire stats; whether it reported any (`Some`).
    fn count_wire(&self, stats: Option<WireStats>) -> bool {
        let Some(stats) = stats else {
            return false;
        };
        if !stats.exchanges.is_empty() {
            let t = now();
            for (outcome, took) in stats.exchanges {
                self.count(outcome, took, t);
            }
        }
        if stats.cache_hits > 0 {
            self.cache_hits.inc_by(stats.cache_hits);
        }
        true
    }
}

/// Poll every item of one cycle, taking the backend's lock per item (client requests
/// waiting for it get their turn between two poll transactions) and counting its wire
/// stats after each. The values, and whether the backend reported wire stats.
async fn poll_cycle<B: Backend>(
    backend: &Mutex<B>,
    metrics: &DeviceMetrics,
) -> (Vec<Produced>, bool) {
    let items = backend.lock().await.poll_items();
    let mut values = Vec::new();
    let mut wire = false;
    for item in 0..items {
        let mut b = backend.lock().await;
        values.extend(b.poll(item).await);
        let stats = b.take_wire_stats();
        drop(b);
        wire |= metrics.count_wire(stats);
    }
    (values, wire)
}

/// The answer to a request that a device had not finished when it was stopped (a
/// reload removed or changed it).
pub fn stopped_error() -> SecopError {
    SecopError::communication_failed(
        "the device was stopped by a configuration reload before it answered (the request may have reached the instrument)",
    )
}

/// How often an unchanged value is passed on to the nodes again (they refresh its
/// timestamp and history, and send clients nothing).
pub const REFRESH_INTERVAL: f64 = 1.0;

/// The last value of a parameter, and when it was last passed on.
struct Remembered {
    value: Result<Value, SecopError>,
    reported_at: f64,
}

/// See the module documentation.
pub struct DeviceActor<B: Backend> {
    name: Arc<str>,
    backend: Rc<Mutex<B>>,
    subscribers: Vec<(SubscriberId, Recipient<DeviceUpdates>)>,
    // foldhash: these are looked up for every value, and their keys come from the
    // configuration, not from clients.
    last: HashMap<ParamKey, Remembered, FastHash>,
    interned: HashMap<String, Arc<str>, FastHash>,
    /// Client requests waiting for the link, in arrival order.
    queue: VecDeque<DeviceRequest>,
    /// Whether a request is being worked on (the worker takes the next when done).
    working: bool,
    /// Where the request being worked on is answered, and its slots: answered with an
    /// error if the device is stopped before it is done.
    in_flight: Option<(crate::device::Responder, Vec<u32>)>,
    /// Shared with the transactions in flight, which count wire stats as they drain them.
    metrics: Rc<DeviceMetrics>,
}

impl<B: Backend> DeviceActor<B> {
    pub fn new(name: &str, backend: B) -> Self {
        DeviceActor {
            name: Arc::from(name),
            backend: Rc::new(Mutex::new(backend)),
            subscribers: Vec::new(),
            last: HashMap::default(),
            interned: HashMap::default(),
            queue: VecDeque::new(),
            working: false,
            in_flight: None,
            metrics: Rc::new(DeviceMetrics::new(name)),
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(s.to_owned(), a.clone());
        a
    }

    /// Stamp produced values, remember them, and return the ones that changed (all of
    /// them when `all` is set).
    fn record(&mut self, produced: Vec<Produced>, all: bool) -> Vec<ParamUpdate> {
        self.record_at(produced, all, now())
    }

    /// [`Self::record`] with the timestamp given.
    fn record_at(&mut self, produced: Vec<Produced>, all: bool, t: f64) -> Vec<ParamUpdate> {
        let mut out = Vec::with_capacity(produced.len());
        for (module, parameter, value) in produced {
            let (module, parameter) = (self.intern(&module), self.intern(&parameter));
            out.extend(self.remember(module, parameter, value, all, t));
        }
        out
    }

    /// Remember one value; the update to report if it changed, if `all` is set, or if
    /// it was last reported [`REFRESH_INTERVAL`] ago or more.
    fn remember(
        &mut self,
        module: Arc<str>,
        parameter: Arc<str>,
        value: Result<Value, SecopError>,
        all: bool,
        t: f64,
    ) -> Option<ParamUpdate> {
        let key = (module, parameter);
        match self.last.get_mut(&key) {
            Some(last) if last.value == value => {
                // (a clock stepped back counts as due, so refreshes never stall)
                if !all && (0.0..REFRESH_INTERVAL).contains(&(t - last.reported_at)) {
                    return None;
                }
                last.reported_at = t;
            }
            Some(last) => {
                last.value = value.clone();
                last.reported_at = t;
            }
            None => {
                self.last.insert(
                    key.clone(),
                    Remembered {
                        value: value.clone(),
                        reported_at: t,
                    },
                );
            }
        }
        Some(ParamUpdate {
            module: key.0,
            parameter: key.1,
            value,
            timestamp: t,
        })
    }

    fn broadcast(&mut self, updates: &[ParamUpdate], except: Option<SubscriberId>) {
        if updates.is_empty() {
            return;
        }
        // A node that has ended (removed by a reload) takes nothing more.
        self.subscribers.retain(|(_, sink)| sink.connected());
        for (id, sink) in &self.subscribers {
            if Some(*id) != except {
                sink.do_send(DeviceUpdates(updates.to_vec()));
            }
        }
    }

    fn schedule_poll(&self, ctx: &mut Context<Self>, after: Duration) {
        ctx.run_later(after, |act, ctx| {
            let backend = act.backend.clone();
            let metrics = act.metrics.clone();
            let cycle = async move {
                let started = Instant::now();
                let (values, mut wire) = poll_cycle(&backend, &metrics).await;
                let mut b = backend.lock().await;
                wire |= metrics.count_wire(b.take_wire_stats());
                let link = (b.link_up(), b.take_reconnects());
                let intervals = (b.poll_interval(), b.nominal_poll_interval());
                (values, wire, intervals, started.elapsed(), link)
            };
            ctx.spawn(cycle.into_actor(act).map(|(values, wire, (interval, nominal), took, link), act, ctx| {
                act.report_link(link);
                act.metrics.poll_cycle.observe(took.as_secs_f64());
                if took > nominal {
                    act.metrics.poll_overruns.inc();
                    tracing::warn!(device = %act.name, ?took, interval = ?nominal, "poll cycle overran its interval");
                }
                // Without wire stats a poll cycle counts as one transaction: it proves
                // (or disproves) the link. With them, its exchanges were counted.
                if !wire {
                    let outcome =
                        if values.is_empty() || values.iter().any(|(_, _, v)| v.is_ok()) {
                            Ok(Value::Null)
                        } else {
                            values
                                .iter()
                                .find_map(|(_, _, v)| v.clone().err())
                                .map_or(Ok(Value::Null), Err)
                        };
                    act.metrics.count_transaction(took, &outcome, now());
                }
                let updates = act.record(values, false);
                act.broadcast(&updates, None);
                act.schedule_poll(ctx, interval);
            }));
        });
    }

    fn report_link(&self, (up, reconnects): (bool, u64)) {
        self.metrics.up.set(i64::from(up));
        if reconnects > 0 {
            self.metrics.reconnects.inc_by(reconnects);
        }
    }

    /// Start the next queued request unless one is running.
    fn work_next(&mut self, ctx: &mut Context<Self>) {
        if self.working {
            return;
        }
        let Some(request) = self.queue.pop_front() else {
            return;
        };
        self.working = true;
        let DeviceRequest {
            calls,
            origin,
            deadline,
            reply,
        } = request;
        self.in_flight = Some((reply.clone(), calls.iter().map(|c| c.slot).collect()));
        let backend = self.backend.clone();
        let metrics = self.metrics.clone();
        let transactions = async move {
            let mut done = Vec::with_capacity(calls.len());
            // The end of one call is the start of the next when the lock is free
            // (one clock reading per call).
            let mut clock: Option<Instant> = None;
            for call in calls {
                // The lock is taken per call: a poll cycle waiting for it gets its turn
                // between two calls of a long request.
                let (mut b, started) = match (backend.try_lock(), clock) {
                    (Ok(b), Some(t)) => (b, t),
                    (Ok(b), None) => (b, Instant::now()),
                    (Err(_), _) => {
                        let b = backend.lock().await;
                        (b, Instant::now())
                    }
                };
                clock = None;
                if started >= deadline {
                    // Its asker has answered the client already: spare the link.
                    done.push(Transaction {
                        call,
                        result: Err(SecopError::timeout(
                            "the request waited too long for the device",
                        )),
                        effects: Effects::default(),
                        took: None,
                        wire: false,
                    });
                    continue;
                }
                let mut effects = Effects::default();
                let result = match &call.action {
                    DeviceAction::Read { parameter } => b.read(&call.module, parameter).await,
                    DeviceAction::Change { parameter, value } => {
                        b.change(&call.module, parameter, value.clone(), &mut effects)
                            .await
                    }
                    DeviceAction::Do { command, argument } => {
                        b.execute(&call.module, command, argument.clone(), &mut effects)
                            .await
                    }
                    DeviceAction::Check { .. } => {
                        Err(SecopError::internal("this device does not check by itself"))
                    }
                };
                let ended = Instant::now();
                let wire = metrics.count_wire(b.take_wire_stats());
                clock = Some(ended);
                done.push(Transaction {
                    call,
                    result,
                    effects,
                    took: Some(ended - started),
                    wire,
                });
            }
            done
        };
        ctx.spawn(transactions.into_actor(self).map(move |done, act, ctx| {
            let t = now();
            let mut replies = Vec::with_capacity(done.len());
            // Copies for the other subscribers only if there are any (usually one node).
            let shared = act.subscribers.iter().any(|(id, _)| Some(*id) != origin);
            let mut others = Vec::new();
            for tx in done {
                match tx.took {
                    Some(took) if !tx.wire => act.metrics.count_transaction(took, &tx.result, t),
                    _ => {}
                }
                let mut updates = act.record_at(tx.effects.0, true, t);
                // The read-back of a parameter is a value like any other: others see
                // it. A failed read also tells everybody that the value is unknown now;
                // a failed change leaves the parameter as it was.
                let accessible = match &tx.call.action {
                    DeviceAction::Read { parameter } | DeviceAction::Change { parameter, .. } => {
                        Some(parameter)
                    }
                    _ => None,
                };
                if let Some(parameter) = accessible {
                    let is_read = matches!(tx.call.action, DeviceAction::Read { .. });
                    let value = match &tx.result {
                        Ok(v) => Some(Ok(v.clone())),
                        Err(e) if is_read && tx.took.is_some() => Some(Err(e.clone())),
                        Err(_) => None,
                    };
                    if let Some(value) = value {
                        let parameter = act.intern(parameter);
                        let module = tx.call.module.clone();
                        updates.extend(act.remember(module, parameter, value, true, t));
                    }
                }
                if shared {
                    others.extend(updates.iter().cloned());
                }
                replies.push((
                    tx.call.slot,
                    DeviceReply {
                        result: tx.result.map(|v| (v, t)),
                        updates,
                    },
                ));
            }
            act.broadcast(&others, origin);
            reply.send(replies);
            act.in_flight = None;
            act.working = false;
            act.work_next(ctx);
        }));
    }
}

/// One call of a request, done (or skipped: `took` is `None`).
struct Transaction {
    call: DeviceCall,
    result: Result<Value, SecopError>,
    effects: Effects,
    took: Option<Duration>,
    /// The backend reported its wire stats for it (counted already).
    wire: bool,
}

impl<B: Backend> Actor for DeviceActor<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = self
            .backend
            .try_lock()
            .map(|b| b.poll_interval())
            .unwrap_or(Duration::from_secs(1));
        tracing::debug!(device = %self.name, ?interval, "device actor started");
        // A simulated or freshly opened link counts as up; drivers with real links
        // set this gauge as their connection comes and goes.
        self.metrics.up.set(1);
        // Every series of the device exists from the start, at 0 (resolving the
        // handles created them; these say so).
        self.metrics.reconnects.inc_by(0);
        for counter in &self.metrics.transactions {
            counter.inc_by(0);
        }
        self.metrics.cache_hits.inc_by(0);
        self.schedule_poll(ctx, interval);
    }
}

impl<B: Backend> Handler<StopDevice> for DeviceActor<B> {
    type Result = ();

    /// The actor ends; with it its poll timer, its queue and (once the last transaction
    /// in flight is dropped) its backend and link.
    fn handle(&mut self, _: StopDevice, ctx: &mut Self::Context) {
        tracing::info!(device = %self.name, "device stopped");
        // What was asked and not done is answered now, not left to time out.
        let error = stopped_error();
        let unanswered = self.in_flight.take().into_iter().chain(
            self.queue
                .drain(..)
                .map(|r| (r.reply, r.calls.iter().map(|c| c.slot).collect())),
        );
        for (reply, slots) in unanswered {
            reply.send(
                slots
                    .into_iter()
                    .map(|slot| (slot, DeviceReply::error(error.clone())))
                    .collect(),
            );
        }
        ctx.stop();
    }
}

impl<B: Backend> Handler<Subscribe> for DeviceActor<B> {
    type Result = ResponseActFuture<Self, Vec<ParamUpdate>>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        self.subscribers.retain(|(id, _)| *id != msg.id);
        self.subscribers.push((msg.id, msg.sink));
        let backend = self.backend.clone();
        let metrics = self.metrics.clone();
        // Not a poll cycle (no cycle metrics), but its exchanges are counted.
        let snapshot = async move { poll_cycle(&backend, &metrics).await.0 };
        Box::pin(
            snapshot
                .into_actor(self)
                .map(|values, act, _| act.record(values, true)),
        )
    }
}

impl<B: Backend> Handler<DeviceRequest> for DeviceActor<B> {
    type Result = ();

    fn handle(&mut self, msg: DeviceRequest, ctx: &mut Self::Context) {
        self.queue.push_back(msg);
        self.work_next(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A link without modules: these tests drive the value memory only. With `true`
    /// it never answers (a stalled instrument).
    pub(super) struct NoLink(pub(super) bool);

    impl NoLink {
        async fn answer(&self) -> Result<Value, SecopError> {
            if self.0 {
                std::future::pending().await
            } else {
                Err(SecopError::internal("no link"))
            }
        }
    }

    impl Backend for NoLink {
        fn modules(&self) -> Vec<ModuleDescription> {
            Vec::new()
        }
        fn poll_interval(&self) -> Duration {
            Duration::from_secs(if self.0 { 3600 } else { 1 })
        }
        async fn poll(&mut self, _: usize) -> Vec<Produced> {
            Vec::new()
        }
        async fn read(&mut self, _: &str, _: &str) -> Result<Value, SecopError> {
            self.answer().await
        }
        async fn change(
            &mut self,
            _: &str,
            _: &str,
            _: Value,
            _: &mut Effects,
        ) -> Result<Value, SecopError> {
            self.answer().await
        }
        async fn execute(
            &mut self,
            _: &str,
            _: &str,
            _: Value,
            _: &mut Effects,
        ) -> Result<Value, SecopError> {
            self.answer().await
        }
    }

    fn value(p: &str, v: Value) -> Produced {
        ("m".to_string(), p.to_string(), Ok(v))
    }

    #[test]
    fn polls_report_changes_and_reads_report_always() {
        let mut d = DeviceActor::new("d", NoLink(false));
        let first = d.record_at(
            vec![value("p", json!(1)), value("q", json!("a"))],
            false,
            1.0,
        );
        assert_eq!(first.len(), 2, "first values are news");
        assert_eq!(&*first[0].module, "m");
        assert_eq!(&*first[1].parameter, "q");
        assert!(d
            .record_at(vec![value("p", json!(1))], false, 1.5)
            .is_empty());
        // unchanged for REFRESH_INTERVAL: passed on again (the node refreshes `t`)
        let again = d.record_at(vec![value("p", json!(1))], false, 2.0);
        assert_eq!((again.len(), again[0].timestamp), (1, 2.0), "refreshed");
        assert!(d
            .record_at(vec![value("p", json!(1))], false, 2.9)
            .is_empty());
        // the clock stepped back: due at once, not after the clock has caught up
        let stepped = d.record_at(vec![value("p", json!(1))], false, 0.5);
        assert_eq!(stepped.len(), 1, "refresh after a clock step back");
        let read = d.record_at(vec![value("p", json!(1))], true, 3.0);
        assert_eq!((read.len(), read[0].timestamp), (1, 3.0), "a read reports");
        let changed = d.record_at(vec![value("p", json!(2))], false, 3.5);
        assert_eq!(changed[0].value, Ok(json!(2)));
        // the read-back path: the module name is shared, the parameter interned
        let module: Arc<str> = Arc::from("m");
        let p = d.intern("p");
        assert!(Arc::ptr_eq(&p, &d.intern("p")));
        assert!(d
            .remember(module.clone(), p.clone(), Ok(json!(2)), false, 4.0)
            .is_none());
        let error = Err(SecopError::internal("gone"));
        let e = d.remember(module, p, error.clone(), false, 6.0);
        assert_eq!(e.map(|u| u.value), Some(error), "a failed read is news");
        assert_eq!(d.record_at(vec![value("p", json!(2))], false, 7.0).len(), 1);
    }
}

/// The metrics side: wire stats against per-call and per-cycle counting, on a real
/// actor (each test its own device name: the registry is the process's).
#[cfg(test)]
mod metrics_tests {
    use super::*;
    use crate::device::{DeviceDone, Responder};
    use serde_json::json;
    use std::cell::RefCell;
    use tokio::sync::mpsc;

    const POLL: Duration = Duration::from_millis(5);
    /// Bound of every wait below.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// What a fake backend did, shared with the test.
    #[derive(Default)]
    struct Log {
        /// Every exchange and cache hit handed out by `take_wire_stats`.
        handed_out: WireStats,
        cycles: u64,
    }

    /// A link with two poll items whose values are all errors (a per-cycle count would
    /// show as `error`), reporting wire stats (`wire`) or not.
    struct Fake {
        wire: bool,
        interval: Duration,
        pending: WireStats,
        log: Rc<RefCell<Log>>,
    }

    impl Fake {
        fn new(wire: bool, interval: Duration) -> (Self, Rc<RefCell<Log>>) {
            let log = Rc::new(RefCell::new(Log::default()));
            let fake = Fake {
                wire,
                interval,
                pending: WireStats::default(),
                log: log.clone(),
            };
            (fake, log)
        }

        fn exchange(&mut self, outcome: Outcome, ms: u64) {
            self.pending
                .exchanges
                .push((outcome, Duration::from_millis(ms)));
        }
    }

    impl Backend for Fake {
        fn modules(&self) -> Vec<ModuleDescription> {
            Vec::new()
        }
        fn poll_interval(&self) -> Duration {
            self.interval
        }
        fn poll_items(&mut self) -> usize {
            2
        }
        async fn poll(&mut self, item: usize) -> Vec<Produced> {
            if item == 0 {
                self.exchange(Outcome::Ok, 1);
                self.pending.cache_hits += 1;
            } else {
                self.exchange(Outcome::Garbled, 2);
                self.log.borrow_mut().cycles += 1;
            }
            let error = Err(SecopError::communication_failed("garbled"));
            vec![("m".into(), format!("p{item}"), error)]
        }
        fn take_wire_stats(&mut self) -> Option<WireStats> {
            let stats = std::mem::take(&mut self.pending);
            if !self.wire {
                return None;
            }
            let mut log = self.log.borrow_mut();
            log.handed_out
                .exchanges
                .extend(stats.exchanges.iter().copied());
            log.handed_out.cache_hits += stats.cache_hits;
            Some(stats)
        }
        async fn read(&mut self, _: &str, _: &str) -> Result<Value, SecopError> {
            // a reply that timed out, then one that came
            self.exchange(Outcome::Timeout, 3);
            self.exchange(Outcome::Ok, 1);
            self.pending.cache_hits += 2;
            Ok(json!(1))
        }
        async fn change(
            &mut self,
            _: &str,
            _: &str,
            _: Value,
            _: &mut Effects,
        ) -> Result<Value, SecopError> {
            self.exchange(Outcome::Error, 1);
            Err(SecopError::timeout("no answer"))
        }
        async fn execute(
            &mut self,
            _: &str,
            _: &str,
            _: Value,
            _: &mut Effects,
        ) -> Result<Value, SecopError> {
            Err(SecopError::internal("no commands"))
        }
    }

    /// Forwards the answers of a device to the test.
    struct Collector(mpsc::UnboundedSender<DeviceDone>);

    impl Actor for Collector {
        type Context = Context<Self>;
    }

    impl Handler<DeviceDone> for Collector {
        type Result = ();
        fn handle(&mut self, done: DeviceDone, _: &mut Self::Context) {
            let _ = self.0.send(done);
        }
    }

    /// A device stopped by a reload answers what it was doing and what was queued at
    /// once (clients would otherwise wait for their whole device timeout).
    #[actix_rt::test]
    async fn a_stopped_device_answers_what_it_had_not_done() {
        let device = DeviceActor::new("stopped_device", super::tests::NoLink(true)).start();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = Collector(tx).start().recipient();
        for token in [1, 2] {
            device.do_send(DeviceRequest {
                calls: vec![DeviceCall {
                    module: Arc::from("m"),
                    action: DeviceAction::Read {
                        parameter: "p".into(),
                    },
                    slot: 3,
                }],
                origin: None,
                deadline: Instant::now() + PATIENCE,
                reply: Responder::new(sink.clone(), token),
            });
        }
        tokio::time::sleep(POLL).await; // the first is in flight, the second queued
        device.do_send(StopDevice);
        let mut tokens = Vec::new();
        for _ in 0..2 {
            let done = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("answered at once")
                .expect("the collector lives");
            assert_eq!(done.replies.len(), 1);
            let (slot, reply) = &done.replies[0];
            assert_eq!(*slot, 3);
            assert_eq!(reply.result, Err(stopped_error()));
            tokens.push(done.token);
        }
        tokens.sort();
        assert_eq!(tokens, [1, 2]);
    }

    /// `read m:p` and `change m:p 2`, answered.
    async fn read_and_change<B: Backend>(device: &Addr<DeviceActor<B>>) -> DeviceDone {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = Collector(tx).start().recipient();
        let module: Arc<str> = Arc::from("m");
        let calls = vec![
            DeviceCall {
                module: module.clone(),
                action: DeviceAction::Read {
                    parameter: "p".into(),
                },
                slot: 0,
            },
            DeviceCall {
                module,
                action: DeviceAction::Change {
                    parameter: "p".into(),
                    value: json!(2),
                },
                slot: 1,
            },
        ];
        device.do_send(DeviceRequest {
            calls,
            origin: None,
            deadline: Instant::now() + PATIENCE,
            reply: Responder::new(sink, 7),
        });
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("the device answers")
            .expect("the collector lives")
    }

    fn transactions(device: &str, outcome: Outcome) -> u64 {
        let m = metrics();
        m.device_transactions
            .with_label_values(&[device, outcome.label()])
            .get()
    }

    fn durations(device: &str) -> u64 {
        metrics()
            .device_transaction_duration
            .with_label_values(&[device])
            .get_sample_count()
    }

    fn cache_hits(device: &str) -> u64 {
        metrics()
            .device_cache_hits
            .with_label_values(&[device])
            .get()
    }

    /// Wait (bounded) until the fake has finished `n` poll cycles.
    async fn cycles(log: &Rc<RefCell<Log>>, n: u64) {
        let start = Instant::now();
        while log.borrow().cycles < n {
            assert!(start.elapsed() < PATIENCE, "no {n} poll cycles");
            tokio::time::sleep(POLL).await;
        }
    }

    #[actix_rt::test]
    async fn wire_stats_count_every_exchange_and_nothing_else() {
        let name = "wire_stats_device";
        let (fake, log) = Fake::new(true, POLL);
        let device = DeviceActor::new(name, fake).start();
        let done = read_and_change(&device).await;
        assert_eq!(done.replies.len(), 2);
        cycles(&log, 3).await;
        // Between two awaits of this test the actor is idle: whatever the fake handed
        // out has been counted, and nothing else (no per-call, no per-cycle count).
        let log = log.borrow();
        let handed_out = &log.handed_out;
        for outcome in Outcome::ALL {
            let expected = handed_out
                .exchanges
                .iter()
                .filter(|(o, _)| *o == outcome)
                .count() as u64;
            assert_eq!(transactions(name, outcome), expected, "{outcome:?}");
        }
        // the read: a timeout and an ok; the change: an error (whose SECoP error is
        // a TimeoutError: not what is counted); three cycles: 3 ok and 3 garbled at least
        assert!(transactions(name, Outcome::Garbled) >= 3);
        assert_eq!(transactions(name, Outcome::Timeout), 1);
        assert_eq!(transactions(name, Outcome::Error), 1);
        assert_eq!(durations(name), handed_out.exchanges.len() as u64);
        let seconds = metrics()
            .device_transaction_duration
            .with_label_values(&[name])
            .get_sample_sum();
        let expected: f64 = handed_out
            .exchanges
            .iter()
            .map(|(_, d)| d.as_secs_f64())
            .sum();
        assert!((seconds - expected).abs() < 1e-9, "{seconds} != {expected}");
        assert_eq!(cache_hits(name), handed_out.cache_hits);
        assert!(cache_hits(name) >= 2 + 3);
        let last = metrics()
            .device_last_success
            .with_label_values(&[name])
            .get();
        assert!(last > 0.0, "an ok exchange is a success");
    }

    #[actix_rt::test]
    async fn without_wire_stats_each_call_and_cycle_is_one_transaction() {
        let name = "no_wire_stats_device";
        // no poll cycle during the calls
        let (fake, _) = Fake::new(false, Duration::from_secs(3600));
        let device = DeviceActor::new(name, fake).start();
        let done = read_and_change(&device).await;
        assert_eq!(done.replies.len(), 2);
        // the read succeeded, the change ended in a TimeoutError: one each, whatever
        // the backend did on the wire
        assert_eq!(transactions(name, Outcome::Ok), 1);
        assert_eq!(transactions(name, Outcome::Timeout), 1);
        assert_eq!(transactions(name, Outcome::Error), 0);
        assert_eq!(transactions(name, Outcome::Garbled), 0);
        assert_eq!(durations(name), 2);
        assert_eq!(cache_hits(name), 0);
        // the series exist from the start, at 0
        let text = crate::metrics::render();
        for series in [
            format!(
                "secop_gateway_device_transactions_total{{device=\"{name}\",result=\"garbled\"}} 0"
            ),
            format!("secop_gateway_device_cache_hits_total{{device=\"{name}\"}} 0"),
        ] {
            assert!(text.contains(&series), "{series} missing");
        }

        // a poll cycle whose values are all errors is one error
        let name = "no_wire_stats_polled";
        let (fake, log) = Fake::new(false, POLL);
        let _device = DeviceActor::new(name, fake).start();
        cycles(&log, 3).await;
        let start = Instant::now();
        while transactions(name, Outcome::Error) < 2 {
            assert!(start.elapsed() < PATIENCE, "poll cycles not counted");
            tokio::time::sleep(POLL).await;
        }
        let cycles = log.borrow().cycles;
        assert!(transactions(name, Outcome::Error) <= cycles);
        assert_eq!(transactions(name, Outcome::Garbled), 0);
        assert_eq!(transactions(name, Outcome::Ok), 0);
        assert_eq!(cache_hits(name), 0);
    }
}
