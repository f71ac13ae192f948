//! Starting and stopping a gateway: devices, nodes, listeners, discovery, health, and a
//! shutdown that drains. The binary is a thin CLI around [`run`]; tests and tools can
//! [`start`] a gateway in-process and [`Running::shutdown`] it.

mod reload;

pub use reload::{ReloadError, ReloadSummary};

use crate::{access_rules, config, discovery, http, request_policy, server, websocket};
use secop_actors::device::DeviceHandle;
use secop_actors::node::{NodeActor, NodeSettings, Start};
use secop_actors::outbox::{OutboxLimits, SlowClientStats};
use std::sync::Arc;
use std::time::Duration;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is invalid (file, key and reason in the text).
    #[error("{0}")]
    Config(String),
    /// A device, node or listener could not be started.
    #[error("{0}")]
    Start(String),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("audit.file: {0}")]
    Audit(#[from] secop_actors::audit::AuditError),
    #[error(transparent)]
    Http(#[from] http::ServiceError),
    #[error("cannot write ready file {}: {source}", path.display())]
    ReadyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl From<String> for AppError {
    /// Errors of the drivers and actors, which come as text naming what failed.
    fn from(text: String) -> AppError {
        AppError::Start(text)
    }
}

/// What a device of the configuration is: a simulated module, a link or a remote node.
enum DeviceKind {
    Module(usize),
    Link(usize),
    Remote(usize),
}

/// One device as the configuration describes it; `key` is its whole configuration
/// (the link section and its modules' specs, the module entry, the remote section), so
/// that a reload restarts exactly the devices whose configuration changed.
struct DeviceSpec {
    name: String,
    key: String,
    kind: DeviceKind,
    /// A module marked `required` depends on it (/readyz).
    required: bool,
}

fn device_specs(loaded: &config::Loaded) -> Vec<DeviceSpec> {
    let c = &loaded.config;
    let mut specs = Vec::new();
    for (i, m) in c.modules.iter().enumerate() {
        if m.driver.is_some() {
            specs.push(DeviceSpec {
                name: m.name.clone(),
                key: format!("module {m:?}"),
                kind: DeviceKind::Module(i),
                required: m.required,
            });
        }
    }
    for (i, l) in c.links.iter().enumerate() {
        specs.push(DeviceSpec {
            name: l.name.clone(),
            key: format!("link {l:?} {:?}", loaded.modules_of(&l.name)),
            kind: DeviceKind::Link(i),
            required: c
                .modules
                .iter()
                .any(|m| m.required && m.link.as_deref() == Some(l.name.as_str())),
        });
    }
    for (i, r) in c.remotes.iter().enumerate() {
        specs.push(DeviceSpec {
            name: r.name.clone(),
            key: format!("remote {r:?}"),
            kind: DeviceKind::Remote(i),
            required: false,
        });
    }
    specs
}

async fn start_device(
    loaded: &config::Loaded,
    spec: &DeviceSpec,
    state: Option<&secop_drivers::state::StateStore>,
) -> Result<DeviceHandle, AppError> {
    let c = &loaded.config;
    Ok(match spec.kind {
        DeviceKind::Module(i) => {
            let m = &c.modules[i];
            let driver = m.driver.as_deref().unwrap_or_default();
            secop_drivers::start(driver, &m.driver_config())
                .map_err(|e| format!("{}: module[{i}] ({:?}): {e}", loaded.origin, m.name))?
        }
        DeviceKind::Link(i) => {
            let l = &c.links[i];
            secop_drivers::start_link(l, &loaded.modules_of(&l.name), state)
                .map_err(|e| format!("{}: link[{i}] ({:?}): {e}", loaded.origin, l.name))?
        }
        // A first connection attempt now, so that its modules are in the first
        // description; if it is unreachable, its modules come when it is.
        DeviceKind::Remote(i) => {
            let remote = &c.remotes[i];
            let first = match secop_drivers::remote::connect(remote).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(remote = %remote.name, "not connected at start: {e}");
                    None
                }
            };
            secop_drivers::remote::RemoteNode::start(remote.clone(), first)
        }
    })
}

/// A running device and the configuration it was started with.
struct Device {
    key: String,
    handle: DeviceHandle,
    /// A `[[link]]`: it holds a port or connection that its successor needs.
    link: bool,
}

/// What every node's listener shares, fixed for the life of the process (a reload
/// that would change it is refused).
struct Shared {
    base_listener_settings: server::ListenerSettings,
    ws_settings: websocket::WsSettings,
    handshake_timeout: Duration,
    echo_endpoint: bool,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    stats: Arc<SlowClientStats>,
    health: http::Health,
    audit: secop_actors::audit::AuditLog,
}

/// A running node: its actor and the listener task that accepts its clients.
struct NodeRun {
    /// `None` for the main node, the equipment id for an extra node.
    key: Option<String>,
    /// The configured listen address and access rules (a change rebinds).
    address: std::net::SocketAddr,
    access_text: String,
    node: actix::Addr<NodeActor>,
    bound: std::net::SocketAddr,
    listener: tokio::task::JoinHandle<()>,
}

/// Start every device, node and listener of `loaded` (validated: `config::load` has
/// built every node's description already). Must run inside an actix `System`.
pub async fn start(loaded: config::Loaded) -> Result<Running, AppError> {
    secop_actors::metrics::metrics()
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SECOP_GATEWAY_GIT_HASH")])
        .set(1);
    let state = loaded.config.state.file.as_ref().map(|file| {
        secop_drivers::state::StateStore::open(
            file,
            Duration::from_secs_f64(loaded.config.state.write_delay),
        )
    });
    let mut devices = Vec::new();
    // Devices (links) behind modules marked `required`, for /readyz.
    let mut required = Vec::new();
    for spec in device_specs(&loaded) {
        let handle = start_device(&loaded, &spec, state.as_ref()).await?;
        if spec.required {
            required.push(handle.name.to_string());
        }
        devices.push(Device {
            key: spec.key,
            handle,
            link: matches!(spec.kind, DeviceKind::Link(_)),
        });
    }
    let l = &loaded.config.listen;
    let limits = OutboxLimits {
        backpressure_bytes: l.backpressure_bytes,
        coalesce_bytes: l.coalesce_bytes,
        max_bytes: l.max_queue_bytes,
    };
    // Every duration is within its range (config::load); limits::duration never panics.
    let seconds = secop_drivers::limits::duration;
    let handshake_timeout = seconds(l.handshake_timeout);
    let base_listener_settings = server::ListenerSettings {
        max_line_bytes: l.max_line_bytes,
        max_connections: l.max_connections,
        write_timeout: seconds(l.write_timeout),
        limits,
        handshake_timeout,
        idle_timeout: (l.idle_timeout > 0.0).then(|| seconds(l.idle_timeout)),
        first_request_timeout: (l.first_request_timeout > 0.0)
            .then(|| seconds(l.first_request_timeout)),
        // One budget for all connections of all nodes.
        budget: secop_actors::input_budget::InputBudget::new(l.max_unfinished_input_bytes),
        access: Arc::new(loaded.access_rules(None)),
    };
    let stats = Arc::new(SlowClientStats::exported());
    for transport in ["tcp", "ws"] {
        let m = secop_actors::metrics::metrics();
        m.connections_total
            .with_label_values(&[transport])
            .inc_by(0);
        m.connections_open.with_label_values(&[transport]).set(0);
    }
    let health = http::Health {
        required_devices: Arc::new(std::sync::RwLock::new(required)),
        nodes: Default::default(),
    };
    if let Some(address) = &loaded.config.metrics.address {
        let address: std::net::SocketAddr = address
            .parse()
            .map_err(|e| format!("metrics.address: {e}"))?;
        let policy = request_policy::RequestPolicy::new(
            address,
            &l.allowed_hosts,
            &l.websocket.allowed_origins,
            Some(Arc::new(loaded.access_rules(None))),
        );
        let server = http::metrics_server(address, health.clone(), policy)
            .map_err(|e| format!("cannot listen on {address} for metrics: {e}"))?;
        tracing::info!(%address, "metrics listening");
        actix::spawn(async move {
            let _ = server.await;
        });
    }
    let ws = &l.websocket;
    if ws.echo_endpoint {
        tracing::warn!(
            "the WebSocket echo endpoint /echo is on (meant for conformance tests only)"
        );
    }
    let ws_settings = websocket::WsSettings {
        max_message_bytes: ws.max_message_bytes,
        ping_interval: seconds(ws.ping_interval),
        ping_timeout: seconds(ws.ping_timeout),
        limits,
        write_timeout: seconds(l.write_timeout),
    };
    let audit = secop_actors::audit::AuditLog::start(loaded.config.audit.settings())?;
    let shared = Shared {
        base_listener_settings,
        ws_settings,
        handshake_timeout,
        echo_endpoint: ws.echo_endpoint,
        allowed_hosts: l.allowed_hosts.clone(),
        allowed_origins: ws.allowed_origins.clone(),
        stats,
        health,
        audit,
    };
    let handles: Vec<DeviceHandle> = devices.iter().map(|d| d.handle.clone()).collect();
    let mut nodes = Vec::new();
    let mut identities = Vec::new();
    for plan in node_plans(&loaded)? {
        let node = start_node(&shared, &loaded, &plan, handles.clone()).await?;
        let run = serve_at(&shared, &plan, node, None, plan.address).await?;
        if let Ok(mut list) = shared.health.nodes.lock() {
            list.push(run.node.clone());
        }
        identities.push((identity(&loaded, &plan), run.bound.port()));
        nodes.push(run);
    }
    let discovery = start_discovery(&loaded, identities).await;
    Ok(Running {
        loaded,
        devices,
        nodes,
        udp: discovery.iter().map(|d| d.bound.clone()).collect(),
        discovery,
        shared,
        state,
    })
}

/// The main node, then the extra nodes.
fn node_plans(loaded: &config::Loaded) -> Result<Vec<NodePlan>, AppError> {
    let main_cfg = &loaded.config.node;
    // The --listen address is in listen.address already.
    let main_address = loaded
        .config
        .listen
        .address
        .parse()
        .map_err(|e| AppError::Config(format!("listen.address: {e}")))?;
    let mut plans = vec![NodePlan {
        key: None,
        equipment_id: main_cfg.equipment_id.clone(),
        description: main_cfg.description.clone(),
        address: main_address,
        read_only: false,
        export: None,
        hide: Vec::new(),
        access: Arc::new(loaded.access_rules(None)),
    }];
    for (i, extra) in loaded.config.extra_nodes.iter().enumerate() {
        let address = extra
            .listen
            .parse()
            .map_err(|e| AppError::Config(format!("extra_node[{i}].listen: {e}")))?;
        plans.push(NodePlan {
            key: Some(extra.equipment_id.clone()),
            equipment_id: extra.equipment_id.clone(),
            description: extra.description.clone(),
            address,
            read_only: extra.read_only,
            export: extra.modules.clone(),
            hide: extra.hide.clone(),
            access: Arc::new(loaded.access_rules(Some(i))),
        });
    }
    Ok(plans)
}

fn node_settings(shared: &Shared, loaded: &config::Loaded, plan: &NodePlan) -> NodeSettings {
    NodeSettings {
        identification: loaded.config.node.identification.clone(),
        device_timeout: loaded.device_timeout(),
        read_only: plan.read_only,
        export: plan.export.clone(),
        hide: plan.hide.clone(),
        audit: Some(shared.audit.clone()),
        history: loaded.config.history.settings(),
    }
}

fn node_properties(
    loaded: &config::Loaded,
    plan: &NodePlan,
) -> serde_json::Map<String, serde_json::Value> {
    let mut properties = loaded.node_properties();
    if plan.read_only {
        properties.insert("_read_only_view".into(), serde_json::Value::Bool(true));
    }
    properties
}

/// Build a node actor and fill its cache (subscribing to its devices).
async fn start_node(
    shared: &Shared,
    loaded: &config::Loaded,
    plan: &NodePlan,
    devices: Vec<DeviceHandle>,
) -> Result<actix::Addr<NodeActor>, AppError> {
    use actix::Actor;
    let node = NodeActor::new(
        node_settings(shared, loaded, plan),
        &plan.equipment_id,
        &plan.description,
        node_properties(loaded, plan),
        devices,
    )
    .map_err(|p| format!("node {:?}: {}", plan.equipment_id, p.join("; ")))?
    .start();
    node.send(Start)
        .await
        .map_err(|e| format!("node did not start: {e}"))?;
    Ok(node)
}

/// Serve a node's clients (SECoP over TCP, HTTP and WebSocket) on a bound listener.
/// [`serve_node`] on `listener` if one was bound already, else on `address`, bound now.
async fn serve_at(
    shared: &Shared,
    plan: &NodePlan,
    node: actix::Addr<NodeActor>,
    listener: Option<tokio::net::TcpListener>,
    address: std::net::SocketAddr,
) -> Result<NodeRun, AppError> {
    let listener = match listener {
        Some(l) => l,
        None => bind(address).map_err(|source| AppError::Bind { address, source })?,
    };
    serve_node(shared, plan, node, listener).await
}

async fn serve_node(
    shared: &Shared,
    plan: &NodePlan,
    node: actix::Addr<NodeActor>,
    listener: tokio::net::TcpListener,
) -> Result<NodeRun, AppError> {
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    tracing::info!(address = %bound, equipment_id = %plan.equipment_id, read_only = plan.read_only, "SECoP node listening");
    let policy = request_policy::RequestPolicy::new(
        bound,
        &shared.allowed_hosts,
        &shared.allowed_origins,
        Some(plan.access.clone()),
    )
    .with_audit(shared.audit.clone(), &plan.equipment_id);
    let http_state = http::HttpState {
        node: node.clone(),
        ws: shared.ws_settings.clone(),
        policy: std::rc::Rc::new(policy),
        echo_endpoint: shared.echo_endpoint,
        stats: shared.stats.clone(),
        health: shared.health.clone(),
    };
    let http = http::service(http_state, shared.handshake_timeout).await?;
    let listener_settings = server::ListenerSettings {
        access: plan.access.clone(),
        ..shared.base_listener_settings.clone()
    };
    let task = actix::spawn(server::serve(
        listener,
        node.clone(),
        listener_settings,
        shared.stats.clone(),
        http,
    ));
    Ok(NodeRun {
        key: plan.key.clone(),
        address: plan.address,
        access_text: plan.access.to_string(),
        node,
        bound,
        listener: task,
    })
}

/// A started gateway: its devices, nodes and where they listen.
pub struct Running {
    /// The configuration running (the last one a reload accepted).
    loaded: config::Loaded,
    devices: Vec<Device>,
    nodes: Vec<NodeRun>,
    /// The bound UDP discovery address, if any.
    pub udp: Vec<String>,
    discovery: Option<Discovery>,
    shared: Shared,
    state: Option<secop_drivers::state::StateStore>,
}

/// How long a shutdown waits for clients to be closed and their writers to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

impl Running {
    /// The bound TCP address of every node, the main node first.
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        self.nodes.iter().map(|n| n.bound).collect()
    }

    /// The node actors, the main node first.
    pub fn nodes(&self) -> Vec<actix::Addr<NodeActor>> {
        self.nodes.iter().map(|n| n.node.clone()).collect()
    }
    /// Write the `--ready-file`: the bound addresses as JSON, for scripts and tests.
    pub fn write_ready_file(&self, path: &std::path::Path) -> Result<(), AppError> {
        let text = serde_json::json!({"tcp": self.addresses(), "udp": self.udp}).to_string();
        std::fs::write(path, text).map_err(|source| AppError::ReadyFile {
            path: path.to_owned(),
            source,
        })
    }

    /// Close every session (WebSocket clients get 1001), wait until their connections
    /// are gone (at most [`DRAIN_DEADLINE`]), and flush the audit trail.
    pub async fn shutdown(self) {
        for run in &self.nodes {
            let _ = run.node.send(secop_actors::node::CloseSessions).await;
        }
        let open = || {
            let m = &secop_actors::metrics::metrics().connections_open;
            m.with_label_values(&["tcp"]).get() + m.with_label_values(&["ws"]).get()
        };
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last records reach their file before the process ends.
        let audit = self.shared.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.sync(DRAIN_DEADLINE)).await;
        if let Some(state) = self.state {
            let _ = tokio::task::spawn_blocking(move || state.flush()).await;
        }
    }
}

/// Start, write the ready file, tell systemd, serve until SIGINT/SIGTERM, shut down;
/// reload the configuration on SIGHUP (`listen`: the `--listen` override, applied
/// again). systemd hears `RELOADING=1` (with `MONOTONIC_USEC`, which
/// `Type=notify-reload` needs) before and `READY=1` after, whether the new file was
/// taken or refused.
pub async fn run(
    loaded: config::Loaded,
    ready_file: Option<std::path::PathBuf>,
    listen: Option<std::net::SocketAddr>,
) -> Result<(), AppError> {
    let mut signals = server::Signals::new();
    let mut running = start(loaded).await?;
    if let Some(path) = &ready_file {
        running.write_ready_file(path)?;
    }
    notify_systemd(running.shared.health.clone());
    while signals.next().await == server::SignalAction::Reload {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        let _ = sd_notify::notify(&states);
        if running.reload_logged(listen).await {
            if let Some(path) = &ready_file {
                if let Err(e) = running.write_ready_file(path) {
                    tracing::error!("{e}");
                }
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.shutdown().await;
    Ok(())
}

/// What a node of this process is made of.
struct NodePlan {
    /// `None` for the main node, the equipment id for an extra node.
    key: Option<String>,
    equipment_id: String,
    description: String,
    address: std::net::SocketAddr,
    read_only: bool,
    export: Option<Vec<String>>,
    hide: Vec<String>,
    access: Arc<access_rules::AccessRules>,
}

/// How a node presents itself in discovery: its own equipment id and description.
fn identity(loaded: &config::Loaded, plan: &NodePlan) -> discovery::Identity {
    let props = loaded.node_properties();
    discovery::Identity {
        equipment_id: plan.equipment_id.clone(),
        firmware: props
            .get("firmware")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        description: plan.description.clone(),
    }
}

/// UDP discovery as it runs: a reload replaces the nodes it answers for and announces
/// the nodes it added or changed.
struct Discovery {
    /// The bound address (the ready file's `udp`).
    bound: String,
    socket: Arc<tokio::net::UdpSocket>,
    nodes: tokio::sync::watch::Sender<discovery::Nodes>,
    targets: Vec<std::net::SocketAddr>,
}

impl Discovery {
    /// Answer for `nodes` from now on; announce those that were not in the list before.
    async fn replace(&self, nodes: discovery::Nodes) {
        let old = self.nodes.send_replace(nodes.clone());
        let before: Vec<Vec<u8>> = old
            .iter()
            .map(|(id, port)| discovery::node_datagram(id, *port))
            .collect();
        let new: Vec<_> = nodes
            .into_iter()
            .filter(|(id, port)| !before.contains(&discovery::node_datagram(id, *port)))
            .collect();
        discovery::announce(&self.socket, &new, &self.targets).await;
    }
}

/// Start answering UDP discovery and announce the nodes once. A failure to bind is
/// logged, not fatal: the node works without discovery.
async fn start_discovery(loaded: &config::Loaded, nodes: discovery::Nodes) -> Option<Discovery> {
    let d = &loaded.config.discovery;
    if !d.enabled {
        return None;
    }
    let address = d.address.parse::<std::net::SocketAddr>().ok()?;
    let socket = match discovery::bind_shared(address) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(%address, "UDP discovery disabled: cannot bind: {e}");
            return None;
        }
    };
    let bound = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let targets: Vec<std::net::SocketAddr> =
        d.announce.iter().filter_map(|a| a.parse().ok()).collect();
    discovery::announce(&socket, &nodes, &targets).await;
    tracing::info!(address = %bound, "answering UDP discovery");
    let (sender, receiver) = tokio::sync::watch::channel(nodes);
    actix::spawn(discovery::serve(socket.clone(), receiver));
    Some(Discovery {
        bound,
        socket,
        nodes: sender,
        targets,
    })
}

/// Tell systemd (Type=notify) that we are ready, and keep its watchdog fed while every
/// node actor answers, so a hung loop or a stuck node gets the service restarted.
/// Outside systemd this does nothing.
pub fn notify_systemd(health: http::Health) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        actix::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                match health.nodes_answer().await {
                    Ok(()) => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                    Err(e) => tracing::error!("not feeding the watchdog: {e}"),
                }
            }
        });
    }
}

/// Bind with a large backlog, so that a burst of connects is not refused.
fn bind(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}
