//! The audit trail: one structured record per `change` and `do` request.
//!
//! Why: the gateway drives real hardware — heaters, magnets, motors, valves — and some
//! of it can hurt people or destroy samples. After an incident an operator must be able
//! to reconstruct who (client address, transport, session) asked which node to change
//! what, with which value, and what the node answered, whether the request was
//! accepted or refused. Ordinary logs are filtered and rotated by whoever runs the
//! process, so the audit trail has its own tracing target ([`TARGET`]) and, when
//! configured, its own JSON-lines file with size-based rotation.
//!
//! Off the hot path: the node actor only calls [`AuditLog::record`], which moves the
//! record into a bounded queue with `try_send` and returns. Formatting, logging and
//! file I/O happen on a dedicated OS thread, so a slow disk never delays a reply.
//!
//! Bounded: when the queue is full the record is dropped and counted
//! (`secop_gateway_audit_dropped_total`, and a warning from the writer thread) rather
//! than stalling the node: holding up the control path of the instruments would be
//! worse than a gap in the trail, and the gap is visible. Write errors are counted
//! (`secop_gateway_audit_write_errors_total`) and logged once per episode; the writer
//! keeps logging records through tracing and reopens the file on the next record.
//!
//! File format, one JSON object per line, ASCII only (non-ASCII is escaped):
//!
//! ```text
//! {"time":"2026-12-03T09:30:00.123Z","node":"cryo","client":"127.0.0.1:5555","transport":"tcp","session":7,"action":"change","specifier":"T:target","request":300.0,"outcome":"ok","reply":300.0}
//! {"time":"2026-12-03T09:30:01.456Z","node":"cryo","client":null,"transport":"websocket","session":8,"action":"change","specifier":"T:target","request":900.0,"outcome":"RangeError","error":"900.0 is above 500.0"}
//! ```
//!
//! `client` is `null` when unknown; `request` is left out when the request carried no
//! value (a `do` without argument), so that it stays distinct from an explicit `null`.
//! Writes are buffered and flushed whenever the queue runs empty, so a burst costs few
//! syscalls and nothing stays unflushed while the gateway is idle.

use crate::metrics::metrics;
use secop_proto::json::{to_json, write_json};
use secop_proto::{ErrorClass, SecopError};
use serde_json::Value;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The tracing target of audit records (and only of them), so that they can be routed
/// or filtered on their own.
pub const TARGET: &str = "secop_gateway::audit";

/// How the client reached the node (the session's transport).
pub use crate::node::SessionTransport as Transport;

/// What the node answered.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditOutcome {
    /// Accepted; the value of the reply (`changed` / `done`).
    Ok(Value),
    /// Turned away before it reached the node (an HTTP request that the request
    /// policy refused); `reason` is a fixed word.
    Refused { reason: &'static str, text: String },
    /// Refused or failed, with the SECoP error class and text of the error reply.
    Error { class: String, text: String },
}

impl AuditOutcome {
    /// `"ok"`, the SECoP error class, or `"other"` for a class that is not one of the
    /// 21 (a `Class:SubClass` counts as `Class`): a bounded set, fit for a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AuditOutcome::Ok(_) => "ok",
            AuditOutcome::Refused { .. } => "refused",
            AuditOutcome::Error { class, .. } => {
                ErrorClass::parse(class).map_or("other", ErrorClass::as_str)
            }
        }
    }
}

impl From<&SecopError> for AuditOutcome {
    fn from(e: &SecopError) -> Self {
        AuditOutcome::Error {
            class: e.class.as_str().to_owned(),
            text: e.text.clone(),
        }
    }
}

/// One `change` or `do` request and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// When the request was handled.
    pub time: SystemTime,
    /// The node's equipment id.
    pub node: Arc<str>,
    /// The client's address, when known.
    pub client: Option<SocketAddr>,
    pub transport: Transport,
    pub session: u64,
    /// `"change"` or `"do"`.
    pub action: Arc<str>,
    /// `module:accessible`, e.g. `"T:target"`.
    pub specifier: String,
    /// The value or argument as received; `None` when the request carried none.
    pub request: Option<Value>,
    pub outcome: AuditOutcome,
}

/// Where and how much to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The JSON-lines file; `None`: records go to the log only.
    pub file: Option<PathBuf>,
    /// Rotate before a line would make the file exceed this size.
    pub max_file_bytes: u64,
    /// Rotated files kept: `file.1` (newest) .. `file.N`; 0 keeps none.
    pub keep_files: usize,
    /// Records that may wait between the node and the writer thread (at least 1).
    pub queue_capacity: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            file: None,
            max_file_bytes: 16 * 1024 * 1024,
            keep_files: 5,
            queue_capacity: 4096,
        }
    }
}

/// Why the audit log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the audit writer thread: {0}")]
    Spawn(io::Error),
}

/// What travels through the queue. Records travel by value, not boxed: nearly every
/// message is one, the slots are allocated once with the queue, and boxing would cost
/// the node an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(AuditRecord),
    /// Flush, then answer: everything queued before has been handled.
    Sync(mpsc::Sender<()>),
    /// Tests: acknowledge, then block until the second channel yields or closes.
    #[cfg(test)]
    Pause(mpsc::Sender<()>, Receiver<()>),
}

/// Counters shared by the handles and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
}

/// Handle to the audit writer; cheap to clone. The writer thread ends once every
/// handle is gone and the queue is drained; call [`AuditLog::sync`] before the
/// process exits so that nothing queued is lost.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

impl AuditLog {
    /// Open the file (if any, for appending) and start the writer thread.
    pub fn start(settings: AuditSettings) -> Result<AuditLog, AuditError> {
        let sink = match settings.file {
            Some(path) => {
                let (file, size) = open(&path).map_err(|source| AuditError::Open {
                    path: path.clone(),
                    source,
                })?;
                Some(Sink {
                    path,
                    max_bytes: settings.max_file_bytes,
                    keep: settings.keep_files,
                    out: Some(BufWriter::with_capacity(64 * 1024, file)),
                    size,
                })
            }
            None => None,
        };
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::sync_channel(settings.queue_capacity.max(1));
        let writer = Writer {
            sink,
            shared: shared.clone(),
            failing: false,
            not_written: 0,
            reported_drops: 0,
            line: Vec::with_capacity(512),
        };
        std::thread::Builder::new()
            .name("secop-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(AuditError::Spawn)?;
        Ok(AuditLog { tx, shared })
    }

    /// Queue a record. Never blocks: if the queue is full the record is dropped and
    /// counted.
    pub fn record(&self, record: AuditRecord) {
        if self.tx.try_send(Msg::Record(record)).is_err() {
            // Full, or (impossible while a handle lives) the writer is gone.
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            metrics().audit_dropped.inc();
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records the writer has finished: logged, and appended to the file when one is
    /// configured.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Failed file operations (write, flush, rotation, reopening).
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    /// Wait until everything queued before this call is handled and the file flushed;
    /// `false` if that took longer than `timeout`. Blocks the caller: for shutdown and
    /// tests, never for the node's request path.
    pub fn sync(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut msg = Msg::Sync(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// Open `path` for appending; its current size.
fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// `path` with `.n` appended to its file name.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Ignore "not found": a rotated file that does not exist yet.
fn missing_ok(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Drop a buffered writer without flushing it again (after an error, or once flushed).
fn discard(out: BufWriter<File>) {
    let _ = out.into_parts();
}

/// The audit file.
struct Sink {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    /// `None` after an error: reopened on the next line.
    out: Option<BufWriter<File>>,
    size: u64,
}

impl Sink {
    /// Append one line (with its newline), rotating first if it would not fit. On an
    /// error the file is closed and the buffered data is lost.
    fn append(&mut self, line: &[u8]) -> Result<(), (&'static str, io::Error)> {
        let mut out = match self.out.take() {
            Some(out) => out,
            None => {
                let (file, size) = open(&self.path).map_err(|e| ("reopening", e))?;
                self.size = size;
                BufWriter::with_capacity(64 * 1024, file)
            }
        };
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            let flushed = out.flush();
            discard(out);
            flushed.map_err(|e| ("writing", e))?;
            self.rotate().map_err(|e| ("rotating", e))?;
            let (file, size) = open(&self.path).map_err(|e| ("opening", e))?;
            self.size = size;
            out = BufWriter::with_capacity(64 * 1024, file);
        }
        if let Err(e) = out.write_all(line) {
            discard(out);
            return Err(("writing", e));
        }
        self.size += len;
        self.out = Some(out);
        Ok(())
    }

    /// `file.(N-1)` → `file.N` … `file` → `file.1`; the oldest is replaced.
    fn rotate(&self) -> io::Result<()> {
        if self.keep == 0 {
            return missing_ok(std::fs::remove_file(&self.path));
        }
        for n in (1..self.keep).rev() {
            missing_ok(std::fs::rename(
                numbered(&self.path, n),
                numbered(&self.path, n + 1),
            ))?;
        }
        missing_ok(std::fs::rename(&self.path, numbered(&self.path, 1)))
    }

    /// Flush; `Ok(false)` when no file is open.
    fn flush(&mut self) -> io::Result<bool> {
        let Some(out) = self.out.as_mut() else {
            return Ok(false);
        };
        if let Err(e) = out.flush() {
            if let Some(out) = self.out.take() {
                discard(out);
            }
            return Err(e);
        }
        Ok(true)
    }
}

/// The writer thread's state.
struct Writer {
    sink: Option<Sink>,
    shared: Arc<Shared>,
    /// In a write-error episode: logged once at its start and once at its end.
    failing: bool,
    /// Records not written to the file during the current episode.
    not_written: u64,
    /// Drops already warned about.
    reported_drops: u64,
    line: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            self.handle(msg);
            loop {
                match rx.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.idle();
                        return;
                    }
                }
            }
            self.idle();
        }
        self.idle();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(record) => self.write(&record),
            Msg::Sync(ack) => {
                self.idle();
                let _ = ack.send(());
            }
            #[cfg(test)]
            Msg::Pause(ack, resume) => {
                let _ = ack.send(());
                let _ = resume.recv();
            }
        }
    }

    fn write(&mut self, record: &AuditRecord) {
        let request = record.request.as_ref().map(to_json);
        let reply = match &record.outcome {
            AuditOutcome::Ok(value) => Some(to_json(value)),
            AuditOutcome::Error { .. } | AuditOutcome::Refused { .. } => None,
        };
        emit(record, request.as_deref(), reply.as_deref());
        if let Some(sink) = self.sink.as_mut() {
            self.line.clear();
            write_line(&mut self.line, record, request.as_deref(), reply.as_deref());
            if let Err((what, e)) = sink.append(&self.line) {
                self.not_written += 1;
                self.failed(what, e);
                return;
            }
        }
        self.shared.written.fetch_add(1, Ordering::Relaxed);
        metrics()
            .audit_records
            .with_label_values(&[&*record.node, record.outcome.label()])
            .inc();
    }

    /// The queue ran empty: flush, and tell about drops and recovery.
    fn idle(&mut self) {
        if let Some(sink) = self.sink.as_mut() {
            match sink.flush() {
                Ok(true) if self.failing => {
                    self.failing = false;
                    tracing::warn!(
                        file = %sink.path.display(),
                        not_written = self.not_written,
                        "the audit file is writable again; records in between are only in the log"
                    );
                    self.not_written = 0;
                }
                Ok(_) => {}
                Err(e) => self.failed("writing", e),
            }
        }
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_drops {
            tracing::warn!(
                dropped = dropped - self.reported_drops,
                "audit records dropped: the audit queue was full"
            );
            self.reported_drops = dropped;
        }
    }

    fn failed(&mut self, what: &str, e: io::Error) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        metrics().audit_write_errors.inc();
        if !self.failing {
            self.failing = true;
            let file = self.sink.as_ref().map(|s| s.path.display().to_string());
            tracing::error!(
                file = file.as_deref().unwrap_or("-"),
                "{what} the audit file failed: {e}; records are only logged until it works again"
            );
        }
    }
}

/// The tracing event of one record, under [`TARGET`].
fn emit(record: &AuditRecord, request: Option<&str>, reply: Option<&str>) {
    let client = record.client.map(tracing::field::display);
    match &record.outcome {
        AuditOutcome::Ok(_) => tracing::info!(
            target: TARGET,
            node = %record.node,
            client,
            transport = record.transport.as_str(),
            session = record.session,
            action = %record.action,
            specifier = %record.specifier,
            request,
            outcome = "ok",
            reply,
            "{} {}",
            record.action,
            record.specifier,
        ),
        AuditOutcome::Error { class, text } => tracing::info!(
            target: TARGET,
            node = %record.node,
            client,
            transport = record.transport.as_str(),
            session = record.session,
            action = %record.action,
            specifier = %record.specifier,
            request,
            outcome = record.outcome.label(),
            class = %class,
            text = %text,
            "{} {} refused",
            record.action,
            record.specifier,
        ),
        AuditOutcome::Refused { reason, text } => tracing::warn!(
            target: TARGET,
            node = %record.node,
            client,
            transport = record.transport.as_str(),
            session = record.session,
            action = %record.action,
            specifier = %record.specifier,
            outcome = "refused",
            reason = *reason,
            text = %text,
            "{} {} refused",
            record.action,
            record.specifier,
        ),
    }
}

/// One JSON line, with its newline. `request` and `reply` are already JSON.
fn write_line(out: &mut Vec<u8>, record: &AuditRecord, request: Option<&str>, reply: Option<&str>) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(rfc3339_millis(record.time).as_bytes());
    out.extend_from_slice(b"\",\"node\":");
    write_json(out, &*record.node);
    out.extend_from_slice(b",\"client\":");
    match record.client {
        // A socket address prints as digits, dots, colons and brackets only.
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"transport\":\"{}\",\"session\":{},\"action\":",
        record.transport.as_str(),
        record.session
    );
    write_json(out, &*record.action);
    out.extend_from_slice(b",\"specifier\":");
    write_json(out, record.specifier.as_str());
    if let Some(request) = request {
        out.extend_from_slice(b",\"request\":");
        out.extend_from_slice(request.as_bytes());
    }
    match &record.outcome {
        AuditOutcome::Ok(_) => {
            out.extend_from_slice(b",\"outcome\":\"ok\",\"reply\":");
            out.extend_from_slice(reply.unwrap_or("null").as_bytes());
        }
        AuditOutcome::Error { class, text } => {
            out.extend_from_slice(b",\"outcome\":");
            write_json(out, class.as_str());
            out.extend_from_slice(b",\"error\":");
            write_json(out, text.as_str());
        }
        AuditOutcome::Refused { reason, text } => {
            out.extend_from_slice(b",\"outcome\":\"refused\",\"reason\":");
            write_json(out, *reason);
            out.extend_from_slice(b",\"error\":");
            write_json(out, text.as_str());
        }
    }
    out.extend_from_slice(b"}\n");
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC); times before 1970 print as the epoch.
fn rfc3339_millis(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; after
/// Howard Hinnant's `civil_from_days`, for non-negative days only).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    const WAIT: Duration = Duration::from_secs(10);

    /// A fresh directory under the system's temp dir; removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "secop-audit-{name}-{}-{nanos}-{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join("audit.jsonl")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn settings(file: Option<PathBuf>) -> AuditSettings {
        AuditSettings {
            file,
            ..AuditSettings::default()
        }
    }

    fn record(session: u64, request: Option<Value>, outcome: AuditOutcome) -> AuditRecord {
        AuditRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_796_290_200_123),
            node: "cryo".into(),
            client: Some("127.0.0.1:5555".parse().unwrap()),
            transport: Transport::Tcp,
            session,
            action: "change".into(),
            specifier: "T:target".into(),
            request,
            outcome,
        }
    }

    fn ok(session: u64) -> AuditRecord {
        record(session, Some(json!(300.0)), AuditOutcome::Ok(json!(300.0)))
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn sessions(path: &Path) -> Vec<u64> {
        lines(path)
            .iter()
            .map(|l| l["session"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        let at = |ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_796_290_200_123), "2026-12-03T09:30:00.123Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_700_000_000_999), "2023-11-14T22:13:20.999Z");
        assert_eq!(at(253_402_300_799_000), "9999-12-31T23:59:59.000Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        // Every day of 2200 years against a plain day-by-day calendar.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..800_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let month_len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > month_len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn records_are_json_lines_with_every_field() {
        let dir = TempDir::new("lines");
        let log = AuditLog::start(settings(Some(dir.file()))).unwrap();
        log.record(ok(7));
        log.record(AuditRecord {
            client: None,
            transport: Transport::WebSocket,
            action: "do".into(),
            specifier: "T:stop".into(),
            request: None,
            outcome: AuditOutcome::Error {
                class: "IsBusy".into(),
                text: "T is \"busy\"\nramping".into(),
            },
            ..record(8, None, AuditOutcome::Ok(Value::Null))
        });
        log.record(record(
            9,
            Some(Value::Null),
            AuditOutcome::Ok(json!({"a": [1, 2.5]})),
        ));
        assert!(log.sync(WAIT));
        assert_eq!(
            (log.written(), log.dropped(), log.write_errors()),
            (3, 0, 0)
        );

        let text = std::fs::read_to_string(dir.file()).unwrap();
        let raw: Vec<&str> = text.lines().collect();
        assert_eq!(
            raw[0],
            r#"{"time":"2026-12-03T09:30:00.123Z","node":"cryo","client":"127.0.0.1:5555","transport":"tcp","session":7,"action":"change","specifier":"T:target","request":300.0,"outcome":"ok","reply":300.0}"#
        );
        assert_eq!(
            raw[1],
            r#"{"time":"2026-12-03T09:30:00.123Z","node":"cryo","client":null,"transport":"websocket","session":8,"action":"do","specifier":"T:stop","outcome":"IsBusy","error":"T is \"busy\"\nramping"}"#
        );
        assert!(text.ends_with("}\n"));

        let parsed = lines(&dir.file());
        assert_eq!(parsed.len(), 3);
        let first = parsed[0].as_object().unwrap();
        assert_eq!(first["time"], "2026-12-03T09:30:00.123Z");
        assert_eq!(first["node"], "cryo");
        assert_eq!(first["client"], "127.0.0.1:5555");
        assert_eq!(first["transport"], "tcp");
        assert_eq!(first["session"], 7);
        assert_eq!(first["action"], "change");
        assert_eq!(first["specifier"], "T:target");
        assert_eq!(first["request"], 300.0);
        assert_eq!(first["outcome"], "ok");
        assert_eq!(first["reply"], 300.0);
        assert_eq!(first.len(), 10);
        let second = parsed[1].as_object().unwrap();
        assert_eq!(second["client"], Value::Null);
        assert_eq!(second["transport"], "websocket");
        assert!(!second.contains_key("request"), "no value: no request key");
        assert!(!second.contains_key("reply"));
        assert_eq!(second["outcome"], "IsBusy");
        assert_eq!(second["error"], "T is \"busy\"\nramping");
        let third = parsed[2].as_object().unwrap();
        assert_eq!(third["request"], Value::Null, "an explicit null is kept");
        assert_eq!(third["reply"], json!({"a": [1, 2.5]}));
    }

    #[test]
    fn an_existing_file_is_appended_to() {
        let dir = TempDir::new("append");
        for session in [1, 2] {
            let log = AuditLog::start(settings(Some(dir.file()))).unwrap();
            log.record(ok(session));
            assert!(log.sync(WAIT));
        }
        assert_eq!(sessions(&dir.file()), [1, 2]);
    }

    #[test]
    fn non_ascii_is_escaped() {
        let dir = TempDir::new("ascii");
        let log = AuditLog::start(settings(Some(dir.file()))).unwrap();
        let request = json!({"unit": "Ä°C", "face": "😀"});
        log.record(AuditRecord {
            node: "kühlung".into(),
            ..record(
                1,
                Some(request.clone()),
                AuditOutcome::Error {
                    class: "RangeError".into(),
                    text: "zu heiß".into(),
                },
            )
        });
        assert!(log.sync(WAIT));
        let bytes = std::fs::read(dir.file()).unwrap();
        assert!(bytes.is_ascii(), "{}", String::from_utf8_lossy(&bytes));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""unit":"\u00c4\u00b0C""#), "{text}");
        assert!(text.contains(r#""face":"\ud83d\ude00""#), "{text}");
        assert!(text.contains(r#""error":"zu hei\u00df""#), "{text}");
        let line = &lines(&dir.file())[0];
        assert_eq!(line["request"], request);
        assert_eq!(line["node"], "kühlung");
        assert_eq!(line["error"], "zu heiß");
    }

    #[test]
    fn rotation_keeps_at_most_keep_files() {
        let dir = TempDir::new("rotate");
        let path = dir.file();
        let log = AuditLog::start(AuditSettings {
            max_file_bytes: 1, // every line in a file of its own
            keep_files: 3,
            ..settings(Some(path.clone()))
        })
        .unwrap();
        for session in 1..=10 {
            log.record(ok(session));
        }
        assert!(log.sync(WAIT));
        assert_eq!(log.written(), 10);
        assert_eq!(sessions(&path), [10]);
        assert_eq!(sessions(&numbered(&path, 1)), [9]);
        assert_eq!(sessions(&numbered(&path, 2)), [8]);
        assert_eq!(sessions(&numbered(&path, 3)), [7]);
        assert!(!numbered(&path, 4).exists());
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 4);
    }

    #[test]
    fn rotation_fills_files_up_to_the_limit() {
        let dir = TempDir::new("rotate-size");
        let path = dir.file();
        let mut one = Vec::new();
        let sample = ok(1);
        let json = to_json(&json!(300.0));
        write_line(&mut one, &sample, Some(&json), Some(&json));
        let line_len = one.len() as u64;
        let log = AuditLog::start(AuditSettings {
            max_file_bytes: 3 * line_len, // exactly three lines fit
            keep_files: 2,
            ..settings(Some(path.clone()))
        })
        .unwrap();
        for session in 1..=8 {
            log.record(ok(session)); // single-digit sessions: equal line lengths
        }
        assert!(log.sync(WAIT));
        assert_eq!(sessions(&path), [7, 8]);
        assert_eq!(sessions(&numbered(&path, 1)), [4, 5, 6]);
        assert_eq!(sessions(&numbered(&path, 2)), [1, 2, 3]);
        assert!(!numbered(&path, 3).exists());
        for file in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            assert!(std::fs::metadata(file).unwrap().len() <= 3 * line_len);
        }
    }

    #[test]
    fn keep_files_zero_keeps_only_the_current_file() {
        let dir = TempDir::new("rotate-zero");
        let log = AuditLog::start(AuditSettings {
            max_file_bytes: 1,
            keep_files: 0,
            ..settings(Some(dir.file()))
        })
        .unwrap();
        for session in 1..=3 {
            log.record(ok(session));
        }
        assert!(log.sync(WAIT));
        assert_eq!(sessions(&dir.file()), [3]);
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn a_full_queue_counts_drops_instead_of_blocking() {
        let dir = TempDir::new("full");
        let log = AuditLog::start(AuditSettings {
            queue_capacity: 4,
            ..settings(Some(dir.file()))
        })
        .unwrap();
        // Hold the writer so that the queue cannot drain during the burst: if record()
        // blocked on a full queue, this test would hang instead of finishing.
        let (paused_tx, paused_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel();
        log.tx.send(Msg::Pause(paused_tx, resume_rx)).unwrap();
        paused_rx.recv_timeout(WAIT).unwrap();

        let sent = 10_000;
        for session in 0..sent {
            log.record(ok(session));
        }
        assert!(log.dropped() > 0);
        assert_eq!(log.dropped(), sent - 4);

        drop(resume_tx);
        assert!(log.sync(WAIT));
        assert_eq!(log.written() + log.dropped(), sent);
        assert_eq!(sessions(&dir.file()), [0, 1, 2, 3]);
    }

    #[test]
    fn write_errors_are_counted_and_the_writer_recovers() {
        let dir = TempDir::new("error");
        let log = AuditLog::start(AuditSettings {
            max_file_bytes: 1, // each record reopens the file
            ..settings(Some(dir.file()))
        })
        .unwrap();
        log.record(ok(1));
        assert!(log.sync(WAIT));
        std::fs::remove_dir_all(&dir.0).unwrap();
        for session in 2..=5 {
            log.record(ok(session));
        }
        assert!(log.sync(WAIT), "the writer thread is still alive");
        assert_eq!(log.written(), 1);
        assert!(log.write_errors() >= 4, "{}", log.write_errors());

        std::fs::create_dir_all(&dir.0).unwrap();
        log.record(ok(6));
        assert!(log.sync(WAIT));
        assert_eq!(log.written(), 2);
        assert_eq!(sessions(&dir.file()), [6]);
    }

    #[test]
    fn start_fails_naming_the_path() {
        let dir = TempDir::new("start");
        let missing = dir.0.join("no-such-dir").join("audit.jsonl");
        let err = AuditLog::start(settings(Some(missing.clone()))).unwrap_err();
        assert!(matches!(&err, AuditError::Open { path, .. } if *path == missing));
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );

        let err = AuditLog::start(settings(Some(dir.0.clone()))).unwrap_err();
        assert!(err.to_string().contains(&*dir.0.to_string_lossy()), "{err}");
    }

    #[test]
    fn without_a_file_records_are_only_logged() {
        let log = AuditLog::start(AuditSettings::default()).unwrap();
        let clone = log.clone();
        log.record(ok(1));
        clone.record(ok(2));
        assert!(log.sync(WAIT));
        assert_eq!((log.written(), log.write_errors()), (2, 0));
    }

    #[test]
    fn outcome_labels_are_bounded() {
        assert_eq!(AuditOutcome::Ok(json!(1)).label(), "ok");
        let error = |class: &str| AuditOutcome::Error {
            class: class.into(),
            text: String::new(),
        };
        assert_eq!(error("RangeError").label(), "RangeError");
        assert_eq!(error("HardwareError:Overheat").label(), "HardwareError");
        assert_eq!(error("MadeUp").label(), "other");
        let e = SecopError::new(ErrorClass::ReadOnly, "T:value is read only");
        assert_eq!(AuditOutcome::from(&e), error("ReadOnly").with_text(&e.text));
        assert_eq!(Transport::Tcp.as_str(), "tcp");
        assert_eq!(Transport::WebSocket.as_str(), "websocket");
    }

    impl AuditOutcome {
        fn with_text(self, text: &str) -> Self {
            match self {
                AuditOutcome::Error { class, .. } => AuditOutcome::Error {
                    class,
                    text: text.into(),
                },
                ok => ok,
            }
        }
    }

    /// Captured events: target, level and fields (as debug strings).
    type Events = Arc<Mutex<Vec<(String, tracing::Level, BTreeMap<String, String>)>>>;

    struct Capture(Events);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            let meta = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push((meta.target().into(), *meta.level(), fields));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn each_record_is_one_structured_event() {
        let refused = AuditRecord {
            client: None,
            ..record(
                8,
                None,
                AuditOutcome::Error {
                    class: "RangeError".into(),
                    text: "too hot".into(),
                },
            )
        };
        let events = Events::default();
        tracing::subscriber::with_default(Capture(events.clone()), || {
            // tokio-rs/tracing#3611: while this is the only dispatcher, a writer thread
            // of another test (no subscriber) that registers the callsite first caches
            // `Interest::never` for it. Rebuilding the interest on this thread (where
            // the capture is the default) undoes that; retry in case a registration
            // was in flight.
            for _ in 0..1000 {
                tracing::callsite::rebuild_interest_cache();
                emit(&ok(7), Some("300.0"), Some("300.0"));
                emit(&refused, None, None);
                let mut events = events.lock().unwrap();
                if events.len() == 2 {
                    break;
                }
                events.clear();
                drop(events);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 2);
        let (target, level, fields) = &events[0];
        assert_eq!((target.as_str(), *level), (TARGET, tracing::Level::INFO));
        let expect = [
            ("node", "cryo"),
            ("client", "127.0.0.1:5555"),
            ("transport", "tcp"),
            ("session", "7"),
            ("action", "change"),
            ("specifier", "T:target"),
            ("request", "300.0"),
            ("outcome", "ok"),
            ("reply", "300.0"),
            ("message", "change T:target"),
        ];
        for (name, value) in expect {
            assert_eq!(fields.get(name).map(String::as_str), Some(value), "{name}");
        }
        let (target, level, fields) = &events[1];
        assert_eq!((target.as_str(), *level), (TARGET, tracing::Level::INFO));
        assert_eq!(fields["outcome"], "RangeError");
        assert_eq!(fields["class"], "RangeError");
        assert_eq!(fields["text"], "too hot");
        assert_eq!(fields["session"], "8");
        assert!(!fields.contains_key("client"), "{fields:?}");
        assert!(!fields.contains_key("request"), "{fields:?}");
    }
}
