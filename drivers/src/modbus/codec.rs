//! Register layouts: how a value of a type spans Modbus registers, in which word and
//! byte order. Pure functions, unit-tested against known register images.
//!
//! Registers come from a device and are not trusted: [`decode`] checks the register
//! count before anything else and never indexes; a wrong count is an error.

use crate::ConfigError;
use serde_json::Value;

/// Why registers give no value, or a value does not fit its registers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("expected {expected} registers, got {got}")]
    Registers { expected: u16, got: usize },
    #[error("expected {expected} bytes of registers, got {got}")]
    Bytes { expected: usize, got: usize },
    #[error("the register holds NaN or infinity")]
    NotFinite,
    /// A value for an integer register that is no number.
    #[error("{0} is not a number")]
    NotANumber(Value),
    /// A value for a float register that is no number.
    #[error("not a number")]
    NoNumber,
    #[error("{0} does not fit the register type")]
    DoesNotFit(f64),
    #[error("not a string")]
    NotAString,
    #[error("{text:?} is not ASCII of at most {max} characters")]
    BadString { text: String, max: u16 },
}

/// The data type of a register-mapped value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Fixed-length ASCII string of this many registers (two characters each).
    Str(u16),
}

impl RegType {
    /// Every type of a fixed size (a string's size is its configured length).
    pub const FIXED: [RegType; 9] = [
        RegType::Bool,
        RegType::U16,
        RegType::I16,
        RegType::U32,
        RegType::I32,
        RegType::U64,
        RegType::I64,
        RegType::F32,
        RegType::F64,
    ];

    /// The type named `name` (the `type` key); the error is the reason alone.
    pub fn parse(name: &str, length: Option<u16>) -> Result<RegType, ConfigError> {
        Ok(match name {
            "bool" => RegType::Bool,
            "u16" => RegType::U16,
            "i16" => RegType::I16,
            "u32" => RegType::U32,
            "i32" => RegType::I32,
            "u64" => RegType::U64,
            "i64" => RegType::I64,
            "f32" => RegType::F32,
            "f64" => RegType::F64,
            "string" => match length {
                Some(n) if n > 0 && n <= 125 => RegType::Str(n),
                _ => {
                    return Err(ConfigError::Invalid(
                        "type string needs length = number of registers (1..125)".into(),
                    ))
                }
            },
            other => {
                return Err(ConfigError::Invalid(format!(
                    "type {other:?} is not bool, u16, i16, u32, i32, u64, i64, f32, f64 or string"
                )))
            }
        })
    }

    /// Registers (or coils) the value occupies.
    pub fn registers(self) -> u16 {
        match self {
            RegType::Bool | RegType::U16 | RegType::I16 => 1,
            RegType::U32 | RegType::I32 | RegType::F32 => 2,
            RegType::U64 | RegType::I64 | RegType::F64 => 4,
            RegType::Str(n) => n,
        }
    }
}

/// Word and byte order of multi-register values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// The first register holds the most significant word.
    pub big_words: bool,
    /// Each register's high byte comes first.
    pub big_bytes: bool,
}

impl Order {
    /// The order of `word_order` and `byte_order`; the error names the key.
    pub fn parse(words: &str, bytes: &str) -> Result<Order, ConfigError> {
        let big = |s: &str, key: &str| match s {
            "big" => Ok(true),
            "little" => Ok(false),
            other => Err(ConfigError::invalid(
                key,
                format!("{other:?} is not big or little"),
            )),
        };
        Ok(Order {
            big_words: big(words, "word_order")?,
            big_bytes: big(bytes, "byte_order")?,
        })
    }
}

/// Bytes of the value, most significant first, from its registers.
fn to_bytes(regs: &[u16], order: Order) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if !order.big_words {
        words.reverse();
    }
    words
        .iter()
        .flat_map(|w| {
            let b = w.to_be_bytes();
            if order.big_bytes {
                [b[0], b[1]]
            } else {
                [b[1], b[0]]
            }
        })
        .collect()
}

fn from_bytes(bytes: &[u8], order: Order) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = match c {
                [hi, lo, ..] => (*hi, *lo),
                [hi] => (*hi, 0),
                [] => (0, 0),
            };
            if order.big_bytes {
                u16::from_be_bytes([hi, lo])
            } else {
                u16::from_be_bytes([lo, hi])
            }
        })
        .collect();
    if !order.big_words {
        words.reverse();
    }
    words
}

/// The f64 that prints as the f32's shortest round-trip decimal: an f32 widened as is
/// carries its binary error into the JSON (123.456f32 is 123.45600128173828 as an f64).
fn shortest_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The raw number (or string) held in `regs`.
pub fn decode(regs: &[u16], kind: RegType, order: Order) -> Result<Value, CodecError> {
    if regs.len() != usize::from(kind.registers()) {
        return Err(CodecError::Registers {
            expected: kind.registers(),
            got: regs.len(),
        });
    }
    let b = to_bytes(regs, order);
    Ok(match kind {
        RegType::Bool => Value::Bool(regs.iter().any(|r| *r != 0)),
        RegType::U16 => Value::from(u16::from_be_bytes(be(&b)?)),
        RegType::I16 => Value::from(i16::from_be_bytes(be(&b)?)),
        RegType::U32 => Value::from(u32::from_be_bytes(be(&b)?)),
        RegType::I32 => Value::from(i32::from_be_bytes(be(&b)?)),
        RegType::U64 => Value::from(u64::from_be_bytes(be(&b)?)),
        RegType::I64 => Value::from(i64::from_be_bytes(be(&b)?)),
        RegType::F32 => secop_proto::json::number(shortest_f64(f32::from_be_bytes(be(&b)?)))
            .ok_or(CodecError::NotFinite)?,
        RegType::F64 => {
            secop_proto::json::number(f64::from_be_bytes(be(&b)?)).ok_or(CodecError::NotFinite)?
        }
        RegType::Str(_) => {
            let text: String = b
                .iter()
                .take_while(|c| **c != 0)
                .map(|c| if c.is_ascii() { *c as char } else { '?' })
                .collect();
            Value::from(text.trim_end())
        }
    })
}

/// The bytes as a fixed-size array, or an error if there are not exactly `N`.
fn be<const N: usize>(bytes: &[u8]) -> Result<[u8; N], CodecError> {
    bytes.try_into().map_err(|_| CodecError::Bytes {
        expected: N,
        got: bytes.len(),
    })
}

/// Registers holding `value` (a number, bool or string) as `kind`.
pub fn encode(value: &Value, kind: RegType, order: Order) -> Result<Vec<u16>, CodecError> {
    let number = || {
        value
            .as_f64()
            .or_else(|| value.as_bool().map(|b| f64::from(u8::from(b))))
    };
    let int = |min: f64, max: f64| -> Result<i128, CodecError> {
        let x = number()
            .ok_or_else(|| CodecError::NotANumber(value.clone()))?
            .round();
        if x < min || x > max {
            return Err(CodecError::DoesNotFit(x));
        }
        Ok(x as i128)
    };
    let bytes: Vec<u8> = match kind {
        RegType::Bool => return Ok(vec![u16::from(number().unwrap_or(0.0) != 0.0)]),
        RegType::U16 => (int(0.0, 65535.0)? as u16).to_be_bytes().to_vec(),
        RegType::I16 => (int(-32768.0, 32767.0)? as i16).to_be_bytes().to_vec(),
        RegType::U32 => (int(0.0, 4294967295.0)? as u32).to_be_bytes().to_vec(),
        RegType::I32 => (int(-2147483648.0, 2147483647.0)? as i32)
            .to_be_bytes()
            .to_vec(),
        RegType::U64 => (int(0.0, 1.8446744073709552e19)? as u64)
            .to_be_bytes()
            .to_vec(),
        RegType::I64 => (int(-9.223372036854776e18, 9.223372036854776e18)? as i64)
            .to_be_bytes()
            .to_vec(),
        RegType::F32 => (number().ok_or(CodecError::NoNumber)? as f32)
            .to_be_bytes()
            .to_vec(),
        RegType::F64 => number().ok_or(CodecError::NoNumber)?.to_be_bytes().to_vec(),
        RegType::Str(n) => {
            let s = value.as_str().ok_or(CodecError::NotAString)?;
            if !s.is_ascii() || s.len() > usize::from(n) * 2 {
                return Err(CodecError::BadString {
                    text: s.to_owned(),
                    max: n * 2,
                });
            }
            let mut b = s.as_bytes().to_vec();
            b.resize(usize::from(n) * 2, 0);
            b
        }
    };
    Ok(from_bytes(&bytes, order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BIG: Order = Order {
        big_words: true,
        big_bytes: true,
    };
    const SWAPPED_WORDS: Order = Order {
        big_words: false,
        big_bytes: true,
    };
    const LITTLE: Order = Order {
        big_words: false,
        big_bytes: false,
    };

    /// An f32 register reaches clients as the shortest decimal that reads back as the
    /// same f32 (123.456, not 123.45600128173828).
    #[test]
    fn f32_is_its_shortest_decimal() {
        for x in [123.456f32, 0.1, 1e-7, 3.4028235e38, -2.5, 0.0] {
            let regs = [(x.to_bits() >> 16) as u16, x.to_bits() as u16];
            let v = decode(&regs, RegType::F32, BIG).unwrap();
            assert_eq!(
                v.to_string(),
                serde_json::to_string(&x.to_string().parse::<f64>().unwrap()).unwrap()
            );
            assert_eq!(v.as_f64().map(|f| f as f32), Some(x));
        }
        let regs = [
            (123.456f32.to_bits() >> 16) as u16,
            123.456f32.to_bits() as u16,
        ];
        assert_eq!(decode(&regs, RegType::F32, BIG).unwrap(), json!(123.456));
    }

    #[test]
    fn known_images() {
        // 1.5f32 = 0x3FC00000
        assert_eq!(
            decode(&[0x3FC0, 0x0000], RegType::F32, BIG).unwrap(),
            json!(1.5)
        );
        assert_eq!(
            decode(&[0x0000, 0x3FC0], RegType::F32, SWAPPED_WORDS).unwrap(),
            json!(1.5)
        );
        assert_eq!(
            decode(&[0x0000, 0xC03F], RegType::F32, LITTLE).unwrap(),
            json!(1.5)
        );
        assert_eq!(decode(&[0xFFFF], RegType::I16, BIG).unwrap(), json!(-1));
        assert_eq!(
            decode(&[0x0001, 0x0002], RegType::U32, BIG).unwrap(),
            json!(65538)
        );
        assert_eq!(
            decode(&[0x4142, 0x4300], RegType::Str(2), BIG).unwrap(),
            json!("ABC")
        );
        assert_eq!(decode(&[0, 0, 0, 1], RegType::I64, BIG).unwrap(), json!(1));
    }

    #[test]
    fn round_trips() {
        for order in [
            BIG,
            SWAPPED_WORDS,
            LITTLE,
            Order {
                big_words: true,
                big_bytes: false,
            },
        ] {
            for (v, k) in [
                (json!(-12345.5), RegType::F64),
                (json!(2.25), RegType::F32),
                (json!(-70000), RegType::I32),
                (json!(4000000000u64), RegType::U32),
                (json!(-5), RegType::I64),
                (json!(65535), RegType::U16),
                (json!("PUMP1"), RegType::Str(4)),
            ] {
                let regs = encode(&v, k, order).unwrap();
                assert_eq!(regs.len(), usize::from(k.registers()));
                assert_eq!(decode(&regs, k, order).unwrap(), v, "{k:?} {order:?}");
            }
        }
        assert_eq!(
            encode(&json!(70000), RegType::U16, BIG)
                .unwrap_err()
                .to_string(),
            "70000 does not fit the register type"
        );
        assert!(encode(&json!("too long"), RegType::Str(2), BIG).is_err());
    }

    /// Every type, given too few, too many or no registers: an error, never a panic.
    #[test]
    fn wrong_register_counts_are_errors() {
        for kind in RegType::FIXED.into_iter().chain([RegType::Str(3)]) {
            let n = usize::from(kind.registers());
            for len in [0, n - 1, n + 1] {
                let regs = vec![0x4141u16; len];
                for order in [BIG, LITTLE, SWAPPED_WORDS] {
                    let e = decode(&regs, kind, order).unwrap_err();
                    assert_eq!(
                        e,
                        CodecError::Registers {
                            expected: kind.registers(),
                            got: len
                        },
                        "{kind:?} {len}: {e}"
                    );
                }
            }
        }
        assert_eq!(
            from_bytes(&[0x12, 0x34, 0x56], BIG),
            vec![0x1234, 0x5600],
            "an odd byte count is padded"
        );
    }
}
