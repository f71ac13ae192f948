//! Helpers for integration tests: start the real gateway binary on a loopback port
//! and talk raw SECoP to it over real TCP sockets.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running gateway process, killed on drop.
pub struct Gateway {
    child: Child,
    /// The main node's address.
    pub addr: SocketAddr,
    /// Every node's address, the main node first.
    pub addrs: Vec<SocketAddr>,
    pub dir: PathBuf,
}

fn scratch_dir() -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("secop-gw-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The default test configuration: the embedded default, but with a fast cryostat.
pub const FAST_CONFIG: &str = r#"
[node]
equipment_id = "test_node"
description = "integration test node"
[listen]
max_line_bytes = 65536
write_timeout = 3.0
[[module]]
name = "T"
driver = "sim_temperature"
[module.settings]
initial = 10.0
ramp = 600.0
time_constant = 0.1
tolerance = 0.5
pollinterval = 0.2
[[module]]
name = "p"
driver = "sim_pressure"
[module.settings]
pollinterval = 0.1
[[module]]
name = "ps"
driver = "sim_power_supply"
[[module]]
name = "io"
driver = "sim_communicator"
"#;

impl Gateway {
    /// Start with the embedded default config.
    pub fn start_default() -> Gateway {
        Gateway::spawn(None)
    }

    /// Start with the given TOML config.
    pub fn start(config: &str) -> Gateway {
        Gateway::spawn(Some(config))
    }

    /// Start with the given TOML config on `listen` (e.g. `[::]:0` for dual stack).
    pub fn start_on(config: &str, listen: &str) -> Gateway {
        Gateway::spawn_on(Some(config), listen, scratch_dir())
    }

    /// Start in a scratch dir prepared by the caller (`config` may name files in it).
    pub fn start_in(dir: PathBuf, config: &str) -> Gateway {
        Gateway::spawn_on(Some(config), "127.0.0.1:0", dir)
    }

    /// A fresh scratch dir for [`Gateway::start_in`].
    pub fn scratch() -> PathBuf {
        scratch_dir()
    }

    fn spawn(config: Option<&str>) -> Gateway {
        Gateway::spawn_on(config, "127.0.0.1:0", scratch_dir())
    }

    /// Start with the given TOML config and extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn_env(Some(config), "127.0.0.1:0", scratch_dir(), env)
    }

    fn spawn_on(config: Option<&str>, listen: &str, dir: PathBuf) -> Gateway {
        Gateway::spawn_env(config, listen, dir, &[])
    }

    fn spawn_env(
        config: Option<&str>,
        listen: &str,
        dir: PathBuf,
        env: &[(&str, &str)],
    ) -> Gateway {
        let ready = dir.join("ready.json");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_secop-gateway"));
        cmd.envs(env.iter().copied());
        cmd.args(["--listen", listen, "--ready-file"]).arg(&ready);
        if let Some(text) = config {
            let path = dir.join("gateway.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
        cmd.stdout(Stdio::null()).stderr(log).env_remove("RUST_LOG");
        let mut child = cmd.spawn().expect("start gateway");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    let addrs: Vec<SocketAddr> = v["tcp"]
                        .as_array()
                        .expect("tcp addresses")
                        .iter()
                        .map(|a| a.as_str().expect("address").parse().expect("addr"))
                        .collect();
                    return Gateway {
                        child,
                        addr: addrs[0],
                        addrs,
                        dir,
                    };
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                panic!("gateway exited with {status}:\n{log}");
            }
            assert!(Instant::now() < deadline, "gateway did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the gateway process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the process ended, waiting at most `timeout`.
    pub fn exit_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw SECoP client over TCP.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Default wait for one expected line.
pub const WAIT: Duration = Duration::from_secs(5);

/// A TCP connection to `addr` from the loopback address `source` (127.0.0.2, ::1, ...).
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let domain = if source.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), WAIT)?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).ok();
    Ok(stream)
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
        Client::over(stream)
    }

    /// A client on a connection made elsewhere (e.g. from another source address).
    pub fn over(stream: TcpStream) -> Client {
        stream.set_nodelay(true).ok();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next line, or `None` after `timeout` (or on EOF).
    pub fn line_within(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8(line[..line.len() - 1].to_vec())
                    .expect("gateway sent non-UTF-8");
                assert!(text.is_ascii(), "gateway sent non-ASCII: {text:?}");
                assert!(!text.contains('\r'), "gateway sent CR: {text:?}");
                return Some(text);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    pub fn line(&mut self) -> String {
        self.line_within(WAIT)
            .expect("no line from gateway in time")
    }

    /// Send a request; return (events received before the reply, the reply).
    pub fn request(&mut self, line: &str) -> (Vec<String>, String) {
        self.send(line);
        self.until_reply()
    }

    /// Read until a line that is not an event (`update`, `error_update`, `log`).
    pub fn until_reply(&mut self) -> (Vec<String>, String) {
        let mut events = Vec::new();
        loop {
            let l = self.line();
            if is_event(&l) {
                events.push(l);
            } else {
                return (events, l);
            }
        }
    }

    /// Just the reply of a request.
    pub fn ask(&mut self, line: &str) -> String {
        self.request(line).1
    }

    /// Collect events for `duration`, failing if anything else arrives.
    pub fn events_for(&mut self, duration: Duration) -> Vec<String> {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        while let Some(l) = self.line_within(deadline.saturating_duration_since(Instant::now())) {
            assert!(is_event(&l), "unexpected non-event {l:?}");
            out.push(l);
        }
        out
    }

    /// Read and discard until the gateway closes the connection; false on timeout.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// Wait (bounded) for an event for which `pred` holds; returns it.
    pub fn wait_event(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(l) = self.line_within(deadline.saturating_duration_since(Instant::now())) {
            if pred(&l) {
                return Some(l);
            }
        }
        None
    }
}

/// Send a raw HTTP request and read the whole response (until the peer closes or
/// `WAIT`).
pub fn http_exchange(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).expect("send");
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok();
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        // An upgrade stays open: its head is all there is to read.
        if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A masked client frame: `first` is the first header byte (FIN and opcode); the
/// announced length `len` may exceed the payload given.
pub fn masked_frame(first: u8, len: usize, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![first];
    match len {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The gateway's /metrics page (the whole HTTP response).
pub fn metrics(gw: &Gateway) -> String {
    let mut addr = gw.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    let mut s = TcpStream::connect(addr).expect("connect");
    http_exchange(
        &mut s,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The value of the series `series` (name with labels) on a metrics page, 0 if absent.
pub fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A minimal WebSocket client (RFC 6455) over an existing TCP connection: enough to
/// speak SECoP in TEXT frames in tests that need a source address or raw headers.
pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl WsClient {
    /// Upgrade `stream` with `GET /`; `Err` with the response head if refused.
    pub fn handshake(mut stream: TcpStream, host: &str) -> Result<WsClient, String> {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let head = http_exchange(&mut stream, request.as_bytes());
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        Ok(WsClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Send one TEXT frame (masked, as a client must).
    pub fn send(&mut self, text: &str) {
        let frame = masked_frame(0x81, text.len(), text.as_bytes());
        self.stream.write_all(&frame).expect("send frame");
    }

    /// The next TEXT message; `None` on close, EOF or timeout. Pings are skipped.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, head) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if head > 0 && self.buf.len() >= head + len {
                    let payload: Vec<u8> = self.buf.drain(..head + len).skip(head).collect();
                    match opcode {
                        0x1 => return Some(String::from_utf8_lossy(&payload).into_owned()),
                        0x8 => return None,
                        _ => continue,
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Send a request and return the first message that is not an update.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(line);
        loop {
            let m = self.recv(WAIT).expect("a WebSocket reply in time");
            if !is_event(&m) {
                return m;
            }
        }
    }
}

pub fn is_event(line: &str) -> bool {
    line.starts_with("update ") || line.starts_with("error_update ") || line.starts_with("log ")
}

/// Split a line into (action, specifier, data JSON).
pub fn parts(line: &str) -> (String, String, Option<Value>) {
    let mut it = line.splitn(3, ' ');
    let action = it.next().unwrap_or("").to_owned();
    let spec = it.next().unwrap_or("").to_owned();
    let data = it
        .next()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad JSON in {line:?}: {e}")));
    (action, spec, data)
}

/// The value in a data report `[value, {qualifiers}]`.
pub fn value(line: &str) -> Value {
    let (_, _, data) = parts(line);
    data.expect("data")[0].clone()
}

/// The error class of an error reply.
pub fn error_class(line: &str) -> String {
    let (action, _, data) = parts(line);
    assert!(action.starts_with("error_"), "not an error: {line}");
    let data = data.expect("error data");
    assert_eq!(
        data.as_array().map(|a| a.len()),
        Some(3),
        "error report has 3 elements: {line}"
    );
    assert!(data[2].is_object(), "error info is an object: {line}");
    data[0].as_str().expect("class").to_owned()
}
