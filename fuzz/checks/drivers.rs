//! The checks behind the driver fuzz targets: what an instrument sends is turned into a
//! parameter's value or a clear error, never a panic and never a value outside the
//! datainfo (clients such as frappy reject those, and an EPICS bridge may misread
//! them). Shared with the stable-Rust replay tests (`drivers/tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes and panics only if the code under test panics
//! or breaks one of the invariants asserted here.

use secop_drivers::fit;
use secop_drivers::modbus::codec::{Order, RegType};
use secop_drivers::modbus::{register_reading, RegisterMapping};
use secop_proto::datainfo::DataInfo;
use secop_proto::SecopError;
use serde_json::{json, Value};

/// A value that goes to clients: it fits its datainfo, is already in canonical wire
/// form (validating it again changes nothing) and is 7-bit clean on the wire.
fn assert_fits(datainfo: &DataInfo, value: &Value) {
    let again = datainfo
        .validate(value)
        .unwrap_or_else(|e| panic!("{value} does not fit {datainfo:?}: {e}"));
    assert_eq!(&again, value, "not in canonical form");
    let text = secop_proto::json::to_json(value);
    assert!(text.is_ascii(), "non-ASCII value on the wire: {text}");
}

/// An error that goes to clients: its text is ASCII (frappy drops other lines).
fn assert_clear(error: &SecopError) {
    assert!(
        error.text.is_ascii(),
        "non-ASCII error text: {:?}",
        error.text
    );
}

/// Datainfos an instrument's reply may have to fit, for inputs that bring none.
fn stock_datainfos() -> Vec<Value> {
    vec![
        json!({"type": "double", "min": 0, "max": 100}),
        json!({"type": "scaled", "scale": 0.01, "min": -500, "max": 500}),
        json!({"type": "int", "min": -3, "max": 70000}),
        json!({"type": "bool"}),
        json!({"type": "enum", "members": {"off": 0, "low": 1, "high": 3}}),
        json!({"type": "string", "maxchars": 4}),
        json!({"type": "blob", "maxbytes": 6}),
        json!({"type": "array", "minlen": 1, "maxlen": 3, "members": {"type": "double", "max": 10}}),
        json!({"type": "tuple", "members": [{"type": "int", "min": 0, "max": 9}, {"type": "string"}]}),
        json!({"type": "struct", "members": {"a": {"type": "double"}, "b": {"type": "bool"}}}),
        json!({"type": "matrix", "elementtype": "<f8", "names": ["x", "y"], "maxlen": [2, 2]}),
    ]
}

/// The datainfo at the start of the input (a JSON value), else a stock one chosen by
/// the first byte; and the rest of the input.
fn datainfo_and_rest(data: &[u8]) -> Option<(DataInfo, &[u8])> {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    if let Some(Ok(description)) = values.next() {
        let rest = &data[values.byte_offset()..];
        return DataInfo::from_json(&description).ok().map(|d| (d, rest));
    }
    let (first, rest) = data.split_first()?;
    let stock = stock_datainfos();
    let description = &stock[usize::from(*first) % stock.len()];
    DataInfo::from_json(description).ok().map(|d| (d, rest))
}

/// An ASCII reply (the text a `reply` pattern extracted, or a command's answer) for a
/// datainfo: a datainfo (JSON) or a selector byte, then the reply's bytes as the link
/// decodes them.
pub fn device_reply(data: &[u8]) {
    let Some((datainfo, rest)) = datainfo_and_rest(data) else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    for (scale, offset) in [(1.0, 0.0), (0.01, 0.0), (2.5, -3.0)] {
        match fit::convert(&datainfo, &text, scale, offset) {
            Ok(value) => match fit::device_value(&datainfo, value, &text) {
                Ok(value) => assert_fits(&datainfo, &value),
                Err(e) => assert_clear(&e),
            },
            // The reason goes into the error clients see: quoted, so ASCII.
            Err(e) => assert!(e.to_string().is_ascii(), "non-ASCII reason: {e}"),
        }
    }
    match fit::command_result(Some(&datainfo), &text) {
        Ok(value) => assert_fits(&datainfo, &value),
        Err(e) => assert_clear(&e),
    }
}

/// Registers a Modbus device sent for a parameter: a datainfo (JSON) or a selector
/// byte; then a byte choosing the register type, word and byte order, scale and bit;
/// then the registers (two bytes each, big-endian). Fewer or more registers than the
/// type has are an error, never a panic.
pub fn registers(data: &[u8]) {
    let Some((datainfo, rest)) = datainfo_and_rest(data) else {
        return;
    };
    let Some((choice, words)) = rest.split_first() else {
        return;
    };
    let choice = usize::from(*choice);
    let types: Vec<RegType> = RegType::FIXED
        .into_iter()
        .chain([RegType::Str(1), RegType::Str(3)])
        .collect();
    let kind = types[choice % types.len()];
    let mapping = RegisterMapping {
        kind,
        order: Order {
            big_words: choice & 0x10 != 0,
            big_bytes: choice & 0x20 != 0,
        },
        scale: if choice & 0x40 != 0 { 0.1 } else { 1.0 },
        offset: if choice & 0x40 != 0 { -273.15 } else { 0.0 },
        bit: (choice & 0x80 != 0).then_some((choice % 17) as u8),
    };
    let regs: Vec<u16> = words
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect();
    match register_reading(&datainfo, &mapping, &regs) {
        Ok(value) => assert_fits(&datainfo, &value),
        Err(e) => assert_clear(&e),
    }
}
