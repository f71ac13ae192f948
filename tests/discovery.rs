//! UDP discovery (RFC-105) over loopback: answers, announcements, garbage, the CLI.

mod common;

use common::*;
use serde_json::Value;
use std::net::UdpSocket;
use std::time::Duration;

fn config(announce_to: &str) -> String {
    format!(
        "{FAST_CONFIG}\n[discovery]\nenabled = true\naddress = \"127.0.0.1:0\"\nannounce = [\"{announce_to}\"]\n"
    )
}

fn udp_address(gw: &Gateway) -> String {
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.dir.join("ready.json")).expect("ready"))
            .expect("json");
    ready["udp"][0].as_str().expect("udp address").to_owned()
}

#[test]
fn announces_at_start_and_answers_discover_but_not_garbage() {
    let watcher = UdpSocket::bind("127.0.0.1:0").expect("bind");
    watcher.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let gw = Gateway::start(&config(&watcher.local_addr().expect("addr").to_string()));
    let mut buf = [0u8; 2048];
    let (n, _) = watcher.recv_from(&mut buf).expect("announcement");
    let announced: Value = serde_json::from_slice(&buf[..n]).expect("JSON");
    assert_eq!(announced["SECoP"], "node");
    assert_eq!(announced["port"], gw.addr.port());
    assert_eq!(announced["equipment_id"], "test_node");
    assert!(n <= 508);

    let udp = udp_address(&gw);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok();
    for garbage in [&b"\xff\xfe"[..], b"{\"SECoP\":\"node\"}", b"hello", b""] {
        client.send_to(garbage, &udp).expect("send");
        assert!(
            client.recv_from(&mut buf).is_err(),
            "no answer to {garbage:?}"
        );
    }
    client.set_read_timeout(Some(Duration::from_secs(5))).ok();
    client
        .send_to(br#"{"SECoP":"discover"}"#, &udp)
        .expect("send");
    let (n, _) = client.recv_from(&mut buf).expect("answer after garbage");
    let answer: Value = serde_json::from_slice(&buf[..n]).expect("JSON");
    assert_eq!(answer["port"], gw.addr.port());
    assert_eq!(
        answer["firmware"],
        format!("secop-gateway {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(answer["description"], "integration test node");
}

#[test]
fn discover_subcommand_lists_the_node() {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let gw = Gateway::start(&config(&sink.local_addr().expect("addr").to_string()));
    let udp = udp_address(&gw);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secop-gateway"))
        .args(["discover", "--json", "--wait", "1", "--target", &udp])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let found: Value = serde_json::from_str(line.lines().next().expect("one node")).expect("JSON");
    assert_eq!(found["node"]["equipment_id"], "test_node");
    assert_eq!(found["node"]["port"], gw.addr.port());
}

/// 200 discover datagrams in a burst from one socket (loopback only) get a bounded
/// number of answers: one per source address and second (and the global limit), not
/// one each, so the node cannot be used as a traffic amplifier. The rest are counted.
#[test]
fn discover_replies_are_rate_limited() {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let gw = Gateway::start(&config(&sink.local_addr().expect("addr").to_string()));
    let udp = udp_address(&gw);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let start = std::time::Instant::now();
    for _ in 0..200 {
        client
            .send_to(br#"{"SECoP":"discover"}"#, &udp)
            .expect("send");
    }
    let mut replies = 0u32;
    let mut buf = [0u8; 2048];
    client
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .ok();
    while let Ok((n, _)) = client.recv_from(&mut buf) {
        let answer: Value = serde_json::from_slice(&buf[..n]).expect("JSON");
        assert_eq!(answer["SECoP"], "node");
        replies += 1;
    }
    // At most one answer per second to one address (the read timeout ends the wait).
    let seconds = start.elapsed().as_secs_f64();
    assert!(replies > 0, "discovery still answers");
    assert!(
        f64::from(replies) <= seconds.ceil() + 1.0,
        "{replies} replies in {seconds:.1} s"
    );
    let mut http = std::net::TcpStream::connect(gw.addr).expect("connect");
    std::io::Write::write_all(
        &mut http,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .expect("send");
    let mut page = String::new();
    std::io::Read::read_to_string(&mut http, &mut page).expect("metrics page");
    let dropped: u32 = page
        .lines()
        .find_map(|l| l.strip_prefix("secop_gateway_discovery_dropped_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dropped counter in {page}"));
    assert!(
        dropped > 0 && dropped <= 200 - replies,
        "{dropped} dropped, {replies} answered"
    );
}
