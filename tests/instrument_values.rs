//! Values from an instrument reach clients in the type their datainfo declares, or as
//! an error (issue 14, points 5 and 6): a gateway with an ASCII link to a loopback
//! instrument that answers fixed lines.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

/// What the instrument answers to each query.
const ANSWERS: &[(&str, &str)] = &[
    ("VAL?", "5.5"),
    ("HOT?", "T=480.96 K"),
    ("STRUCT?", r#"{"x": 1.5, "mode": "b"}"#),
    ("ARRAY?", "1.5,2,3"),
    ("TUPLE?", "[3, \"ok\"]"),
    ("BLOB?", "AQID"),
    ("SCALED?", "4.25"),
    ("BADSTRUCT?", r#"{"x": "oops", "mode": "a"}"#),
    ("LONG?", "1,2,3,4"),
    ("BADBLOB?", "not base64!"),
];

/// A line-based instrument on a loopback port, one thread per connection (the gateway
/// reconnects after a timeout); unknown queries get no answer.
fn instrument() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let Ok(mut out) = stream.try_clone() else {
                    return;
                };
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if let Some((_, answer)) = ANSWERS.iter().find(|(q, _)| *q == line) {
                        if out.write_all(format!("{answer}\n").as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn config(tcp: &str) -> String {
    format!(
        r#"
[node]
equipment_id = "fit_test"
description = "instrument values"
[discovery]
enabled = false

[[link]]
name = "dev"
protocol = "ascii"
tcp = "{tcp}"
timeout = 0.5
pollinterval = 600

[[module]]
name = "X"
link = "dev"
class = "Readable"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", min = 0, max = 100 }}
query = "VAL?"
[[module.parameter]]
name = "_hot"
datainfo = {{ type = "double", min = 0, max = 100, unit = "K" }}
query = "HOT?"
reply = '^T=(?P<value>\S+) K$'
poll = "never"
[[module.command]]
name = "_struct"
send = "STRUCT?"
reply = "^(.*)$"
result = {{ type = "struct", members = {{ x = {{ type = "double" }}, mode = {{ type = "enum", members = {{ a = 1, b = 2 }} }} }} }}
[[module.command]]
name = "_array"
send = "ARRAY?"
reply = "^(.*)$"
result = {{ type = "array", members = {{ type = "double" }}, maxlen = 3 }}
[[module.command]]
name = "_tuple"
send = "TUPLE?"
reply = "^(.*)$"
result = {{ type = "tuple", members = [{{ type = "int", min = 0, max = 9 }}, {{ type = "string", maxchars = 8 }}] }}
[[module.command]]
name = "_blob"
send = "BLOB?"
reply = "^(.*)$"
result = {{ type = "blob", maxbytes = 16 }}
[[module.command]]
name = "_scaled"
send = "SCALED?"
reply = "^(.*)$"
result = {{ type = "scaled", scale = 0.01, min = 0, max = 1000 }}
[[module.command]]
name = "_confirm"
send = "VAL?"
reply = "^(.*)$"
[[module.command]]
name = "_badstruct"
send = "BADSTRUCT?"
reply = "^(.*)$"
result = {{ type = "struct", members = {{ x = {{ type = "double" }}, mode = {{ type = "enum", members = {{ a = 1, b = 2 }} }} }} }}
[[module.command]]
name = "_long"
send = "LONG?"
reply = "^(.*)$"
result = {{ type = "array", members = {{ type = "double" }}, maxlen = 3 }}
[[module.command]]
name = "_badblob"
send = "BADBLOB?"
reply = "^(.*)$"
result = {{ type = "blob", maxbytes = 16 }}
"#
    )
}

/// The error report of an error reply: (class, text).
fn error(line: &str) -> (String, String) {
    let (_, _, data) = parts(line);
    let data = data.unwrap_or(Value::Null);
    (error_class(line), data[1].as_str().unwrap_or("").to_owned())
}

#[test]
fn structured_command_results_arrive_as_json_of_their_type() {
    let gw = Gateway::start(&config(&instrument()));
    let mut c = gw.client();
    let done = |c: &mut Client, command: &str| {
        let reply = c.ask(&format!("do X:{command} null"));
        assert!(reply.starts_with(&format!("done X:{command} ")), "{reply}");
        value(&reply)
    };
    assert_eq!(done(&mut c, "_struct"), json!({"x": 1.5, "mode": 2}));
    assert_eq!(done(&mut c, "_array"), json!([1.5, 2.0, 3.0]));
    assert_eq!(done(&mut c, "_tuple"), json!([3, "ok"]));
    assert_eq!(done(&mut c, "_blob"), json!("AQID"));
    assert_eq!(done(&mut c, "_scaled"), json!(425));
    // Without a result datainfo the reply only confirms: the result is null.
    assert_eq!(done(&mut c, "_confirm"), Value::Null);
}

#[test]
fn invalid_instrument_values_are_errors_not_values() {
    let gw = Gateway::start(&config(&instrument()));
    let mut c = gw.client();
    let failed = |c: &mut Client, request: &str| {
        let reply = c.ask(request);
        assert!(reply.starts_with("error_"), "{request}: {reply}");
        error(&reply)
    };
    let (class, text) = failed(&mut c, "do X:_badstruct null");
    assert_eq!(class, "HardwareError");
    assert!(
        text.starts_with("_badstruct: reply \"{\\\"x\\\": \\\"oops\\\"")
            && text.contains("x: expected a number"),
        "{text}"
    );
    let (class, text) = failed(&mut c, "do X:_long null");
    assert_eq!(class, "HardwareError");
    assert!(
        text.contains("array has 4 elements, allowed 0..3"),
        "{text}"
    );
    let (class, text) = failed(&mut c, "do X:_badblob null");
    assert_eq!(class, "HardwareError");
    assert!(text.contains("invalid base64"), "{text}");
    // A parameter read outside its declared range.
    let (class, text) = failed(&mut c, "read X:_hot");
    assert_eq!(class, "OutOfRange");
    assert_eq!(
        text,
        "_hot: reply \"T=480.96 K\" (= 480.96) is above max 100"
    );
    // The link stays usable.
    let reply = c.ask("read X:value");
    assert_eq!(value(&reply), json!(5.5), "{reply}");
}
