//! Starting and stopping a gateway: devices, nodes, listeners, discovery, health, and a
//! shutdown that drains. The binary is a thin CLI around [`run`]; tests and tools can
//! [`start`] a gateway in-process and [`Running::shutdown`] it.

use crate::{access_rules, config, discovery, http, request_policy, server, websocket};
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

/// Start every device, node and listener of `loaded` (validated: `config::load` has
/// built every node's description already). Must run inside an actix `System`.
pub async fn start(loaded: config::Loaded) -> Result<Running, AppError> {
    use actix::Actor;
    secop_actors::metrics::metrics()
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SECOP_GATEWAY_GIT_HASH")])
        .set(1);
    let mut devices = Vec::new();
    // Devices (links) behind modules marked `required`, for /readyz.
    let mut required = Vec::new();
    for (i, m) in loaded.config.modules.iter().enumerate() {
        let Some(driver) = &m.driver else { continue };
        let handle = secop_drivers::start(driver, &m.driver_config())
            .map_err(|e| format!("{}: module[{i}] ({:?}): {e}", loaded.origin, m.name))?;
        if m.required {
            required.push(handle.name.to_string());
        }
        devices.push(handle);
    }
    for (i, l) in loaded.config.links.iter().enumerate() {
        let handle = secop_drivers::start_link(l, &loaded.modules_of(&l.name))
            .map_err(|e| format!("{}: link[{i}] ({:?}): {e}", loaded.origin, l.name))?;
        let needed = loaded
            .config
            .modules
            .iter()
            .any(|m| m.required && m.link.as_deref() == Some(l.name.as_str()));
        if needed {
            required.push(handle.name.to_string());
        }
        devices.push(handle);
    }
    // Remote nodes: a first connection attempt now, so that their modules are in the
    // first description; if they are unreachable, their modules come when they do.
    for remote in &loaded.config.remotes {
        let first = match secop_drivers::remote::connect(remote).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(remote = %remote.name, "not connected at start: {e}");
                None
            }
        };
        devices.push(secop_drivers::remote::RemoteNode::start(
            remote.clone(),
            first,
        ));
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
        required_devices: required,
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

    // The main node, then the extra nodes: each a node actor with its own listener.
    let main_cfg = &loaded.config.node;
    // The --listen address is in listen.address already.
    let main_address = l
        .address
        .parse()
        .map_err(|e| AppError::Config(format!("listen.address: {e}")))?;
    let mut plans = vec![NodePlan {
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
            .map_err(|e| format!("extra_node[{i}].listen: {e}"))?;
        plans.push(NodePlan {
            equipment_id: extra.equipment_id.clone(),
            description: extra.description.clone(),
            address,
            read_only: extra.read_only,
            export: extra.modules.clone(),
            hide: extra.hide.clone(),
            access: Arc::new(loaded.access_rules(Some(i))),
        });
    }
    let audit = secop_actors::audit::AuditLog::start(loaded.config.audit.settings())?;
    let mut nodes = Vec::new();
    let mut bound_addresses = Vec::new();
    let mut identities = Vec::new();
    for plan in plans {
        let settings = NodeSettings {
            identification: main_cfg.identification.clone(),
            device_timeout: loaded.device_timeout(),
            read_only: plan.read_only,
            export: plan.export,
            hide: plan.hide,
            audit: Some(audit.clone()),
            history: loaded.config.history.settings(),
        };
        let mut properties = loaded.node_properties();
        if plan.read_only {
            properties.insert("_read_only_view".into(), serde_json::Value::Bool(true));
        }
        let node = NodeActor::new(
            settings,
            &plan.equipment_id,
            &plan.description,
            properties,
            devices.clone(),
        )
        .map_err(|p| format!("node {:?}: {}", plan.equipment_id, p.join("; ")))?
        .start();
        node.send(Start)
            .await
            .map_err(|e| format!("node did not start: {e}"))?;
        let listener = bind(plan.address).map_err(|source| AppError::Bind {
            address: plan.address,
            source,
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        tracing::info!(address = %bound, equipment_id = %plan.equipment_id, read_only = plan.read_only, "SECoP node listening");
        let policy = request_policy::RequestPolicy::new(
            bound,
            &l.allowed_hosts,
            &ws.allowed_origins,
            Some(plan.access.clone()),
        )
        .with_audit(audit.clone(), &plan.equipment_id);
        let http_state = http::HttpState {
            node: node.clone(),
            ws: ws_settings.clone(),
            policy: std::rc::Rc::new(policy),
            echo_endpoint: ws.echo_endpoint,
            stats: stats.clone(),
            health: health.clone(),
        };
        let http = http::service(http_state, handshake_timeout).await?;
        let listener_settings = server::ListenerSettings {
            access: plan.access.clone(),
            ..base_listener_settings.clone()
        };
        actix::spawn(server::serve(
            listener,
            node.clone(),
            listener_settings,
            stats.clone(),
            http,
        ));
        identities.push((
            discovery::Identity {
                equipment_id: plan.equipment_id.clone(),
                ..identity(&loaded)
            },
            bound.port(),
        ));
        if let Ok(mut list) = health.nodes.lock() {
            list.push(node.clone());
        }
        nodes.push(node);
        bound_addresses.push(bound);
    }
    let udp = start_discovery(&loaded, identities).await;
    Ok(Running {
        nodes,
        addresses: bound_addresses,
        udp,
        health,
        audit,
    })
}

/// A started gateway: its nodes and where they listen.
pub struct Running {
    pub nodes: Vec<actix::Addr<NodeActor>>,
    /// The bound TCP address of every node, the main node first.
    pub addresses: Vec<std::net::SocketAddr>,
    /// The bound UDP discovery address, if any.
    pub udp: Vec<String>,
    health: http::Health,
    audit: secop_actors::audit::AuditLog,
}

/// How long a shutdown waits for clients to be closed and their writers to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

impl Running {
    /// Write the `--ready-file`: the bound addresses as JSON, for scripts and tests.
    pub fn write_ready_file(&self, path: &std::path::Path) -> Result<(), AppError> {
        let text = serde_json::json!({"tcp": self.addresses, "udp": self.udp}).to_string();
        std::fs::write(path, text).map_err(|source| AppError::ReadyFile {
            path: path.to_owned(),
            source,
        })
    }

    /// Close every session (WebSocket clients get 1001), wait until their connections
    /// are gone (at most [`DRAIN_DEADLINE`]), and flush the audit trail.
    pub async fn shutdown(self) {
        for node in &self.nodes {
            let _ = node.send(secop_actors::node::CloseSessions).await;
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
        let audit = self.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.sync(DRAIN_DEADLINE)).await;
    }
}

/// Start, write the ready file, tell systemd, serve until SIGINT/SIGTERM, shut down.
pub async fn run(
    loaded: config::Loaded,
    ready_file: Option<std::path::PathBuf>,
) -> Result<(), AppError> {
    let running = start(loaded).await?;
    if let Some(path) = ready_file {
        running.write_ready_file(&path)?;
    }
    notify_systemd(running.health.clone());
    server::wait_for_signal().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.shutdown().await;
    Ok(())
}

/// What a node of this process is made of.
struct NodePlan {
    equipment_id: String,
    description: String,
    address: std::net::SocketAddr,
    read_only: bool,
    export: Option<Vec<String>>,
    hide: Vec<String>,
    access: Arc<access_rules::AccessRules>,
}

fn identity(loaded: &config::Loaded) -> discovery::Identity {
    let props = loaded.node_properties();
    discovery::Identity {
        equipment_id: loaded.config.node.equipment_id.clone(),
        firmware: props
            .get("firmware")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        description: loaded.config.node.description.clone(),
    }
}

/// Start answering UDP discovery and announce the node once. A failure to bind is
/// logged, not fatal: the node works without discovery. Returns the bound addresses.
async fn start_discovery(
    loaded: &config::Loaded,
    nodes: Vec<(discovery::Identity, u16)>,
) -> Vec<String> {
    let d = &loaded.config.discovery;
    if !d.enabled {
        return Vec::new();
    }
    let Ok(address) = d.address.parse::<std::net::SocketAddr>() else {
        return Vec::new();
    };
    let socket = match discovery::bind_shared(address) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%address, "UDP discovery disabled: cannot bind: {e}");
            return Vec::new();
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
    actix::spawn(discovery::serve(socket, nodes));
    vec![bound]
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
