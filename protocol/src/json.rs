//! ASCII-only JSON output.
//!
//! SECoP messages must be 7-bit clean on the wire: a client written for a serial
//! line or a strict parser must never see a raw non-ASCII byte. serde_json does the
//! serialising; this module only swaps in a formatter that escapes every non-ASCII
//! code point as `\uXXXX` (surrogate pairs above U+FFFF).

use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::Value;
use std::io;

/// A compact formatter that escapes non-ASCII characters inside strings.
#[derive(Debug, Default, Clone, Copy)]
pub struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{:04x}", unit)?;
            }
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serialise a value to compact, ASCII-only JSON, appending to `out`.
pub fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mut ser = serde_json::Serializer::with_formatter(out, AsciiFormatter);
    // Serialising into a Vec cannot fail for serde_json::Value and our plain types:
    // the only error sources are I/O (impossible for Vec) and non-string map keys.
    if value.serialize(&mut ser).is_err() {
        // Fall back to a valid JSON null rather than emitting half a document.
        ser.into_inner().extend_from_slice(b"null");
    }
}

/// Serialise a value to a compact, ASCII-only JSON string.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(64);
    write_json(&mut out, value);
    // The formatter writes ASCII only, so this is always valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Turn an `f64` into a JSON number, refusing NaN and infinities which JSON cannot carry.
pub fn number(x: f64) -> Option<Value> {
    serde_json::Number::from_f64(x).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_non_ascii() {
        assert_eq!(to_json(&json!("Ä°C")), r#""\u00c4\u00b0C""#);
        assert_eq!(to_json(&json!("a😀b")), r#""a\ud83d\ude00b""#);
        assert_eq!(
            to_json(&json!({"k":"line\nbreak"})),
            r#"{"k":"line\nbreak"}"#
        );
    }

    #[test]
    fn ints_stay_ints() {
        assert_eq!(to_json(&json!([5, 5.0, -3, 1e300])), "[5,5.0,-3,1e+300]");
    }

    #[test]
    fn nan_is_refused() {
        assert!(number(f64::NAN).is_none());
        assert!(number(f64::INFINITY).is_none());
        assert_eq!(number(1.5), Some(json!(1.5)));
    }
}
