//! secop-gateway: CLI, wiring of devices, node and listener.

mod access_rules;
mod cli;
mod config;
mod conn_io;
mod discovery;
mod http;
mod request_policy;
mod server;
mod sniff;
mod websocket;
mod ws_guard;

use clap::Parser;
use cli::{Cli, Command};
use secop_actors::node::{NodeActor, NodeSettings, Start};
use secop_actors::outbox::{OutboxLimits, SlowClientStats};
use secop_proto::NodeDescription;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc instead of the system allocator: requests, replies and updates are many
/// small, short-lived allocations, which glibc's malloc serves markedly slower
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("secop-gateway: configuration error:\n{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_level.as_deref().unwrap_or(&loaded.config.log.level));
    // The whole description is validated before anything starts.
    let description = match describe(&loaded) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("secop-gateway: configuration error:\n{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Discover { target, wait, json } => {
            // By default: this host, and the addresses the config announces to (where
            // an operator listed the LAN's broadcast address).
            let targets = if target.is_empty() {
                let mut t = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 10767))];
                for a in &loaded.config.discovery.announce {
                    if let Ok(a) = a.parse() {
                        if !t.contains(&a) {
                            t.push(a);
                        }
                    }
                }
                t
            } else {
                target
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("secop-gateway: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(discovery::discover(
                &targets,
                Duration::from_secs_f64(wait.max(0.05)),
            )) {
                Ok(found) => {
                    for (from, node) in &found {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"from": from.to_string(), "node": node})
                            );
                        } else {
                            println!(
                                "{}:{}\t{}\t{}\t{}",
                                from.ip(),
                                node["port"],
                                node["equipment_id"].as_str().unwrap_or(""),
                                node["firmware"].as_str().unwrap_or(""),
                                node["description"]
                                    .as_str()
                                    .unwrap_or("")
                                    .lines()
                                    .next()
                                    .unwrap_or("")
                            );
                        }
                    }
                    eprintln!("{} node(s) found", found.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("secop-gateway: discovery failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => {
            let pretty = serde_json::to_string_pretty(&description.to_json()).unwrap_or_default();
            println!("{pretty}");
            eprintln!(
                "access rules of node {:?} (first match wins):\n{}",
                loaded.config.node.equipment_id,
                loaded.access_rules(None)
            );
            for (i, n) in loaded.config.extra_nodes.iter().enumerate() {
                eprintln!(
                    "access rules of node {:?} (first match wins):\n{}",
                    n.equipment_id,
                    loaded.access_rules(Some(i))
                );
            }
            eprintln!("{}: configuration is valid", loaded.origin);
            ExitCode::SUCCESS
        }
        Command::Run => {
            let system = actix::System::new();
            match system.block_on(run(cli.listen, cli.ready_file, loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("secop-gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Build the description without starting anything.
fn describe(loaded: &config::Loaded) -> Result<NodeDescription, String> {
    let mut modules = Vec::new();
    for (i, m) in loaded.config.modules.iter().enumerate() {
        if let Some(driver) = &m.driver {
            let described = secop_drivers::describe(driver, &m.driver_config())
                .map_err(|e| format!("{}: module[{i}] ({:?}): {e}", loaded.origin, m.name))?;
            modules.extend(described);
        }
    }
    for (i, l) in loaded.config.links.iter().enumerate() {
        let described = secop_drivers::describe_link(l, &loaded.modules_of(&l.name))
            .map_err(|e| format!("{}: link[{i}] ({:?}): {e}", loaded.origin, l.name))?;
        modules.extend(described);
    }
    let node = &loaded.config.node;
    let description = NodeDescription {
        equipment_id: node.equipment_id.clone(),
        description: node.description.clone(),
        modules,
        properties: loaded.node_properties(),
    };
    let problems = description.problems();
    if !problems.is_empty() {
        return Err(problems
            .iter()
            .map(|p| format!("{}: {p}", loaded.origin))
            .collect::<Vec<_>>()
            .join("\n"));
    }
    Ok(description)
}

async fn run(
    listen: Option<std::net::SocketAddr>,
    ready_file: Option<std::path::PathBuf>,
    loaded: config::Loaded,
) -> Result<(), String> {
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
    let handshake_timeout = Duration::from_secs_f64(l.handshake_timeout);
    let base_listener_settings = server::ListenerSettings {
        max_line_bytes: l.max_line_bytes,
        max_connections: l.max_connections,
        write_timeout: Duration::from_secs_f64(l.write_timeout),
        limits,
        handshake_timeout,
        idle_timeout: (l.idle_timeout > 0.0).then(|| Duration::from_secs_f64(l.idle_timeout)),
        first_request_timeout: (l.first_request_timeout > 0.0)
            .then(|| Duration::from_secs_f64(l.first_request_timeout)),
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
        ping_interval: Duration::from_secs_f64(ws.ping_interval),
        ping_timeout: Duration::from_secs_f64(ws.ping_timeout),
        limits,
        write_timeout: Duration::from_secs_f64(l.write_timeout),
    };

    // The main node, then the extra nodes: each a node actor with its own listener.
    let main_cfg = &loaded.config.node;
    let main_address = match listen {
        Some(a) => a,
        None => l
            .address
            .parse()
            .map_err(|e| format!("listen.address: {e}"))?,
    };
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
    let audit = secop_actors::audit::AuditLog::start(loaded.config.audit.settings())
        .map_err(|e| format!("audit.file: {e}"))?;
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
        let listener =
            bind(plan.address).map_err(|e| format!("cannot listen on {}: {e}", plan.address))?;
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
        nodes.push(node);
        bound_addresses.push(bound.to_string());
    }
    let udp = start_discovery(&loaded, identities).await;
    if let Some(path) = ready_file {
        let text = serde_json::json!({"tcp": bound_addresses, "udp": udp}).to_string();
        std::fs::write(&path, text)
            .map_err(|e| format!("cannot write ready file {}: {e}", path.display()))?;
    }
    notify_systemd();
    server::shutdown_signal(nodes).await;
    // The last records reach their file before the process ends.
    let _ = audit.sync(Duration::from_secs(2));
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

/// Tell systemd (Type=notify) that we are ready, and keep its watchdog fed from the
/// event loop, so a hung loop gets the service restarted. Outside systemd this does
/// nothing.
fn notify_systemd() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        actix::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
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
