//! Gateway configuration: TOML files read with the `config` crate, plus environment
//! overrides (`SECOP_GATEWAY__LISTEN__ADDRESS=0.0.0.0:10767`).
//!
//! Module names are values (`[[module]] name = "T"`), never keys, so no layer of
//! config handling can change their case. Every error names the file, the key and
//! the reason.

use crate::access_rules::{AccessRules, Rule, RuleConfig};
use secop_drivers::ModuleConfig;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default configuration, compiled in: the simulated devices.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/gateway.toml");

/// Prefix of environment overrides; `__` separates key levels.
pub const ENV_PREFIX: &str = "SECOP_GATEWAY";

/// Where a configuration came from, for error messages.
#[derive(Debug, Clone)]
pub enum Origin {
    Embedded,
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Embedded => f.write_str("<embedded config/gateway.toml>"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub node: NodeConfig,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default, rename = "module")]
    pub modules: Vec<ModuleEntry>,
    #[serde(default, rename = "link")]
    pub links: Vec<secop_drivers::link::LinkConfig>,
    #[serde(default, rename = "extra_node")]
    pub extra_nodes: Vec<ExtraNode>,
    /// Remote SEC nodes whose modules this gateway re-exports.
    #[serde(default, rename = "remote")]
    pub remotes: Vec<secop_drivers::remote::RemoteConfig>,
}

/// `[[extra_node]]`: a further SEC node of this process, on its own port, exporting
/// some or all modules, possibly read-only (a view for the control room).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraNode {
    pub equipment_id: String,
    pub description: String,
    /// Its listen address.
    pub listen: String,
    /// The modules it exports (by name); all when absent.
    pub modules: Option<Vec<String>>,
    /// Accessibles it does not export, as "module:accessible".
    #[serde(default)]
    pub hide: Vec<String>,
    /// Parameters read-only, `change` → ReadOnly, `do` → Disabled.
    #[serde(default)]
    pub read_only: bool,
    /// Access rules of this node (`[[extra_node.access]]`); the main node's when absent.
    pub access: Option<Vec<RuleConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub equipment_id: String,
    pub description: String,
    /// Reported as the `firmware` node property; defaults to `secop-gateway <version>`.
    pub firmware: Option<String>,
    pub implementor: Option<String>,
    /// The `*IDN?` reply.
    #[serde(default = "default_identification")]
    pub identification: String,
    /// Seconds a device may take for one request (also the `timeout` node property).
    #[serde(default = "default_device_timeout")]
    pub device_timeout: f64,
    /// Access rules (`[[node.access]]`), first match wins; loopback full and everyone
    /// else read-only when none are given.
    #[serde(default)]
    pub access: Vec<RuleConfig>,
}

fn default_identification() -> String {
    secop_proto::message::IDN_REPLY_V2.to_owned()
}

fn default_device_timeout() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// TCP address of the SECoP listener.
    pub address: String,
    /// Longest accepted request line in bytes; longer lines get `ProtocolError`.
    pub max_line_bytes: usize,
    /// Simultaneous client connections; at the limit the oldest connection silent for
    /// over 2 s makes room, else further connections are closed at once.
    pub max_connections: usize,
    /// Seconds a client may leave written data unread before it is disconnected.
    pub write_timeout: f64,
    /// Queued bytes above which a session stops reading requests.
    pub backpressure_bytes: usize,
    /// Queued bytes above which pending updates of one parameter are coalesced.
    pub coalesce_bytes: usize,
    /// Queued bytes at which a session is closed.
    pub max_queue_bytes: usize,
    /// Seconds a client may take to complete `GET /` once it sent the `G`, and to send
    /// its HTTP request head.
    pub handshake_timeout: f64,
    /// Seconds a new connection may stay silent before it is closed; 0 = never (a SECoP
    /// client may connect and wait before it speaks).
    pub idle_timeout: f64,
    /// Connections one client address may hold (an access rule may set its own).
    pub max_connections_per_address: usize,
    /// Seconds from connect to the first complete request (a SECoP line, an HTTP
    /// request) before the connection is closed; 0 = never.
    pub first_request_timeout: f64,
    /// Bytes of memory all connections together may hold for unfinished input (partial
    /// lines, partial WebSocket messages, which count twice); above it the largest
    /// holders are closed.
    pub max_unfinished_input_bytes: usize,
    /// Host names (besides `localhost` and the listen address) that HTTP requests may
    /// use in their Host header; "*" allows any (not recommended: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    pub websocket: WebSocketConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Largest WebSocket message (and frame) accepted, in bytes; larger ones get close 1009.
    pub max_message_bytes: usize,
    /// Seconds between server pings.
    pub ping_interval: f64,
    /// Seconds without any frame from the client after which it is dropped.
    pub ping_timeout: f64,
    /// Browser origins allowed besides this node's own host (e.g. "http://ecs.example.org");
    /// "*" allows any origin. Requests without Origin (non-browser clients) are allowed.
    pub allowed_origins: Vec<String>,
    /// Serve an echo WebSocket at /echo (for the Autobahn test suite only).
    pub echo_endpoint: bool,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_bytes: 16 * 1024 * 1024,
            ping_interval: 20.0,
            ping_timeout: 60.0,
            allowed_origins: Vec::new(),
            echo_endpoint: false,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: "127.0.0.1:10767".into(),
            max_line_bytes: 1024 * 1024,
            max_connections: 1024,
            write_timeout: 30.0,
            backpressure_bytes: 256 * 1024,
            coalesce_bytes: 64 * 1024,
            max_queue_bytes: 64 * 1024 * 1024,
            handshake_timeout: 10.0,
            idle_timeout: 0.0,
            max_connections_per_address: 64,
            first_request_timeout: 30.0,
            max_unfinished_input_bytes: 64 * 1024 * 1024,
            allowed_hosts: Vec::new(),
            websocket: WebSocketConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Answer UDP discovery requests (SECoP RFC-105).
    pub enabled: bool,
    /// UDP address to listen on; 0.0.0.0:10767 to be found from the network.
    pub address: String,
    /// Where the start-up announcement goes. Broadcast addresses (e.g.
    /// "192.168.1.255:10767") only if you list them.
    pub announce: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: true,
            address: "127.0.0.1:10767".into(),
            announce: vec!["127.0.0.1:10767".into()],
        }
    }
}

/// `[audit]`: where the record of every `change` and `do` goes besides the log (target
/// `secop_gateway::audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A JSON-lines file, rotated by size; unset: the log only.
    pub file: Option<PathBuf>,
    /// Bytes after which the file is rotated (4096 ..= 2^40).
    pub max_file_bytes: u64,
    /// Rotated files kept (`file.1` ... `file.N`; 0 ..= 1000).
    pub keep_files: usize,
    /// Records waiting for the writer; beyond this they are dropped and counted
    /// (16 ..= 1,000,000).
    pub queue_capacity: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        let d = secop_actors::audit::AuditSettings::default();
        AuditConfig {
            file: d.file,
            max_file_bytes: d.max_file_bytes,
            keep_files: d.keep_files,
            queue_capacity: d.queue_capacity,
        }
    }
}

impl AuditConfig {
    pub fn settings(&self) -> secop_actors::audit::AuditSettings {
        secop_actors::audit::AuditSettings {
            file: self.file.clone(),
            max_file_bytes: self.max_file_bytes,
            keep_files: self.keep_files,
            queue_capacity: self.queue_capacity,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A dedicated listener for /metrics, /healthz and /readyz (they are always also
    /// served on the node's own port). Unset: no dedicated listener.
    pub address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleEntry {
    pub name: String,
    /// A built-in driver (the simulators); or:
    pub driver: Option<String>,
    /// The `[[link]]` this module's instrument is on.
    pub link: Option<String>,
    /// On a link: Readable, Writable, Drivable or Communicator.
    pub class: Option<String>,
    /// On a link: the parameters (`[[module.parameter]]`).
    #[serde(default)]
    pub parameter: Vec<Value>,
    /// On a link: the commands (`[[module.command]]`).
    #[serde(default)]
    pub command: Vec<Value>,
    /// On a link: Drivable behaviour (`[module.drive]`).
    pub drive: Option<Value>,
    /// On a Modbus link: the unit id (default: the link's).
    pub unit_id: Option<u8>,
    pub description: Option<String>,
    /// Extra module properties: group, visibility, meaning, custom `_name` keys.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Driver settings.
    #[serde(default)]
    pub settings: Value,
    /// `/readyz` reports "not ready" while this module's device link is down.
    #[serde(default)]
    pub required: bool,
}

impl ModuleEntry {
    /// The link-specific part of the module, for the link's driver.
    pub fn link_spec(&self) -> Value {
        let mut spec = Map::new();
        if let Some(c) = &self.class {
            spec.insert("class".into(), Value::from(c.clone()));
        }
        spec.insert("parameter".into(), Value::from(self.parameter.clone()));
        spec.insert("command".into(), Value::from(self.command.clone()));
        if let Some(d) = &self.drive {
            spec.insert("drive".into(), d.clone());
        }
        if let Some(u) = self.unit_id {
            spec.insert("unit_id".into(), Value::from(u));
        }
        Value::Object(spec)
    }

    pub fn driver_config(&self) -> ModuleConfig {
        // The config crate does not keep the order of table keys; sorting makes the
        // description identical from run to run.
        let properties = match sorted(Value::Object(self.properties.clone())) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        ModuleConfig {
            name: self.name.clone(),
            description: self.description.clone(),
            properties,
            settings: self.settings.clone(),
        }
    }
}

/// The value with the keys of every object in alphabetical order.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// A loaded configuration with its origin.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub origin: Origin,
    pub config: GatewayConfig,
}

/// Load from a file (or the embedded default) and apply environment overrides.
pub fn load(path: Option<&Path>) -> Result<Loaded, String> {
    let (origin, source) = match path {
        None => (Origin::Embedded, EMBEDDED_DEFAULT.to_owned()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read config file: {e}", p.display()))?;
            (Origin::File(p.to_owned()), text)
        }
    };
    let built = config::Config::builder()
        .add_source(config::File::from_str(&source, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| format!("{origin}: {e}"))?;
    let config: GatewayConfig = built
        .try_deserialize()
        .map_err(|e| format!("{origin}: {e}"))?;
    let loaded = Loaded { origin, config };
    loaded.validate()?;
    Ok(loaded)
}

/// Range checks of the connection budget: the first-request timeout and the
/// unfinished-input budget.
fn budget_problems(l: &ListenConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let t = l.first_request_timeout;
    if !(t == 0.0 || (0.1..=3600.0).contains(&t)) {
        problems.push(
            "listen.first_request_timeout: must be 0 (off) or between 0.1 and 3600 seconds".into(),
        );
    }
    let b = l.max_unfinished_input_bytes;
    if !(65536..=1 << 40).contains(&b) {
        problems.push("listen.max_unfinished_input_bytes: must be between 65536 and 2^40".into());
    } else if b < l.max_line_bytes || b / 2 < l.websocket.max_message_bytes {
        // A WebSocket message is charged twice (actix buffers a frame in a buffer
        // that grows by doubling).
        problems.push(
            "listen.max_unfinished_input_bytes: must be at least max_line_bytes and twice websocket.max_message_bytes"
                .into(),
        );
    }
    problems
}

impl Loaded {
    /// Checks that serde cannot express; each message names file, key and reason.
    fn validate(&self) -> Result<(), String> {
        let o = &self.origin;
        let c = &self.config;
        let mut problems = Vec::new();
        if c.listen.address.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "listen.address: {:?} is not an address like 127.0.0.1:10767",
                c.listen.address
            ));
        }
        if c.discovery.address.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "discovery.address: {:?} is not an address like 127.0.0.1:10767",
                c.discovery.address
            ));
        }
        for a in &c.discovery.announce {
            if a.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "discovery.announce: {a:?} is not an address like 127.0.0.1:10767"
                ));
            }
        }
        if let Some(a) = &c.metrics.address {
            if a.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "metrics.address: {a:?} is not an address like 127.0.0.1:9105"
                ));
            }
        }
        if c.listen.max_line_bytes < 64 {
            problems.push("listen.max_line_bytes: must be at least 64".into());
        }
        if c.listen.max_connections == 0 {
            problems.push("listen.max_connections: must be at least 1".into());
        }
        let a = &c.audit;
        if !(4096..=1 << 40).contains(&a.max_file_bytes) {
            problems.push("audit.max_file_bytes: must be between 4096 and 2^40".into());
        }
        if a.keep_files > 1000 {
            problems.push("audit.keep_files: must be between 0 and 1000".into());
        }
        if !(16..=1_000_000).contains(&a.queue_capacity) {
            problems.push("audit.queue_capacity: must be between 16 and 1000000".into());
        }
        if let Some(file) = &a.file {
            let dir = match file.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if file.file_name().is_none() || !dir.is_dir() {
                problems.push(format!(
                    "audit.file: {} is not a file in an existing directory",
                    file.display()
                ));
            }
        }
        if c.listen.max_connections_per_address == 0 {
            problems.push("listen.max_connections_per_address: must be at least 1".into());
        }
        for h in &c.listen.allowed_hosts {
            let plain = h == "*"
                || (!h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)));
            if !plain {
                problems.push(format!(
                    "listen.allowed_hosts: {h:?} is not a host name or address (e.g. \"gw.lab.example\")"
                ));
            }
        }
        let rule_sets = std::iter::once(("node.access".to_owned(), Some(&c.node.access))).chain(
            c.extra_nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("extra_node[{i}].access"), n.access.as_ref())),
        );
        for (key, rules) in rule_sets {
            for (j, rule) in rules.into_iter().flatten().enumerate() {
                if let Err(e) = Rule::from_config(rule) {
                    problems.push(format!("{key}[{j}].{e}"));
                }
            }
        }
        if !(c.listen.write_timeout > 0.0 && c.listen.write_timeout.is_finite()) {
            problems.push("listen.write_timeout: must be a positive number of seconds".into());
        }
        if c.listen.coalesce_bytes > c.listen.max_queue_bytes
            || c.listen.backpressure_bytes > c.listen.max_queue_bytes
        {
            problems.push(
                "listen.max_queue_bytes: must exceed coalesce_bytes and backpressure_bytes".into(),
            );
        }
        if !(c.listen.handshake_timeout > 0.0 && c.listen.handshake_timeout.is_finite()) {
            problems.push("listen.handshake_timeout: must be a positive number of seconds".into());
        }
        if !(c.listen.idle_timeout >= 0.0 && c.listen.idle_timeout.is_finite()) {
            problems.push("listen.idle_timeout: must be 0 (off) or a number of seconds".into());
        }
        problems.extend(budget_problems(&c.listen));
        let ws = &c.listen.websocket;
        if ws.max_message_bytes < 1024 {
            problems.push("listen.websocket.max_message_bytes: must be at least 1024".into());
        }
        if !(ws.ping_interval > 0.0 && ws.ping_timeout > ws.ping_interval) {
            problems.push(
                "listen.websocket.ping_timeout: must exceed ping_interval, both positive".into(),
            );
        }
        for o in &ws.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                problems.push(format!(
                    "listen.websocket.allowed_origins: {o:?} must look like http://host:port or be \"*\""
                ));
            }
        }
        if !(c.node.device_timeout > 0.0 && c.node.device_timeout.is_finite()) {
            problems.push("node.device_timeout: must be a positive number of seconds".into());
        }
        if !c.node.identification.is_ascii() || c.node.identification.contains('\n') {
            problems.push("node.identification: must be one line of ASCII".into());
        }
        if c.modules.is_empty() && c.remotes.is_empty() {
            problems.push("module: the node has no modules (add [[module]] sections)".into());
        }
        for (i, m) in c.modules.iter().enumerate() {
            let key = format!("module[{i}] ({:?})", m.name);
            match (&m.driver, &m.link) {
                (Some(driver), None) => {
                    let link_keys = m.class.is_some()
                        || m.unit_id.is_some()
                        || !m.parameter.is_empty()
                        || !m.command.is_empty()
                        || m.drive.is_some();
                    if link_keys {
                        problems.push(format!(
                            "{key}: class, parameter, command and drive belong to modules on a link, not to driver {driver:?}"
                        ));
                    }
                    if let Err(e) = secop_drivers::describe(driver, &m.driver_config()) {
                        let field = if e.starts_with("unknown driver") {
                            "driver"
                        } else {
                            "settings"
                        };
                        let e = e.strip_prefix("settings: ").unwrap_or(&e).to_owned();
                        problems.push(format!("{key}.{field}: {e}"));
                    }
                }
                (None, Some(link)) => {
                    if !c.links.iter().any(|l| &l.name == link) {
                        problems.push(format!("{key}.link: no [[link]] is named {link:?}"));
                    }
                    if !m.settings.is_null() {
                        problems.push(format!("{key}.settings: modules on a link have no settings; configure the [[link]]"));
                    }
                }
                (Some(_), Some(_)) => {
                    problems.push(format!("{key}: give either driver or link, not both"))
                }
                (None, None) => {
                    problems.push(format!("{key}: needs a driver (simulators) or a link"))
                }
            }
        }
        let mut ids = vec![&c.node.equipment_id];
        for (i, n) in c.extra_nodes.iter().enumerate() {
            let key = format!("extra_node[{i}] ({:?})", n.equipment_id);
            if ids.contains(&&n.equipment_id) {
                problems.push(format!("{key}.equipment_id: another node has this id"));
            }
            ids.push(&n.equipment_id);
            if n.listen.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "{key}.listen: {:?} is not an address like 127.0.0.1:10768",
                    n.listen
                ));
            }
            for m in n.modules.iter().flatten() {
                // Remote modules are only known once connected.
                if c.remotes.is_empty() && !c.modules.iter().any(|x| &x.name == m) {
                    problems.push(format!("{key}.modules: no module is named {m:?}"));
                }
            }
            for h in &n.hide {
                let known = h
                    .split_once(':')
                    .is_some_and(|(m, _)| c.modules.iter().any(|x| x.name == m));
                if !known {
                    problems.push(format!(
                        "{key}.hide: {h:?} is not \"module:accessible\" of a known module"
                    ));
                }
            }
        }
        for (i, r) in c.remotes.iter().enumerate() {
            let key = format!("remote[{i}] ({:?})", r.name);
            let authority = match r.address.strip_prefix("ws://") {
                Some(rest) => rest.split('/').next().unwrap_or(""),
                None => r.address.as_str(),
            };
            if authority
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                problems.push(format!(
                    "{key}.address: {:?} is not host:port or ws://host:port/path",
                    r.address
                ));
            }
            if !(r.timeout > 0.0 && r.reconnect_min > 0.0 && r.reconnect_max >= r.reconnect_min) {
                problems.push(format!("{key}: timeout and reconnect times must be positive, reconnect_max >= reconnect_min"));
            }
            if c.links.iter().any(|l| l.name == r.name)
                || c.remotes[..i].iter().any(|o| o.name == r.name)
            {
                problems.push(format!("{key}.name: another link or remote has this name"));
            }
        }
        let mut link_names = Vec::new();
        for (i, l) in c.links.iter().enumerate() {
            let key = format!("link[{i}] ({:?})", l.name);
            if link_names.contains(&&l.name) {
                problems.push(format!("{key}.name: another link has this name"));
            }
            link_names.push(&l.name);
            let modules = self.modules_of(&l.name);
            if modules.is_empty() {
                problems.push(format!("{key}: no module uses this link"));
                continue;
            }
            if let Err(e) = secop_drivers::describe_link(l, &modules) {
                problems.push(format!("{key}: {e}"));
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems
                .iter()
                .map(|p| format!("{o}: {p}"))
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    /// The modules on link `name`, as the link's driver wants them.
    pub fn modules_of(&self, name: &str) -> Vec<(ModuleConfig, Value)> {
        self.config
            .modules
            .iter()
            .filter(|m| m.link.as_deref() == Some(name))
            .map(|m| (m.driver_config(), m.link_spec()))
            .collect()
    }

    /// The access rules of the main node (`None`) or of extra node `i`.
    pub fn access_rules(&self, extra_node: Option<usize>) -> AccessRules {
        let c = &self.config;
        let configured = extra_node
            .and_then(|i| c.extra_nodes.get(i))
            .and_then(|n| n.access.as_ref())
            .unwrap_or(&c.node.access);
        // Validated at load: every rule converts.
        let rules: Vec<Rule> = configured
            .iter()
            .filter_map(|r| Rule::from_config(r).ok())
            .collect();
        let rules = if configured.is_empty() {
            AccessRules::default_rules()
        } else {
            rules
        };
        AccessRules::new(rules, c.listen.max_connections_per_address)
    }

    pub fn device_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.config.node.device_timeout)
    }

    /// Node properties besides equipment_id, description and modules.
    pub fn node_properties(&self) -> Map<String, Value> {
        let n = &self.config.node;
        let mut props = Map::new();
        props.insert(
            "firmware".into(),
            Value::from(
                n.firmware
                    .clone()
                    .unwrap_or_else(|| format!("secop-gateway {}", env!("CARGO_PKG_VERSION"))),
            ),
        );
        if let Some(i) = &n.implementor {
            props.insert("implementor".into(), Value::from(i.clone()));
        }
        if let Some(t) = secop_proto::json::number(n.device_timeout) {
            props.insert("timeout".into(), t);
        }
        props
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Loaded, String> {
        let dir = std::env::temp_dir().join(format!("secop-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        load(Some(&path))
    }

    #[test]
    fn embedded_default_is_valid() {
        let loaded = load(None).unwrap();
        assert!(loaded.config.modules.len() >= 4);
    }

    #[test]
    fn connection_budget_defaults_and_ranges() {
        let l = ListenConfig::default();
        assert_eq!(l.first_request_timeout, 30.0);
        assert_eq!(l.max_unfinished_input_bytes, 64 << 20);
        assert!(budget_problems(&l).is_empty());
        let base = "[node]\nequipment_id='x'\ndescription='d'\n[[module]]\nname='T'\ndriver='sim_pressure'\n";
        for (listen, key) in [
            ("first_request_timeout = -1", "listen.first_request_timeout"),
            (
                "first_request_timeout = 0.01",
                "listen.first_request_timeout",
            ),
            (
                "first_request_timeout = 7200",
                "listen.first_request_timeout",
            ),
            (
                "max_unfinished_input_bytes = 1000",
                "listen.max_unfinished_input_bytes",
            ),
            (
                "max_unfinished_input_bytes = 1048575",
                "listen.max_unfinished_input_bytes: must be at least",
            ),
        ] {
            let e = load_text(&format!("{base}[listen]\n{listen}\n")).unwrap_err();
            assert!(e.contains(key), "{listen}: {e}");
        }
        let ok = "first_request_timeout = 0\nmax_unfinished_input_bytes = 65536\n\
                  max_line_bytes = 65536\nwebsocket.max_message_bytes = 32768";
        assert!(load_text(&format!("{base}[listen]\n{ok}\n")).is_ok());
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let base = "[node]\nequipment_id='x'\ndescription='d'\n";
        let e = load_text(&format!(
            "{base}[[module]]\nname='T'\ndriver='sim_nothing'\n"
        ))
        .unwrap_err();
        assert!(
            e.contains(".toml: module[0] (\"T\").driver: unknown driver \"sim_nothing\""),
            "{e}"
        );
        let e = load_text(&format!(
            "{base}[[module]]\nname='T'\ndriver='sim_temperature'\n[module.settings]\nramp='fast'\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("module[0] (\"T\").settings: invalid type: string \"fast\""),
            "{e}"
        );
        let e = load_text(&format!(
            "{base}[[module]]\nname='T'\ndriver='sim_temperature'\n[module.settings]\nrmap=1\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `rmap`"), "{e}");
        let e = load_text(&format!(
            "{base}[listen]\naddress='nowhere'\n[[module]]\nname='T'\ndriver='sim_pressure'\n"
        ))
        .unwrap_err();
        assert!(e.contains("listen.address"), "{e}");
        let e = load_text("[node]\ndescription='d'\n").unwrap_err();
        assert!(e.contains("equipment_id"), "{e}");
        let e = load(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
        assert!(e.starts_with("/nonexistent/x.toml: cannot read"), "{e}");
    }
}
