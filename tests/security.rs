//! The attacks of a hostile network and a confused browser, over real TCP against the
//! real binary: cross-protocol requests, HTTP header lines on a SECoP connection, DNS
//! rebinding, a lax WebSocket handshake, and clients of different networks under
//! access rules. Each of these drove the instruments (or leaked their values) before.

mod common;

use common::*;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// The current target of T, read over a fresh connection.
fn target(gw: &Gateway) -> f64 {
    let mut addr = gw.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    let mut c = Client::connect(addr);
    value(&c.ask("read T:target"))
        .as_f64()
        .expect("T:target is a number")
}

#[test]
fn any_http_method_with_a_secop_body_is_http_and_changes_nothing() {
    let gw = Gateway::start(FAST_CONFIG);
    let before = target(&gw);
    let body = "x\nchange T:target 123\ndo io:communicate \"VAL 7\"\n";
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "FOO",
    ] {
        for host in [gw.addr.to_string(), "attacker.example".to_owned()] {
            let mut s = TcpStream::connect(gw.addr).expect("connect");
            let request = format!(
                "{method} / HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\n\
                 Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let response = http_exchange(&mut s, request.as_bytes());
            let expected = if host.starts_with("attacker") {
                "HTTP/1.1 421"
            } else {
                "HTTP/1.1 405"
            };
            assert!(
                response.starts_with(expected),
                "{method} with Host {host} -> {response:.200}"
            );
            assert!(!response.contains("changed"), "{response}");
            assert!(!response.contains("done"), "{response}");
        }
    }
    // A body sent with a POST that has no Content-Length is no SECoP either.
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    let response = http_exchange(
        &mut s,
        format!("POST / HTTP/1.1\r\nHost: {}\r\n\r\n{body}", gw.addr).as_bytes(),
    );
    assert!(response.starts_with("HTTP/1.1 4"), "{response:.200}");
    assert!(!response.contains("changed"), "{response}");
    assert_eq!(target(&gw), before, "no request body was run as SECoP");
}

#[test]
fn http_header_lines_close_a_secop_connection_before_anything_runs() {
    let gw = Gateway::start(FAST_CONFIG);
    let before = target(&gw);
    for header in [
        "Host: 127.0.0.1:10767",
        "Origin: http://evil.example",
        "Content-Type: text/plain",
        "content-length: 40",
        "User-Agent: Mozilla/5.0",
    ] {
        let mut c = gw.client();
        assert!(c.ask("read T:value").starts_with("reply T:value"));
        c.send_raw(format!("x\n{header}\nchange T:target 123\n").as_bytes());
        let mut got = Vec::new();
        while let Some(line) = c.line_within(WAIT) {
            got.push(line);
        }
        assert!(
            !got.iter().any(|l| l.starts_with("changed")),
            "{header}: {got:?}"
        );
        assert!(c.closed_within(WAIT), "{header}: connection closed");
    }
    assert_eq!(target(&gw), before);
    assert_eq!(
        counter(&metrics(&gw), "secop_gateway_cross_protocol_closed_total"),
        5.0
    );
    // A SECoP client that sends no such line is unaffected.
    let mut c = gw.client();
    let reply = c.ask("do io:communicate \"Host: x\"");
    assert!(reply.contains(" io:communicate "), "{reply}");
    assert!(c.ask("*IDN?").starts_with("ISSE"));
}

#[test]
fn a_rebinding_host_gets_neither_data_nor_a_websocket() {
    let gw = Gateway::start(FAST_CONFIG);
    let port = gw.addr.port();
    let evil = format!("attacker.example:{port}");
    for path in ["/", "/metrics", "/healthz", "/ws"] {
        let mut s = TcpStream::connect(gw.addr).expect("connect");
        let response = http_exchange(
            &mut s,
            format!(
                "GET {path} HTTP/1.1\r\nHost: {evil}\r\nOrigin: http://{evil}\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        );
        assert!(
            response.starts_with("HTTP/1.1 421"),
            "{path}: {response:.200}"
        );
        assert!(
            !response.contains("test_node"),
            "{path}: no data of the node"
        );
        let mut s = TcpStream::connect(gw.addr).expect("connect");
        let response = http_exchange(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            response.starts_with("HTTP/1.1 421"),
            "{path}: {response:.200}"
        );
        assert!(!response.contains("T:value") && !response.contains("secop_gateway_"));
    }
    // The status page under the gateway's own name, hardened against being framed or
    // run as a script by another site.
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    let page = http_exchange(
        &mut s,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    );
    assert!(page.starts_with("HTTP/1.1 200"), "{page:.200}");
    assert!(
        page.contains("x-content-type-options: nosniff"),
        "{page:.400}"
    );
    assert!(page.contains("x-frame-options: DENY"), "{page:.400}");
    // The gateway's own names still work: the address, and localhost.
    for host in [gw.addr.to_string(), format!("localhost:{port}")] {
        let s = TcpStream::connect(gw.addr).expect("connect");
        let mut ws = WsClient::handshake(s, &host).expect("upgrade with an allowed Host");
        assert!(ws.ask("*IDN?").starts_with("ISSE"));
    }
}

#[test]
fn lax_websocket_handshakes_are_refused() {
    let gw = Gateway::start(FAST_CONFIG);
    let host = gw.addr;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";
    for (what, request) in [
        (
            "HTTP/1.0 upgrade",
            format!("GET / HTTP/1.0\r\nHost: {host}\r\n{upgrade}{key}\r\n"),
        ),
        (
            "repeated key",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n{upgrade}{key}{key}\r\n"),
        ),
        (
            "repeated Origin",
            format!(
                "GET / HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
                 Origin: http://evil.example\r\n{upgrade}{key}\r\n"
            ),
        ),
        (
            "repeated Host",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n{upgrade}{key}\r\n"),
        ),
        (
            "cross-origin",
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nOrigin: http://127.0.0.1:1\r\n{upgrade}{key}\r\n"),
        ),
    ] {
        let mut s = TcpStream::connect(gw.addr).expect("connect");
        let response = http_exchange(&mut s, request.as_bytes());
        let status = if what == "cross-origin" { 403 } else { 400 };
        // actix answers in the request's version
        let ok = ["HTTP/1.1", "HTTP/1.0"]
            .iter()
            .any(|v| response.starts_with(&format!("{v} {status}")));
        assert!(ok, "{what}: {response:.200}");
    }
    // The same request done right is accepted, same-origin Origin included.
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    let response = http_exchange(
        &mut s,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n{upgrade}{key}\r\n")
            .as_bytes(),
    );
    assert!(response.starts_with("HTTP/1.1 101"), "{response:.200}");
}

const RULES: &str = r#"
[[node.access]]
networks = ["127.0.0.2"]
access = "full"
[[node.access]]
networks = ["127.0.0.3/32"]
access = "read_only"
[[node.access]]
networks = ["::1/128"]
access = "deny"
[[node.access]]
networks = ["127.0.0.1"]
access = "full"
"#;

fn with_rules(config: &str, rules: &str) -> String {
    config.replace("[listen]\n", &format!("{rules}\n[listen]\n"))
}

#[test]
fn access_rules_by_network_on_tcp_and_websocket() {
    let gw = Gateway::start_on(&with_rules(FAST_CONFIG, RULES), "[::]:0");
    let port = gw.addr.port();
    let v4: SocketAddr = ([127, 0, 0, 1], port).into();
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let ip = |s: &str| s.parse::<IpAddr>().expect("address");

    // 127.0.0.2: full, over TCP and WebSocket.
    let mut full = Client::over(connect_from(ip("127.0.0.2"), v4).expect("connect"));
    assert!(full
        .ask("change T:target 20")
        .starts_with("changed T:target"));
    assert!(full
        .ask("do io:communicate \"*IDN?\"")
        .starts_with("done io:communicate"));
    let s = connect_from(ip("127.0.0.2"), v4).expect("connect");
    let mut ws = WsClient::handshake(s, &v4.to_string()).expect("upgrade");
    assert!(ws.ask("change T:target 21").starts_with("changed T:target"));

    // 127.0.0.3: read-only, over TCP and WebSocket; its description says so.
    let mut ro = Client::over(connect_from(ip("127.0.0.3"), v4).expect("connect"));
    assert!(ro.ask("read T:target").starts_with("reply T:target"));
    assert_eq!(error_class(&ro.ask("change T:target 30")), "ReadOnly");
    assert_eq!(error_class(&ro.ask("do io:communicate \"x\"")), "Disabled");
    assert_eq!(error_class(&ro.ask("do T:stop")), "Disabled");
    let described = parts(&ro.ask("describe")).2.expect("description");
    assert_eq!(
        described["modules"]["T"]["accessibles"]["target"]["readonly"],
        serde_json::Value::Bool(true)
    );
    let s = connect_from(ip("127.0.0.3"), v4).expect("connect");
    let mut ws = WsClient::handshake(s, &v4.to_string()).expect("upgrade");
    assert_eq!(error_class(&ws.ask("change T:target 30")), "ReadOnly");
    assert_eq!(error_class(&ws.ask("do io:communicate \"x\"")), "Disabled");
    // A full client's description is unchanged.
    let described = parts(&full.ask("describe")).2.expect("description");
    assert_eq!(
        described["modules"]["T"]["accessibles"]["target"]["readonly"],
        serde_json::Value::Bool(false)
    );

    // ::1: denied; closed before a byte is read, over TCP and WebSocket alike.
    let mut denied = Client::over(connect_from(ip("::1"), v6).expect("connect"));
    denied.stream.write_all(b"*IDN?\nchange T:target 40\n").ok();
    assert!(denied.closed_within(WAIT), "denied client closed");
    let s = connect_from(ip("::1"), v6).expect("connect");
    assert!(WsClient::handshake(s, &v6.to_string()).is_err());
    // 127.0.0.4 matches no rule: denied too.
    let mut unknown = Client::over(connect_from(ip("127.0.0.4"), v4).expect("connect"));
    unknown.stream.write_all(b"*IDN?\n").ok();
    assert!(unknown.closed_within(WAIT));

    assert_eq!(target(&gw), 21.0, "only the full clients changed T:target");
}

#[test]
fn per_address_connection_limit_keeps_others_served() {
    let config = FAST_CONFIG.replace("[listen]\n", "[listen]\nmax_connections_per_address = 5\n");
    let gw = Gateway::start(&config);
    let ip = |s: &str| s.parse::<IpAddr>().expect("address");
    let mut hogs: Vec<Client> = (0..5)
        .map(|_| Client::over(connect_from(ip("127.0.0.5"), gw.addr).expect("connect")))
        .collect();
    let mut sixth = Client::over(connect_from(ip("127.0.0.5"), gw.addr).expect("connect"));
    assert!(
        sixth.closed_within(WAIT),
        "the sixth connection of one address is closed"
    );
    let mut other = Client::over(connect_from(ip("127.0.0.6"), gw.addr).expect("connect"));
    assert!(other.ask("*IDN?").starts_with("ISSE"));
    assert!(hogs[0].ask("*IDN?").starts_with("ISSE"));
    // A slot freed is a slot again.
    drop(hogs.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Client::over(connect_from(ip("127.0.0.5"), gw.addr).expect("connect"));
    assert!(again.ask("*IDN?").starts_with("ISSE"));
}

use std::io::Write;
