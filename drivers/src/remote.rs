//! Re-exporting the modules of a remote SEC node (a frappy server, a PLC node, another
//! gateway): an upstream SECoP client that is a device like any other.
//!
//! It connects, checks `*IDN?`, reads the description, activates, and then forwards
//! `read`, `change` and `do` with the remote's replies and error classes preserved,
//! turning the remote's updates into device updates. Module names may get a prefix;
//! every module gets the remote's `equipment_id` as property `_remote_equipment_id`.
//! When the remote goes away, its values become `CommunicationFailed` errors and the
//! client reconnects with backoff; when it comes back with another description, the
//! nodes are told to rebuild theirs.
//!
//! Everything a remote sends is hostile input: lines are framed by [`LineCodec`] with
//! a limit (`max_line_bytes`), so a remote that streams without LF costs at most that
//! much memory before it is dropped as a protocol error (logged, then reconnected with
//! backoff); WebSocket messages have the same limit.

use actix::prelude::*;
use bytes::BytesMut;
use secop_actors::deadline::{self, DeadlineTimer, Deadlines};
use secop_actors::device::{
    now, DeviceAction, DeviceCall, DeviceHandle, DeviceModulesChanged, DeviceReply, DeviceRequest,
    DeviceUpdates, ParamUpdate, Responder, StopDevice, Subscribe, SubscriberId,
};
use secop_actors::line_codec::{Inbound, LineCodec};
use secop_proto::message::split;
use secop_proto::{ErrorClass, ModuleDescription, NodeDescription, SecopError};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, FramedRead};

/// `[[remote]]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Name of this upstream connection (device name in metrics and logs).
    pub name: String,
    /// `host:port` of the remote SEC node, or `ws://host:port/path` for SECoP over
    /// WebSocket.
    pub address: String,
    /// Prepended to every remote module name (collisions are a config error).
    #[serde(default)]
    pub prefix: String,
    /// Seconds for connecting and for each forwarded request.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: f64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: f64,
    /// Longest line (or WebSocket message) accepted from the remote, in bytes; a longer
    /// one is a protocol error that drops the connection.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
}

fn default_max_line() -> usize {
    MAX_LINE
}

fn default_timeout() -> f64 {
    5.0
}
fn default_reconnect_min() -> f64 {
    0.5
}
fn default_reconnect_max() -> f64 {
    30.0
}

/// Why a connection to a remote node failed or ended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("the remote node closed the connection")]
    Closed,
    #[error("the remote node closed the WebSocket")]
    WebSocketClosed,
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    #[error("read failed: {0}")]
    Read(String),
    /// A line too long, or not UTF-8.
    #[error("{0}")]
    Protocol(String),
    /// Our side of the connection is gone.
    #[error("connection closed")]
    Gone,
    #[error("{address} is not a SEC node: *IDN? answered {idn:?}")]
    NotSecop { address: String, idn: String },
    #[error("description is not JSON: {0}")]
    DescriptionNotJson(String),
    #[error("cannot use the remote description: {0}")]
    Description(#[from] secop_proto::DescriptionError),
    #[error("{address}: no complete handshake within {timeout} s")]
    Handshake { address: String, timeout: f64 },
}

/// Lines from the remote, whatever carries them (TCP lines or WebSocket frames).
type LineStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<String, RemoteError>>>>;

/// An established session with the remote node.
pub struct Connected {
    lines: LineStream,
    send: tokio::sync::mpsc::UnboundedSender<String>,
    description: NodeDescription,
    /// The lines that came with `activate`, up to `active`.
    initial: Vec<String>,
}

/// Default longest line accepted from a remote node (a big description).
const MAX_LINE: usize = 64 * 1024 * 1024;

/// Framing of a remote's TCP stream: [`LineCodec`], but an over-long line is fatal for
/// the connection (reported as soon as it passes the limit, not at its LF, so that no
/// more than the limit is ever buffered), and so is a line that is not UTF-8.
struct RemoteLines(LineCodec, usize);

impl RemoteLines {
    fn line(&self, item: Option<Inbound>) -> std::io::Result<Option<String>> {
        let invalid = |text: String| std::io::Error::new(std::io::ErrorKind::InvalidData, text);
        match item {
            None if self.0.is_discarding() => Err(invalid(format!(
                "protocol error: a line too long (over {} bytes without LF)",
                self.1
            ))),
            None => Ok(None),
            Some(Inbound::Line(bytes)) => String::from_utf8(Vec::from(bytes))
                .map(Some)
                .map_err(|_| invalid("protocol error: a line that is not UTF-8".into())),
            Some(Inbound::TooLong { length, .. }) => Err(invalid(format!(
                "protocol error: a line of {length} bytes is too long (limit {})",
                self.1
            ))),
        }
    }
}

impl Decoder for RemoteLines {
    type Item = String;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<String>> {
        let item = self.0.decode(buf)?;
        self.line(item)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<String>> {
        // An unfinished last line is dropped (and counted) by LineCodec.
        let item = self.0.decode_eof(buf)?;
        self.line(item)
    }
}

/// The lines of a remote's TCP stream; the first error (or the end of the stream) is
/// the last item.
fn tcp_lines(read: OwnedReadHalf, max_line: usize) -> LineStream {
    use futures_util::StreamExt;
    let framed = FramedRead::new(read, RemoteLines(LineCodec::new(max_line), max_line));
    Box::pin(futures_util::stream::unfold(
        Some(framed),
        |state| async move {
            let mut framed = state?;
            match framed.next().await {
                Some(Ok(line)) => Some((Ok(line), Some(framed))),
                Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    Some((Err(RemoteError::Protocol(e.to_string())), None))
                }
                Some(Err(e)) => Some((Err(RemoteError::Read(e.to_string())), None)),
                None => Some((Err(RemoteError::Closed), None)),
            }
        },
    ))
}

/// Open the transport: `ws://host:port/path` is SECoP over WebSocket (RFC-107), anything
/// else `host:port` for plain TCP. Outgoing lines go through a writer task.
async fn open(
    address: &str,
    max_line: usize,
) -> Result<(LineStream, tokio::sync::mpsc::UnboundedSender<String>), RemoteError> {
    let cannot = |e: &dyn std::fmt::Display| RemoteError::Connect {
        address: address.to_owned(),
        reason: e.to_string(),
    };
    use futures_util::{SinkExt, StreamExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    if address.starts_with("ws://") {
        // Frames stay within tungstenite's default (16 MiB) unless the line limit is lower.
        let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(max_line))
            .max_frame_size(Some(max_line.min(16 << 20)));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(address, Some(limits), false)
            .await
            .map_err(|e| cannot(&e))?;
        let (mut sink, stream) = ws.split();
        actix::spawn(async move {
            while let Some(line) = rx.recv().await {
                let text = line.trim_end_matches('\n').to_owned();
                if sink
                    .send(tokio_tungstenite::tungstenite::Message::text(text))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let lines = stream.filter_map(|m| async move {
            use tokio_tungstenite::tungstenite::Message;
            match m {
                Ok(Message::Text(t)) => Some(Ok(t.trim_end_matches(['\n', '\r']).to_owned())),
                Ok(Message::Close(_)) => Some(Err(RemoteError::WebSocketClosed)),
                Ok(_) => None,
                Err(e) => Some(Err(RemoteError::WebSocket(e.to_string()))),
            }
        });
        return Ok((Box::pin(lines), tx));
    }
    let stream = TcpStream::connect(address).await.map_err(|e| cannot(&e))?;
    let _ = stream.set_nodelay(true);
    let (read, mut writer) = stream.into_split();
    actix::spawn(async move {
        while let Some(line) = rx.recv().await {
            if writer.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    Ok((tcp_lines(read, max_line), tx))
}

async fn next(lines: &mut LineStream) -> Result<String, RemoteError> {
    use futures_util::StreamExt;
    lines.next().await.unwrap_or(Err(RemoteError::Closed))
}

/// Connect, identify, describe and activate, within the timeout.
pub async fn connect(config: &RemoteConfig) -> Result<Connected, RemoteError> {
    let timeout = Duration::from_secs_f64(config.timeout);
    let work = async {
        let (mut lines, send) = open(&config.address, config.max_line_bytes).await?;
        let say = |line: &str| {
            send.send(format!("{line}\n"))
                .map_err(|_| RemoteError::Gone)
        };
        say("*IDN?")?;
        let idn = next(&mut lines).await?;
        let fields: Vec<&str> = idn.split(',').collect();
        if fields.len() < 2 || !fields[0].contains("ISSE") || fields[1] != "SECoP" {
            return Err(RemoteError::NotSecop {
                address: config.address.clone(),
                idn,
            });
        }
        say("describe")?;
        let description = loop {
            let line = next(&mut lines).await?;
            let raw = split(&line);
            if raw.action == "describing" {
                let json: Value = serde_json::from_str(raw.data.unwrap_or("null"))
                    .map_err(|e| RemoteError::DescriptionNotJson(e.to_string()))?;
                break NodeDescription::from_json(&json)?;
            }
        };
        say("activate")?;
        let mut initial = Vec::new();
        loop {
            let line = next(&mut lines).await?;
            if split(&line).action == "active" {
                break;
            }
            initial.push(line);
        }
        Ok(Connected {
            lines,
            send,
            description,
            initial,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| RemoteError::Handshake {
            address: config.address.clone(),
            timeout: config.timeout,
        })?
}

/// Our view of the remote modules: local names (prefixed) and the remote equipment id.
fn local_modules(config: &RemoteConfig, description: &NodeDescription) -> Vec<ModuleDescription> {
    description
        .modules
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.name = format!("{}{}", config.prefix, m.name);
            m.properties.insert(
                "_remote_equipment_id".into(),
                Value::from(description.equipment_id.clone()),
            );
            m
        })
        .collect()
}

struct Pending {
    /// The remote specifier the reply will echo.
    specifier: String,
    origin: Option<SubscriberId>,
    /// Updates that arrived while waiting: side effects, delivered with the reply.
    updates: Vec<ParamUpdate>,
    /// When the remote's answer is no longer waited for (`timeout`, or the asker's own
    /// deadline if earlier).
    deadline: Instant,
    reply: Responder,
    /// The call's slot in the asker's request.
    slot: u32,
}

/// A line read from the remote (or why reading ended), tagged with the connection it
/// came from so that a stale connection's end is not taken for the current one's.
#[derive(Message)]
#[rtype(result = "()")]
struct RemoteLine(Result<String, RemoteError>, u64);

/// See the module documentation.
pub struct RemoteNode {
    config: RemoteConfig,
    name: Arc<str>,
    modules: Vec<ModuleDescription>,
    description_json: Option<Value>,
    writer: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    pending: VecDeque<Pending>,
    /// Requests answered with `TimeoutError` whose answer may still come: (specifier,
    /// until when it is expected). A SEC node answers a connection's requests in order,
    /// so such a late answer must not be taken for the answer to a newer request with
    /// the same specifier (a `changed` of an older value, say).
    overdue: VecDeque<(String, Instant)>,
    /// Wakes the actor when the earliest pending deadline passes.
    expiry: DeadlineTimer,
    subscribers: Vec<(
        SubscriberId,
        Recipient<DeviceUpdates>,
        Option<Recipient<DeviceModulesChanged>>,
    )>,
    last: HashMap<(String, String), ParamUpdate>,
    backoff: crate::backoff::Backoff,
    connection: u64,
    /// `modules`, shared with every handle of this remote (`DeviceHandle::current`).
    live_modules: Arc<std::sync::Mutex<Vec<ModuleDescription>>>,
}

impl RemoteNode {
    /// Start the client; `first` is the result of a connection attempt made before the
    /// node was built, so that the remote modules are in its first description.
    pub fn start(config: RemoteConfig, first: Option<Connected>) -> DeviceHandle {
        let modules = first
            .as_ref()
            .map(|c| local_modules(&config, &c.description))
            .unwrap_or_default();
        let name = config.name.clone();
        let live_modules = Arc::new(std::sync::Mutex::new(modules.clone()));
        let actor = RemoteNode {
            live_modules: live_modules.clone(),
            name: Arc::from(config.name.as_str()),
            backoff: crate::backoff::Backoff::new(config.reconnect_min, config.reconnect_max),
            config,
            modules: modules.clone(),
            description_json: first.as_ref().map(|c| c.description.to_json()),
            writer: None,
            pending: VecDeque::new(),
            overdue: VecDeque::new(),
            expiry: DeadlineTimer::default(),
            subscribers: Vec::new(),
            last: HashMap::new(),
            connection: 0,
        };
        let addr = RemoteNode::create(move |ctx| {
            let mut actor = actor;
            match first {
                Some(c) => actor.attach(c, ctx),
                None => actor.schedule_reconnect(ctx),
            }
            actor
        });
        DeviceHandle {
            checks: true,
            live_modules: Some(live_modules),
            ..DeviceHandle::of(&name, modules, &addr)
        }
    }

    /// This remote's handle, with its modules as they are now.
    fn device_handle(&self, ctx: &Context<Self>) -> DeviceHandle {
        DeviceHandle {
            checks: true,
            live_modules: Some(self.live_modules.clone()),
            ..DeviceHandle::of(&self.config.name, self.modules.clone(), &ctx.address())
        }
    }

    fn attach(&mut self, connected: Connected, ctx: &mut Context<Self>) {
        self.connection += 1;
        let connection = self.connection;
        metrics_up(&self.name, true);
        self.backoff.succeeded();
        let Connected {
            lines,
            send,
            initial,
            ..
        } = connected;
        self.writer = Some(send);
        use futures_util::StreamExt;
        ctx.add_stream(lines.map(move |line| RemoteLine(line, connection)));
        for line in initial {
            self.on_line(&line);
        }
        tracing::info!(remote = %self.name, address = %self.config.address, "remote node connected");
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
        let delay = self.backoff.next_delay();
        ctx.run_later(delay, |act, ctx| {
            let config = act.config.clone();
            ctx.spawn(async move { connect(&config).await }.into_actor(act).map(
                |result, act, ctx| match result {
                    Ok(connected) => {
                        let json = connected.description.to_json();
                        let changed = act.description_json.as_ref() != Some(&json);
                        act.description_json = Some(json);
                        if changed {
                            act.modules = local_modules(&act.config, &connected.description);
                            match act.live_modules.lock() {
                                Ok(mut live) => *live = act.modules.clone(),
                                Err(poisoned) => *poisoned.into_inner() = act.modules.clone(),
                            }
                            act.last.clear();
                            let handle = act.device_handle(ctx);
                            for (_, _, on_change) in &act.subscribers {
                                if let Some(r) = on_change {
                                    r.do_send(DeviceModulesChanged(handle.clone()));
                                }
                            }
                        }
                        act.attach(connected, ctx);
                    }
                    Err(e) => {
                        tracing::warn!(remote = %act.name, "{e}");
                        act.schedule_reconnect(ctx);
                    }
                },
            ));
        });
    }

    fn local(&self, remote_module: &str) -> String {
        format!("{}{}", self.config.prefix, remote_module)
    }

    fn remote_name<'a>(&self, local: &'a str) -> &'a str {
        local
            .strip_prefix(self.config.prefix.as_str())
            .unwrap_or(local)
    }

    fn broadcast(&mut self, updates: Vec<ParamUpdate>) {
        // A node that has ended (removed by a reload) takes nothing more.
        self.subscribers.retain(|(_, sink, _)| sink.connected());
        let busy: Vec<SubscriberId> = self.pending.iter().filter_map(|p| p.origin).collect();
        for (id, sink, _) in &self.subscribers {
            if !busy.contains(id) {
                sink.do_send(DeviceUpdates(updates.clone()));
            }
        }
    }

    /// Handle one line from the remote.
    fn on_line(&mut self, line: &str) {
        let raw = split(line);
        let data: Option<Value> = raw.data.and_then(|d| serde_json::from_str(d).ok());
        match raw.action {
            "update" | "error_update" => {
                let Some((module, parameter)) = raw.specifier.split_once(':') else {
                    return;
                };
                let local = self.local(module);
                // Only parameters of the remote's description: anything else would
                // grow `last` without bound, one entry per name the remote invents.
                let known = self.modules.iter().any(|m| {
                    m.name == local
                        && m.accessible_index(parameter)
                            .is_some_and(|a| !m.accessibles[a].is_command())
                });
                if !known {
                    tracing::debug!(remote = %self.name, specifier = raw.specifier,
                        "update of a parameter the remote did not describe; ignored");
                    return;
                }
                let (value, t) = report(raw.action == "update", data.as_ref());
                let update = ParamUpdate {
                    module: Arc::from(local.as_str()),
                    parameter: Arc::from(parameter),
                    value,
                    timestamp: t,
                };
                self.last.insert(
                    (update.module.to_string(), parameter.to_owned()),
                    update.clone(),
                );
                for p in self.pending.iter_mut() {
                    p.updates.push(update.clone());
                }
                self.broadcast(vec![update]);
            }
            "reply" | "changed" | "done" | "checked" => {
                self.resolve(raw.specifier, report(true, data.as_ref()))
            }
            a if a.starts_with("error_") => {
                self.resolve(raw.specifier, report(false, data.as_ref()))
            }
            _ => {}
        }
    }

    fn resolve(&mut self, specifier: &str, (value, t): (Result<Value, SecopError>, f64)) {
        let now = Instant::now();
        self.overdue.retain(|(_, until)| *until > now);
        if let Some(i) = self.overdue.iter().position(|(s, _)| s == specifier) {
            // The late answer to a request that timed out: its asker has its error.
            self.overdue.remove(i);
            return;
        }
        let Some(i) = self.pending.iter().position(|p| p.specifier == specifier) else {
            return;
        };
        let Some(p) = self.pending.remove(i) else {
            return;
        };
        p.reply.send(vec![(
            p.slot,
            DeviceReply {
                result: value.map(|v| (v, t)),
                updates: p.updates,
            },
        )]);
    }

    /// The connection is gone: fail what waits, turn every value into an error, reconnect.
    fn lost(&mut self, reason: &str, ctx: &mut Context<Self>) {
        if self.writer.is_none() {
            return; // already handled for this connection
        }
        tracing::warn!(remote = %self.name, "remote node lost: {reason}");
        metrics_up(&self.name, false);
        self.writer = None;
        let error = SecopError::communication_failed(format!(
            "remote node {} unreachable: {reason}",
            self.config.address
        ));
        for p in self.pending.drain(..) {
            p.reply
                .send(vec![(p.slot, DeviceReply::error(error.clone()))]);
        }
        self.overdue.clear();
        let t = now();
        let updates: Vec<ParamUpdate> = self
            .last
            .values()
            .map(|u| ParamUpdate {
                value: Err(error.clone()),
                timestamp: t,
                ..u.clone()
            })
            .collect();
        for u in &updates {
            self.last
                .insert((u.module.to_string(), u.parameter.to_string()), u.clone());
        }
        self.broadcast(updates);
        self.schedule_reconnect(ctx);
    }
}

fn metrics_up(name: &str, up: bool) {
    secop_actors::metrics::metrics()
        .device_up
        .with_label_values(&[name])
        .set(i64::from(up));
}

/// `[value,{"t":..}]` or `["Class","text",{..}]` → value or error, and the timestamp.
fn report(ok: bool, data: Option<&Value>) -> (Result<Value, SecopError>, f64) {
    let t = data
        .and_then(|d| d.get(if ok { 1 } else { 2 }))
        .and_then(|q| q.get("t"))
        .and_then(Value::as_f64)
        .unwrap_or_else(now);
    if ok {
        let value = data.and_then(|d| d.get(0)).cloned().unwrap_or(Value::Null);
        return (Ok(value), t);
    }
    let class = data
        .and_then(|d| d.get(0))
        .and_then(Value::as_str)
        .and_then(ErrorClass::parse)
        .unwrap_or(ErrorClass::InternalError);
    let text = data
        .and_then(|d| d.get(1))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    (Err(SecopError::new(class, text)), t)
}

/// How long at least a late answer to a timed-out request is waited for.
const OVERDUE_MIN: Duration = Duration::from_secs(2);

impl RemoteNode {
    /// Answer the requests the remote did not answer in time. They leave the queue and
    /// are remembered as overdue, so their late answers are recognised as such.
    fn expire_pending(&mut self) {
        let now = Instant::now();
        self.overdue.retain(|(_, until)| *until > now);
        if !self.pending.iter().any(|p| p.deadline <= now) {
            return;
        }
        let (expired, kept): (VecDeque<Pending>, VecDeque<Pending>) =
            self.pending.drain(..).partition(|p| p.deadline <= now);
        self.pending = kept;
        // A late answer is expected for a while; a remote that dropped the request
        // altogether costs at most this long of unmatched answers for that specifier.
        let until = now + Duration::from_secs_f64(self.config.timeout * 4.0).max(OVERDUE_MIN);
        for p in expired {
            let error = SecopError::timeout("the remote node did not answer in time");
            p.reply.send(vec![(p.slot, DeviceReply::error(error))]);
            self.overdue.push_back((p.specifier, until));
        }
    }
}

impl Deadlines for RemoteNode {
    fn timer(&mut self) -> &mut DeadlineTimer {
        &mut self.expiry
    }

    fn expire_due(&mut self) -> Option<Instant> {
        self.expire_pending();
        self.pending.iter().map(|p| p.deadline).min()
    }
}

impl Actor for RemoteNode {
    type Context = Context<Self>;
}

impl StreamHandler<RemoteLine> for RemoteNode {
    fn handle(&mut self, item: RemoteLine, ctx: &mut Self::Context) {
        if item.1 != self.connection {
            return;
        }
        match item.0 {
            Ok(line) => self.on_line(&line),
            Err(e) => self.lost(&e.to_string(), ctx),
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<StopDevice> for RemoteNode {
    type Result = ();

    /// A reload removed or changed this remote: the connection is closed (its reader
    /// goes with the actor, its writer when the sender is dropped).
    fn handle(&mut self, _: StopDevice, ctx: &mut Self::Context) {
        tracing::info!(remote = %self.name, "remote stopped");
        self.writer = None;
        // Requests waiting for the remote are answered now, not left to time out.
        let error = secop_actors::device_actor::stopped_error();
        for p in self.pending.drain(..) {
            p.reply
                .send(vec![(p.slot, DeviceReply::error(error.clone()))]);
        }
        ctx.stop();
    }
}

impl Handler<Subscribe> for RemoteNode {
    type Result = MessageResult<Subscribe>;

    /// A new subscriber also hears this remote's modules as they are now: they may
    /// have changed since its node was handed this remote's handle (a remote that
    /// connected in between), and no change would tell it later.
    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        self.subscribers.retain(|(id, _, _)| *id != msg.id);
        if let Some(on_change) = &msg.on_change {
            on_change.do_send(DeviceModulesChanged(self.device_handle(ctx)));
        }
        self.subscribers.push((msg.id, msg.sink, msg.on_change));
        MessageResult(self.last.values().cloned().collect())
    }
}

impl Handler<DeviceRequest> for RemoteNode {
    type Result = ();

    fn handle(&mut self, msg: DeviceRequest, ctx: &mut Self::Context) {
        for call in msg.calls {
            self.forward(call, msg.origin, msg.deadline, &msg.reply);
        }
        deadline::arm(self, ctx);
    }
}

impl RemoteNode {
    /// Send one call to the remote node; its answer is matched by specifier.
    fn forward(
        &mut self,
        call: DeviceCall,
        origin: Option<SubscriberId>,
        deadline: Instant,
        reply: &Responder,
    ) {
        let module = self.remote_name(&call.module).to_owned();
        let (action, accessible, data) = match call.action {
            DeviceAction::Read { parameter } => ("read", parameter, None),
            DeviceAction::Change { parameter, value } => ("change", parameter, Some(value)),
            DeviceAction::Do { command, argument } => ("do", command, Some(argument)),
            DeviceAction::Check { accessible, value } => ("check", accessible, Some(value)),
        };
        let specifier = format!("{module}:{accessible}");
        let mut line = format!("{action} {specifier}");
        if let Some(d) = data.filter(|d| !d.is_null()) {
            line.push(' ');
            line.push_str(&secop_proto::json::to_json(&d));
        }
        line.push('\n');
        let failure = match &self.writer {
            None => Some(SecopError::communication_failed(format!(
                "remote node {} is not connected",
                self.config.address
            ))),
            Some(writer) if writer.send(line).is_err() => {
                Some(SecopError::communication_failed("remote connection closed"))
            }
            Some(_) => None,
        };
        if let Some(error) = failure {
            reply.send(vec![(call.slot, DeviceReply::error(error))]);
            return;
        }
        let timeout = Instant::now() + Duration::from_secs_f64(self.config.timeout);
        let deadline = timeout.min(deadline);
        self.expiry.want(deadline);
        self.pending.push_back(Pending {
            specifier,
            origin,
            updates: Vec::new(),
            deadline,
            reply: reply.clone(),
            slot: call.slot,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// A fake SEC node on loopback: answers the handshake, then streams `total` bytes
    /// without LF. Returns how much it sent: `Ok` if all of it went out, `Err` if the
    /// gateway dropped the connection first.
    fn fake_remote(
        total: usize,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<Result<usize, usize>>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            for line in std::io::BufReader::new(stream).lines() {
                let line = line.unwrap();
                let answer = match line.as_str() {
                    "*IDN?" => "ISSE,SECoP,,v2.0\n",
                    "describe" => {
                        "describing . {\"equipment_id\":\"fake\",\"description\":\"\",\"modules\":{}}\n"
                    }
                    "activate" => "active\n",
                    _ => continue,
                };
                out.write_all(answer.as_bytes()).unwrap();
                if line == "activate" {
                    break;
                }
            }
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0;
            while sent < total {
                match out.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => return Err(sent),
                }
            }
            Ok(sent)
        });
        (addr, handle)
    }

    fn config(address: std::net::SocketAddr, max_line_bytes: usize) -> RemoteConfig {
        RemoteConfig {
            name: "fake".into(),
            address: address.to_string(),
            prefix: String::new(),
            timeout: 10.0,
            reconnect_min: 0.5,
            reconnect_max: 30.0,
            max_line_bytes,
        }
    }

    /// Updates of parameters the remote never described are ignored, so a remote
    /// cannot grow the gateway's memory by inventing names.
    #[test]
    fn updates_of_undescribed_parameters_are_ignored() {
        let mut node = RemoteNode {
            name: Arc::from("fake"),
            backoff: crate::backoff::Backoff::new(1.0, 1.0),
            config: config("127.0.0.1:1".parse().unwrap(), 1 << 20),
            modules: Vec::new(),
            description_json: None,
            writer: None,
            pending: VecDeque::new(),
            overdue: VecDeque::new(),
            expiry: DeadlineTimer::default(),
            subscribers: Vec::new(),
            last: HashMap::new(),
            connection: 0,
            live_modules: Default::default(),
        };
        for i in 0..1000 {
            node.on_line(&format!("update m{i}:p{i} [1,{{}}]"));
        }
        assert!(node.last.is_empty());
    }

    /// A remote that sends a line without LF is dropped as soon as the line passes the
    /// limit: it is never buffered whole (a 2 GB line was 4 GB of RSS).
    #[actix_rt::test]
    async fn endless_line_from_a_remote_drops_the_connection() {
        const STREAM: usize = 64 << 20;
        let (addr, remote) = fake_remote(STREAM);
        let mut connected = connect(&config(addr, 1 << 20)).await.expect("handshake");
        let error = next(&mut connected.lines).await.expect_err("no line");
        assert!(
            matches!(&error, RemoteError::Protocol(e) if e.contains("too long")),
            "{error}"
        );
        assert!(
            next(&mut connected.lines).await.is_err(),
            "the stream ends after the error"
        );
        drop(connected);
        let sent = tokio::task::spawn_blocking(move || remote.join().unwrap())
            .await
            .unwrap();
        // Dropped long before the 64 MiB were out: at most the limit plus what socket
        // buffers hold was read.
        let sent = sent.expect_err("the gateway dropped the connection");
        assert!(sent < STREAM, "{sent}");
    }
}
