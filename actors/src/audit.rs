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

/// How the client reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    WebSocket,
}

impl Transport {
    /// `"tcp"` or `"websocket"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
        }
    }
}

/// What the node answered.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditOutcome {
    /// Accepted; the value of the reply (`changed` / `done`).
    Ok(Value),
    /// Refused or failed, with the SECoP error class and text of the error reply.
    Error { class: String, text: String },
}

impl AuditOutcome {
    /// `"ok"`, the SECoP error class, or `"other"` for a class that is not one of the
    /// 21 (a `Class:SubClass` counts as `Class`): a bounded set, fit for a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AuditOutcome::Ok(_) => "ok",
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

/// What travels through the queue.
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
            AuditOutcome::Error { .. } => None,
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
