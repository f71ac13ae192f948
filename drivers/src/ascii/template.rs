//! Command templates such as `SETP 1,{value:.3f}`: text with one kind of placeholder,
//! `{value}` with an optional format (`.Nf`, `.Ne`, `d`, `x`). `{{` and `}}` are
//! literal braces. Templates are parsed when the config is loaded, so a typo is a
//! config error, not a runtime surprise.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Format {
    /// Numbers in their shortest form, strings as they are, bools as 1/0.
    Plain,
    Fixed(usize),
    Exponent(usize),
    Integer,
    Hex,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Value(Format),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
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
                            None => return Err(format!("template {text:?}: unclosed {{")),
                        }
                    }
                    let (name, spec) = inner.split_once(':').unwrap_or((&inner, ""));
                    if name != "value" {
                        return Err(format!(
                            "template {text:?}: unknown placeholder {{{name}}}; only {{value}} exists"
                        ));
                    }
                    let format = parse_spec(spec).ok_or_else(|| {
                        format!("template {text:?}: unknown format {spec:?} (use .3f, .2e, d or x)")
                    })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Value(format));
                }
                '}' => {
                    return Err(format!(
                        "template {text:?}: single }} (write }}}} for a brace)"
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// Whether the template uses the value at all.
    pub fn has_value(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Value(_)))
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
            .contains("unknown placeholder {val}"));
        assert!(Template::parse("SETP {value:5q}")
            .unwrap_err()
            .contains("unknown format"));
        assert!(Template::parse("SETP {value")
            .unwrap_err()
            .contains("unclosed"));
        assert!(Template::parse("a}b").unwrap_err().contains("single }"));
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
