//! A generic device actor: one per link, around a [`Backend`] that does the I/O.
//!
//! The actor owns the backend exclusively and runs one transaction at a time (the
//! backend sits behind an async mutex, which also queues waiting transactions in
//! order), polls on its own timer, remembers the last value of every parameter so
//! that polls push only changes, and fans values out to every subscribed node.

use crate::device::{
    now, DeviceAction, DeviceReply, DeviceRequest, DeviceUpdates, ParamUpdate, Subscribe,
    SubscriberId,
};
use crate::metrics::metrics;
use actix::prelude::*;
use secop_proto::{ModuleDescription, SecopError};
use serde_json::Value;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

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

/// The I/O side of a device. Implemented by the simulators and, later, by serial,
/// Modbus and remote-node drivers.
///
/// Futures are not `Send`: device actors run on one actix arbiter thread.
#[allow(async_fn_in_trait)]
pub trait Backend: 'static {
    /// The modules this device serves.
    fn modules(&self) -> Vec<ModuleDescription>;
    /// Time between two poll cycles (may change when a client sets `pollinterval`).
    fn poll_interval(&self) -> Duration;
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

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Change,
    Do,
}

/// See the module documentation.
pub struct DeviceActor<B: Backend> {
    name: Arc<str>,
    backend: Rc<Mutex<B>>,
    subscribers: Vec<(SubscriberId, Recipient<DeviceUpdates>)>,
    last: HashMap<(Arc<str>, Arc<str>), Result<Value, SecopError>>,
    interned: HashMap<String, Arc<str>>,
}

impl<B: Backend> DeviceActor<B> {
    pub fn new(name: &str, backend: B) -> Self {
        DeviceActor {
            name: Arc::from(name),
            backend: Rc::new(Mutex::new(backend)),
            subscribers: Vec::new(),
            last: HashMap::new(),
            interned: HashMap::new(),
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
        let t = now();
        let mut out = Vec::with_capacity(produced.len());
        for (module, parameter, value) in produced {
            let key = (self.intern(&module), self.intern(&parameter));
            let changed = self.last.get(&key) != Some(&value);
            if changed || all {
                self.last.insert(key.clone(), value.clone());
                out.push(ParamUpdate {
                    module: key.0,
                    parameter: key.1,
                    value,
                    timestamp: t,
                });
            }
        }
        out
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
                (values, b.poll_interval(), started.elapsed(), link)
            };
            ctx.spawn(cycle.into_actor(act).map(|(values, interval, took, link), act, ctx| {
                act.report_link(link);
                let m = metrics();
                let device = [act.name.as_ref()];
                m.poll_cycle_duration
                    .with_label_values(&device)
                    .observe(took.as_secs_f64());
                if took > interval {
                    m.poll_overruns.with_label_values(&device).inc();
                    tracing::warn!(device = %act.name, ?took, ?interval, "poll cycle overran its interval");
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
                act.count_transaction(took, &outcome);
                let updates = act.record(values, false);
                act.broadcast(&updates, None);
                act.schedule_poll(ctx, interval);
            }));
        });
    }

    fn report_link(&self, (up, reconnects): (bool, u64)) {
        let m = metrics();
        let device = [self.name.as_ref()];
        m.device_up.with_label_values(&device).set(i64::from(up));
        if reconnects > 0 {
            m.device_reconnects
                .with_label_values(&device)
                .inc_by(reconnects);
        }
    }

    /// Account for one transaction in the metrics.
    fn count_transaction(&self, took: Duration, result: &Result<Value, SecopError>) {
        let m = metrics();
        let device = self.name.as_ref();
        let outcome = match result {
            Ok(_) => {
                m.device_last_success
                    .with_label_values(&[device])
                    .set(now());
                "ok"
            }
            Err(e) if e.class == secop_proto::ErrorClass::TimeoutError => "timeout",
            Err(_) => "error",
        };
        m.device_transactions
            .with_label_values(&[device, outcome])
            .inc();
        m.device_transaction_duration
            .with_label_values(&[device])
            .observe(took.as_secs_f64());
    }
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
        let m = metrics();
        m.device_up.with_label_values(&[self.name.as_ref()]).set(1);
        m.device_reconnects
            .with_label_values(&[self.name.as_ref()])
            .inc_by(0);
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
    type Result = ResponseActFuture<Self, DeviceReply>;

    fn handle(&mut self, msg: DeviceRequest, _ctx: &mut Self::Context) -> Self::Result {
        let backend = self.backend.clone();
        let module = msg.module.clone();
        let action = msg.action;
        let origin = msg.origin;
        let transaction = async move {
            let mut b = backend.lock().await;
            let started = Instant::now();
            let mut effects = Effects::default();
            let (accessible, kind, result) = match action {
                DeviceAction::Read { parameter } => {
                    let r = b.read(&module, &parameter).await;
                    (parameter, Kind::Read, r)
                }
                DeviceAction::Change { parameter, value } => {
                    let r = b.change(&module, &parameter, value, &mut effects).await;
                    (parameter, Kind::Change, r)
                }
                DeviceAction::Do { command, argument } => {
                    let r = b.execute(&module, &command, argument, &mut effects).await;
                    (command, Kind::Do, r)
                }
                DeviceAction::Check { accessible, .. } => (
                    accessible,
                    Kind::Do,
                    Err(SecopError::internal("this device does not check by itself")),
                ),
            };
            (module, accessible, kind, result, effects, started.elapsed())
        };
        Box::pin(transaction.into_actor(self).map(
            move |(module, accessible, kind, result, effects, took), act, _| {
                act.count_transaction(took, &result);
                let t = now();
                let mut produced = effects.0;
                // The read-back of a parameter is a value like any other: others see it.
                // A failed read also tells everybody that the value is unknown now; a
                // failed change leaves the parameter as it was.
                match (&result, kind) {
                    (Ok(v), Kind::Read | Kind::Change) => {
                        produced.push((module.to_string(), accessible, Ok(v.clone())))
                    }
                    (Err(e), Kind::Read) => {
                        produced.push((module.to_string(), accessible, Err(e.clone())))
                    }
                    _ => {}
                }
                let updates = act.record(produced, true);
                act.broadcast(&updates, origin);
                DeviceReply {
                    result: result.map(|v| (v, t)),
                    updates,
                }
            },
        ))
    }
}
