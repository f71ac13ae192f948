//! Prometheus metrics of the gateway, in one registry.
//!
//! Names follow `secop_gateway_<name>_<unit>`; label values are bounded (actions and
//! error classes map to fixed sets; nodes, modules and devices come from config).
//! Never a client address or a parameter value as a label.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

const NS: &str = "secop_gateway";

/// Every metric of the process.
pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub start_time_seconds: Gauge,
    pub connections_open: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub messages_received: IntCounterVec,
    pub messages_sent: IntCounterVec,
    pub error_replies: IntCounterVec,
    pub updates_coalesced: IntCounter,
    pub events_dropped: IntCounter,
    pub slow_clients_disconnected: IntCounter,
    pub cross_protocol_closed: IntCounter,
    pub input_budget_closed: IntCounter,
    pub connections_refused: IntCounterVec,
    pub http_refused: IntCounterVec,
    pub unfinished_lines: IntCounter,
    pub discovery_dropped: IntCounter,
    pub outbox_queued_bytes: Histogram,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub updates_emitted: IntCounterVec,
    pub module_status: IntGaugeVec,
    pub device_transactions: IntCounterVec,
    pub device_transaction_duration: HistogramVec,
    pub device_cache_hits: IntCounterVec,
    pub device_reconnects: IntCounterVec,
    pub device_up: IntGaugeVec,
    pub device_last_success: GaugeVec,
    pub poll_cycle_duration: HistogramVec,
    pub poll_overruns: IntCounterVec,
    pub audit_records: IntCounterVec,
    pub audit_dropped: IntCounter,
    pub audit_write_errors: IntCounter,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    pub history_points: IntGaugeVec,
    pub history_bytes: IntGaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

fn hopts(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NS)
        .buckets(buckets)
}

/// Register a collector; definitions are static, so a failure is a bug in this file.
fn reg<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!("metric registration failed: {e}");
    }
    c
}

/// Unwrap a static metric definition; they are fixed in this file and exercised by
/// the unit test, so a failure is a programming error caught before release.
fn make<T>(definition: Result<T, prometheus::Error>) -> T {
    match definition {
        Ok(t) => t,
        Err(e) => panic!("invalid static metric definition: {e}"),
    }
}

/// Latency buckets from 10 µs to about 10 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(1e-5, 4.0, 11).unwrap_or_default()
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let m = Metrics {
            build_info: reg(&r, make(IntGaugeVec::new(opts("build_info", "Version and git hash of the running gateway (always 1)"), &["version", "git_hash"]))),
            start_time_seconds: reg(&r, make(Gauge::with_opts(opts("start_time_seconds", "UNIX time the gateway started")))),
            connections_open: reg(&r, make(IntGaugeVec::new(opts("connections_open", "Open client connections"), &["transport"]))),
            connections_total: reg(&r, make(IntCounterVec::new(opts("connections_total", "Client connections accepted"), &["transport"]))),
            messages_received: reg(&r, make(IntCounterVec::new(opts("messages_received_total", "SECoP messages received from clients, by action"), &["action"]))),
            messages_sent: reg(&r, make(IntCounterVec::new(opts("messages_sent_total", "SECoP messages sent to clients, by action"), &["action"]))),
            error_replies: reg(&r, make(IntCounterVec::new(opts("error_replies_total", "Error replies sent to clients, by SECoP error class"), &["class"]))),
            updates_coalesced: reg(&r, make(IntCounter::with_opts(opts("updates_coalesced_total", "Updates replaced by a newer one while a slow client lagged")))),
            events_dropped: reg(&r, make(IntCounter::with_opts(opts("events_dropped_total", "Log events dropped for slow clients")))),
            slow_clients_disconnected: reg(&r, make(IntCounter::with_opts(opts("slow_clients_disconnected_total", "Clients disconnected because they did not read")))),
            cross_protocol_closed: reg(&r, make(IntCounter::with_opts(opts("cross_protocol_closed_total", "SECoP connections closed because they sent HTTP header lines")))),
            input_budget_closed: reg(&r, make(IntCounter::with_opts(opts("input_budget_closed_total", "Connections closed because unfinished input of all connections exceeded listen.max_unfinished_input_bytes (the largest holders are closed)")))),
            connections_refused: reg(&r, make(IntCounterVec::new(opts("connections_refused_total", "Connections closed before their first request, by reason (access_denied, connection_limit, address_limit, first_request_timeout)"), &["reason"]))),
            http_refused: reg(&r, make(IntCounterVec::new(opts("http_requests_refused_total", "HTTP requests refused before any data, by reason (host, origin, method, handshake, access_denied)"), &["reason"]))),
            unfinished_lines: reg(&r, make(IntCounter::with_opts(opts("unfinished_lines_total", "Last lines without LF at end of input (client or remote node), discarded unexecuted")))),
            discovery_dropped: reg(&r, make(IntCounter::with_opts(opts("discovery_dropped_total", "UDP discovery requests not answered because of the reply rate limit")))),
            outbox_queued_bytes: reg(&r, make(Histogram::with_opts(hopts("outbox_queued_bytes", "Bytes queued for a client when its writer drains the queue", exponential_buckets(64.0, 4.0, 10).unwrap_or_default())))),
            requests: reg(&r, make(IntCounterVec::new(opts("requests_total", "Requests handled by a node, by action"), &["node", "action"]))),
            request_duration: reg(&r, make(HistogramVec::new(hopts("request_duration_seconds", "Time from a request reaching the node to its reply", latency_buckets()), &["node", "action"]))),
            updates_emitted: reg(&r, make(IntCounterVec::new(opts("updates_emitted_total", "Updates a node sent out (counted once, whatever the number of clients)"), &["node"]))),
            module_status: reg(&r, make(IntGaugeVec::new(opts("module_status", "Current SECoP status code of a module (100 idle, 200 warn, 300 busy, 400 error)"), &["node", "module"]))),
            device_transactions: reg(&r, make(IntCounterVec::new(opts("device_transactions_total", "Transactions with a device, by result (ok, timeout, error, garbled: a reply that made no sense); ASCII and Modbus links count each exchange on the wire, simulated devices each client call and poll cycle"), &["device", "result"]))),
            device_transaction_duration: reg(&r, make(HistogramVec::new(hopts("device_transaction_duration_seconds", "Duration of device transactions", latency_buckets()), &["device"]))),
            device_cache_hits: reg(&r, make(IntCounterVec::new(opts("device_cache_hits_total", "Reads of a device answered from its max_age cache, without a transaction on the wire"), &["device"]))),
            device_reconnects: reg(&r, make(IntCounterVec::new(opts("device_reconnects_total", "Reconnects of a device link"), &["device"]))),
            device_up: reg(&r, make(IntGaugeVec::new(opts("device_up", "Whether a device link is up (1) or down (0)"), &["device"]))),
            device_last_success: reg(&r, make(GaugeVec::new(opts("device_last_success_timestamp_seconds", "UNIX time of the last successful transaction with a device"), &["device"]))),
            poll_cycle_duration: reg(&r, make(HistogramVec::new(hopts("poll_cycle_duration_seconds", "Duration of a device's poll cycle", latency_buckets()), &["device"]))),
            poll_overruns: reg(&r, make(IntCounterVec::new(opts("poll_overruns_total", "Poll cycles that took longer than the poll interval"), &["device"]))),
            audit_records: reg(&r, make(IntCounterVec::new(opts("audit_records_total", "Audit records of change and do requests written, by outcome (ok or the SECoP error class)"), &["node", "outcome"]))),
            audit_dropped: reg(&r, make(IntCounter::with_opts(opts("audit_dropped_total", "Audit records dropped because the audit queue was full")))),
            audit_write_errors: reg(&r, make(IntCounter::with_opts(opts("audit_write_errors_total", "Failed writes, flushes, rotations or reopenings of the audit file")))),
            config_reloads: reg(&r, make(IntCounterVec::new(opts("config_reloads_total", "Configuration reloads (SIGHUP), by result (ok, or refused: the running configuration stayed)"), &["result"]))),
            config_last_reload_success: reg(&r, make(Gauge::with_opts(opts("config_last_reload_success_timestamp_seconds", "UNIX time of the last successful configuration reload (0: none yet)")))),
            history_points: reg(&r, make(IntGaugeVec::new(opts("history_points", "Points a node holds in its value history ([history], GET /history)"), &["node"]))),
            history_bytes: reg(&r, make(IntGaugeVec::new(opts("history_bytes", "Bytes a node has reserved for its value history (16 per point of capacity)"), &["node"]))),
            registry: r,
        };
        for result in ["ok", "refused"] {
            m.config_reloads.with_label_values(&[result]).inc_by(0);
        }
        m.start_time_seconds.set(crate::device::now());
        m
    }
}

impl Metrics {
    /// Forget a device that a reload removed: its series go, so that the `device_up 0`
    /// of a link that no longer exists neither stays on a dashboard nor keeps an alert
    /// firing. Called after the device's actor has stopped (it holds its handles; a
    /// handle of a removed series updates nothing).
    pub fn forget_device(&self, device: &str) {
        self.forget_devices(&[device]);
    }

    /// [`Self::forget_device`] for many at once: one pass over each family, whatever
    /// their number (a reload may remove hundreds).
    pub fn forget_devices(&self, devices: &[&str]) {
        let d = ("device", devices);
        remove_where(&self.device_transactions, d);
        remove_where(&self.device_transaction_duration, d);
        remove_where(&self.device_cache_hits, d);
        remove_where(&self.device_reconnects, d);
        remove_where(&self.device_up, d);
        remove_where(&self.device_last_success, d);
        remove_where(&self.poll_cycle_duration, d);
        remove_where(&self.poll_overruns, d);
    }

    /// Forget a node that a reload removed (its requests, updates, module statuses,
    /// audit counts and history sizes).
    pub fn forget_node(&self, node: &str) {
        let n = ("node", &[node][..]);
        remove_where(&self.requests, n);
        remove_where(&self.request_duration, n);
        remove_where(&self.updates_emitted, n);
        remove_where(&self.module_status, n);
        remove_where(&self.audit_records, n);
        remove_where(&self.history_points, n);
        remove_where(&self.history_bytes, n);
    }

    /// Whether each of `devices` is up, without creating a series for one that has
    /// none (a reload may just have removed it): `None` for those.
    pub fn devices_up(&self, devices: &[String]) -> Vec<Option<bool>> {
        use prometheus::core::Collector;
        let mut up = std::collections::HashMap::new();
        for family in self.device_up.collect() {
            for metric in family.get_metric() {
                if let Some(label) = metric.get_label().iter().find(|l| l.name() == "device") {
                    up.insert(label.value().to_owned(), metric.get_gauge().value() == 1.0);
                }
            }
        }
        devices.iter().map(|d| up.get(d).copied()).collect()
    }

    /// Forget the status of a module that a reload took out of a node.
    pub fn forget_module(&self, node: &str, module: &str) {
        let _ = self.module_status.remove_label_values(&[node, module]);
    }
}

/// Remove every series of `vec` whose label `name` has one of `values`, whatever its
/// other labels (the crate removes only by a complete set of label values).
fn remove_where<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    (name, values): (&str, &[&str]),
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|p| (p.name(), p.value()))
                .collect();
            if labels.get(name).is_some_and(|v| values.contains(v)) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The text exposition format.
pub fn render() -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&metrics().registry.gather(), &mut out) {
        tracing::error!("metrics encoding failed: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Labels of received actions (a bounded set), in the order of
/// [`received_action_index`].
pub const RECEIVED_ACTIONS: [&str; 11] = [
    "idn",
    "describe",
    "activate",
    "deactivate",
    "read",
    "change",
    "do",
    "ping",
    "check",
    "logging",
    "other",
];

/// Index of an action's label in [`RECEIVED_ACTIONS`]: metric handles are resolved
/// once per label and indexed by it, since counting is on every request's path.
pub fn received_action_index(action: &str) -> usize {
    match action {
        "*IDN?" => 0,
        "describe" => 1,
        "activate" => 2,
        "deactivate" => 3,
        "read" => 4,
        "change" => 5,
        "do" => 6,
        "ping" => 7,
        "check" => 8,
        "logging" => 9,
        _ => 10,
    }
}

/// Count one message received from a client (`None`: not a valid message).
pub fn count_received(action: Option<&str>) {
    static RECEIVED: LazyLock<Vec<IntCounter>> = LazyLock::new(|| {
        RECEIVED_ACTIONS
            .iter()
            .chain(["invalid"].iter())
            .map(|l| metrics().messages_received.with_label_values(&[l]))
            .collect()
    });
    let index = action.map_or(RECEIVED_ACTIONS.len(), received_action_index);
    RECEIVED[index].inc();
}

/// Count one line sent to a client: its action and, for error replies, the class.
pub fn count_sent(line: &[u8]) {
    let action_end = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\n')
        .unwrap_or(line.len());
    let action = &line[..action_end];
    let label = match action {
        b"describing" => 0,
        b"active" => 1,
        b"inactive" => 2,
        b"reply" => 3,
        b"changed" => 4,
        b"done" => 5,
        b"pong" => 6,
        b"checked" => 7,
        b"logging" => 8,
        b"update" => 9,
        b"error_update" => 10,
        b"log" => 11,
        a if a.starts_with(b"error_") => {
            metrics()
                .error_replies
                .with_label_values(&[error_class(line)])
                .inc();
            12
        }
        a if a.starts_with(b"ISSE") => 13,
        _ => 14,
    };
    SENT[label].inc();
}

/// The labels of sent messages, in the order `count_sent` indexes them.
const SENT_LABELS: [&str; 15] = [
    "describing",
    "active",
    "inactive",
    "reply",
    "changed",
    "done",
    "pong",
    "checked",
    "logging",
    "update",
    "error_update",
    "log",
    "error",
    "idn",
    "other",
];

/// The counter of each sent-message label, looked up once: counting is on the path of
/// every message sent.
static SENT: LazyLock<Vec<IntCounter>> = LazyLock::new(|| {
    SENT_LABELS
        .iter()
        .map(|l| metrics().messages_sent.with_label_values(&[l]))
        .collect()
});

/// The class of an error reply line, from a bounded set.
fn error_class(line: &[u8]) -> &'static str {
    let text = String::from_utf8_lossy(line);
    let class = text
        .split_once("[\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(class, _)| class);
    class
        .and_then(secop_proto::ErrorClass::parse)
        .map(secop_proto::ErrorClass::as_str)
        .unwrap_or("other")
}

/// Counts an open connection for as long as it lives.
pub struct ConnectionMetric(&'static str);

impl ConnectionMetric {
    pub fn open(transport: &'static str) -> Self {
        let m = metrics();
        m.connections_total.with_label_values(&[transport]).inc();
        m.connections_open.with_label_values(&[transport]).inc();
        ConnectionMetric(transport)
    }
}

impl Drop for ConnectionMetric {
    fn drop(&mut self) {
        metrics()
            .connections_open
            .with_label_values(&[self.0])
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_register_and_render() {
        count_sent(b"error_read X:y [\"NoSuchModule\",\"no\",{}]\n");
        count_sent(b"ISSE,SECoP,,v2.0\n");
        count_sent(b"update T:value [1,{}]\n");
        let text = render();
        assert!(
            text.contains("secop_gateway_error_replies_total{class=\"NoSuchModule\"} "),
            "{text}"
        );
        assert!(text.contains("secop_gateway_messages_sent_total{action=\"idn\"} "));
        assert!(
            text.contains("secop_gateway_audit_dropped_total "),
            "{text}"
        );
        assert!(
            text.contains("secop_gateway_audit_write_errors_total "),
            "{text}"
        );
        assert!(text.contains("secop_gateway_unfinished_lines_total "));
        assert!(text.contains("secop_gateway_discovery_dropped_total "));
        assert_eq!(error_class(b"error_x  [\"Bogus\",\"\",{}]"), "other");
        assert_eq!(RECEIVED_ACTIONS[received_action_index("*IDN?")], "idn");
        assert_eq!(RECEIVED_ACTIONS[received_action_index("foo")], "other");
    }

    #[test]
    fn forgetting_removes_only_the_named_device_node_or_module() {
        let m = metrics();
        for device in ["forget_gone", "forget_kept"] {
            m.device_up.with_label_values(&[device]).set(0);
            m.device_transactions
                .with_label_values(&[device, "timeout"])
                .inc();
            m.poll_cycle_duration
                .with_label_values(&[device])
                .observe(0.1);
        }
        for (node, module) in [("forget_n1", "a"), ("forget_n1", "b"), ("forget_n2", "a")] {
            m.module_status.with_label_values(&[node, module]).set(400);
            m.requests.with_label_values(&[node, "read"]).inc();
        }
        m.forget_device("forget_gone");
        m.forget_module("forget_n1", "a");
        let text = render();
        assert!(!text.contains("\"forget_gone\""), "{text}");
        assert!(text.contains("secop_gateway_device_up{device=\"forget_kept\"} 0"));
        assert!(text.contains("device=\"forget_kept\",result=\"timeout\""));
        assert!(!text.contains("module=\"a\",node=\"forget_n1\""), "{text}");
        assert!(text.contains("module=\"b\",node=\"forget_n1\""));
        m.forget_node("forget_n1");
        let text = render();
        assert!(!text.contains("\"forget_n1\""), "{text}");
        assert!(text.contains("module=\"a\",node=\"forget_n2\""));
        assert!(text.contains("action=\"read\",node=\"forget_n2\""));
    }

    #[test]
    fn asking_whether_devices_are_up_creates_no_series() {
        let m = metrics();
        m.device_up.with_label_values(&["up_asked_1"]).set(1);
        m.device_up.with_label_values(&["up_asked_0"]).set(0);
        let names = ["up_asked_1", "up_asked_0", "up_asked_none"].map(String::from);
        assert_eq!(m.devices_up(&names), [Some(true), Some(false), None]);
        assert!(!render().contains("up_asked_none"));
    }
}
