//! A generic device actor: one per link, around a [`Backend`] that does the I/O.
//!
//! The actor owns the backend exclusively and runs one transaction at a time: client
//! requests wait in a queue (each with the deadline after which its asker has given
//! up; such a request is answered without touching the link) and one worker takes
//! them in order; the backend sits behind an async mutex that the poll cycle takes
//! per poll item, so polls and client requests interleave. The actor polls on its own
//! timer, remembers the last value of every parameter so that polls push only
//! changes, and fans values out to every subscribed node.

use crate::device::{
    now, DeviceAction, DeviceCall, DeviceReply, DeviceRequest, DeviceUpdates, ParamUpdate,
    Subscribe, SubscriberId,
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
    Ok,
    Timeout,
    Error,
    Garbled,
}

/// What happened on the wire since the last `take_wire_stats`: one entry per exchange
/// (a query and its reply, a command line, a Modbus request), and the reads answered
/// from the `max_age` cache without touching the wire.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WireStats {
    pub exchanges: Vec<(Outcome, Duration)>,
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
    /// What happened on the wire since the last call; `None` for backends whose calls
    /// are their transactions (simulators, remote nodes).
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
    ok: IntCounter,
    timeout: IntCounter,
    error: IntCounter,
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
            ok: m.device_transactions.with_label_values(&[device, "ok"]),
            timeout: m
                .device_transactions
                .with_label_values(&[device, "timeout"]),
            error: m.device_transactions.with_label_values(&[device, "error"]),
            duration: m.device_transaction_duration.with_label_values(&d),
            poll_cycle: m.poll_cycle_duration.with_label_values(&d),
            poll_overruns: m.poll_overruns.with_label_values(&d),
        }
    }
}

/// See the module documentation.
pub struct DeviceActor<B: Backend> {
    name: Arc<str>,
    backend: Rc<Mutex<B>>,
    subscribers: Vec<(SubscriberId, Recipient<DeviceUpdates>)>,
    // foldhash: these are looked up for every value, and their keys come from the
    // configuration, not from clients.
    last: HashMap<ParamKey, Result<Value, SecopError>, FastHash>,
    interned: HashMap<String, Arc<str>, FastHash>,
    /// Client requests waiting for the link, in arrival order.
    queue: VecDeque<DeviceRequest>,
    /// Whether a request is being worked on (the worker takes the next when done).
    working: bool,
    metrics: DeviceMetrics,
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
            metrics: DeviceMetrics::new(name),
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

    /// Remember one value; the update to report if it changed (or `all` is set).
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
            Some(last) if *last == value => {
                if !all {
                    return None;
                }
            }
            Some(last) => *last = value.clone(),
            None => {
                self.last.insert(key.clone(), value.clone());
            }
        }
        Some(ParamUpdate {
            module: key.0,
            parameter: key.1,
            value,
            timestamp: t,
        })
    }

    fn broadcast(&self, updates: &[ParamUpdate], except: Option<SubscriberId>) {
        if updates.is_empty() {
            return;
        }
        for (id, sink) in &self.subscribers {
            if Some(*id) != except {
                sink.do_send(DeviceUpdates(updates.to_vec()));
            }
        }
    }

    fn schedule_poll(&self, ctx: &mut Context<Self>, after: Duration) {
        ctx.run_later(after, |act, ctx| {
            let backend = act.backend.clone();
            let cycle = async move {
                let started = Instant::now();
                let items = backend.lock().await.poll_items();
                let mut values = Vec::new();
                for item in 0..items {
                    // The lock is taken per item: client requests waiting for it get
                    // their turn between two poll transactions.
                    values.extend(backend.lock().await.poll(item).await);
                }
                let mut b = backend.lock().await;
                let link = (b.link_up(), b.take_reconnects());
                let intervals = (b.poll_interval(), b.nominal_poll_interval());
                (values, intervals, started.elapsed(), link)
            };
            ctx.spawn(cycle.into_actor(act).map(|(values, (interval, nominal), took, link), act, ctx| {
                act.report_link(link);
                act.metrics.poll_cycle.observe(took.as_secs_f64());
                if took > nominal {
                    act.metrics.poll_overruns.inc();
                    tracing::warn!(device = %act.name, ?took, interval = ?nominal, "poll cycle overran its interval");
                }
                // A poll cycle is a transaction too: it proves (or disproves) the link.
                let outcome = if values.is_empty() || values.iter().any(|(_, _, v)| v.is_ok()) {
                    Ok(Value::Null)
                } else {
                    values
                        .iter()
                        .find_map(|(_, _, v)| v.clone().err())
                        .map_or(Ok(Value::Null), Err)
                };
                act.count_transaction(took, &outcome, now());
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

    /// Account for one transaction in the metrics.
    fn count_transaction(&self, took: Duration, result: &Result<Value, SecopError>, t: f64) {
        let m = &self.metrics;
        match result {
            Ok(_) => {
                m.last_success.set(t);
                m.ok.inc()
            }
            Err(e) if e.class == secop_proto::ErrorClass::TimeoutError => m.timeout.inc(),
            Err(_) => m.error.inc(),
        };
        m.duration.observe(took.as_secs_f64());
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
        let backend = self.backend.clone();
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
                clock = Some(ended);
                done.push(Transaction {
                    call,
                    result,
                    effects,
                    took: Some(ended - started),
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
                if let Some(took) = tx.took {
                    act.count_transaction(took, &tx.result, t);
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
        self.metrics.reconnects.inc_by(0);
        self.schedule_poll(ctx, interval);
    }
}

impl<B: Backend> Handler<Subscribe> for DeviceActor<B> {
    type Result = ResponseActFuture<Self, Vec<ParamUpdate>>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) -> Self::Result {
        self.subscribers.retain(|(id, _)| *id != msg.id);
        self.subscribers.push((msg.id, msg.sink));
        let backend = self.backend.clone();
        let snapshot = async move {
            let items = backend.lock().await.poll_items();
            let mut values = Vec::new();
            for item in 0..items {
                values.extend(backend.lock().await.poll(item).await);
            }
            values
        };
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

    /// A link without modules: these tests drive the value memory only.
    struct NoLink;

    impl Backend for NoLink {
        fn modules(&self) -> Vec<ModuleDescription> {
            Vec::new()
        }
        fn poll_interval(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn poll(&mut self, _: usize) -> Vec<Produced> {
            Vec::new()
        }
        async fn read(&mut self, _: &str, _: &str) -> Result<Value, SecopError> {
            Err(SecopError::internal("no link"))
        }
        async fn change(
            &mut self,
            _: &str,
            _: &str,
            _: Value,
            _: &mut Effects,
        ) -> Result<Value, SecopError> {
            Err(SecopError::internal("no link"))
        }
        async fn execute(
            &mut self,
            _: &str,
            _: &str,
            _: Value,
            _: &mut Effects,
        ) -> Result<Value, SecopError> {
            Err(SecopError::internal("no link"))
        }
    }

    fn value(p: &str, v: Value) -> Produced {
        ("m".to_string(), p.to_string(), Ok(v))
    }

    #[test]
    fn polls_report_changes_and_reads_report_always() {
        let mut d = DeviceActor::new("d", NoLink);
        let first = d.record_at(
            vec![value("p", json!(1)), value("q", json!("a"))],
            false,
            1.0,
        );
        assert_eq!(first.len(), 2, "first values are news");
        assert_eq!(&*first[0].module, "m");
        assert_eq!(&*first[1].parameter, "q");
        assert!(d
            .record_at(vec![value("p", json!(1))], false, 2.0)
            .is_empty());
        let read = d.record_at(vec![value("p", json!(1))], true, 3.0);
        assert_eq!((read.len(), read[0].timestamp), (1, 3.0), "a read reports");
        let changed = d.record_at(vec![value("p", json!(2))], false, 4.0);
        assert_eq!(changed[0].value, Ok(json!(2)));
        // the read-back path: the module name is shared, the parameter interned
        let module: Arc<str> = Arc::from("m");
        let p = d.intern("p");
        assert!(Arc::ptr_eq(&p, &d.intern("p")));
        assert!(d
            .remember(module.clone(), p.clone(), Ok(json!(2)), false, 5.0)
            .is_none());
        let error = Err(SecopError::internal("gone"));
        let e = d.remember(module, p, error.clone(), false, 6.0);
        assert_eq!(e.map(|u| u.value), Some(error), "a failed read is news");
        assert_eq!(d.record_at(vec![value("p", json!(2))], false, 7.0).len(), 1);
    }
}
