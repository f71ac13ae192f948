//! Gateway configuration: TOML files read with the `config` crate, plus environment
//! overrides (`SECOP_GATEWAY__LISTEN__ADDRESS=0.0.0.0:10767`).
//!
//! Module names are values (`[[module]] name = "T"`), never keys, so no layer of
//! config handling can change their case. Every error names the file, the key and
//! the reason.

mod rules;
pub mod template;

use crate::access_rules::{AccessRules, Rule, RuleConfig};
use secop_actors::node::{exported_modules, NodeSettings};
use secop_drivers::{limits, ConfigError, ModuleConfig};
use secop_proto::{ModuleDescription, NodeDescription};
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub history: HistoryConfig,
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

/// Why a link or remote may not take a simulated module's name.
const SIMULATED_NAME: &str =
    "a simulated module has this name (each device needs its own: metrics, logs and /readyz name devices)";

/// A file the gateway writes (audit trail, state) must be a file name in a folder that
/// exists, and if it exists, a regular file (not a device such as `/dev/zero`, which
/// would never end when read, nor a directory or a pipe): the problem, naming `key`, if
/// it is not.
fn file_in_existing_dir(key: &str, file: Option<&Path>) -> Option<String> {
    let file = file?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if file.file_name().is_none() || !dir.is_dir() {
        return Some(format!(
            "{key}: {} is not a file in an existing directory",
            file.display()
        ));
    }
    match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => Some(format!(
            "{key}: {} exists and is not a regular file",
            file.display()
        )),
        _ => None,
    }
}

/// `[state]`: the file that keeps the values of persisted parameters (`persist =
/// "restore"` or `"remember"`) across restarts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The state file (JSON, written atomically); unset: nothing is persisted.
    pub file: Option<PathBuf>,
    /// Seconds after a change before the file is written, so that a burst of changes
    /// is one write (0 ..= 60).
    pub write_delay: f64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            file: None,
            write_delay: 0.2,
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

/// `[history]`: the value history of numeric parameters that every node keeps for
/// `GET /history`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep a history (default true).
    pub enabled: bool,
    /// Seconds of history per parameter (1 ..= 604800).
    pub window: f64,
    /// Seconds per point: at most one point per parameter in each such slot
    /// (0.01 ..= 3600); `window / resolution` must not exceed
    /// [`MAX_POINTS_PER_PARAMETER`](secop_actors::history::MAX_POINTS_PER_PARAMETER).
    pub resolution: f64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        let d = secop_actors::history::HistorySettings::default();
        HistoryConfig {
            enabled: true,
            window: d.window,
            resolution: d.resolution,
        }
    }
}

impl HistoryConfig {
    /// What every node gets: `None` when the history is off.
    pub fn settings(&self) -> Option<secop_actors::history::HistorySettings> {
        self.enabled
            .then_some(secop_actors::history::HistorySettings {
                window: self.window,
                resolution: self.resolution,
            })
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
    /// On a link: seconds between polls of this module (default: the link's).
    pub pollinterval: Option<f64>,
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
        if let Some(p) = self.pollinterval {
            spec.insert("pollinterval".into(), Value::from(p));
        }
        Value::Object(spec)
    }

    pub fn driver_config(&self) -> ModuleConfig {
        // The config crate keeps the order of table keys (feature `preserve_order`):
        // the description lists properties, members and keys as the file does, the
        // same from run to run.
        ModuleConfig {
            name: self.name.clone(),
            description: self.description.clone(),
            properties: self.properties.clone(),
            settings: self.settings.clone(),
        }
    }
}

/// A loaded and validated configuration with its origin.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub origin: Origin,
    pub config: GatewayConfig,
    /// The environment overrides applied: (variable, key such as `listen.address`).
    pub overrides: Vec<(String, String)>,
    /// The modules this gateway serves itself (drivers and links) as described; those
    /// of remote nodes come when they connect.
    pub modules: Vec<ModuleDescription>,
    /// The modules made from templates (`[[template]]`).
    pub instances: Vec<template::Instance>,
    /// The configuration with its templates expanded and its includes read, as TOML
    /// (without the environment overrides): `check-config --expanded`.
    pub expanded: String,
}

/// Why a configuration was refused. `Display` gives each problem on a line of its
/// own, naming the file (or environment variable), the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {name}: the value is not UTF-8")]
    NotUtf8 { name: String },
    /// What is wrong with the configuration, every problem found.
    #[error("{}", Problem::lines(.0))]
    Problems(Vec<Problem>),
}

/// One problem of a configuration: where it comes from, and "key: reason".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{blame}: {problem}")]
pub struct Problem {
    pub blame: Blame,
    /// "key: reason", the key as the file writes it (`module[0] ("T").settings.ramp`).
    pub problem: String,
}

impl Problem {
    fn lines(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What set the value a problem is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blame {
    /// The file (or the embedded default).
    Config(Origin),
    /// An environment variable (`SECOP_GATEWAY__...`).
    Variable(String),
    /// Several environment variables together.
    Variables(Vec<String>),
}

impl std::fmt::Display for Blame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blame::Config(origin) => origin.fmt(f),
            Blame::Variable(name) => write!(f, "environment variable {name}"),
            Blame::Variables(names) => write!(f, "environment variables {}", names.join(", ")),
        }
    }
}

/// Load from a file (or the embedded default), apply the environment overrides and the
/// `--listen` address, and validate everything. `check-config` and `run` both start
/// here: what one refuses, the other refuses too, with the same message.
pub fn load(path: Option<&Path>, listen: Option<SocketAddr>) -> Result<Loaded, LoadError> {
    let (origin, source) = match path {
        None => (Origin::Embedded, EMBEDDED_DEFAULT.to_owned()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| LoadError::Read {
                path: p.to_owned(),
                source,
            })?;
            (Origin::File(p.to_owned()), text)
        }
    };
    let variables = environment()?;
    load_source(origin, &source, &variables, listen)
}

/// Load a configuration from TOML text alone (no file, no environment): for tests and
/// the fuzz targets, which must see exactly what `load` makes of a file.
pub fn load_str(source: &str) -> Result<Loaded, LoadError> {
    load_source(Origin::File(PathBuf::from("<text>")), source, &[], None)
}

fn load_source(
    origin: Origin,
    source: &str,
    variables: &[(String, String)],
    listen: Option<SocketAddr>,
) -> Result<Loaded, LoadError> {
    check_toml(source).map_err(|problems| {
        LoadError::Problems(
            problems
                .into_iter()
                .map(|problem| Problem {
                    blame: Blame::Config(origin.clone()),
                    problem,
                })
                .collect(),
        )
    })?;
    // Templates are instantiated before the config crate sees the text: everything
    // after it (environment overrides, validation, the drivers) sees plain modules.
    let expansion = template::expand(&origin, source, check_toml).map_err(LoadError::Problems)?;
    let instances = expansion.instances;
    let text = expansion.text.as_deref().unwrap_or(source);
    let annotate = |e: LoadError| match e {
        LoadError::Problems(problems) => LoadError::Problems(
            problems
                .into_iter()
                .map(|p| Problem {
                    problem: instances
                        .iter()
                        .fold(p.problem, |text, i| i.annotate(&text)),
                    blame: p.blame,
                })
                .collect(),
        ),
        other => other,
    };
    let mut config = deserialize(text, variables).map_err(|e| {
        annotate(LoadError::Problems(vec![blame(
            &origin, text, variables, e,
        )]))
    })?;
    if let Some(address) = listen {
        config.listen.address = address.to_string();
    }
    let mut loaded = Loaded {
        origin,
        config,
        overrides: variables
            .iter()
            .map(|(name, _)| (name.clone(), env_key(name)))
            .collect(),
        modules: Vec::new(),
        instances: instances.clone(),
        expanded: expansion.toml,
    };
    loaded.modules = loaded.validate().map_err(annotate)?;
    Ok(loaded)
}

/// The environment variables that override config keys (`SECOP_GATEWAY__...`), sorted.
fn environment() -> Result<Vec<(String, String)>, LoadError> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut variables = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(&prefix)) else {
            continue;
        };
        let value = value.into_string().map_err(|_| LoadError::NotUtf8 {
            name: name.to_owned(),
        })?;
        variables.push((name.to_owned(), value));
    }
    variables.sort();
    Ok(variables)
}

/// `SECOP_GATEWAY__LISTEN__ADDRESS` → `listen.address`.
fn env_key(variable: &str) -> String {
    variable
        .get(ENV_PREFIX.len() + 2..)
        .unwrap_or_default()
        .split("__")
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// The configuration from the TOML text and these environment variables.
fn deserialize(
    source: &str,
    variables: &[(String, String)],
) -> Result<GatewayConfig, config::ConfigError> {
    let env: config::Map<String, String> = variables.iter().cloned().collect();
    config::Config::builder()
        .add_source(config::File::from_str(source, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()?
        .try_deserialize()
}

/// The message for a configuration that does not deserialize, blaming the file, or the
/// environment variable that breaks it.
fn blame(
    origin: &Origin,
    source: &str,
    variables: &[(String, String)],
    error: config::ConfigError,
) -> Problem {
    let named = |e| labelled(source, &config_error(e));
    if let Err(e) = deserialize(source, &[]) {
        return Problem {
            blame: Blame::Config(origin.clone()),
            problem: named(e),
        };
    }
    for variable in variables {
        if let Err(e) = deserialize(source, std::slice::from_ref(variable)) {
            return Problem {
                blame: Blame::Variable(variable.0.clone()),
                problem: named(e),
            };
        }
    }
    Problem {
        blame: Blame::Variables(variables.iter().map(|(n, _)| n.clone()).collect()),
        problem: named(error),
    }
}

/// `module[1].unit_id: ...` → `module[1] ("v").unit_id: ...`: the name (or
/// equipment_id) of the array entry a message begins with, as validation names it.
fn labelled(source: &str, message: &str) -> String {
    let Some((section, rest)) = message.split_once('[') else {
        return message.to_owned();
    };
    let Some((index, rest)) = rest.split_once(']') else {
        return message.to_owned();
    };
    if !section
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return message.to_owned();
    }
    let (Ok(table), Ok(i)) = (toml::de::DeTable::parse(source), index.parse::<usize>()) else {
        return message.to_owned();
    };
    let label = table
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == section)
        .and_then(|(_, v)| v.get_ref().get(i))
        .and_then(|entry| {
            ["name", "equipment_id"]
                .iter()
                .find_map(|k| entry.get_ref().get(*k)?.get_ref().as_str())
        });
    match label {
        Some(name) => format!("{section}[{i}] ({name:?}){rest}"),
        None => message.to_owned(),
    }
}

/// "key: reason" for an error of the config crate.
fn config_error(error: config::ConfigError) -> String {
    use config::ConfigError as E;
    let keyed = |key: Option<String>, reason: String| match key {
        Some(k) if !k.is_empty() => format!("{}: {reason}", dotted(&k)),
        _ => reason,
    };
    match error {
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => {
            let found = unexpected.to_string();
            let reason = match found.split('`').nth(1) {
                Some(n) if expected.contains("integer") && found.contains("integer") => {
                    format!("{n} is out of range for {expected}")
                }
                _ => format!("invalid type: {found}, expected {expected}"),
            };
            keyed(key, reason)
        }
        E::At { error, key, .. } => keyed(key, config_error(*error)),
        E::NotFound(key) => keyed(Some(key), "missing".into()),
        E::FileParse { cause, .. } => cause.to_string(),
        other => other.to_string(),
    }
}

/// The config crate writes `module[0]unit_id`; we write `module[0].unit_id`.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '.' && c != '[' {
            out.push('.');
        }
        after_index = c == ']';
        out.push(c);
    }
    out
}

/// What the config crate would lose or mangle of the TOML text: syntax errors with
/// their position, integers beyond 64 bits (an error without a key there), and `nan`
/// and `inf` (which become `null` in JSON-valued sections). Each problem names its key.
fn check_toml(source: &str) -> Result<(), Vec<String>> {
    use toml::de::{DeTable, DeValue};
    fn walk(value: &DeValue<'_>, key: &str, out: &mut Vec<String>) {
        match value {
            DeValue::Integer(i) if i64::from_str_radix(i.as_str(), i.radix()).is_err() => {
                out.push(format!(
                    "{key}: {} does not fit in a 64-bit integer",
                    i.as_str()
                ));
            }
            DeValue::Float(f) if !f.as_str().parse::<f64>().is_ok_and(f64::is_finite) => {
                out.push(format!(
                    "{key}: {} is not a finite number (no value here may be nan or inf)",
                    f.as_str()
                ));
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item = item.get_ref();
                    let label = item
                        .as_table()
                        .and_then(|t| {
                            ["name", "equipment_id"].iter().find_map(|k| {
                                t.iter()
                                    .find(|(name, _)| name.get_ref() == k)
                                    .and_then(|(_, v)| v.get_ref().as_str())
                            })
                        })
                        .map(|name| format!(" ({name:?})"))
                        .unwrap_or_default();
                    walk(item, &format!("{key}[{i}]{label}"), out);
                }
            }
            DeValue::Table(table) => {
                for (name, item) in table.iter() {
                    let sub = match key {
                        "" => name.get_ref().to_string(),
                        _ => format!("{key}.{}", name.get_ref()),
                    };
                    walk(item.get_ref(), &sub, out);
                }
            }
            _ => {}
        }
    }
    let table = DeTable::parse(source).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
    let mut problems = Vec::new();
    walk(&DeValue::Table(table.get_ref().clone()), "", &mut problems);
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems),
    }
}

/// Problems found by [`Loaded::validate`], each "key: reason".
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }

    fn check(&mut self, result: Result<(), limits::RangeError>) {
        if let Err(e) = result {
            self.0.push(e.to_string());
        }
    }

    fn count(&mut self, key: &str, x: usize, min: u64, max: u64, unit: &str) {
        self.check(limits::count(key, x as u64, min, max, unit));
    }
}

/// Whether two TCP listeners could not both bind (same port, and the same or a
/// wildcard address). Port 0 (any free port) never clashes.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
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

/// Range checks of `[history]`: window, resolution, and the points per parameter they
/// make.
fn history_problems(h: &HistoryConfig) -> Vec<String> {
    use secop_actors::history::{HistorySettings, MAX_POINTS_PER_PARAMETER};
    let mut problems = Vec::new();
    let window = limits::HISTORY_WINDOW.check("history.window", h.window);
    let resolution = limits::HISTORY_RESOLUTION.check("history.resolution", h.resolution);
    let both = window.is_ok() && resolution.is_ok();
    problems.extend(
        [window, resolution]
            .into_iter()
            .filter_map(|r| r.err())
            .map(|e| e.to_string()),
    );
    let settings = HistorySettings {
        window: h.window,
        resolution: h.resolution,
    };
    let points = settings.points_per_parameter();
    if both && points > MAX_POINTS_PER_PARAMETER {
        problems.push(format!(
            "history.resolution: window {} s / resolution {} s makes {points} points per parameter, \
             more than the maximum of {MAX_POINTS_PER_PARAMETER} (history.max_points_per_parameter); \
             use a resolution of at least {} s or a shorter window",
            limits::show(h.window),
            limits::show(h.resolution),
            limits::show(h.window / MAX_POINTS_PER_PARAMETER as f64),
        ));
    }
    problems
}

impl Loaded {
    /// Everything `run` would find wrong, with every value in its documented range
    /// (docs/configuration.md); each message names file (or environment variable), key
    /// and reason. Returns the descriptions of the gateway's own modules.
    fn validate(&self) -> Result<Vec<ModuleDescription>, LoadError> {
        use limits::{PING_INTERVAL, RECONNECT_MAX, RECONNECT_MIN, TIMEOUT};
        let c = &self.config;
        let mut problems = Problems::default();
        let address = |text: &str| text.parse::<SocketAddr>().ok();
        if address(&c.listen.address).is_none() {
            problems.push(format!(
                "listen.address: {:?} is not an address like 127.0.0.1:10767",
                c.listen.address
            ));
        }
        if address(&c.discovery.address).is_none() {
            problems.push(format!(
                "discovery.address: {:?} is not an address like 127.0.0.1:10767",
                c.discovery.address
            ));
        }
        for a in &c.discovery.announce {
            if address(a).is_none() {
                problems.push(format!(
                    "discovery.announce: {a:?} is not an address like 127.0.0.1:10767"
                ));
            }
        }
        if let Some(a) = &c.metrics.address {
            if address(a).is_none() {
                problems.push(format!(
                    "metrics.address: {a:?} is not an address like 127.0.0.1:9105"
                ));
            }
        }
        let l = &c.listen;
        problems.count(
            "listen.max_line_bytes",
            l.max_line_bytes,
            64,
            64 << 20,
            "bytes",
        );
        problems.count(
            "listen.max_connections",
            l.max_connections,
            1,
            1_000_000,
            "connections",
        );
        problems.check(TIMEOUT.check("listen.write_timeout", l.write_timeout));
        problems.count(
            "listen.backpressure_bytes",
            l.backpressure_bytes,
            1024,
            1 << 34,
            "bytes",
        );
        problems.count(
            "listen.coalesce_bytes",
            l.coalesce_bytes,
            1024,
            1 << 34,
            "bytes",
        );
        problems.count(
            "listen.max_queue_bytes",
            l.max_queue_bytes,
            4096,
            1 << 34,
            "bytes",
        );
        if l.coalesce_bytes > l.max_queue_bytes || l.backpressure_bytes > l.max_queue_bytes {
            problems.push(
                "listen.max_queue_bytes: must exceed coalesce_bytes and backpressure_bytes".into(),
            );
        }
        problems.check(TIMEOUT.check("listen.handshake_timeout", l.handshake_timeout));
        problems.check(TIMEOUT.check_or_zero("listen.idle_timeout", l.idle_timeout));
        for p in budget_problems(l) {
            problems.push(p);
        }
        problems.count(
            "listen.max_connections_per_address",
            l.max_connections_per_address,
            1,
            1_000_000,
            "connections",
        );
        for h in &l.allowed_hosts {
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
        let ws = &l.websocket;
        problems.count(
            "listen.websocket.max_message_bytes",
            ws.max_message_bytes,
            1024,
            1 << 30,
            "bytes",
        );
        problems.check(PING_INTERVAL.check("listen.websocket.ping_interval", ws.ping_interval));
        problems.check(TIMEOUT.check("listen.websocket.ping_timeout", ws.ping_timeout));
        if ws.ping_timeout <= ws.ping_interval {
            problems.push("listen.websocket.ping_timeout: must exceed ping_interval".into());
        }
        for o in &ws.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                problems.push(format!(
                    "listen.websocket.allowed_origins: {o:?} must look like http://host:port or be \"*\""
                ));
            }
        }
        problems.check(limits::number(
            "state.write_delay",
            c.state.write_delay,
            0.0,
            60.0,
            "s",
        ));
        if let Some(problem) = file_in_existing_dir("state.file", c.state.file.as_deref()) {
            problems.push(problem);
        }
        if c.state.file.is_none() {
            for (i, m) in c.modules.iter().enumerate() {
                for (j, p) in m.parameter.iter().enumerate() {
                    if p.get("persist").is_some() {
                        problems.push(format!(
                            "module[{i}] ({:?}): parameter[{j}].persist: needs a state file ([state] file = \"...\")",
                            m.name
                        ));
                    }
                }
            }
        }
        let a = &c.audit;
        problems.check(limits::count(
            "audit.max_file_bytes",
            a.max_file_bytes,
            4096,
            1 << 40,
            "bytes",
        ));
        problems.count("audit.keep_files", a.keep_files, 0, 1000, "files");
        problems.count(
            "audit.queue_capacity",
            a.queue_capacity,
            16,
            1_000_000,
            "records",
        );
        if let Some(problem) = file_in_existing_dir("audit.file", a.file.as_deref()) {
            problems.push(problem);
        }
        for p in history_problems(&c.history) {
            problems.push(p);
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
                if let Some(n) = rule.max_connections_per_address {
                    let key = format!("{key}[{j}].max_connections_per_address");
                    problems.count(&key, n, 1, 1_000_000, "connections");
                }
            }
        }
        problems.check(TIMEOUT.check("node.device_timeout", c.node.device_timeout));
        if let Err(e) = rules::identification(&c.node.identification) {
            problems.push(format!("node.identification: {e}"));
        }
        if c.modules.is_empty() && c.remotes.is_empty() {
            problems.push("module: the node has no modules (add [[module]] sections)".into());
        }
        let names: Vec<&str> = c.modules.iter().map(|m| m.name.as_str()).collect();
        let mut described = Vec::new();
        let mut all_described = true;
        for (i, m) in c.modules.iter().enumerate() {
            let key = format!("module[{i}] ({:?})", m.name);
            for p in rules::module_properties(&m.properties, &names) {
                problems.push(format!("{key}.properties.{p}"));
            }
            match (&m.driver, &m.link) {
                (Some(driver), None) => {
                    let link_keys = m.class.is_some()
                        || m.unit_id.is_some()
                        || m.pollinterval.is_some()
                        || !m.parameter.is_empty()
                        || !m.command.is_empty()
                        || m.drive.is_some();
                    if link_keys {
                        problems.push(format!(
                            "{key}: class, parameter, command, drive, unit_id and pollinterval belong to modules on a link, not to driver {driver:?} (simulators take settings.pollinterval)"
                        ));
                    }
                    match secop_drivers::describe(driver, &m.driver_config()) {
                        Ok(d) => described.extend(d),
                        Err(e @ ConfigError::UnknownDriver(_)) => {
                            all_described = false;
                            problems.push(format!("{key}.driver: {e}"));
                        }
                        Err(e) => {
                            // Keyed within the module's section: `settings.ramp`.
                            all_described = false;
                            problems.push(e.within(&key).to_string());
                        }
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
        // A simulated module is a device of its own name: a link or remote of the same
        // name would share its metric series, log lines and /readyz entry.
        let simulated: Vec<&str> = c
            .modules
            .iter()
            .filter(|m| m.driver.is_some())
            .map(|m| m.name.as_str())
            .collect();
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
            problems.check(TIMEOUT.check(&format!("{key}.timeout"), r.timeout));
            problems.check(RECONNECT_MIN.check(&format!("{key}.reconnect_min"), r.reconnect_min));
            problems.check(RECONNECT_MAX.check(&format!("{key}.reconnect_max"), r.reconnect_max));
            if r.reconnect_max < r.reconnect_min {
                problems.push(format!(
                    "{key}.reconnect_max: must not be below reconnect_min"
                ));
            }
            if c.links.iter().any(|l| l.name == r.name)
                || c.remotes[..i].iter().any(|o| o.name == r.name)
            {
                problems.push(format!("{key}.name: another link or remote has this name"));
            }
            if simulated.contains(&r.name.as_str()) {
                problems.push(format!("{key}.name: {SIMULATED_NAME}"));
            }
        }
        let mut link_names = Vec::new();
        for (i, l) in c.links.iter().enumerate() {
            let key = format!("link[{i}] ({:?})", l.name);
            if link_names.contains(&&l.name) {
                problems.push(format!("{key}.name: another link has this name"));
            }
            if simulated.contains(&l.name.as_str()) {
                problems.push(format!("{key}.name: {SIMULATED_NAME}"));
            }
            link_names.push(&l.name);
            let modules = self.modules_of(&l.name);
            if modules.is_empty() {
                problems.push(format!("{key}: no module uses this link"));
                continue;
            }
            match secop_drivers::describe_link(l, &modules) {
                Ok(d) => described.extend(d),
                Err(e) => {
                    all_described = false;
                    problems.push(format!("{key}: {e}"));
                }
            }
        }
        if all_described {
            self.check_descriptions(&described, &mut problems);
        }
        // Listeners that could not both bind.
        let mut listeners = Vec::new();
        if let Some(a) = address(&c.listen.address) {
            listeners.push(("listen.address".to_owned(), "the main node".to_owned(), a));
        }
        for (i, n) in c.extra_nodes.iter().enumerate() {
            if let Some(a) = address(&n.listen) {
                let key = format!("extra_node[{i}] ({:?})", n.equipment_id);
                listeners.push((format!("{key}.listen"), key, a));
            }
        }
        if let Some(a) = c.metrics.address.as_deref().and_then(address) {
            listeners.push(("metrics.address".into(), "the metrics listener".into(), a));
        }
        for (j, (key, _, a)) in listeners.iter().enumerate() {
            if let Some((_, other, _)) = listeners[..j].iter().find(|(_, _, b)| clash(*a, *b)) {
                problems.push(format!("{key}: {a} is taken by {other} already"));
            }
        }
        if problems.0.is_empty() {
            return Ok(described);
        }
        Err(LoadError::Problems(
            problems
                .0
                .into_iter()
                .map(|problem| Problem {
                    blame: self.blame_of(&problem),
                    problem,
                })
                .collect(),
        ))
    }

    /// The rules that concern whole descriptions: the main node's and each extra node's
    /// (as `run` builds them: [`exported_modules`]), and SECoP's names.
    fn check_descriptions(&self, described: &[ModuleDescription], problems: &mut Problems) {
        let c = &self.config;
        let node = |settings: &NodeSettings, equipment_id: &str| NodeDescription {
            equipment_id: equipment_id.to_owned(),
            description: String::new(),
            modules: exported_modules(settings, described.to_vec()),
            properties: Map::new(),
        };
        let main = node(&NodeSettings::default(), &c.node.equipment_id).problems();
        for p in &main {
            problems.push(p.clone());
        }
        for m in described {
            let Some(i) = c.modules.iter().position(|e| e.name == m.name) else {
                continue;
            };
            let entry = &c.modules[i];
            for a in &m.accessibles {
                let Err(e) = rules::accessible_name(m, a) else {
                    continue;
                };
                let list = match a.is_command() {
                    true => ("command", &entry.command),
                    false => ("parameter", &entry.parameter),
                };
                let j = list.1.iter().position(|v| v["name"] == a.name.as_str());
                match j {
                    Some(j) => problems.push(format!(
                        "module[{i}] ({:?}).{}[{j}].name: {e}",
                        m.name, list.0
                    )),
                    None => problems.push(format!("module[{i}] ({:?}): {e}", m.name)),
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
                if c.remotes.is_empty() && !described.iter().any(|x| &x.name == m) {
                    problems.push(format!("{key}.modules: no module is named {m:?}"));
                }
            }
            for h in &n.hide {
                let Some((m, a)) = h.split_once(':') else {
                    problems.push(format!("{key}.hide: {h:?} is not \"module:accessible\""));
                    continue;
                };
                match described.iter().find(|x| x.name == m) {
                    Some(x) if x.accessible(a).is_none() => problems.push(format!(
                        "{key}.hide: {h:?}: module {m} has no accessible {a:?}"
                    )),
                    Some(_) => {}
                    None if c.remotes.is_empty() => {
                        problems.push(format!("{key}.hide: {h:?}: no module is named {m:?}"))
                    }
                    None => {}
                }
            }
            let settings = NodeSettings {
                read_only: n.read_only,
                export: n.modules.clone(),
                hide: n.hide.clone(),
                ..NodeSettings::default()
            };
            for p in node(&settings, &n.equipment_id).problems() {
                if main.contains(&p) {
                    continue;
                }
                match p.contains("needs accessible") && !n.hide.is_empty() {
                    true => problems.push(format!("{key}.hide: {p}")),
                    false => problems.push(format!("{key}: {p}")),
                }
            }
        }
    }

    /// Where a problem comes from: the environment variable that set its key, else the
    /// file.
    fn blame_of(&self, problem: &str) -> Blame {
        for (variable, key) in &self.overrides {
            if let Some(rest) = problem.strip_prefix(key.as_str()) {
                if rest.starts_with([':', '.', ' ']) {
                    return Blame::Variable(variable.clone());
                }
            }
        }
        Blame::Config(self.origin.clone())
    }

    /// The main node's description, without the modules of remote nodes (known only
    /// once they are connected).
    pub fn description(&self) -> NodeDescription {
        let node = &self.config.node;
        NodeDescription {
            equipment_id: node.equipment_id.clone(),
            description: node.description.clone(),
            modules: self.modules.clone(),
            properties: self.node_properties(),
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
        limits::duration(self.config.node.device_timeout)
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

    fn load_text(text: &str) -> Result<Loaded, LoadError> {
        let dir = std::env::temp_dir().join(format!("secop-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, text).expect("a temporary file");
        load(Some(&path), None)
    }

    #[test]
    fn embedded_default_is_valid() {
        let loaded = load(None, None).unwrap();
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
            let e = load_text(&format!("{base}[listen]\n{listen}\n"))
                .unwrap_err()
                .to_string();
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
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(".toml: module[0] (\"T\").driver: unknown driver \"sim_nothing\""),
            "{e}"
        );
        let e = load_text(&format!(
            "{base}[[module]]\nname='T'\ndriver='sim_temperature'\n[module.settings]\nramp='fast'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("module[0] (\"T\").settings.ramp: invalid type: string \"fast\""),
            "{e}"
        );
        let e = load_text(&format!(
            "{base}[[module]]\nname='T'\ndriver='sim_temperature'\n[module.settings]\nrmap=1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `rmap`"), "{e}");
        let e = load_text(&format!(
            "{base}[listen]\naddress='nowhere'\n[[module]]\nname='T'\ndriver='sim_pressure'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen.address"), "{e}");
        let e = load_text("[node]\ndescription='d'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("equipment_id"), "{e}");
        let e = load(Some(Path::new("/nonexistent/x.toml")), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/x.toml: cannot read"), "{e}");
    }

    const BASE: &str = "[node]\nequipment_id='x'\ndescription='d'\n";
    const T: &str = "[[module]]\nname='T'\ndriver='sim_temperature'\n";

    /// The problems of a config (`Ok` → empty), each without the file name.
    fn problems(text: &str) -> String {
        match load_text(text) {
            Ok(_) => String::new(),
            Err(e) => e
                .to_string()
                .lines()
                .map(|l| l.split_once(".toml: ").map_or(l, |(_, p)| p))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn every_duration_and_size_has_a_range() {
        for (section, key, value, expected) in [
            ("node", "device_timeout", "1e19", "node.device_timeout: 1e19 s is outside the valid range 0.001 ..= 86400 s"),
            ("node", "device_timeout", "0", "node.device_timeout: 0 s is outside"),
            ("listen", "write_timeout", "1e300", "listen.write_timeout: 1e300 s is outside"),
            ("listen", "handshake_timeout", "-1", "listen.handshake_timeout: -1 s is outside"),
            ("listen", "idle_timeout", "1e300", "listen.idle_timeout: 1e300 s is outside the valid range 0.001 ..= 86400 s, or 0 (off)"),
            ("listen", "max_line_bytes", "10", "listen.max_line_bytes: 10 bytes is outside the valid range 64 ..= 67108864 bytes"),
            ("listen", "max_connections", "0", "listen.max_connections: 0 connections is outside"),
            ("listen", "max_connections_per_address", "2000000", "listen.max_connections_per_address: 2000000"),
            ("listen", "backpressure_bytes", "10", "listen.backpressure_bytes: 10 bytes"),
            ("listen", "coalesce_bytes", "10", "listen.coalesce_bytes: 10 bytes"),
            ("listen", "max_queue_bytes", "100000000000000", "listen.max_queue_bytes: 100000000000000 bytes"),
            ("listen.websocket", "ping_interval", "1e-12", "listen.websocket.ping_interval: 1e-12 s is outside the valid range 0.1 ..= 3600 s"),
            ("listen.websocket", "ping_timeout", "1e300", "listen.websocket.ping_timeout: 1e300 s is outside"),
            ("listen.websocket", "max_message_bytes", "100", "listen.websocket.max_message_bytes: 100 bytes"),
            ("audit", "keep_files", "5000", "audit.keep_files: 5000 files"),
            ("state", "file", "'/dev/zero'", "state.file: /dev/zero exists and is not a regular file"),
            ("state", "file", "'/tmp'", "state.file: /tmp exists and is not a regular file"),
            ("audit", "file", "'/dev/zero'", "audit.file: /dev/zero exists and is not a regular file"),
            ("history", "window", "0.5", "history.window: 0.5 s is outside the valid range 1 ..= 604800 s"),
            ("history", "window", "1e9", "history.window: 1e9 s is outside"),
            ("history", "resolution", "0.001", "history.resolution: 0.001 s is outside the valid range 0.01 ..= 3600 s"),
            ("history", "resolution", "7200", "history.resolution: 7200 s is outside"),
        ] {
            let text = match section {
                "node" => format!("{BASE}{key} = {value}\n{T}"),
                _ => format!("{BASE}[{section}]\n{key} = {value}\n{T}"),
            };
            let p = problems(&text);
            assert!(p.contains(expected), "{expected:?} in\n{p}");
        }
        let remote = "[[remote]]\nname='up'\naddress='127.0.0.1:9'\n";
        for (key, value, expected) in [
            ("timeout", "1e300", "remote[0] (\"up\").timeout: 1e300 s"),
            (
                "reconnect_min",
                "0",
                "remote[0] (\"up\").reconnect_min: 0 s",
            ),
            (
                "reconnect_max",
                "1e9",
                "remote[0] (\"up\").reconnect_max: 1e9 s",
            ),
        ] {
            let p = problems(&format!("{BASE}{T}{remote}{key} = {value}\n"));
            assert!(p.contains(expected), "{expected:?} in\n{p}");
        }
        for (key, value, expected) in [
            ("time_constant", "1e300", "module[0] (\"T\").settings.time_constant: 1e300 s is outside"),
            ("ramp", "5000", "module[0] (\"T\").settings.ramp: 5000 K/min is outside the valid range 0 ..= 1000 K/min"),
            ("pollinterval", "0.01", "module[0] (\"T\").settings.pollinterval: 0.01 s is outside"),
            ("initial", "1000", "module[0] (\"T\").settings.initial: 1000 K is outside"),
        ] {
            let p = problems(&format!("{BASE}{T}[module.settings]\n{key} = {value}\n"));
            assert!(p.contains(expected), "{expected:?} in\n{p}");
        }
        // The bounds themselves are valid.
        let p = problems(&format!(
            "{BASE}device_timeout = 86400\n[listen]\nwrite_timeout = 0.001\nidle_timeout = 0\n\
             [listen.websocket]\nping_interval = 3600\nping_timeout = 86400\n{T}"
        ));
        assert_eq!(p, "");
    }

    #[test]
    fn history_points_per_parameter_are_capped() {
        let h = HistoryConfig::default();
        assert!(h.enabled && h.window == 3600.0 && h.resolution == 1.0);
        assert!(history_problems(&h).is_empty());
        let p = problems(&format!(
            "{BASE}[history]\nwindow = 604800\nresolution = 0.01\n{T}"
        ));
        assert!(
            p.contains("history.resolution: window 604800 s / resolution 0.01 s makes 60480000 points per parameter, more than the maximum of 100000 (history.max_points_per_parameter); use a resolution of at least 6.048 s"),
            "{p}"
        );
        // The cap itself is fine, and so is a disabled history with valid ranges.
        assert_eq!(
            problems(&format!(
                "{BASE}[history]\nwindow = 1000\nresolution = 0.01\n{T}"
            )),
            ""
        );
        let loaded = load_text(&format!("{BASE}[history]\nenabled = false\n{T}")).unwrap();
        assert_eq!(loaded.config.history.settings(), None);
        let p = problems(&format!(
            "{BASE}[history]\nenabled = false\nwindow = 0\n{T}"
        ));
        assert!(p.contains("history.window: 0 s is outside"), "{p}");
        let p = problems(&format!("{BASE}[history]\nsize = 5\n{T}"));
        assert!(p.contains("unknown field `size`"), "{p}");
    }

    #[test]
    fn values_the_config_crate_would_mangle_are_named() {
        let p = problems(&format!(
            "{BASE}{T}[module.settings]\ntime_constant = nan\nnoise = -inf\n"
        ));
        assert!(
            p.contains("module[0] (\"T\").settings.time_constant: nan is not a finite number"),
            "{p}"
        );
        assert!(
            p.contains("module[0] (\"T\").settings.noise: -inf is not a finite number"),
            "{p}"
        );
        let p = problems(&format!(
            "{BASE}[listen]\nmax_connections = 99999999999999999999\n{T}"
        ));
        assert!(
            p.contains(
                "listen.max_connections: 99999999999999999999 does not fit in a 64-bit integer"
            ),
            "{p}"
        );
        let link = "[[link]]\nname='l'\nprotocol='modbus'\ntcp='h:1'\n";
        let p = problems(&format!(
            "{BASE}{T}[[module]]\nname='v'\nlink='l'\nclass='Readable'\nunit_id=300\n{link}"
        ));
        assert!(
            p.contains(
                "module[1] (\"v\").unit_id: 300 is out of range for an unsigned 8 bit integer"
            ),
            "{p}"
        );
        let p = problems(&format!("{BASE}{T}{link}data_bits = -1\n"));
        assert!(
            p.contains("link[0] (\"l\").data_bits: -1 is out of range"),
            "{p}"
        );
        // a link or remote named like a simulated module
        let link = "[[link]]\nname='T'\nprotocol='modbus'\ntcp='h:1'\n";
        let remote = "[[remote]]\nname='T'\naddress='127.0.0.1:9'\n";
        let p = problems(&format!(
            "{BASE}{T}[[module]]\nname='v'\nlink='T'\nclass='Readable'\n{link}{remote}"
        ));
        assert!(
            p.contains("link[0] (\"T\").name: a simulated module has this name"),
            "{p}"
        );
        assert!(
            p.contains("remote[0] (\"T\").name: a simulated module has this name"),
            "{p}"
        );
        assert_eq!(dotted("module[0]unit_id"), "module[0].unit_id");
        assert_eq!(dotted("a[0][1].b"), "a[0][1].b");
        assert_eq!(
            env_key("SECOP_GATEWAY__LISTEN__WEBSOCKET__PING_INTERVAL"),
            "listen.websocket.ping_interval"
        );
    }

    #[test]
    fn nodes_are_checked_as_run_builds_them() {
        let view = |extra: &str| {
            format!("{BASE}{T}[[extra_node]]\nequipment_id='v'\ndescription='v'\nlisten='127.0.0.1:0'\n{extra}\n")
        };
        let p = problems(&view("hide=['T:target']"));
        assert!(p.contains("extra_node[0] (\"v\").hide: module T: interface class Drivable needs accessible \"target\""), "{p}");
        let p = problems(&view("hide=['T:nothing', 'T']"));
        assert!(
            p.contains(
                "extra_node[0] (\"v\").hide: \"T:nothing\": module T has no accessible \"nothing\""
            ),
            "{p}"
        );
        assert!(
            p.contains("extra_node[0] (\"v\").hide: \"T\" is not \"module:accessible\""),
            "{p}"
        );
        // Hiding what no interface class needs, in a read-only view, is fine.
        assert_eq!(
            problems(&view("hide=['T:ramp', 'T:_sensor']\nread_only=true")),
            ""
        );
        let p = problems(&format!("{BASE}[listen]\naddress='127.0.0.1:17000'\n{T}[[extra_node]]\nequipment_id='v'\ndescription='v'\nlisten='0.0.0.0:17000'\n"));
        assert!(
            p.contains(
                "extra_node[0] (\"v\").listen: 0.0.0.0:17000 is taken by the main node already"
            ),
            "{p}"
        );
        let p = problems(&format!("{BASE}[metrics]\naddress='127.0.0.1:10767'\n{T}"));
        assert!(
            p.contains("metrics.address: 127.0.0.1:10767 is taken by the main node already"),
            "{p}"
        );
        // --listen moves the main node, as it does for run.
        let path =
            std::env::temp_dir().join(format!("secop-cfg-listen-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!("{BASE}[metrics]\naddress='127.0.0.1:10767'\n{T}"),
        )
        .unwrap();
        let loaded = load(Some(&path), Some("127.0.0.1:0".parse().unwrap())).unwrap();
        assert_eq!(loaded.config.listen.address, "127.0.0.1:0");
    }

    #[test]
    fn descriptions_follow_secop() {
        let p = problems(&format!("{BASE}identification = 'ISSE,SECoP'\n{T}"));
        assert!(
            p.contains("node.identification: \"ISSE,SECoP\" must have four comma-separated fields"),
            "{p}"
        );
        let p = problems(&format!(
            "{BASE}{T}[module.properties]\nvisibilty='www'\ngroup=5\n"
        ));
        assert!(
            p.contains("module[0] (\"T\").properties.visibilty: is not a SECoP module property"),
            "{p}"
        );
        assert!(
            p.contains("module[0] (\"T\").properties.group: 5 must be a string"),
            "{p}"
        );
        let link = "[[link]]\nname='l'\nprotocol='ascii'\ntcp='h:1'\n";
        let p = problems(&format!(
            "{BASE}[[module]]\nname='v'\nlink='l'\nclass='Readable'\n\
             [[module.parameter]]\nname='value'\ndatainfo={{type='double'}}\nquery='V?'\n\
             [[module.parameter]]\nname='heater'\ndatainfo={{type='double'}}\nquery='H?'\n\
             [[module.command]]\nname='reset'\nsend='RST'\n\
             [[module.command]]\nname='zero'\nsend='Z'\n{link}"
        ));
        assert!(p.contains("module[0] (\"v\").parameter[1].name: accessible \"heater\" is not predefined by SECoP; custom accessibles start with \"_\" (e.g. \"_heater\")"), "{p}");
        assert!(
            p.contains("module[0] (\"v\").command[1].name: accessible \"zero\""),
            "{p}"
        );
        assert!(!p.contains("reset"), "{p}");
        let loaded = load(None, None).unwrap();
        let d = loaded.description();
        let names = |m: &str| -> Vec<String> {
            d.module(m)
                .unwrap()
                .accessibles
                .iter()
                .map(|a| a.name.clone())
                .collect()
        };
        assert!(names("T").contains(&"_heater_power".to_owned()));
        assert!(names("ps").contains(&"_current".to_owned()));
    }
}
