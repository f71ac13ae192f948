//! Command templates such as `SETP 1,{value:.3f}`: text with one kind of placeholder,
//! `{value}` with an optional format (`.Nf`, `.Ne`, `d`, `x`). `{{` and `}}` are
//! literal braces. Templates are parsed when the config is loaded, so a typo is a
//! config error, not a runtime surprise.

use secop_proto::SecopError;
use serde_json::Value;

/// The format of a `{value}` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Numbers in their shortest form, strings as they are, bools as 1/0.
    Plain,
    /// `.Nf`
    Fixed(usize),
    /// `.Ne`
    Exponent(usize),
    /// `d`
    Integer,
    /// `x`
    Hex,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Value(Format),
}

/// Why a template cannot be used: "template \"SETP {val}\": unknown placeholder ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {text:?}: {problem}")]
pub struct TemplateError {
    /// The template as the config gave it.
    pub text: String,
    pub problem: TemplateProblem,
}

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateProblem {
    #[error("unclosed {{")]
    Unclosed,
    #[error("unknown placeholder {{{0}}}; only {{value}} exists")]
    UnknownPlaceholder(String),
    #[error("unknown format {0:?} (use .3f, .2e, d or x)")]
    UnknownFormat(String),
    #[error("single }} (write }}}} for a brace)")]
    SingleBrace,
    /// Its constant text holds a character that cannot be sent on the link.
    #[error(transparent)]
    Unsafe(#[from] super::line_safety::UnsafeChar),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let error = |problem| TemplateError {
            text: text.to_owned(),
            problem,
        };
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => inner.push(c),
                            None => return Err(error(TemplateProblem::Unclosed)),
                        }
                    }
                    let (name, spec) = inner.split_once(':').unwrap_or((&inner, ""));
                    if name != "value" {
                        return Err(error(TemplateProblem::UnknownPlaceholder(name.to_owned())));
                    }
                    let format = parse_spec(spec)
                        .ok_or_else(|| error(TemplateProblem::UnknownFormat(spec.to_owned())))?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Value(format));
                }
                '}' => return Err(error(TemplateProblem::SingleBrace)),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The formats of its `{value}` placeholders, in order (checked against the
    /// datainfo by [`crate::fit`]).
    pub fn value_formats(&self) -> impl Iterator<Item = &Format> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Value(f) => Some(f),
            Piece::Text(_) => None,
        })
    }

    /// Whether the template uses the value at all.
    pub fn has_value(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Value(_)))
    }

    /// Refuses constant text that could never be sent on a link with these
    /// terminators (see [`line_safety`](super::line_safety)); run when the config is
    /// loaded. The value's part is checked after rendering, in [`render_line`](Self::render_line).
    pub fn check_text(&self, terminators: &[&str]) -> Result<(), super::line_safety::UnsafeChar> {
        self.pieces.iter().try_for_each(|piece| match piece {
            Piece::Text(t) => super::line_safety::check(t, terminators),
            Piece::Value(_) => Ok(()),
        })
    }

    /// The line for `value`, refused (`RangeError`) if it holds a character that must
    /// not reach the instrument: a value must never be able to end the line early and
    /// start a second command.
    pub fn render_line(&self, value: &Value, terminators: &[&str]) -> Result<String, SecopError> {
        let line = self.render(value);
        super::line_safety::refuse_unsafe(&line, terminators)?;
        Ok(line)
    }

    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Value(f) => out.push_str(&format_value(value, f)),
            }
        }
        out
    }
}

fn parse_spec(spec: &str) -> Option<Format> {
    match spec {
        "" => Some(Format::Plain),
        "d" => Some(Format::Integer),
        "x" => Some(Format::Hex),
        _ => {
            // strip_suffix, not split_at: the spec may end in any character.
            let digits = spec.strip_prefix('.')?;
            let (n, fixed) = match (digits.strip_suffix('f'), digits.strip_suffix('e')) {
                (Some(n), _) => (n, true),
                (_, Some(n)) => (n, false),
                _ => return None,
            };
            let n: usize = n.parse().ok().filter(|n| *n <= 17)?;
            Some(if fixed {
                Format::Fixed(n)
            } else {
                Format::Exponent(n)
            })
        }
    }
}

fn format_value(value: &Value, format: &Format) -> String {
    let number = value
        .as_f64()
        .or_else(|| value.as_bool().map(|b| f64::from(u8::from(b))));
    match (format, number) {
        (Format::Fixed(n), Some(x)) => format!("{x:.n$}"),
        (Format::Exponent(n), Some(x)) => format!("{x:.n$e}"),
        (Format::Integer, Some(x)) => format!("{}", x.round() as i64),
        (Format::Hex, Some(x)) => format!("{:X}", x.round() as i64),
        (_, _) => match value {
            Value::String(s) => s.clone(),
            Value::Bool(b) => u8::from(*b).to_string(),
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders() {
        let t = Template::parse("SETP 1,{value:.3f}").unwrap();
        assert_eq!(t.render(&json!(12.5)), "SETP 1,12.500");
        assert_eq!(
            Template::parse("R{value:d}").unwrap().render(&json!(2.6)),
            "R3"
        );
        assert_eq!(
            Template::parse("V {value}").unwrap().render(&json!("abc")),
            "V abc"
        );
        assert_eq!(
            Template::parse("B{value}").unwrap().render(&json!(true)),
            "B1"
        );
        assert_eq!(
            Template::parse("{{x}} {value:.1e}")
                .unwrap()
                .render(&json!(1234.0)),
            "{x} 1.2e3"
        );
        assert!(!Template::parse("STOP").unwrap().has_value());
    }

    #[test]
    fn errors_are_explicit() {
        assert!(Template::parse("SETP {val}")
            .unwrap_err()
            .to_string()
            .contains("unknown placeholder {val}"));
        assert!(Template::parse("SETP {value:5q}")
            .unwrap_err()
            .to_string()
            .contains("unknown format"));
        assert!(Template::parse("SETP {value")
            .unwrap_err()
            .to_string()
            .contains("unclosed"));
        assert!(Template::parse("a}b")
            .unwrap_err()
            .to_string()
            .contains("single }"));
        assert_eq!(
            Template::parse("SETP 1,{val}").unwrap_err().to_string(),
            "template \"SETP 1,{val}\": unknown placeholder {val}; only {value} exists"
        );
        assert_eq!(
            Template::parse("x{").unwrap_err().problem,
            TemplateProblem::Unclosed
        );
    }

    #[test]
    fn constant_text_with_forbidden_characters_is_refused() {
        let crlf = &["\r\n", "\r\n"];
        for b in (0u8..0x20).chain([0x7F]) {
            let text = format!("SETP{}{{value}}", char::from(b));
            let e = Template::parse(&text)
                .unwrap()
                .check_text(crlf)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("character 0x{b:02X} (")), "{e}");
        }
        let e = Template::parse("TEMP {value} °C")
            .unwrap()
            .check_text(crlf)
            .unwrap_err()
            .to_string();
        assert!(e.contains("U+00B0 ('°')"), "{e}");
        let e = Template::parse("A;{value}")
            .unwrap()
            .check_text(&[";", "\n"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x3B (';')"), "{e}");
        assert!(Template::parse("{{x}} SETP 1,{value:.3f}")
            .unwrap()
            .check_text(crlf)
            .is_ok());
    }

    #[test]
    fn rendered_lines_with_forbidden_characters_are_refused() {
        let t = Template::parse("LABEL {value}").unwrap();
        let crlf = &["\r\n", "\r\n"];
        assert_eq!(t.render_line(&json!("x y"), crlf).unwrap(), "LABEL x y");
        let e = t.render_line(&json!("x\nSETP 9999.000"), crlf).unwrap_err();
        assert_eq!(e.class, secop_proto::ErrorClass::RangeError);
        assert!(e
            .text
            .starts_with("character 0x0A (LF) cannot be sent to the instrument"));
        // Structured values are rendered as JSON; non-ASCII in them is refused too.
        assert!(t.render_line(&json!(["é"]), crlf).is_err());
        assert!(t.render_line(&json!(["a"]), crlf).is_ok());
        let custom = &["#", "#"];
        assert!(t.render_line(&json!("a#b"), custom).is_err());
        assert!(t.render_line(&json!(12.5), custom).is_ok());
    }

    /// A config file is input too: a format ending in a multi-byte character is a
    /// config error, not a panic.
    #[test]
    fn non_ascii_formats_are_errors() {
        for t in [
            "X{value:.é}",
            "X{value:.1é}",
            "X{value:é}",
            "X{value:.😀f}",
            "{value:.}",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }
}
