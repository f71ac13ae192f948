//! The SECoP request set over real TCP against the running gateway.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn describe(c: &mut Client) -> Value {
    let reply = c.ask("describe");
    assert!(reply.starts_with("describing . {"), "{reply}");
    parts(&reply).2.expect("description")
}

#[test]
fn identification_description_and_ping() {
    let gw = Gateway::start_default();
    let mut c = gw.client();
    assert_eq!(c.ask("*IDN?"), "ISSE,SECoP,,v2.0");
    let d = describe(&mut c);
    assert_eq!(d["equipment_id"], "secop_gateway_simulation");
    assert!(d["description"]
        .as_str()
        .unwrap()
        .starts_with("Simulated sample environment"));
    assert!(d["firmware"]
        .as_str()
        .unwrap()
        .starts_with("secop-gateway "));
    let modules = d["modules"].as_object().unwrap();
    assert_eq!(modules.keys().collect::<Vec<_>>(), ["T", "p", "ps", "io"]);
    assert_eq!(
        modules["T"]["interface_classes"],
        json!(["TemperatureController", "Drivable"])
    );
    assert_eq!(
        modules["p"]["interface_classes"],
        json!(["PressureSensor", "Readable"])
    );
    assert_eq!(
        modules["ps"]["interface_classes"],
        json!(["PowerSupply", "Writable"])
    );
    assert_eq!(modules["io"]["interface_classes"], json!(["Communicator"]));
    assert_eq!(modules["T"]["group"], "cryostat");
    let t = &modules["T"]["accessibles"];
    assert_eq!(t["value"]["readonly"], true);
    assert_eq!(t["target"]["readonly"], false);
    assert_eq!(t["stop"]["datainfo"], json!({"type": "command"}));
    assert!(
        t["stop"].get("readonly").is_none(),
        "commands have no readonly"
    );
    assert_eq!(t["_sensor"]["constant"], "Pt100 (simulated)");
    assert_eq!(
        t["status"]["datainfo"]["members"][0]["members"]["BUSY"],
        json!(300)
    );
    let ping = c.ask("ping");
    assert!(ping.starts_with("pong  [null,{\"t\":"), "{ping}");
    let ping = c.ask("ping abc123");
    let (action, spec, data) = parts(&ping);
    assert_eq!((action.as_str(), spec.as_str()), ("pong", "abc123"));
    let data = data.unwrap();
    assert!(data[0].is_null() && data[1]["t"].as_f64().unwrap() > 1.6e9);
    // must-accept: extra words
    assert!(c.ask("ping tok extra words").starts_with("pong tok ["));
    assert!(c.ask("describe ignored").starts_with("describing . "));
}

#[test]
fn read_every_parameter() {
    let gw = Gateway::start_default();
    let mut c = gw.client();
    let d = describe(&mut c);
    let mut count = 0;
    for (module, m) in d["modules"].as_object().unwrap() {
        for (name, acc) in m["accessibles"].as_object().unwrap() {
            let spec = format!("{module}:{name}");
            let reply = c.ask(&format!("read {spec}"));
            if acc["datainfo"]["type"] == "command" {
                assert_eq!(error_class(&reply), "NoSuchParameter", "{reply}");
                continue;
            }
            let (action, rspec, data) = parts(&reply);
            assert_eq!(action, "reply", "{reply}");
            assert_eq!(rspec, spec);
            let data = data.unwrap();
            let value = &data[0];
            match acc["datainfo"]["type"].as_str().unwrap() {
                "double" => assert!(value.is_number(), "{reply}"),
                "bool" => assert!(value.is_boolean(), "{reply}"),
                "enum" => assert!(value.is_i64(), "{reply}"),
                "string" => assert!(value.is_string(), "{reply}"),
                "tuple" => assert!(value.is_array(), "{reply}"),
                "struct" => assert!(value.is_object(), "{reply}"),
                other => panic!("unexpected type {other}"),
            }
            if acc.get("constant").is_none() {
                assert!(data[1]["t"].as_f64().unwrap() > 1.6e9, "{reply}");
            } else {
                assert_eq!(*value, acc["constant"]);
            }
            count += 1;
        }
    }
    assert!(count >= 20, "read {count} parameters");
    // must-accept: extra specifier parts and words; the specifier is echoed as sent
    let reply = c.ask("read T:value:extra ignored");
    assert!(reply.starts_with("reply T:value:extra ["), "{reply}");
}

#[test]
fn activation_sends_all_values_before_active_and_no_constants() {
    let gw = Gateway::start_default();
    let mut c = gw.client();
    let d = describe(&mut c);
    let (updates, reply) = c.request("activate");
    assert_eq!(reply, "active");
    let mut expected = Vec::new();
    for (module, m) in d["modules"].as_object().unwrap() {
        for (name, acc) in m["accessibles"].as_object().unwrap() {
            if acc["datainfo"]["type"] != "command" && acc.get("constant").is_none() {
                expected.push(format!("{module}:{name}"));
            }
        }
    }
    let mut got: Vec<String> = updates.iter().map(|u| parts(u).1).collect();
    got.sort();
    got.dedup();
    expected.sort();
    assert_eq!(
        got, expected,
        "one initial update per non-constant parameter"
    );
    assert!(
        updates.iter().all(|u| u.starts_with("update ")),
        "{updates:?}"
    );
    assert!(!updates.iter().any(|u| u.contains("_sensor")));
    // Afterwards polled values keep coming.
    assert!(c
        .wait_event(WAIT, |l| l.starts_with("update p:value "))
        .is_some());
    assert_eq!(c.ask("deactivate"), "inactive");
    // In-flight updates may precede `inactive`; after it, silence.
    let late = c.events_for(Duration::from_millis(1500));
    assert!(late.is_empty(), "updates after inactive: {late:?}");
}

#[test]
fn module_wise_activation() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    let (updates, reply) = c.request("activate p");
    assert_eq!(reply, "active p");
    assert!(!updates.is_empty());
    assert!(
        updates.iter().all(|u| parts(u).1.starts_with("p:")),
        "{updates:?}"
    );
    let later = c.events_for(Duration::from_millis(800));
    assert!(!later.is_empty(), "p is polled every 0.1 s");
    assert!(
        later.iter().all(|u| parts(u).1.starts_with("p:")),
        "only p: {later:?}"
    );
    // must-accept: activate m:p equals activate m
    let (updates, reply) = c.request("activate ps:value");
    assert_eq!(reply, "active ps", "the reply names the module");
    assert!(updates.iter().any(|u| u.starts_with("update ps:")));
    assert_eq!(c.ask("deactivate p"), "inactive p");
    let later = c.events_for(Duration::from_millis(600));
    assert!(
        later.iter().all(|u| !parts(u).1.starts_with("p:")),
        "{later:?}"
    );
    assert_eq!(error_class(&c.ask("activate nope")), "NoSuchModule");
}

#[test]
fn idn_resets_the_connection() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    let (_, reply) = c.request("activate");
    assert_eq!(reply, "active");
    assert_eq!(c.ask(r#"logging p "debug""#), r#"logging p "debug""#);
    assert!(c
        .wait_event(WAIT, |l| l.starts_with("update p:value"))
        .is_some());
    assert_eq!(c.ask("*IDN?"), "ISSE,SECoP,,v2.0");
    let after = c.events_for(Duration::from_millis(1000));
    assert!(
        after.is_empty(),
        "no updates or logs after *IDN?: {after:?}"
    );
}

#[test]
fn change_side_effects_reach_everyone_before_changed() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut a = gw.client();
    let mut b = gw.client();
    assert_eq!(a.request("activate").1, "active");
    assert_eq!(b.request("activate").1, "active");
    let (events, reply) = a.request("change T:target 50");
    assert!(reply.starts_with("changed T:target [50"), "{reply}");
    let status = events
        .iter()
        .position(|e| e.starts_with("update T:status [[3"))
        .unwrap_or_else(|| panic!("BUSY status before changed: {events:?}"));
    let target = events
        .iter()
        .position(|e| e.starts_with("update T:target [50"))
        .unwrap_or_else(|| panic!("target update before changed: {events:?}"));
    let _ = (status, target);
    // the other client sees the change as updates, never as `changed`
    let seen = b
        .wait_event(WAIT, |l| l.starts_with("update T:target [50"))
        .is_some();
    assert!(seen, "observer saw the new target");
    let rest = b.events_for(Duration::from_millis(300));
    assert!(rest.iter().all(|l| is_event(l)));
    // A do also pushes its effects first
    let (events, reply) = a.request("do T:stop");
    assert!(reply.starts_with("done T:stop [null,{\"t\":"), "{reply}");
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("update T:status [[100,\"stopped\"]")
                || e.starts_with("update T:status [[100")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("update T:target ")),
        "{events:?}"
    );
}

#[test]
fn drivable_moves_busy_then_idle_and_can_be_stopped() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    assert_eq!(c.request("activate T").1, "active T");
    let reply = c.ask("change T:target 20");
    assert!(reply.starts_with("changed T:target [20"), "{reply}");
    let status = c.ask("read T:status");
    let code = value(&status)[0].as_i64().unwrap();
    assert!(
        (300..400).contains(&code),
        "BUSY right after the change: {status}"
    );
    let idle = c.wait_event(Duration::from_secs(15), |l| {
        l.starts_with("update T:status [[100")
    });
    assert!(idle.is_some(), "reached the target");
    let v = value(&c.ask("read T:value")).as_f64().unwrap();
    assert!((v - 20.0).abs() <= 0.5, "value {v} near target");
    // now a long move, stopped half-way
    assert!(c.ask("change T:ramp 60").starts_with("changed T:ramp [60"));
    let (events, reply) = c.request("change T:target 300");
    assert!(reply.starts_with("changed T:target [300"), "{reply}");
    assert!(
        events
            .iter()
            .any(|l| l.starts_with("update T:status [[370")),
        "{events:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (events, reply) = c.request("do T:stop");
    assert!(reply.starts_with("done T:stop "), "{reply}");
    let status = events
        .iter()
        .find(|e| e.starts_with("update T:status"))
        .expect("status update");
    assert_eq!(value(status), json!([100, "stopped"]));
    let target = value(&c.ask("read T:target")).as_f64().unwrap();
    assert!(target < 299.0, "target moved to where we stopped: {target}");
}

#[test]
fn dynamic_limits_and_check() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    assert!(c
        .ask("change T:target_limits [5, 100]")
        .starts_with("changed T:target_limits [[5"));
    let r = c.ask("change T:target 150");
    assert_eq!(error_class(&r), "RangeError", "{r}");
    assert!(r.starts_with("error_change T:target "));
    assert_eq!(error_class(&c.ask("check T:target 150")), "RangeError");
    assert_eq!(c.ask("check T:target 50"), "checked T:target [50,{}]");
    assert_eq!(error_class(&c.ask("check T:value 50")), "NotCheckable");
    assert_eq!(error_class(&c.ask("check T:target \"x\"")), "WrongType");
    assert_eq!(error_class(&c.ask("check T:nothing 1")), "NoSuchParameter");
    assert_eq!(error_class(&c.ask("check X:target 1")), "NoSuchModule");
    // check changes nothing
    let target = value(&c.ask("read T:target"));
    assert_eq!(target, json!(10.0));
    // absolute limits come from the datainfo
    assert_eq!(
        error_class(&c.ask("change T:target_limits [0, 500]")),
        "RangeError"
    );
    assert_eq!(error_class(&c.ask("change T:target -1")), "RangeError");
}

#[test]
fn writable_enum_struct_and_communicator() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    assert_eq!(c.request("activate ps").1, "active ps");
    let (events, reply) = c.request(r#"change ps:mode "constant_voltage""#);
    assert!(
        reply.starts_with("changed ps:mode [1,"),
        "enum name accepted: {reply}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("update ps:status [[100")),
        "{events:?}"
    );
    let (events, reply) = c.request("change ps:target 12.5");
    assert!(reply.starts_with("changed ps:target [12.5,"), "{reply}");
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("update ps:value [12.5,")),
        "{events:?}"
    );
    assert_eq!(error_class(&c.ask("change ps:mode 7")), "RangeError");
    assert_eq!(
        error_class(&c.ask(r#"change ps:mode "turbo""#)),
        "RangeError"
    );
    // a struct change may omit optional members: the current values are kept
    let reply = c.ask(r#"change ps:_limits {"voltage": 10}"#);
    assert_eq!(
        value(&reply),
        json!({"voltage": 10.0, "current": 5.0}),
        "{reply}"
    );
    let (events, _) = c.request("read ps:value");
    let _ = events;
    assert_eq!(
        value(&c.ask("read ps:value")),
        json!(10.0),
        "output clamped to the limit"
    );
    assert_eq!(
        error_class(&c.ask(r#"change ps:_limits {"voltage": 10, "power": 1}"#)),
        "WrongType"
    );
    assert_eq!(
        error_class(&c.ask(r#"change ps:_limits {"voltage": 99}"#)),
        "RangeError"
    );
    // communicator
    let reply = c.ask(r#"do io:communicate "*IDN?""#);
    assert_eq!(value(&reply), json!("SIMULATED,SCPI-INSTRUMENT,0,1.0"));
    assert_eq!(value(&c.ask(r#"do io:communicate "VAL 42""#)), json!("OK"));
    assert_eq!(value(&c.ask(r#"do io:communicate "VAL?""#)), json!("42"));
    // the instrument answers ERR to what it does not know: a result, not a failure
    assert_eq!(value(&c.ask(r#"do io:communicate "BOGUS""#)), json!("ERR"));
    assert_eq!(error_class(&c.ask("do io:communicate 5")), "WrongType");
    assert_eq!(
        error_class(&c.ask("do io:communicate")),
        "WrongType",
        "missing argument is null"
    );
    assert_eq!(
        error_class(&c.ask("do T:stop 5")),
        "WrongType",
        "stop takes no argument"
    );
    assert!(c.ask("do T:stop null").starts_with("done T:stop [null,"));
}

#[test]
fn errors_of_the_access_rules() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    let cases = [
        ("read X:value", "error_read X:value", "NoSuchModule"),
        ("read T:nothing", "error_read T:nothing", "NoSuchParameter"),
        ("read T:stop", "error_read T:stop", "NoSuchParameter"),
        ("change T:value 3", "error_change T:value", "ReadOnly"),
        (
            "change T:_sensor \"x\"",
            "error_change T:_sensor",
            "ReadOnly",
        ),
        ("change T:stop 3", "error_change T:stop", "NoSuchParameter"),
        (
            "change T:target \"hot\"",
            "error_change T:target",
            "WrongType",
        ),
        ("change T:target true", "error_change T:target", "WrongType"),
        ("change T:target 1e9", "error_change T:target", "RangeError"),
        ("change T:target", "error_change T:target", "WrongType"),
        ("do T:nothing", "error_do T:nothing", "NoSuchCommand"),
        ("do T:target", "error_do T:target", "NoSuchCommand"),
        ("do X:stop", "error_do X:stop", "NoSuchModule"),
        ("logging X \"debug\"", "error_logging X", "NoSuchModule"),
    ];
    for (request, prefix, class) in cases {
        let reply = c.ask(request);
        assert!(
            reply.starts_with(&format!("{prefix} [")),
            "{request} -> {reply}"
        );
        assert_eq!(error_class(&reply), class, "{request} -> {reply}");
    }
}

#[test]
fn error_updates_for_a_failing_sensor() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut watcher = gw.client();
    let mut c = gw.client();
    assert_eq!(watcher.request("activate p").1, "active p");
    let (events, reply) = c.request("change p:_fault true");
    assert!(events.is_empty(), "c is not activated");
    assert!(reply.starts_with("changed p:_fault [true,"), "{reply}");
    let seen = watcher.events_for(Duration::from_millis(500));
    let e = seen
        .iter()
        .find(|l| l.starts_with("error_update p:value "))
        .unwrap_or_else(|| panic!("error_update in {seen:?}"));
    assert_eq!(error_class(e), "HardwareError");
    assert!(
        parts(e).2.unwrap()[2]["t"].is_number(),
        "error_update carries t: {e}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("update p:status [[400")),
        "{seen:?}"
    );
    let r = c.ask("read p:value");
    assert!(
        r.starts_with("error_read p:value [\"HardwareError\""),
        "{r}"
    );
    // no flood: the error is sent once while it persists
    let flood: Vec<_> = watcher
        .events_for(Duration::from_millis(700))
        .into_iter()
        .filter(|l| l.starts_with("error_update"))
        .collect();
    assert!(flood.is_empty(), "{flood:?}");
    assert!(c
        .ask("change p:_fault false")
        .starts_with("changed p:_fault [false"));
    assert!(watcher
        .wait_event(WAIT, |l| l.starts_with("update p:value ["))
        .is_some());
}

#[test]
fn remote_logging() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    assert_eq!(c.ask(r#"logging p "debug""#), r#"logging p "debug""#);
    let log = c
        .wait_event(WAIT, |l| l.starts_with("log "))
        .expect("a log event");
    let (_, spec, data) = parts(&log);
    assert_eq!(spec, "p:debug");
    assert!(data.unwrap().is_string());
    assert_eq!(
        c.ask("logging p:value \"info\""),
        "logging p \"info\"",
        "m:p widened to m"
    );
    assert_eq!(c.ask("logging p false"), "logging p \"off\"");
    let _ = c.events_for(Duration::from_millis(300));
    assert!(c.events_for(Duration::from_millis(500)).is_empty());
    assert_eq!(
        c.ask(r#"logging  "error""#),
        r#"logging  "error""#,
        "whole node"
    );
    let (events, reply) = c.request("change p:_fault true");
    assert!(reply.starts_with("changed"));
    let all: Vec<String> = events
        .into_iter()
        .chain(c.events_for(Duration::from_millis(500)))
        .collect();
    assert!(all.iter().any(|l| l.starts_with("log p:error ")), "{all:?}");
    assert!(all.iter().all(|l| !l.starts_with("log p:debug")), "{all:?}");
}

#[test]
fn two_clients_are_independent() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut a = gw.client();
    let mut b = gw.client();
    // b pipelines many requests; a is answered meanwhile and in order.
    let mut burst = String::new();
    for i in 0..200 {
        burst.push_str(&format!("ping {i}\nread T:value\n"));
    }
    b.send_raw(burst.as_bytes());
    assert!(a.ask("ping a").starts_with("pong a "));
    for i in 0..200 {
        assert!(b.line().starts_with(&format!("pong {i} ")));
        assert!(b.line().starts_with("reply T:value "));
    }
}

/// Requests written at once are handled as a batch: reads go to the devices together,
/// but replies keep request order and every request sees what the ones before it did.
#[test]
fn pipelined_requests_keep_order_and_sequential_meaning() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    let mut script = String::new();
    for _ in 0..200 {
        script.push_str("read p:value\n");
    }
    script.push_str("change T:target_limits [5, 100]\n"); // a read after it sees it
    script.push_str("read T:target_limits\n");
    script.push_str("change T:target 150\n"); // refused by the limits set just before
    script.push_str("ping a\n");
    script.push_str("bogus\n");
    script.push_str("activate T\n");
    script.push_str("change T:target 50\n"); // side effects to this client, before changed
    script.push_str("*IDN?\n"); // resets activation...
    script.push_str("change T:target 60\n"); // ...so no updates for this one
    script.push_str("read T:target\n");
    c.send_raw(script.as_bytes());

    for i in 0..200 {
        let reply = c.line();
        assert!(reply.starts_with("reply p:value ["), "reply {i}: {reply}");
    }
    assert!(c.line().starts_with("changed T:target_limits [[5"));
    assert!(c.line().starts_with("reply T:target_limits [[5"));
    let refused = c.line();
    assert_eq!(error_class(&refused), "RangeError", "{refused}");
    assert!(refused.starts_with("error_change T:target "), "{refused}");
    assert!(c.line().starts_with("pong a [null,"));
    let bogus = c.line();
    assert!(bogus.starts_with("error_bogus "), "{bogus}");
    // activate: initial updates, then active
    let (initial, active) = c.until_reply();
    assert_eq!(active, "active T");
    assert!(initial
        .iter()
        .all(|l| l.starts_with("update T:") || l.starts_with("error_update T:")));
    assert!(initial.iter().any(|l| l.starts_with("update T:target ")));
    let (effects, changed) = c.until_reply();
    assert!(changed.starts_with("changed T:target [50"), "{changed}");
    assert!(
        effects.iter().any(|l| l.starts_with("update T:target [50")),
        "side effects before changed: {effects:?}"
    );
    // Poll updates of T may still arrive before *IDN? takes effect, none after it.
    let (_, idn) = c.until_reply();
    assert_eq!(idn, "ISSE,SECoP,,v2.0");
    let changed = c.line();
    assert!(
        changed.starts_with("changed T:target [60"),
        "no update after *IDN?: {changed}"
    );
    let read = c.line();
    assert!(read.starts_with("reply T:target [60"), "{read}");
    assert!(
        c.events_for(Duration::from_millis(400)).is_empty(),
        "deactivated by *IDN?"
    );
}

/// Many clients pipelining at once all get exactly their own replies, in order.
#[test]
fn concurrent_pipelining_clients_get_their_own_replies() {
    let gw = Gateway::start(FAST_CONFIG);
    let addr = gw.addr;
    let threads: Vec<_> = (0..8)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for round in 0..5 {
                    let mut script = String::new();
                    for i in 0..300 {
                        match i % 3 {
                            0 => script.push_str(&format!("ping c{k}r{round}i{i}\n")),
                            1 => script.push_str("read ps:value\n"),
                            _ => script.push_str("read T:value\n"),
                        }
                    }
                    c.send_raw(script.as_bytes());
                    for i in 0..300 {
                        let l = c.line();
                        match i % 3 {
                            0 => assert!(l.starts_with(&format!("pong c{k}r{round}i{i} ")), "{l}"),
                            1 => assert!(l.starts_with("reply ps:value ["), "{l}"),
                            _ => assert!(l.starts_with("reply T:value ["), "{l}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}
