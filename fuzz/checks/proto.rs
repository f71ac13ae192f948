//! The checks behind the protocol fuzz targets, shared with the stable-Rust replay
//! tests (`protocol/tests/fuzz_corpus.rs` includes this file), so that the corpus and
//! every regression input run through exactly the same code on every `cargo test`.
//!
//! Each function takes arbitrary bytes and panics only if the code under test panics
//! or breaks one of the invariants asserted here.

use secop_proto::datainfo::DataInfo;
use secop_proto::description::NodeDescription;
use secop_proto::message::{self, Qualifiers};
use secop_proto::SecopError;
use serde_json::Value;

/// Output must stay on one line and 7-bit clean (the wire rules).
fn assert_wire_line(bytes: &[u8]) {
    assert!(bytes.is_ascii(), "non-ASCII output {bytes:?}");
    assert_eq!(bytes.last(), Some(&b'\n'), "no LF at the end: {bytes:?}");
    let body = &bytes[..bytes.len() - 1];
    assert!(!body.contains(&b'\n'), "LF inside a line: {bytes:?}");
}

/// A request line as a client sends it (the session decodes UTF-8 first; lossy here,
/// so that every input reaches the parser).
pub fn request_line(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // The codec strips LF; a line never contains one.
    for line in text.split('\n') {
        let raw = message::split(line);
        assert!(!raw.action.contains(' '));
        assert!(!raw.specifier.contains(' '));
        match message::parse_request(line) {
            None => {}
            Some(Ok(parsed)) => {
                assert_eq!(parsed.action, raw.action);
                assert_eq!(parsed.specifier, raw.specifier);
                let e = SecopError::protocol("x");
                assert_wire_line(&message::error_reply(&parsed.action, &parsed.specifier, &e));
            }
            Some(Err(rejected)) => {
                assert_eq!(rejected.action, raw.action);
                assert_wire_line(&rejected.to_line());
            }
        }
    }
}

/// Two JSON values from the input: a datainfo and a value to validate against it.
/// Anything that is not two JSON values is tried as a datainfo alone.
pub fn datainfo(data: &[u8]) {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let Some(Ok(description)) = values.next() else {
        return;
    };
    let value = values.next().and_then(Result::ok);
    let strict = DataInfo::from_json(&description);
    let lenient = DataInfo::from_remote_json(&description);
    if let Ok(strict) = &strict {
        assert_eq!(
            Some(strict),
            lenient.as_ref().ok(),
            "strict ok, lenient not"
        );
    }
    let Ok(di) = lenient else {
        return;
    };
    // Describing it again gives the same datainfo.
    assert_eq!(DataInfo::from_remote_json(di.to_json()).as_ref(), Ok(&di));
    let json = secop_proto::json::to_json(di.to_json());
    assert!(json.is_ascii());
    if !di.is_command() {
        let default = di.default_value();
        if let Err(e) = di.validate(&default) {
            panic!("default {default} of {description} invalid: {e}");
        }
    }
    let Some(value) = value else {
        return;
    };
    match di.validate(&value) {
        Ok(canonical) => {
            // The canonical form is valid and canonical.
            match di.validate(&canonical) {
                Ok(again) => assert_eq!(again, canonical, "not idempotent"),
                Err(e) => panic!("canonical {canonical} of {value} rejected: {e}"),
            }
            let filled = di.fill_optional(canonical.clone(), Some(&di.default_value()));
            assert!(di.validate(&filled).is_ok(), "filled {filled} rejected");
            let report = message::data_report(&canonical, Qualifiers::at(1.5));
            assert!(report.is_ascii());
            assert_wire_line(&message::line("update", "m:p", Some(&report)));
        }
        Err(e) => {
            assert_wire_line(&message::error_reply("change", "m:p", &e));
        }
    }
}

/// A remote node's `describing` data: parse, check, serialise (both ways), parse back.
pub fn description(data: &[u8]) {
    let Ok(json) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(node) = NodeDescription::from_json(&json) else {
        return;
    };
    let _ = node.problems();
    let tree = node.to_json();
    let text = secop_proto::json::to_json(&tree);
    assert!(text.is_ascii());
    let mut streamed = Vec::new();
    node.write_json(&mut streamed);
    assert_eq!(
        String::from_utf8_lossy(&streamed),
        text,
        "write_json differs from to_json"
    );
    let back: Value = serde_json::from_str(&text).expect("own output is JSON");
    let again = NodeDescription::from_json(&back).expect("own output parses");
    assert_eq!(again, node, "round trip changed the description");
    for m in &node.modules {
        for a in &m.accessibles {
            if let Some(c) = &a.constant {
                let _ = a.datainfo.validate(c);
            }
        }
    }
}
