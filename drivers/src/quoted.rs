//! Instrument text in messages for clients: quoted, in ASCII.

/// Instrument text quoted for messages to clients: in double quotes, with control
/// characters, quotes, backslashes and everything outside ASCII escaped
/// (`"\u{fffd}0"`). Garbled replies end up in error and status texts, and clients
/// (frappy among them) drop messages with non-ASCII characters.
pub struct Quoted<'a>(pub &'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                ' '..='~' if c != '\\' => write!(f, "{c}")?,
                c => write!(f, "{}", c.escape_default())?,
            }
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod quoted_tests {
    use super::Quoted;

    #[test]
    fn garbled_replies_are_quoted_in_ascii() {
        assert_eq!(Quoted("T=1.5 K").to_string(), "\"T=1.5 K\"");
        let s = Quoted("\u{fffd}0\r\n\"é\\").to_string();
        assert!(s.is_ascii(), "{s}");
        assert_eq!(s, "\"\\u{fffd}0\\r\\n\\\"\\u{e9}\\\\\"");
    }
}
