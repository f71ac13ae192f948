//! The fuzz corpus on stable Rust: every file of `fuzz/corpus/{request_line,datainfo,
//! description}` (seeds and regression inputs) goes through the same checks as the
//! fuzz targets (`fuzz/checks/proto.rs`), followed by a bounded, seeded randomized pass:
//! mutations of the corpus and generated datainfos. See RELIABILITY.md.

#[path = "../../fuzz/checks/proto.rs"]
mod checks;
#[path = "../../fuzz/checks/random.rs"]
mod random;

use random::{replay, Checking, Rng};
use serde_json::{json, Map, Value};

/// Mutations per target and run: a few seconds in a debug build.
const CASES: usize = 3000;

fn randomized(target: &str, seed: u64, check: fn(&[u8])) {
    random::randomized(target, seed, CASES, check);
}

#[test]
fn request_line_corpus() {
    replay("request_line", checks::request_line);
}

#[test]
fn request_line_randomized() {
    randomized("request_line", 1, checks::request_line);
}

#[test]
fn datainfo_corpus() {
    replay("datainfo", checks::datainfo);
}

#[test]
fn datainfo_randomized() {
    randomized("datainfo", 2, checks::datainfo);
}

#[test]
fn description_corpus() {
    replay("description", checks::description);
}

#[test]
fn description_randomized() {
    randomized("description", 3, checks::description);
}

/// A number from the edges that break arithmetic and allocation.
fn number(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!(u64::MAX),
        1 => json!(i64::MIN),
        2 => json!(i64::MAX),
        3 => json!(1u64 << 40),
        4 => json!(-1.5),
        5 => json!(1e308),
        6 => json!(0.1),
        _ => json!(rng.below(5)),
    }
}

fn string(rng: &mut Rng) -> Value {
    let pieces = [
        "%.", "3", "f", "é", "‹", "<", ">", "i", "u", "f8", "2", "😀", "x", "",
    ];
    let s: String = (0..rng.below(4)).map(|_| *rng.pick(&pieces)).collect();
    Value::from(s)
}

/// A random datainfo: mostly well-formed, with random and extreme properties.
fn datainfo(rng: &mut Rng, depth: usize) -> Value {
    let types = [
        "double", "scaled", "int", "bool", "enum", "string", "blob", "array", "tuple", "struct",
        "matrix", "command",
    ];
    let t = *rng.pick(&types);
    let mut o = Map::new();
    o.insert("type".into(), json!(t));
    let keys = [
        "min",
        "max",
        "scale",
        "unit",
        "fmtstr",
        "minchars",
        "maxchars",
        "isUTF8",
        "minbytes",
        "maxbytes",
        "minlen",
        "maxlen",
        "elementtype",
        "absolute_resolution",
        "_x",
    ];
    for _ in 0..rng.below(5) {
        let k = *rng.pick(&keys);
        let v = match rng.below(4) {
            0 => string(rng),
            1 => json!(rng.chance(50)),
            _ => number(rng),
        };
        o.insert(k.into(), v);
    }
    let sub = |rng: &mut Rng| {
        if depth < 4 {
            datainfo(rng, depth + 1)
        } else {
            json!({"type": "bool"})
        }
    };
    match t {
        "enum" => {
            let m: Map<String, Value> = (0..rng.below(4))
                .map(|i| (format!("{}{i}", *rng.pick(&["a", "A", "é"])), number(rng)))
                .collect();
            o.insert("members".into(), Value::Object(m));
        }
        "array" => {
            o.insert("members".into(), sub(rng));
        }
        "tuple" => {
            let m: Vec<Value> = (0..rng.below(4)).map(|_| sub(rng)).collect();
            o.insert("members".into(), Value::Array(m));
        }
        "struct" => {
            let m: Map<String, Value> = (0..rng.below(4))
                .map(|i| (format!("m{i}"), sub(rng)))
                .collect();
            o.insert("members".into(), Value::Object(m));
            if rng.chance(50) {
                o.insert("optional".into(), json!(["m0", "m9"][..rng.below(3)]));
            }
        }
        "matrix" => {
            let n = rng.below(3);
            o.insert("names".into(), json!(vec!["x"; n]));
            o.insert(
                "maxlen".into(),
                Value::Array((0..n).map(|_| number(rng)).collect()),
            );
        }
        "command" if rng.chance(50) => {
            o.insert("argument".into(), sub(rng));
        }
        _ => {}
    }
    Value::Object(o)
}

/// A random value: any JSON kind, nested a little.
fn value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth < 3 { 8 } else { 5 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => number(rng),
        3 => string(rng),
        4 => json!("AAEC"),
        5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        6 => json!({"len": [rng.below(3)], "blob": "AAAA"}),
        _ => Value::Object(
            (0..rng.below(3))
                .map(|i| (format!("m{i}"), value(rng, depth + 1)))
                .collect(),
        ),
    }
}

#[test]
fn generated_datainfos_and_values() {
    let mut rng = Rng::new(4);
    for case in 0..CASES {
        let d = datainfo(&mut rng, 0);
        let v = value(&mut rng, 0);
        let input = format!("{d} {v}");
        let _guard = Checking(&format!("generated case {case}"), input.as_bytes());
        checks::datainfo(input.as_bytes());
        let node = json!({"equipment_id": "x", "description": "", "modules": {
            "m": {"accessibles": {"a": {"datainfo": d, "constant": v}}}}});
        checks::description(node.to_string().as_bytes());
    }
}
