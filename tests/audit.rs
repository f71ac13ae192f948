//! The audit trail over real TCP: a scripted session yields exactly the expected
//! records, refused HTTP requests are recorded too, and a flood of changes neither
//! stalls the node nor loses count (what the bounded queue cannot take is counted).

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The records in the audit file once there are at least `n` (bounded wait).
fn records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // A line still being written (no LF yet) is not counted.
        let lines: Vec<Value> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config(dir: &Path, extra: &str) -> String {
    let file = dir.join("audit.jsonl");
    format!(
        "{FAST_CONFIG}\n[audit]\nfile = {:?}\n{extra}\n",
        file.to_str().expect("path")
    )
}

#[test]
fn a_scripted_session_gives_exactly_its_records() {
    let dir = Gateway::scratch();
    let gw = Gateway::start_in(dir.clone(), &config(&dir, ""));
    let mut c = gw.client();
    let me = c.stream.local_addr().expect("local address").to_string();
    assert!(c.ask("read T:value").starts_with("reply"));
    assert!(c.ask("change T:target 20").starts_with("changed T:target"));
    assert_eq!(error_class(&c.ask("change T:target 9999")), "RangeError");
    assert_eq!(error_class(&c.ask("change T:value 3")), "ReadOnly");
    assert_eq!(error_class(&c.ask("change T:nothing 3")), "NoSuchParameter");
    assert!(c
        .ask("do io:communicate \"*IDN?\"")
        .starts_with("done io:communicate"));
    assert!(c.ask("do T:stop").starts_with("done T:stop"));
    assert!(c.ask("describe").starts_with("describing"));
    assert!(c.ask("check T:target 30").starts_with("checked"));

    let got = records(&dir.join("audit.jsonl"), 6);
    assert_eq!(got.len(), 6, "{got:#?}");
    let session = got[0]["session"].clone();
    assert!(session.as_u64().is_some_and(|s| s > 0));
    let expected = [
        ("change", "T:target", Some(json!(20)), "ok"),
        ("change", "T:target", Some(json!(9999)), "RangeError"),
        ("change", "T:value", Some(json!(3)), "ReadOnly"),
        ("change", "T:nothing", Some(json!(3)), "NoSuchParameter"),
        ("do", "io:communicate", Some(json!("*IDN?")), "ok"),
        ("do", "T:stop", None, "ok"),
    ];
    for (record, (action, specifier, request, outcome)) in got.iter().zip(expected) {
        assert_eq!(record["node"], "test_node", "{record}");
        assert_eq!(record["client"], me.as_str(), "{record}");
        assert_eq!(record["transport"], "tcp", "{record}");
        assert_eq!(record["session"], session, "{record}");
        assert_eq!(record["action"], action, "{record}");
        assert_eq!(record["specifier"], specifier, "{record}");
        assert_eq!(record.get("request").cloned(), request, "{record}");
        assert_eq!(record["outcome"], outcome, "{record}");
        assert!(record["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        if outcome == "ok" {
            assert!(record.get("reply").is_some(), "{record}");
        } else {
            assert!(record["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    assert_eq!(got[0]["reply"].as_f64(), Some(20.0));
    assert_eq!(got[4]["reply"], "SIMULATED,SCPI-INSTRUMENT,0,1.0");
    // The same records are in the log, under their own target.
    assert!(
        gw.stderr().contains("secop_gateway::audit"),
        "audit log target"
    );

    // A refused HTTP request is a record as well.
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    let response = http_exchange(
        &mut s,
        format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    );
    assert!(response.starts_with("HTTP/1.1 405"), "{response:.100}");
    let got = records(&dir.join("audit.jsonl"), 7);
    let refused = got.last().expect("a record");
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["reason"], "method", "{refused}");
    assert_eq!(refused["specifier"], "POST /", "{refused}");
    assert_eq!(
        refused["request"]["origin"], "http://evil.example",
        "{refused}"
    );
}

#[test]
fn a_flood_of_changes_stalls_nobody_and_drops_are_counted() {
    const N: usize = 10_000;
    let dir = Gateway::scratch();
    let gw = Gateway::start_in(dir.clone(), &config(&dir, "queue_capacity = 16"));
    let mut flood = gw.client();
    let mut watcher = gw.client();
    let mut batch = String::new();
    for i in 0..N {
        batch.push_str(&format!("change ps:target {}\n", i % 20));
    }
    let writer = {
        let mut stream = flood.stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            use std::io::Write;
            stream.write_all(batch.as_bytes()).expect("send flood");
        })
    };
    // Another client is answered all the while.
    for _ in 0..20 {
        assert!(watcher.ask("read T:value").starts_with("reply T:value"));
    }
    let mut changed = 0;
    while changed < N {
        let line = flood
            .line_within(Duration::from_secs(20))
            .expect("every change answered");
        if line.starts_with("changed ps:target") {
            changed += 1;
        } else {
            assert!(is_event(&line), "{line}");
        }
    }
    writer.join().expect("writer");
    let metrics = || metrics(&gw);
    let sum = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Every record was handed over before its reply; the drops are counted by then.
    let dropped = sum(&metrics(), "secop_gateway_audit_dropped_total");
    // Wait (bounded) until the writer has written what was queued.
    let deadline = Instant::now() + WAIT;
    let mut written = records(&dir.join("audit.jsonl"), 0).len();
    while written as f64 + dropped < N as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        written = records(&dir.join("audit.jsonl"), 0).len();
    }
    assert!(
        dropped > 0.0,
        "a 16-record queue cannot take a 10,000 burst"
    );
    assert_eq!(
        written as f64 + dropped,
        N as f64,
        "every record written or counted"
    );
    let text = metrics();
    assert_eq!(
        sum(
            &text,
            "secop_gateway_audit_records_total{node=\"test_node\",outcome=\"ok\"}"
        ),
        written as f64
    );
    assert_eq!(sum(&text, "secop_gateway_audit_dropped_total"), dropped);
}
