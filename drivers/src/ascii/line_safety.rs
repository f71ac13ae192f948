//! The one rule for every line the gateway sends to a line-based instrument: it holds
//! printable ASCII only, and no character of the link's terminators.
//!
//! Why: an instrument splits its input into commands at its line terminator, and many
//! also end a command at a lone CR or LF, or act on other control characters (ETX, ESC,
//! XON/XOFF). A client's value is formatted into a command template such as
//! `LABEL {value}`; if that value could carry a line end, `"x\nSETP 9999"` would reach
//! the instrument as a second command that no limit, datainfo or access rule of the
//! gateway ever saw. Non-ASCII text has no agreed meaning on such a line either. So
//! every line is checked here, as a whole and after formatting, before anything is
//! written; the terminator is appended by the link afterwards and is the only place a
//! line end may appear. Every character of both terminators is refused (not only the
//! whole sequence), because a device may take part of it, such as the CR of CR LF, as
//! the end of a line.
//!
//! The same check runs on the constant text of templates, queries and init strings
//! when the config is loaded, so a config that could never be sent is refused by
//! `check-config` rather than at the first write.

pub use crate::quoted::Quoted;
use secop_proto::SecopError;

/// The names of the ASCII control characters 0x00..=0x1F.
const CONTROL_NAMES: [&str; 32] = [
    "NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "TAB", "LF", "VT", "FF", "CR",
    "SO", "SI", "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB", "CAN", "EM", "SUB", "ESC",
    "FS", "GS", "RS", "US",
];

/// A character for an error text: `0x0A (LF)`, `0x3B (';')` or `U+00E9 ('é')`.
fn describe(c: char) -> String {
    let code = u32::from(c);
    match CONTROL_NAMES.get(code as usize) {
        Some(name) => format!("0x{code:02X} ({name})"),
        None if code == 0x7F => "0x7F (DEL)".to_owned(),
        None if c.is_ascii() => format!("0x{code:02X} ('{c}')"),
        None => format!("U+{code:04X} ({c:?})"),
    }
}

/// Why a character is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("it would end the line on this link")]
    Terminator,
    #[error("control characters are never sent")]
    Control,
    #[error("only ASCII is sent")]
    NotAscii,
}

/// The first character of a line that must not be sent, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("character {} cannot be sent to the instrument ({why})", describe(*character))]
pub struct UnsafeChar {
    pub character: char,
    pub why: Why,
}

/// Whether `line` may be sent on a link with these terminators; the error names the
/// first offending character and why it is refused.
pub fn check(line: &str, terminators: &[&str]) -> Result<(), UnsafeChar> {
    for c in line.chars() {
        let why = if terminators.iter().any(|t| t.contains(c)) {
            Why::Terminator
        } else if c.is_ascii_control() {
            Why::Control
        } else if !c.is_ascii() {
            Why::NotAscii
        } else {
            continue;
        };
        return Err(UnsafeChar { character: c, why });
    }
    Ok(())
}

/// [`check`] for a line formatted from a client's value: a `RangeError`, as for any
/// other value the instrument cannot take.
pub fn refuse_unsafe(line: &str, terminators: &[&str]) -> Result<(), SecopError> {
    check(line, terminators).map_err(|e| SecopError::range(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRLF: &[&str] = &["\r\n", "\r\n"];

    #[test]
    fn every_control_character_and_del_is_refused() {
        for b in (0u8..0x20).chain([0x7F]) {
            let line = format!("x{}SETP 9999.000", char::from(b));
            let e = check(&line, CRLF).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("character 0x{b:02X} ("))
                    && e.contains(") cannot be sent to the instrument"),
                "{b:#04x}: {e}"
            );
            // Also without any terminator: control characters are never sent.
            assert!(check(&line, &[]).is_err(), "{b:#04x}");
            assert_eq!(
                refuse_unsafe(&line, CRLF).unwrap_err().class.as_str(),
                "RangeError"
            );
        }
        assert_eq!(
            check("a\nb", &[]).unwrap_err().to_string(),
            "character 0x0A (LF) cannot be sent to the instrument (control characters are never sent)"
        );
        assert_eq!(
            check("a\rb", CRLF).unwrap_err(),
            UnsafeChar {
                character: '\r',
                why: Why::Terminator
            }
        );
        assert_eq!(
            check("a\rb", CRLF).unwrap_err().to_string(),
            "character 0x0D (CR) cannot be sent to the instrument (it would end the line on this link)"
        );
        assert!(check("\t", CRLF)
            .unwrap_err()
            .to_string()
            .contains("0x09 (TAB)"));
        assert!(check("\u{1b}[2J", CRLF)
            .unwrap_err()
            .to_string()
            .contains("0x1B (ESC)"));
        assert!(check("\0", CRLF)
            .unwrap_err()
            .to_string()
            .contains("0x00 (NUL)"));
        assert!(check("\u{7f}", CRLF)
            .unwrap_err()
            .to_string()
            .contains("0x7F (DEL)"));
    }

    #[test]
    fn non_ascii_is_refused() {
        assert_eq!(
            check("café", CRLF).unwrap_err().to_string(),
            "character U+00E9 ('é') cannot be sent to the instrument (only ASCII is sent)"
        );
        // Characters from C1 and beyond the BMP, too.
        assert!(check("a\u{85}b", CRLF)
            .unwrap_err()
            .to_string()
            .contains("U+0085"));
        assert!(check("\u{1F600}", CRLF)
            .unwrap_err()
            .to_string()
            .contains("U+1F600"));
        assert!(check("\u{2028}", CRLF)
            .unwrap_err()
            .to_string()
            .contains("U+2028"));
    }

    #[test]
    fn custom_terminators_are_refused_character_by_character() {
        let custom = &[";", "#>"];
        assert_eq!(
            check("A;B", custom).unwrap_err().to_string(),
            "character 0x3B (';') cannot be sent to the instrument (it would end the line on this link)"
        );
        assert!(check("A#B", custom)
            .unwrap_err()
            .to_string()
            .contains("0x23 ('#')"));
        assert!(check("A>B", custom)
            .unwrap_err()
            .to_string()
            .contains("0x3E ('>')"));
        assert!(check("A:B", custom).is_ok());
        // The first offending character is named.
        assert!(check("ok;\n", custom)
            .unwrap_err()
            .to_string()
            .contains("0x3B"));
    }

    #[test]
    fn printable_ascii_passes() {
        let printable: String = (0x20u8..0x7F).map(char::from).collect();
        assert_eq!(check(&printable, CRLF), Ok(()));
        assert_eq!(check("", CRLF), Ok(()));
        assert_eq!(check("SETP 1,12.500", &["\n"]), Ok(()));
        // An empty write terminator adds nothing to refuse.
        assert_eq!(check("*IDN?", &["", "\n"]), Ok(()));
    }
}
