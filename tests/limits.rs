//! A memory and time budget for every transport, over real TCP: each limit is hit on
//! purpose and the offending connection is closed, while everybody else is served.
//! Small limits keep the tests short; no assertion is about speed.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// FAST_CONFIG with more `[listen]` keys (its `write_timeout` unless given).
fn config(extra_listen: &str) -> String {
    let extra = if extra_listen.contains("write_timeout") {
        extra_listen.to_owned()
    } else {
        format!("write_timeout = 3.0\n{extra_listen}")
    };
    FAST_CONFIG
        .replace("write_timeout = 3.0\n", "")
        .replace("[listen]\n", &format!("[listen]\n{extra}\n"))
}

/// A connection with a tiny receive buffer, so that a client that does not read
/// fills the gateway's side quickly.
fn connect_small(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect_timeout(&addr.into(), WAIT).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).ok();
    stream
}

/// Write `bytes` from a thread, giving up when the gateway stops taking them.
fn flood(stream: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = stream.try_clone().expect("clone");
    w.set_write_timeout(Some(Duration::from_secs(10))).ok();
    std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    })
}

/// Read until the peer closes (EOF or reset: `true`) or `timeout` (`false`); returns
/// what arrived too.
fn read_to_end_within(stream: &mut TcpStream, timeout: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, out);
        }
        stream.set_read_timeout(Some(left)).ok();
        match stream.read(&mut buf) {
            Ok(0) => return (true, out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, out)
            }
            Err(_) => return (true, out),
        }
    }
}

const WS_OPEN: &str = "secop_gateway_connections_open{transport=\"ws\"}";

fn text_frame(text: &str) -> Vec<u8> {
    masked_frame(0x81, text.len(), text.as_bytes())
}

fn ws_connect(gw: &Gateway, stream: TcpStream) -> WsClient {
    WsClient::handshake(stream, &gw.addr.to_string()).expect("WebSocket handshake")
}

#[test]
fn pipelined_http_without_reading_is_bounded_and_dropped() {
    let gw = Gateway::start(&config("write_timeout = 1.0"));
    let mut s = connect_small(gw.addr);
    // 5000 pipelined requests, each answered with the whole metrics page (tens of KB),
    // and not a byte read.
    let requests = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(5000);
    let writer = flood(&s, requests.into_bytes());
    let mut c = gw.client();
    assert!(c.ask("ping busy").starts_with("pong busy"), "others served");
    // Longer than the write timeout: by now the gateway has given up on this client.
    std::thread::sleep(Duration::from_secs(3));
    let (closed, got) = read_to_end_within(&mut s, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    let answered = text.matches("HTTP/1.1 200").count();
    assert!(
        closed,
        "the non-reading client was dropped ({answered} answered)"
    );
    assert!(
        answered < 1000,
        "only what fits in the socket buffers was answered, not all 5000 ({answered})"
    );
    writer.join().ok();
    assert!(
        c.ask("ping after").starts_with("pong after"),
        "others served"
    );
    assert!(
        counter(
            &metrics(&gw),
            "secop_gateway_slow_clients_disconnected_total"
        ) >= 1.0
    );
}

#[test]
fn websocket_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let gw = Gateway::start(&config("write_timeout = 1.0"));
    let ws = ws_connect(&gw, connect_small(gw.addr));
    let mut s = ws.stream;
    // Updates flow, and 3000 descriptions are asked for; nothing is read.
    let mut frames = text_frame("activate");
    for _ in 0..3000 {
        frames.extend(text_frame("describe"));
    }
    let writer = flood(&s, frames);
    let mut c = gw.client();
    assert!(c.ask("ping busy").starts_with("pong busy"), "others served");
    // Longer than the write timeout, and still not a byte read.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        counter(&metrics(&gw), WS_OPEN),
        0.0,
        "the session ended before the client read anything"
    );
    let (closed, _) = read_to_end_within(&mut s, Duration::from_secs(5));
    assert!(closed, "the non-reading WebSocket client was dropped");
    writer.join().ok();
    let mut other = ws_connect(&gw, TcpStream::connect(gw.addr).expect("connect"));
    assert!(other.ask("ping ws").starts_with("pong ws"), "others served");
    assert!(
        counter(
            &metrics(&gw),
            "secop_gateway_slow_clients_disconnected_total"
        ) >= 1.0
    );
}

#[test]
fn websocket_ping_timeout_fires_while_sending_is_blocked() {
    // The write timeout is far away: only the ping timeout can end this client.
    let gw = Gateway::start(&config(
        "write_timeout = 60.0\nwebsocket.ping_interval = 0.5\nwebsocket.ping_timeout = 1.5",
    ));
    let ws = ws_connect(&gw, connect_small(gw.addr));
    let mut s = ws.stream;
    // Far more than the socket buffers hold: the gateway's sends block.
    let mut frames = text_frame("activate");
    for _ in 0..3000 {
        frames.extend(text_frame("describe"));
    }
    let writer = flood(&s, frames);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        counter(&metrics(&gw), WS_OPEN),
        0.0,
        "the ping timeout ended the session before the client read anything"
    );
    let (closed, _) = read_to_end_within(&mut s, Duration::from_secs(5));
    assert!(
        closed,
        "a client that answers no ping is dropped, even if sends block"
    );
    writer.join().ok();
    let mut c = gw.client();
    assert!(
        c.ask("ping after").starts_with("pong after"),
        "others served"
    );
}

/// The start of a SECoP line of about `n` bytes (a number too long to be valid).
fn unfinished(n: usize) -> Vec<u8> {
    let mut line = b"change T:target ".to_vec();
    line.resize(n, b'7');
    line
}

/// Budget 280,000 bytes; lines up to 250,000 bytes.
fn budget_config() -> String {
    FAST_CONFIG.replace(
        "max_line_bytes = 65536",
        "max_line_bytes = 250000\nmax_unfinished_input_bytes = 280000\n\
         websocket.max_message_bytes = 100000",
    )
}

#[test]
fn unfinished_lines_over_the_budget_close_the_largest_holder() {
    let gw = Gateway::start(&budget_config());
    let mut normal = gw.client();
    assert!(normal.ask("ping a").starts_with("pong a"));
    // 240,000 + 60,000 bytes of unfinished lines exceed 280,000 (a read buffer is
    // charged with its capacity: at least its bytes, at most about twice). Whatever
    // the order in which the bytes arrive, the 240,000-byte holder is the largest
    // when the budget is crossed.
    let mut big = gw.client();
    big.send_raw(&unfinished(240_000));
    let mut second = gw.client();
    second.send_raw(&unfinished(60_000));
    assert!(big.closed_within(WAIT), "the largest holder was closed");
    assert!(
        !second.closed_within(Duration::from_millis(500)),
        "the other holder stays"
    );
    // It finishes its line and is answered.
    second.send_raw(b"\n");
    assert!(
        second.line().starts_with("error_change T:target"),
        "second holder served"
    );
    assert!(second.ask("ping b").starts_with("pong b"));
    assert!(normal.ask("ping c").starts_with("pong c"), "others served");
    let m = metrics(&gw);
    assert_eq!(
        counter(&m, "secop_gateway_input_budget_closed_total"),
        1.0,
        "counted once"
    );
}

#[test]
fn unfinished_websocket_messages_count_against_the_same_budget() {
    let config = FAST_CONFIG.replace(
        "max_line_bytes = 65536",
        "max_line_bytes = 131072\nmax_unfinished_input_bytes = 262144\n\
         websocket.max_message_bytes = 131072",
    );
    let gw = Gateway::start(&config);
    // 125,000 bytes of a 130,000-byte frame (charged twice: actix's frame buffer
    // grows by doubling), then a 20,000-byte unfinished line: over 262,144, and the
    // WebSocket message is the largest holder however the bytes interleave.
    let ws = ws_connect(&gw, TcpStream::connect(gw.addr).expect("connect"));
    let mut w = ws.stream;
    w.write_all(&masked_frame(0x81, 130_000, &vec![b'z'; 125_000]))
        .expect("send");
    let mut line = gw.client();
    line.send_raw(&unfinished(20_000));
    let (closed, _) = read_to_end_within(&mut w, WAIT);
    assert!(
        closed,
        "the WebSocket holding the largest unfinished message was closed"
    );
    assert!(
        !line.closed_within(Duration::from_millis(500)),
        "the line holder stays"
    );
    line.send_raw(b"\n");
    assert!(line.line().starts_with("error_change T:target"));
    let mut other = ws_connect(&gw, TcpStream::connect(gw.addr).expect("connect"));
    assert!(other.ask("ping ws").starts_with("pong ws"), "others served");
    assert_eq!(
        counter(&metrics(&gw), "secop_gateway_input_budget_closed_total"),
        1.0
    );
}

#[test]
fn connections_without_a_first_request_are_closed() {
    let gw = Gateway::start(&config("first_request_timeout = 1.0"));
    let mut silent = gw.client();
    let mut partial = gw.client();
    partial.send_raw(b"read T:val");
    let mut head = TcpStream::connect(gw.addr).expect("connect");
    head.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("send");
    let mut talker = gw.client();
    assert!(talker.ask("*IDN?").starts_with("ISSE"));
    assert!(silent.closed_within(WAIT), "a silent connection is closed");
    assert!(
        partial.closed_within(WAIT),
        "a connection that sent part of a line and stalled is closed"
    );
    let (closed, _) = read_to_end_within(&mut head, WAIT);
    assert!(closed, "an unfinished HTTP request head is closed");
    // A client that spoke at once may stay idle as long as it likes.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(talker.ask("ping idle").starts_with("pong idle"));
    let m = metrics(&gw);
    assert!(
        counter(
            &m,
            "secop_gateway_connections_refused_total{reason=\"first_request_timeout\"}"
        ) >= 3.0,
        "counted"
    );
}

#[test]
fn at_the_connection_limit_the_oldest_silent_connection_makes_room() {
    let gw = Gateway::start(&config("max_connections = 4\nfirst_request_timeout = 60"));
    let mut talker = gw.client();
    assert!(talker.ask("*IDN?").starts_with("ISSE"));
    let mut oldest = gw.client();
    let mut partial = gw.client();
    partial.send_raw(b"read T:val");
    let mut young = gw.client();
    // Silent for longer than the grace of 2 s: the oldest of them may be evicted.
    std::thread::sleep(Duration::from_millis(2500));
    let mut newcomer = gw.client();
    assert!(
        newcomer.ask("*IDN?").starts_with("ISSE"),
        "a new client gets a slot"
    );
    assert!(
        oldest.closed_within(WAIT),
        "the oldest silent connection made room"
    );
    let mut second = gw.client();
    assert!(second.ask("ping x").starts_with("pong x"));
    assert!(
        partial.closed_within(WAIT),
        "then the one that sent part of a line and stalled"
    );
    // The clients that spoke are never evicted; young is next in line.
    assert!(talker.ask("ping t").starts_with("pong t"));
    assert!(newcomer.ask("ping n").starts_with("pong n"));
    let mut third = gw.client();
    assert!(third.ask("ping y").starts_with("pong y"));
    assert!(young.closed_within(WAIT));
    // Now everybody has spoken: the next one is turned away.
    let mut fourth = gw.client();
    assert!(
        fourth.closed_within(WAIT),
        "no silent connection left to evict"
    );
    assert!(talker.ask("ping t").starts_with("pong t"));
    let m = metrics_when_full(&gw, &mut talker);
    assert_eq!(
        counter(
            &m,
            "secop_gateway_connections_refused_total{reason=\"evicted\"}"
        ),
        3.0
    );
}

/// The metrics page when every slot is taken: free one first.
fn metrics_when_full(gw: &Gateway, spare: &mut Client) -> String {
    spare.stream.shutdown(std::net::Shutdown::Both).ok();
    std::thread::sleep(Duration::from_millis(300));
    metrics(gw)
}

#[test]
fn an_unfinished_http_request_head_counts_against_the_budget() {
    let config = FAST_CONFIG.replace(
        "max_line_bytes = 65536",
        "max_line_bytes = 32768\nmax_unfinished_input_bytes = 65536\n\
         websocket.max_message_bytes = 16384",
    );
    let gw = Gateway::start(&config);
    let mut head = TcpStream::connect(gw.addr).expect("connect");
    let mut bytes = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ".to_vec();
    bytes.resize(70_000, b'a');
    head.write_all(&bytes).expect("send");
    // Well before the handshake timeout (10 s).
    let (closed, got) = read_to_end_within(&mut head, WAIT);
    assert!(closed, "the holder of the unfinished head was closed");
    assert!(got.is_empty(), "without an answer");
    let mut c = gw.client();
    assert!(
        c.ask("ping after").starts_with("pong after"),
        "others served"
    );
    assert_eq!(
        counter(&metrics(&gw), "secop_gateway_input_budget_closed_total"),
        1.0
    );
}
