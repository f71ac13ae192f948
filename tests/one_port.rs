//! The shared port: sniffing the first bytes of a connection (RFC-107), over raw sockets.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn config(extra_listen: &str) -> String {
    FAST_CONFIG.replace("[listen]\n", &format!("[listen]\n{extra_listen}\n"))
}

/// Read until the peer closes or `timeout`; returns what arrived.
fn read_all(stream: &mut TcpStream, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .ok();
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn http_request_trickling_in_is_still_http() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    s.set_nodelay(true).ok();
    for piece in [
        &b"G"[..],
        b"E",
        b"T",
        b" /",
        b" HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"Connection: close\r\n\r\n",
    ] {
        s.write_all(piece).expect("send");
        std::thread::sleep(Duration::from_millis(150));
    }
    let response = read_all(&mut s, WAIT);
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n"),
        "{response:.200}"
    );
    assert!(response.contains("test_node"), "status page names the node");
}

#[test]
fn lines_starting_with_g_are_secop() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    assert_eq!(
        c.ask("GO home"),
        r#"error_GO home ["ProtocolError","unknown action \"GO\"",{}]"#
    );
    assert_eq!(
        c.ask("GET"),
        r#"error_GET  ["ProtocolError","unknown action \"GET\"",{}]"#
    );
    // after the first line the connection is SECoP for good: a later GET / is SECoP too
    assert_eq!(
        c.ask("GET / HTTP/1.1"),
        r#"error_GET / ["ProtocolError","unknown action \"GET\"",{}]"#
    );
    let mut c = gw.client();
    c.send_raw(b"G");
    std::thread::sleep(Duration::from_millis(200));
    c.send_raw(b"ET\n");
    assert_eq!(
        c.line(),
        r#"error_GET  ["ProtocolError","unknown action \"GET\"",{}]"#
    );
    assert!(c.ask("*IDN?").starts_with("ISSE"));
}

#[test]
fn half_open_handshakes_do_not_hold_up_anyone_and_time_out() {
    let gw = Gateway::start(&config(
        "handshake_timeout = 1.0\nmax_connections_per_address = 1000",
    ));
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).expect("connect");
            s.write_all(b"G").expect("send");
            s
        })
        .collect();
    // Everyone else is served normally meanwhile, raw SECoP and HTTP alike.
    let mut c = gw.client();
    assert!(c.ask("*IDN?").starts_with("ISSE"));
    assert!(c.ask("read T:value").starts_with("reply T:value"));
    let mut h = TcpStream::connect(gw.addr).expect("connect");
    h.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    assert!(read_all(&mut h, WAIT).starts_with("HTTP/1.1 200"));
    // The half-open ones are dropped after the handshake timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in stalled.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = read_all(s, left.max(Duration::from_millis(10)));
        assert_eq!(got, "", "nothing is sent to a half-open handshake");
    }
    assert!(Instant::now() < deadline, "all 200 closed within the bound");
    // and the node still serves
    assert!(c.ask("ping x").starts_with("pong x"));
}

#[test]
fn silent_clients_wait_unless_an_idle_timeout_is_set() {
    let gw = Gateway::start(&config("handshake_timeout = 0.5"));
    let mut quiet = gw.client();
    // longer than the handshake timeout: silence before the first byte is legitimate
    assert_eq!(quiet.line_within(Duration::from_millis(1200)), None);
    assert!(quiet.ask("*IDN?").starts_with("ISSE"));

    let gw = Gateway::start(&config("idle_timeout = 0.5"));
    let mut quiet = gw.client();
    assert!(
        quiet.closed_within(Duration::from_secs(5)),
        "idle client dropped"
    );
    let mut talker = gw.client();
    assert!(
        talker.ask("*IDN?").starts_with("ISSE"),
        "a client that speaks is served"
    );
}

#[test]
fn unknown_paths_and_plain_get() {
    let gw = Gateway::start(FAST_CONFIG);
    for (request, status) in [
        (
            "GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400",
        ),
        ("GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", "HTTP/1.1 400"),
    ] {
        let mut s = TcpStream::connect(gw.addr).expect("connect");
        s.write_all(request.as_bytes()).expect("send");
        let response = read_all(&mut s, WAIT);
        assert!(
            response.starts_with(status),
            "{request:?} -> {response:.120}"
        );
    }
}
