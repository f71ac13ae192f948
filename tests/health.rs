//! Health that tells the truth: a panic inside an actor ends the process (systemd then
//! restarts it) instead of leaving a listener that accepts and never answers while
//! /healthz says 200; and /healthz asks the node actors before it says "ok".

mod common;

use common::*;
use std::net::TcpStream;
use std::time::Duration;

fn get(gw: &Gateway, path: &str) -> String {
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    http_exchange(
        &mut s,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    )
}

#[test]
fn healthz_asks_the_nodes() {
    let gw = Gateway::start(FAST_CONFIG);
    let reply = get(&gw, "/healthz");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.200}");
    assert!(reply.contains("\"status\":\"ok\""), "{reply}");
}

#[test]
fn a_panic_in_an_actor_ends_the_process() {
    let mut gw = Gateway::start_with_env(FAST_CONFIG, &[("SECOP_GATEWAY_TEST_PANIC", "1")]);
    let mut c = gw.client();
    assert!(c.ask("*IDN?").starts_with("ISSE"));
    c.send("do io:communicate \"PANIC\"");
    let status = gw
        .exit_within(Duration::from_secs(5))
        .expect("the process ended within 5 s instead of living on as a zombie");
    assert!(!status.success(), "{status:?}");
    assert!(gw.stderr().contains("test hook"), "the panic is reported");
}

/// SIGTERM: clients are told (WebSocket close 1001, TCP closed), their connections are
/// drained, and the process ends with status 0 soon after.
#[test]
fn sigterm_closes_clients_and_ends_cleanly() {
    let mut gw = Gateway::start(FAST_CONFIG);
    let mut tcp = gw.client();
    assert!(tcp.ask("activate").starts_with("active"));
    let s = TcpStream::connect(gw.addr).expect("connect");
    let mut ws = WsClient::handshake(s, &gw.addr.to_string()).expect("upgrade");
    assert!(ws.ask("*IDN?").starts_with("ISSE"));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(tcp.closed_within(WAIT), "TCP client closed");
    // The WebSocket client gets a close frame (recv returns None on close or EOF).
    while ws.recv(WAIT).is_some() {}
    let status = gw
        .exit_within(Duration::from_secs(5))
        .expect("ended after SIGTERM");
    assert!(status.success(), "{status:?}");
}
