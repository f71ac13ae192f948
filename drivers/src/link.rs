//! Links: the physical connection of a device (serial line or TCP socket), and the
//! reconnect policy around it.
//!
//! A link is owned by exactly one device actor, which runs one transaction at a time,
//! so nothing here needs locking. Every read and write has a deadline; a timeout or
//! an I/O error drops the connection (a late reply would otherwise be taken as the
//! answer to the next question), and the next transaction reconnects after a capped
//! exponential backoff.

use crate::limits;
use crate::ConfigError;
use secop_actors::deadline;
use serde::Deserialize;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_serial::SerialPort;

/// `[[link]]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub name: String,
    /// `ascii` (line-based instruments).
    pub protocol: String,
    /// Serial device path, e.g. `/dev/ttyUSB0`.
    pub serial: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    #[serde(default = "default_parity")]
    pub parity: String,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `host:port` of a LAN instrument or serial-to-Ethernet converter.
    pub tcp: Option<String>,
    /// Seconds one transaction may take.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Reconnect backoff: first and largest wait (seconds).
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: f64,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: f64,
    /// Seconds between poll cycles (clients may change it via `pollinterval`).
    #[serde(default = "default_pollinterval")]
    pub pollinterval: f64,
    /// Parameters with `poll = "slow"` are polled every this many cycles.
    #[serde(default = "default_slow_factor")]
    pub slow_factor: u32,
    /// A client `read` is answered from the last poll if that is younger than this
    /// (seconds); 0 always asks the device.
    #[serde(default)]
    pub max_age: f64,
    /// Settings of the `ascii` protocol.
    pub ascii: Option<crate::ascii::AsciiLink>,
    /// Settings of the `modbus` protocol (TCP with `tcp`, RTU with `serial`).
    pub modbus: Option<crate::modbus::ModbusLink>,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> String {
    "none".into()
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> f64 {
    1.0
}
fn default_reconnect_min() -> f64 {
    0.5
}
fn default_reconnect_max() -> f64 {
    30.0
}
fn default_pollinterval() -> f64 {
    1.0
}
fn default_slow_factor() -> u32 {
    10
}

impl LinkConfig {
    /// Checks that serde cannot express; errors name the key within `[[link]]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.serial, &self.tcp) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give either serial or tcp, not both".into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "serial (a device path) or tcp (host:port) is required".into(),
                ))
            }
            _ => {}
        }
        if !matches!(self.parity.as_str(), "none" | "odd" | "even") {
            return Err(ConfigError::invalid(
                "parity",
                format!("{:?} is not none, odd or even", self.parity),
            ));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(ConfigError::invalid("data_bits", "must be 5, 6, 7 or 8"));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(ConfigError::invalid("stop_bits", "must be 1 or 2"));
        }
        limits::count("baud", u64::from(self.baud), 50, 12_000_000, "baud")?;
        limits::TIMEOUT.check("timeout", self.timeout)?;
        limits::RECONNECT_MIN.check("reconnect_min", self.reconnect_min)?;
        limits::RECONNECT_MAX.check("reconnect_max", self.reconnect_max)?;
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::invalid(
                "reconnect_max",
                "must not be below reconnect_min",
            ));
        }
        limits::POLLINTERVAL.check("pollinterval", self.pollinterval)?;
        limits::count(
            "slow_factor",
            u64::from(self.slow_factor),
            1,
            10_000,
            "cycles",
        )?;
        limits::AGE.check("max_age", self.max_age)?;
        Ok(())
    }

    fn describe_target(&self) -> String {
        match (&self.serial, &self.tcp) {
            (Some(path), _) => path.clone(),
            (_, Some(addr)) => format!("tcp://{addr}"),
            _ => String::new(),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// An open transport.
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

/// The state of one link: connection, buffer and backoff.
pub struct Link {
    config: LinkConfig,
    stream: Option<Stream>,
    up: bool,
    buf: Vec<u8>,
    backoff: Duration,
    next_attempt: Instant,
    last_error: Option<String>,
    was_connected: bool,
    reconnects: u64,
}

/// Longest line we accept from a device.
const MAX_LINE: usize = 64 * 1024;

impl Link {
    pub fn new(config: LinkConfig) -> Link {
        let backoff = limits::duration(config.reconnect_min);
        Link {
            config,
            stream: None,
            up: false,
            buf: Vec::new(),
            backoff,
            next_attempt: Instant::now(),
            last_error: None,
            was_connected: false,
            reconnects: 0,
        }
    }

    /// The timeout of one transaction.
    pub fn transaction_timeout(&self) -> Duration {
        self.timeout()
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Why the link is down (for status texts and errors).
    pub fn down_reason(&self) -> String {
        self.last_error
            .clone()
            .unwrap_or_else(|| format!("not connected to {}", self.config.describe_target()))
    }

    pub fn take_reconnects(&mut self) -> u64 {
        std::mem::take(&mut self.reconnects)
    }

    fn timeout(&self) -> Duration {
        limits::duration(self.config.timeout)
    }

    /// Make sure a connection exists. Returns `Ok(true)` when it was just opened (the
    /// caller identifies and initialises the instrument then).
    pub async fn ensure(&mut self) -> Result<bool, LinkDown> {
        if self.stream.is_some() {
            return Ok(false);
        }
        let stream = self.connect_raw().await?;
        self.stream = Some(stream);
        self.buf.clear();
        Ok(true)
    }

    /// Open the transport (if the backoff allows an attempt now) and hand it to a
    /// caller that frames it itself (Modbus). The link counts as up until
    /// [`drop_connection`](Self::drop_connection).
    pub async fn connect_raw(&mut self) -> Result<Stream, LinkDown> {
        if Instant::now() < self.next_attempt {
            return Err(LinkDown::Waiting(self.down_reason()));
        }
        match tokio::time::timeout(self.timeout(), self.open()).await {
            Ok(Ok(stream)) => {
                tracing::info!(link = %self.config.name, target = %self.config.describe_target(), "link connected");
                self.up = true;
                self.backoff = limits::duration(self.config.reconnect_min);
                if self.was_connected {
                    self.reconnects += 1;
                }
                self.was_connected = true;
                Ok(stream)
            }
            Ok(Err(e)) => Err(self.failed(LinkDown::Open {
                target: self.config.describe_target(),
                reason: e.to_string(),
            })),
            Err(_) => Err(self.failed(LinkDown::Timeout {
                target: self.config.describe_target(),
            })),
        }
    }

    /// Record a failure to connect: schedule the next attempt with a doubled backoff.
    fn failed(&mut self, down: LinkDown) -> LinkDown {
        let reason = down.to_string();
        tracing::warn!(link = %self.config.name, retry_in = ?self.backoff, "{reason}");
        self.next_attempt = deadline::after(Instant::now(), self.backoff);
        let max = limits::duration(self.config.reconnect_max);
        self.backoff = (self.backoff * 2).min(max);
        self.last_error = Some(reason);
        down
    }

    /// Drop the connection after an I/O problem; the next transaction reconnects.
    pub fn drop_connection(&mut self, reason: &str) {
        self.stream = None;
        if std::mem::take(&mut self.up) {
            tracing::warn!(link = %self.config.name, "link lost: {reason}");
        }
        self.last_error = Some(reason.to_owned());
        self.buf.clear();
        // Reconnect at once the first time; repeated failures back off in ensure().
        self.next_attempt = Instant::now();
    }

    async fn open(&self) -> io::Result<Stream> {
        if let Some(addr) = &self.config.tcp {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            return Ok(Stream::Tcp(s));
        }
        let path = self.config.serial.clone().unwrap_or_default();
        let parity = match self.config.parity.as_str() {
            "odd" => tokio_serial::Parity::Odd,
            "even" => tokio_serial::Parity::Even,
            _ => tokio_serial::Parity::None,
        };
        let data_bits = match self.config.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let stop_bits = match self.config.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        let builder = tokio_serial::new(path, self.config.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .timeout(self.timeout());
        let port = tokio_serial::SerialStream::open(&builder).map_err(io::Error::other)?;
        // Input that waited in the driver from before we opened is stale.
        let _ = port.clear(tokio_serial::ClearBuffer::All);
        Ok(Stream::Serial(port))
    }

    /// Discard input that arrived outside a transaction (a late or unsolicited reply).
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

    /// Send `line` + terminator; if `reply_terminator` is given, read one reply line.
    /// `line` is written as it is: the ASCII backend has refused it before if it holds
    /// a terminator, control or non-ASCII character ([`crate::ascii::line_safety`]).
    pub async fn transact(
        &mut self,
        line: &str,
        write_terminator: &str,
        reply_terminator: Option<&str>,
    ) -> Result<Option<String>, LinkError> {
        self.discard_stale();
        let deadline = deadline::after(Instant::now(), self.timeout());
        let result = tokio::time::timeout_at(
            deadline.into(),
            self.exchange(line, write_terminator, reply_terminator),
        )
        .await;
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                let reason = format!("I/O error on {}: {e}", self.config.describe_target());
                self.drop_connection(&reason);
                Err(LinkError::Io(reason))
            }
            Err(_) => {
                let reason = format!("no reply to {line:?} within {} s", self.config.timeout);
                // A late reply must not be taken as the answer to the next question.
                self.drop_connection(&reason);
                Err(LinkError::Timeout(reason))
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
                let text = String::from_utf8_lossy(&line[..pos]).into_owned();
                return Ok(Some(text));
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
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Why a link has no connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkDown {
    /// Too early for the next attempt; the reason is the last failure's.
    #[error("{0}")]
    Waiting(String),
    #[error("cannot open {target}: {reason}")]
    Open { target: String, reason: String },
    #[error("opening {target} timed out")]
    Timeout { target: String },
}

/// A failed transaction.
#[derive(Debug, Clone)]
pub enum LinkError {
    Timeout(String),
    Io(String),
}
