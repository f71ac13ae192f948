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

    fn spawn(config: Option<&str>) -> Gateway {
        let dir = scratch_dir();
        let ready = dir.join("ready.json");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_secop-gateway"));
        cmd.args(["--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready);
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

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
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
