//! Several SEC nodes in one process: a read-only view on its own port, exporting a
//! subset of modules and accessibles, fed by the same device actors.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::time::Duration;

fn config() -> String {
    format!(
        "{FAST_CONFIG}
[discovery]
address = \"127.0.0.1:0\"
announce = []

[[extra_node]]
equipment_id = \"control_room_view\"
description = \"read-only view for the control room\"
listen = \"127.0.0.1:0\"
modules = [\"T\", \"p\"]
hide = [\"T:_sensor\", \"T:ramp\"]
read_only = true
"
    )
}

fn describe(c: &mut Client) -> Value {
    parts(&c.ask("describe")).2.expect("description")
}

#[test]
fn a_read_only_view_next_to_the_main_node() {
    let gw = Gateway::start(&config());
    assert_eq!(gw.addrs.len(), 2, "two nodes, two ports");
    let mut main = Client::connect(gw.addrs[0]);
    let mut view = Client::connect(gw.addrs[1]);

    let d = describe(&mut main);
    assert_eq!(d["equipment_id"], "test_node");
    assert_eq!(d["modules"].as_object().map(|m| m.len()), Some(4));
    assert_eq!(
        d["modules"]["T"]["accessibles"]["target"]["readonly"],
        false
    );

    let v = describe(&mut view);
    assert_eq!(v["equipment_id"], "control_room_view");
    let modules: Vec<&String> = v["modules"].as_object().expect("modules").keys().collect();
    assert_eq!(modules, ["T", "p"]);
    let t = v["modules"]["T"]["accessibles"]
        .as_object()
        .expect("accessibles");
    assert!(
        !t.contains_key("_sensor") && !t.contains_key("ramp"),
        "hidden accessibles"
    );
    for (name, acc) in t {
        if acc.get("readonly").is_some() {
            assert_eq!(acc["readonly"], true, "{name} is read-only in the view");
        }
    }

    // the view refuses changes and commands, main accepts them
    let r = view.ask("change T:target 20");
    assert_eq!(error_class(&r), "ReadOnly", "{r}");
    assert_eq!(error_class(&view.ask("do T:stop")), "Disabled");
    assert_eq!(error_class(&view.ask("check T:target 20")), "ReadOnly");
    assert_eq!(error_class(&view.ask("read ps:value")), "NoSuchModule");
    assert_eq!(error_class(&view.ask("read T:ramp")), "NoSuchParameter");
    assert!(view.ask("read T:value").starts_with("reply T:value ["));

    // updates still flow to the view, from the same device actor
    assert_eq!(view.request("activate").1, "active");
    assert!(main
        .ask("change T:target 25")
        .starts_with("changed T:target [25"));
    let seen = view.events_for(Duration::from_millis(800));
    assert!(
        seen.iter().any(|l| l.starts_with("update T:target [25")),
        "the view sees the main node's change: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("update T:status [[3")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|l| {
            let spec = parts(l).1;
            !spec.starts_with("ps:") && spec != "T:ramp" && spec != "T:_sensor"
        }),
        "only exported accessibles"
    );
}

#[test]
fn discovery_answers_once_per_node() {
    let gw = Gateway::start(&config());
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.dir.join("ready.json")).expect("ready"))
            .expect("json");
    let udp = ready["udp"][0].as_str().expect("udp").to_owned();
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.set_read_timeout(Some(Duration::from_secs(3))).ok();
    client
        .send_to(br#"{"SECoP":"discover"}"#, &udp)
        .expect("send");
    let mut buf = [0u8; 1024];
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (n, _) = client.recv_from(&mut buf).expect("answer");
        let v: Value = serde_json::from_slice(&buf[..n]).expect("json");
        answers.push((v["equipment_id"].clone(), v["port"].clone()));
    }
    answers.sort_by_key(|a| a.0.to_string());
    assert_eq!(
        answers,
        vec![
            (json!("control_room_view"), json!(gw.addrs[1].port())),
            (json!("test_node"), json!(gw.addrs[0].port())),
        ]
    );
}
