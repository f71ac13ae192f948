//! A gateway re-exporting another gateway (the upstream client against a real SEC
//! node of ours): forwarded reads, changes, commands and checks, with error classes
//! preserved.

mod common;

use common::*;
use std::io::{Read, Write};

fn metrics(gw: &Gateway) -> String {
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn chained_gateways_forward_everything() {
    let upstream = Gateway::start(FAST_CONFIG);
    let downstream = Gateway::start(&format!(
        "[node]\nequipment_id = \"downstream\"\ndescription = \"re-exports upstream\"\n\
         [discovery]\nenabled = false\n\
         [[remote]]\nname = \"up\"\naddress = \"{}\"\nprefix = \"up_\"\ntimeout = 3\n",
        upstream.addr
    ));
    let mut c = downstream.client();
    let d = parts(&c.ask("describe")).2.expect("description");
    assert_eq!(d["modules"]["up_T"]["_remote_equipment_id"], "test_node");
    assert!(c.ask("read up_T:value").starts_with("reply up_T:value ["));
    assert!(c
        .ask("change up_T:target 20")
        .starts_with("changed up_T:target [20"));
    assert_eq!(
        value(&c.ask("do up_io:communicate \"*IDN?\"")),
        "SIMULATED,SCPI-INSTRUMENT,0,1.0"
    );
    assert_eq!(value(&c.ask("do up_io:communicate \"BOGUS\"")), "ERR");
    assert_eq!(
        error_class(&c.ask("change up_ps:_limits {\"voltage\": 99}")),
        "RangeError"
    );
    let before = counter(
        &metrics(&upstream),
        "secop_gateway_messages_received_total{action=\"check\"}",
    );
    let r = c.ask("check up_T:target 30");
    assert!(r.starts_with("checked up_T:target [30,"), "{r}");
    let after = counter(
        &metrics(&upstream),
        "secop_gateway_messages_received_total{action=\"check\"}",
    );
    assert_eq!(after, before + 1.0, "the check went to the upstream node");
    // activation and updates through the chain
    assert_eq!(c.request("activate up_p").1, "active up_p");
    assert!(c
        .wait_event(WAIT, |l| l.starts_with("update up_p:value ["))
        .is_some());
}

#[test]
fn a_remote_node_over_websocket() {
    let upstream = Gateway::start(FAST_CONFIG);
    let downstream = Gateway::start(&format!(
        "[node]\nequipment_id = \"downstream_ws\"\ndescription = \"re-exports upstream over WebSocket\"\n\
         [discovery]\nenabled = false\n\
         [[remote]]\nname = \"up\"\naddress = \"ws://{}/ws\"\ntimeout = 3\n",
        upstream.addr
    ));
    let mut c = downstream.client();
    assert!(c.ask("read T:value").starts_with("reply T:value ["));
    assert!(c
        .ask("change ps:target 3")
        .starts_with("changed ps:target [3"));
    assert_eq!(c.request("activate p").1, "active p");
    assert!(c
        .wait_event(WAIT, |l| l.starts_with("update p:value ["))
        .is_some());
}

/// Sends a signal to a process (the upstream gateway) with the system's `kill`.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// A gateway re-exporting `upstream` (prefix `up_`) whose node waits 20 s for its
/// devices, so that the remote's own `timeout` (seconds) is what the client sees.
fn patient_downstream(upstream: &Gateway, remote_timeout: f64) -> Gateway {
    Gateway::start(&format!(
        "[node]\nequipment_id = \"downstream\"\ndescription = \"re-exports upstream\"\n\
         device_timeout = 20\n[discovery]\nenabled = false\n\
         [[remote]]\nname = \"up\"\naddress = \"{}\"\nprefix = \"up_\"\ntimeout = {remote_timeout}\n",
        upstream.addr
    ))
}

#[test]
fn an_upstream_that_stops_answering_gets_a_timeout_error() {
    let upstream = Gateway::start(FAST_CONFIG);
    let downstream = patient_downstream(&upstream, 0.5);
    let mut c = downstream.client();
    assert!(c.ask("read up_T:value").starts_with("reply up_T:value ["));
    // The upstream process freezes: its kernel still takes the request, nobody answers.
    signal(upstream.pid(), "-STOP");
    let sent = std::time::Instant::now();
    let r = c.ask("read up_T:value");
    let took = sent.elapsed();
    signal(upstream.pid(), "-CONT");
    assert!(
        r.starts_with("error_read up_T:value [\"TimeoutError\",\"the remote node did not answer"),
        "{r}"
    );
    // the remote's 0.5 s, not the node's 20 s
    assert!(
        took >= std::time::Duration::from_millis(500) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
    // and the upstream, awake again, is used again
    assert!(c.ask("read up_T:value").starts_with("reply up_T:value ["));
}

#[test]
fn a_late_answer_is_not_taken_for_the_next_request() {
    let upstream = Gateway::start(FAST_CONFIG);
    let downstream = patient_downstream(&upstream, 1.0);
    let mut c = downstream.client();
    assert!(c
        .ask("change up_ps:target 1")
        .starts_with("changed up_ps:target [1"));
    signal(upstream.pid(), "-STOP");
    let r = c.ask("change up_ps:target 3");
    assert!(
        r.starts_with("error_change up_ps:target [\"TimeoutError\""),
        "{r}"
    );
    // Sent while the upstream still sleeps; it then answers both changes, in order.
    c.send("change up_ps:target 5");
    std::thread::sleep(std::time::Duration::from_millis(100));
    signal(upstream.pid(), "-CONT");
    let r = c.until_reply().1;
    assert!(r.starts_with("changed up_ps:target [5"), "{r}");
}
