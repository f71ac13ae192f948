//! The transport of a configured device: a serial line or a TCP socket, its deadlines,
//! its sessions and its reconnect backoff. It knows nothing of the protocol spoken
//! over it (line-based ASCII, Modbus, ...).
//!
//! A transport is owned by exactly one device actor, which runs one transaction at a
//! time, so nothing here needs locking. Every exchange has a deadline; a timeout or an
//! I/O error ends the session (a late reply would otherwise be taken as the answer to
//! the next question).
//!
//! Sessions: a session begins when the transport is opened and is *proved* by the
//! first answer (after the identification, for protocols that identify). Only then is
//! the link "up" and "link connected" logged. A session that ends unproved (the
//! device is silent, or the wrong instrument answers) counts as a failed attempt, so
//! the next attempt waits for the [`Backoff`]; a proved session that ends reconnects
//! at once. One log line per state change: "link connected", "link lost", and the
//! first failure to open; repeated failures log at debug level.

use crate::backoff::Backoff;
use secop_actors::deadline;
use secop_actors::device_actor::{Outcome, WireStats};
use secop_proto::SecopError;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_serial::SerialPort;

/// Where and how to connect (the transport part of a `[[link]]`), already validated.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// The link's name, for logs.
    pub name: String,
    pub serial: Option<String>,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: String,
    pub stop_bits: u8,
    pub tcp: Option<String>,
    /// Seconds one exchange may take.
    pub timeout: f64,
    pub reconnect_min: f64,
    pub reconnect_max: f64,
}

impl TransportSettings {
    /// `tcp://host:port` or the serial device path.
    pub fn target(&self) -> String {
        match (&self.serial, &self.tcp) {
            (Some(path), _) => path.clone(),
            (_, Some(addr)) => format!("tcp://{addr}"),
            _ => String::new(),
        }
    }
}

/// A failed exchange (or an exchange that could not be made), classified for the
/// fault policy and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// How the exchange on the wire ended; `None` when nothing was sent (the link is
    /// down and waiting for its next attempt, or the value could not be sent).
    pub outcome: Option<Outcome>,
    pub error: SecopError,
    /// The device answered that it did not carry the request out (a Modbus exception):
    /// a write may be tried again, since it cannot have taken effect twice.
    pub refused: bool,
}

impl Failure {
    /// Nothing was sent.
    pub fn unsent(error: SecopError) -> Failure {
        Failure {
            outcome: None,
            error,
            refused: false,
        }
    }

    /// A reply arrived but gave no valid value.
    pub fn garbled(error: SecopError) -> Failure {
        Failure {
            outcome: Some(Outcome::Garbled),
            error,
            refused: false,
        }
    }

    /// Whether trying again may help: something was sent and failed on the way.
    pub fn retryable(&self) -> bool {
        self.outcome.is_some()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// An open connection.
#[derive(Debug)]
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Serial(tokio_serial::SerialStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn Io {
        match self {
            Stream::Tcp(s) => s,
            Stream::Serial(s) => s,
        }
    }
}

/// Longest line accepted from a device.
const MAX_LINE: usize = 64 * 1024;

/// See the module documentation.
pub struct Transport {
    settings: TransportSettings,
    /// The stream, unless a protocol that frames it itself holds it.
    stream: Option<Stream>,
    /// Whether a session is open (with the stream here or with the protocol).
    open: bool,
    buf: Vec<u8>,
    backoff: Backoff,
    /// Sessions opened so far (a new one means: identify again, read everything again).
    session: u64,
    /// Whether the current session got an answer.
    proved: bool,
    /// The reason the last attempt to open failed, until one succeeds.
    open_failed: Option<String>,
    /// Why the link is not up (for texts).
    last_error: Option<String>,
    /// Whether a failure to open was logged in this episode.
    failure_logged: bool,
    was_up: bool,
    reconnects: u64,
    stats: WireStats,
}

impl Transport {
    pub fn new(settings: TransportSettings) -> Transport {
        let backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
        Transport {
            settings,
            stream: None,
            open: false,
            buf: Vec::new(),
            backoff,
            session: 0,
            proved: false,
            open_failed: None,
            last_error: None,
            failure_logged: false,
            was_up: false,
            reconnects: 0,
            stats: WireStats::default(),
        }
    }

    pub fn settings(&self) -> &TransportSettings {
        &self.settings
    }

    /// The deadline of one exchange.
    pub fn timeout(&self) -> Duration {
        crate::limits::duration(self.settings.timeout)
    }

    /// Connected, and the session has been proved by an answer.
    pub fn is_up(&self) -> bool {
        self.open && self.proved
    }

    /// Whether a session is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Why the last attempt to open failed, while that is the state of the link: the
    /// link is down for sure (refused, no such device), not just slow.
    pub fn open_failed(&self) -> Option<&str> {
        self.open_failed.as_deref()
    }

    /// The number of the current (or last) session.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Why the link is down (for status texts and errors).
    pub fn down_reason(&self) -> String {
        self.last_error
            .clone()
            .unwrap_or_else(|| format!("not connected to {}", self.settings.target()))
    }

    /// Reconnects since the last call (the `device_reconnects_total` metric).
    pub fn take_reconnects(&mut self) -> u64 {
        std::mem::take(&mut self.reconnects)
    }

    /// The exchanges since the last call (the transaction metrics).
    pub fn take_stats(&mut self) -> WireStats {
        std::mem::take(&mut self.stats)
    }

    /// Count one exchange made by a protocol that frames the stream itself (Modbus).
    pub fn record(&mut self, outcome: Outcome, took: Duration) {
        self.stats.exchanges.push((outcome, took));
    }

    /// The last exchange's reply turned out to be unusable.
    pub fn mark_garbled(&mut self) {
        if let Some(last) = self.stats.exchanges.last_mut() {
            last.0 = Outcome::Garbled;
        }
    }

    /// Make sure a connection exists. `Ok(true)` when it was just opened: the protocol
    /// identifies and initialises the instrument then.
    pub async fn ensure(&mut self) -> Result<bool, Failure> {
        if self.open {
            return Ok(false);
        }
        let stream = self.open_session().await?;
        self.stream = Some(stream);
        Ok(true)
    }

    /// Open a new session (if the backoff allows an attempt now) and hand the stream to
    /// a protocol that frames it itself (Modbus). The session lasts until
    /// [`drop_connection`](Self::drop_connection).
    pub async fn open_session(&mut self) -> Result<Stream, Failure> {
        if !self.backoff.ready() {
            return Err(Failure::unsent(SecopError::communication_failed(format!(
                "link down: {}",
                self.down_reason()
            ))));
        }
        let target = self.settings.target();
        let reason = match tokio::time::timeout(self.timeout(), self.open()).await {
            Ok(Ok(stream)) => {
                self.session += 1;
                self.open = true;
                self.proved = false;
                self.open_failed = None;
                self.buf.clear();
                self.stream = None;
                tracing::debug!(link = %self.settings.name, %target, session = self.session, "link opened");
                return Ok(stream);
            }
            Ok(Err(e)) => format!("cannot open {target}: {e}"),
            Err(_) => format!("opening {target} timed out"),
        };
        let wait = self.backoff.failed();
        if std::mem::replace(&mut self.failure_logged, true) {
            tracing::debug!(link = %self.settings.name, retry_in = ?wait, "{reason}");
        } else {
            tracing::warn!(link = %self.settings.name, retry_in = ?wait, "{reason} (retrying with backoff; further failures are logged at debug level)");
        }
        self.open_failed = Some(reason.clone());
        self.last_error = Some(reason.clone());
        Err(Failure::unsent(SecopError::communication_failed(format!(
            "link down: {reason}"
        ))))
    }

    /// The current session got an answer: the link is up. Logged once per session.
    pub fn proved(&mut self) {
        if self.proved {
            return;
        }
        self.proved = true;
        self.failure_logged = false;
        self.backoff.succeeded();
        self.last_error = None;
        if self.was_up {
            self.reconnects += 1;
        }
        self.was_up = true;
        tracing::info!(link = %self.settings.name, target = %self.settings.target(), "link connected");
    }

    /// End the session after a timeout, an I/O error or a failed identification. A
    /// proved session reconnects at once; an unproved one waits for the backoff.
    pub fn drop_connection(&mut self, reason: &str) {
        self.stream = None;
        let had_session = std::mem::take(&mut self.open);
        self.buf.clear();
        self.last_error = Some(reason.to_owned());
        if std::mem::take(&mut self.proved) {
            tracing::warn!(link = %self.settings.name, "link lost: {reason}");
            self.backoff.now();
        } else if had_session {
            let wait = self.backoff.failed();
            if std::mem::replace(&mut self.failure_logged, true) {
                tracing::debug!(link = %self.settings.name, retry_in = ?wait, "session failed before the device answered: {reason}");
            } else {
                tracing::warn!(link = %self.settings.name, retry_in = ?wait, "the device does not answer: {reason} (retrying with backoff; further failures are logged at debug level)");
            }
        }
    }

    async fn open(&self) -> io::Result<Stream> {
        if let Some(addr) = &self.settings.tcp {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            return Ok(Stream::Tcp(s));
        }
        let path = self.settings.serial.clone().unwrap_or_default();
        let parity = match self.settings.parity.as_str() {
            "odd" => tokio_serial::Parity::Odd,
            "even" => tokio_serial::Parity::Even,
            _ => tokio_serial::Parity::None,
        };
        let data_bits = match self.settings.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let stop_bits = match self.settings.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        let builder = tokio_serial::new(path, self.settings.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .timeout(self.timeout());
        let port = tokio_serial::SerialStream::open(&builder).map_err(io::Error::other)?;
        // Input that waited in the driver from before we opened is stale.
        let _ = port.clear(tokio_serial::ClearBuffer::All);
        Ok(Stream::Serial(port))
    }

    /// Discard input that arrived outside an exchange (a late or unsolicited reply).
    fn discard_stale(&mut self) {
        self.buf.clear();
        match &mut self.stream {
            Some(Stream::Tcp(s)) => {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.try_read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                }
            }
            Some(Stream::Serial(s)) => {
                let _ = s.clear(tokio_serial::ClearBuffer::Input);
            }
            None => {}
        }
    }

    /// One line exchange: send `line` + `write_terminator`; if `reply_terminator` is
    /// given, read one reply line (lossily decoded: garbled bytes become U+FFFD, which
    /// texts quote in ASCII). Counted in the wire statistics; a timeout or I/O error
    /// ends the session. `line` is written as it is: the protocol has refused it
    /// before if it must not be sent.
    pub async fn transact(
        &mut self,
        line: &str,
        write_terminator: &str,
        reply_terminator: Option<&str>,
    ) -> Result<Option<String>, Failure> {
        self.ensure().await?;
        self.discard_stale();
        let started = Instant::now();
        let deadline = deadline::after(started, self.timeout());
        let result = tokio::time::timeout_at(
            deadline.into(),
            self.exchange(line, write_terminator, reply_terminator),
        )
        .await;
        let took = started.elapsed();
        match result {
            Ok(Ok(reply)) => {
                // Not proved yet: the protocol decides whether the reply is the right
                // instrument's (an identification must match first).
                self.record(Outcome::Ok, took);
                Ok(reply)
            }
            Ok(Err(e)) => {
                self.record(Outcome::Error, took);
                let reason = format!("I/O error on {}: {e}", self.settings.target());
                self.drop_connection(&reason);
                Err(Failure {
                    outcome: Some(Outcome::Error),
                    error: SecopError::communication_failed(reason),
                    refused: false,
                })
            }
            Err(_) => {
                self.record(Outcome::Timeout, took);
                let reason = format!(
                    "no reply to {} within {} s",
                    crate::quoted::Quoted(line),
                    self.settings.timeout
                );
                // A late reply must not be taken as the answer to the next question.
                self.drop_connection(&reason);
                Err(Failure {
                    outcome: Some(Outcome::Timeout),
                    error: SecopError::timeout(reason),
                    refused: false,
                })
            }
        }
    }

    async fn exchange(
        &mut self,
        line: &str,
        write_terminator: &str,
        reply_terminator: Option<&str>,
    ) -> io::Result<Option<String>> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "not connected"));
        };
        let io = stream.io();
        let mut out = Vec::with_capacity(line.len() + write_terminator.len());
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(write_terminator.as_bytes());
        io.write_all(&out).await?;
        io.flush().await?;
        let Some(term) = reply_terminator else {
            return Ok(None);
        };
        let term = term.as_bytes();
        loop {
            if let Some(pos) = find(&self.buf, term) {
                let line: Vec<u8> = self.buf.drain(..pos + term.len()).collect();
                let text = String::from_utf8_lossy(line.get(..pos).unwrap_or_default());
                return Ok(Some(text.into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "reply line too long",
                ));
            }
            let mut chunk = [0u8; 1024];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                // The peer is gone: never spin on a zero-byte read.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the device",
                ));
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}
