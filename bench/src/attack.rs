//! `attack`: a hostile client against the server's limits, while a well-behaved client
//! on another loopback address (127.0.0.2) keeps doing `read` round trips and opens a
//! fresh connection (`*IDN?`) every half second.
//!
//! Kinds (each connection from 127.0.1.x, `--per-address` connections per address, so
//! that a per-address limit is not what stops the attack):
//! - `http-pipeline`: N pipelined `GET /metrics` per connection, nothing read;
//! - `ws-non-reader`: WebSocket clients that `activate`, ask for many `describe`s and
//!   read nothing;
//! - `unfinished-lines`: a SECoP line just under `max_line_bytes`, without its LF;
//! - `ws-unfinished`: a WebSocket frame announcing just under `max_message_bytes`,
//!   all but the last 64 KiB sent;
//! - `silent`: connections that send nothing.
//!
//! Reported: the server's RSS before, peak and after (and once the attackers are
//! gone), the well-behaved client's read latency (p50/p99/max), fresh connections
//! served or refused, and what became of the attacking connections (closed by the
//! server, with the median time to close; refused at connect; still open at the end).
//! Nothing the attackers send is ever read back (that is the attack), so the server
//! closing a connection is seen in the socket's TCP state.

use crate::conn::{Reader, Writer};
use crate::ctx::{Ctx, ServerWatch};
use crate::report::{Report, Summary};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    HttpPipeline,
    WsNonReader,
    UnfinishedLines,
    WsUnfinished,
    Silent,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::HttpPipeline => "http-pipeline",
            Kind::WsNonReader => "ws-non-reader",
            Kind::UnfinishedLines => "unfinished-lines",
            Kind::WsUnfinished => "ws-unfinished",
            Kind::Silent => "silent",
        }
    }

    /// The attack as measured against the gateway before it had these limits.
    fn default_connections(self) -> usize {
        match self {
            Kind::HttpPipeline => 60,
            Kind::WsNonReader => 100,
            Kind::UnfinishedLines => 300,
            Kind::WsUnfinished => 60,
            Kind::Silent => 1024,
        }
    }

    /// Bytes of the unfinished line or message: just under the default limits
    /// (`max_line_bytes` 1 MiB, `websocket.max_message_bytes` 16 MiB).
    fn default_size(self) -> usize {
        match self {
            Kind::UnfinishedLines => (1 << 20) - 4096,
            Kind::WsUnfinished => (16 << 20) - 1,
            _ => 0,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// attacking connections (default: 60, 100, 300, 60, 1024 by kind)
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,
    /// seconds the attack runs while the latency is measured
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// attacking connections per source address (127.0.1.1, 127.0.1.2, ...)
    #[arg(long, default_value_t = 60)]
    pub per_address: usize,
    /// source address of the well-behaved client
    #[arg(long, default_value = "127.0.0.2")]
    pub probe_source: IpAddr,
    /// parameter the well-behaved client reads
    #[arg(long, default_value = "p:value")]
    pub param: String,
    /// bytes of each unfinished line or message (default: just under the default limit)
    #[arg(long)]
    pub size: Option<usize>,
    /// requests each attacker sends (pipelined GETs; describes of a WebSocket non-reader)
    #[arg(long)]
    pub requests: Option<usize>,
    /// attackers connecting at once
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
}

/// What became of one attacking connection.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// The connect itself failed.
    Refused,
    /// The server closed (or reset) it after this long.
    Closed(Duration),
    /// Still open when the attack ended.
    Open,
}

/// A connection from `source`, with a small receive buffer for those that never read.
async fn connect_from(
    source: IpAddr,
    addr: SocketAddr,
    small_buffer: bool,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    if small_buffer {
        socket.set_recv_buffer_size(4096)?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether the peer has closed or reset the connection, from the socket's TCP state
/// (without reading what it sent).
fn peer_closed(stream: &TcpStream) -> bool {
    // SAFETY: getsockopt(TCP_INFO) into a struct we own, on a socket we own.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if r != 0 {
            return true;
        }
        // 7 TCP_CLOSE (reset), 8 TCP_CLOSE_WAIT (FIN received), 9 LAST_ACK
        matches!(info.tcpi_state, 7..=9)
    }
}

/// A masked client frame header (mask key 0: the payload goes as it is).
fn ws_header(first: u8, len: usize) -> Vec<u8> {
    let mut h = vec![first];
    match len {
        n if n < 126 => h.push(0x80 | n as u8),
        n if n < 65536 => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            h.push(0x80 | 127);
            h.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

fn ws_text(text: &str) -> Vec<u8> {
    let mut f = ws_header(0x81, text.len());
    f.extend_from_slice(text.as_bytes());
    f
}

/// The upgrade request; returns once the 101 head is read.
async fn ws_handshake(stream: &mut TcpStream, addr: SocketAddr) -> io::Result<()> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 4096 {
            return Err(io::Error::other("no WebSocket handshake"));
        }
        head.push(byte[0]);
    }
    if head.starts_with(b"HTTP/1.1 101") {
        Ok(())
    } else {
        Err(io::Error::other("WebSocket upgrade refused"))
    }
}

/// What one attacker sends (shared by all attackers of a run).
struct Payload {
    kind: Kind,
    /// Written once after connecting (and after the handshake for WebSocket).
    bytes: Arc<Vec<u8>>,
}

impl Payload {
    fn new(kind: Kind, size: usize, requests: usize) -> Payload {
        let bytes = match kind {
            Kind::HttpPipeline => "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                .repeat(requests)
                .into_bytes(),
            Kind::WsNonReader => {
                let mut b = ws_text("activate");
                let describe = ws_text("describe");
                for _ in 0..requests {
                    b.extend_from_slice(&describe);
                }
                b
            }
            Kind::UnfinishedLines => {
                let mut b = b"change ps:target ".to_vec();
                b.resize(size, b'7');
                b
            }
            Kind::WsUnfinished => {
                let mut b = ws_header(0x81, size);
                let sent = size.saturating_sub(64 * 1024);
                b.resize(b.len() + sent, b'7');
                b
            }
            Kind::Silent => Vec::new(),
        };
        Payload {
            kind,
            bytes: Arc::new(bytes),
        }
    }
}

/// One attacking connection; `permit` (a connect slot) is given back once connected.
async fn attacker(
    source: IpAddr,
    addr: SocketAddr,
    payload: Arc<Payload>,
    end: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Outcome {
    let kind = payload.kind;
    let reads_nothing = matches!(kind, Kind::HttpPipeline | Kind::WsNonReader);
    let Ok(mut stream) = connect_from(source, addr, reads_nothing).await else {
        return Outcome::Refused;
    };
    let t0 = Instant::now();
    let ws = matches!(kind, Kind::WsNonReader | Kind::WsUnfinished);
    if ws && ws_handshake(&mut stream, addr).await.is_err() {
        return Outcome::Closed(t0.elapsed());
    }
    drop(permit);
    let (rd, mut wr) = stream.into_split();
    let stream_ref = rd;
    let send = async {
        if !payload.bytes.is_empty() {
            // Blocks for good once the server stops reading: that is the attack.
            if wr.write_all(&payload.bytes).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if peer_closed(stream_ref.as_ref()) {
                return;
            }
        }
    };
    tokio::select! {
        _ = send => Outcome::Closed(t0.elapsed()),
        _ = watch => Outcome::Closed(t0.elapsed()),
        _ = tokio::time::sleep_until(end.into()) => Outcome::Open,
    }
}

/// The source address of attacker `i`.
fn attacker_source(i: usize, per_address: usize) -> IpAddr {
    let n = i / per_address.max(1);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

/// Sequential `read` round trips from `source` until `end`; the RTTs in ns.
async fn probe(
    ctx: Arc<Ctx>,
    source: IpAddr,
    param: String,
    start: Instant,
    end: Instant,
) -> Vec<u64> {
    let stream = match connect_from(source, ctx.opts.addr, false).await {
        Ok(s) => s,
        Err(e) => {
            ctx.counters
                .fail(format!("probe connect from {source}: {e}"));
            return Vec::new();
        }
    };
    let (rd, wr) = stream.into_split();
    let mut rd = Reader::Tcp {
        rd: BufReader::with_capacity(64 * 1024, rd),
        buf: Vec::with_capacity(256),
    };
    let mut wr = Writer::Tcp(wr);
    if let Err(e) = crate::node::handshake(&mut rd, &mut wr, ctx.timeout).await {
        ctx.counters.fail(format!("probe: {e}"));
        return Vec::new();
    }
    let request = format!("read {param}");
    let expect = format!("reply {param} ");
    let mut samples = Vec::with_capacity(1 << 16);
    while Instant::now() < end {
        let t = Instant::now();
        if let Err(e) = wr.send(&request).await {
            ctx.counters.error(format!("probe send: {e}"));
            break;
        }
        match rd.next_line_within(ctx.timeout).await {
            Ok(Some(line)) if line.starts_with(&expect) => {
                if t >= start {
                    samples.push(t.elapsed().as_nanos() as u64);
                }
            }
            Ok(Some(line)) => ctx
                .counters
                .error(format!("probe: unexpected {}", crate::node::abbrev(line))),
            Ok(None) => {
                ctx.counters.error("probe: connection closed by the server");
                break;
            }
            Err(e) => {
                ctx.counters.fail(format!("probe: {e}"));
                break;
            }
        }
    }
    wr.close().await;
    samples
}

/// A fresh connection from `source` every half second: `*IDN?` answered or not.
async fn fresh_connections(ctx: Arc<Ctx>, source: IpAddr, end: Instant) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < end {
        tick.tick().await;
        let attempt = async {
            let stream = connect_from(source, ctx.opts.addr, false).await?;
            let (rd, wr) = stream.into_split();
            let mut rd = Reader::Tcp {
                rd: BufReader::new(rd),
                buf: Vec::new(),
            };
            let mut wr = Writer::Tcp(wr);
            wr.send("*IDN?").await?;
            let got = rd
                .next_line_within(Duration::from_secs(2))
                .await?
                .is_some_and(|l| l.contains(",SECoP,"));
            wr.close().await;
            Ok::<bool, io::Error>(got)
        };
        match attempt.await {
            Ok(true) => ok += 1,
            _ => failed += 1,
        }
    }
    (ok, failed)
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    let kind = a.kind;
    let connections = a.connections.unwrap_or(kind.default_connections());
    let size = a.size.unwrap_or(kind.default_size());
    let requests = a.requests.unwrap_or(match kind {
        Kind::WsNonReader => 2000,
        _ => 20000,
    });
    let mut r = ctx.report("attack");
    r.param("kind", kind.as_str());
    r.param("connections", connections);
    r.param("duration", a.duration);
    r.param("per_address", a.per_address);
    r.param("probe_source", a.probe_source.to_string());
    if size > 0 {
        r.param("size", size);
    }
    if matches!(kind, Kind::HttpPipeline | Kind::WsNonReader) {
        r.param("requests", requests);
    }
    let rss_before = ctx.server_sample().map(|s| s.rss_kib);
    // The well-behaved client connects first and keeps reading through the attack.
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(a.duration);
    let probe = tokio::spawn(probe(
        ctx.clone(),
        a.probe_source,
        a.param.clone(),
        start,
        end,
    ));
    tokio::time::sleep_until(start.into()).await;
    let watch = ServerWatch::start(&ctx);
    let fresh = tokio::spawn(fresh_connections(ctx.clone(), a.probe_source, end));
    let payload = Arc::new(Payload::new(kind, size, requests));
    let permits = Arc::new(tokio::sync::Semaphore::new(a.connect_concurrency.max(1)));
    let mut attackers = Vec::with_capacity(connections);
    for i in 0..connections {
        let (payload, permits) = (payload.clone(), permits.clone());
        let source = attacker_source(i, a.per_address);
        let addr = ctx.opts.addr;
        attackers.push(tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return Outcome::Refused;
            };
            attacker(source, addr, payload, end, permit).await
        }));
    }
    let mut outcomes = Vec::with_capacity(connections);
    for t in attackers {
        outcomes.push(t.await.unwrap_or(Outcome::Open));
    }
    let samples = probe.await.unwrap_or_default();
    let (fresh_ok, fresh_failed) = fresh.await.unwrap_or((0, 0));
    let peak_during = watch.sampler.peak();
    let mut closed_after: Vec<u64> = Vec::new();
    let (mut refused, mut open) = (0u64, 0u64);
    for o in &outcomes {
        match o {
            Outcome::Refused => refused += 1,
            Outcome::Closed(d) => closed_after.push(d.as_nanos() as u64),
            Outcome::Open => open += 1,
        }
    }
    if let Some(kib) = rss_before {
        r.metric("server_rss_before_kib", kib, "KiB");
    }
    r.metric("server_rss_peak_during_kib", peak_during, "KiB");
    r.latency("read_rtt", &Summary::of(samples));
    r.metric("fresh_connections_ok", fresh_ok, "");
    r.metric("fresh_connections_failed", fresh_failed, "");
    r.metric("attack_closed_by_server", closed_after.len() as u64, "");
    let closed = Summary::of(closed_after);
    if closed.count > 0 {
        r.metric("attack_closed_after_p50_s", closed.p50 / 1e6, "s");
        r.metric("attack_closed_after_max_s", closed.max / 1e6, "s");
    }
    r.metric("attack_refused_at_connect", refused, "");
    r.metric("attack_open_at_end", open, "");
    watch.finish(&mut r, None);
    // the attackers are gone now (their sockets dropped): what the server keeps
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(s) = ctx.server_sample() {
        r.metric("server_rss_after_attack_kib", s.rss_kib, "KiB");
    }
    r
}
