//! Validation edges, type by type, following the datainfo section of the spec.

use super::*;
use crate::error::ErrorClass;
use serde_json::json;

fn di(j: Value) -> DataInfo {
    DataInfo::from_json(&j).unwrap_or_else(|e| panic!("{j}: {e}"))
}

fn class(d: &DataInfo, v: Value) -> ErrorClass {
    match d.validate(&v) {
        Ok(ok) => panic!("{v} accepted as {ok}"),
        Err(e) => e.class,
    }
}

use ErrorClass::{RangeError, WrongType};

#[test]
fn double() {
    let d = di(json!({"type":"double","min":-1.5,"max":10,"unit":"K","fmtstr":"%.3f"}));
    assert_eq!(d.validate(&json!(3)).unwrap(), json!(3));
    assert_eq!(d.validate(&json!(-1.5)).unwrap(), json!(-1.5));
    assert_eq!(d.validate(&json!(10.0)).unwrap(), json!(10.0));
    assert_eq!(class(&d, json!(10.000001)), RangeError);
    assert_eq!(class(&d, json!(-2)), RangeError);
    assert_eq!(class(&d, json!("3")), WrongType);
    assert_eq!(class(&d, json!(true)), WrongType);
    assert_eq!(class(&d, json!(null)), WrongType);
    assert_eq!(class(&d, json!([1])), WrongType);
    let unbounded = di(json!({"type":"double"}));
    assert!(unbounded.validate(&json!(1e300)).is_ok());
    assert_eq!(d.unit(), Some("K"));
}

#[test]
fn scaled() {
    let d = di(json!({"type":"scaled","scale":0.1,"min":0,"max":2500}));
    assert_eq!(d.validate(&json!(1255)).unwrap(), json!(1255));
    assert_eq!(d.validate(&json!(13.0)).unwrap(), json!(13));
    assert_eq!(
        class(&d, json!(12.7)),
        WrongType,
        "never truncated silently"
    );
    assert_eq!(class(&d, json!(2501)), RangeError);
    assert_eq!(class(&d, json!(-1)), RangeError);
    assert_eq!(class(&d, json!("1")), WrongType);
    assert!(DataInfo::from_json(&json!({"type":"scaled","min":0,"max":1})).is_err());
    assert!(DataInfo::from_json(&json!({"type":"scaled","scale":1,"min":0})).is_err());
}

#[test]
fn int() {
    let d = di(json!({"type":"int","min":-5,"max":5}));
    assert_eq!(d.validate(&json!(5)).unwrap(), json!(5));
    assert_eq!(
        d.validate(&json!(5.0)).unwrap().to_string(),
        "5",
        "emitted without .0"
    );
    assert_eq!(class(&d, json!(5.5)), WrongType);
    assert_eq!(class(&d, json!(6)), RangeError);
    assert_eq!(class(&d, json!(-6)), RangeError);
    assert_eq!(class(&d, json!(18446744073709551615u64)), RangeError);
    assert_eq!(class(&d, json!(1e30)), RangeError);
    assert_eq!(class(&d, json!(false)), WrongType);
    assert!(
        DataInfo::from_json(&json!({"type":"int"})).is_err(),
        "min/max mandatory"
    );
    assert!(DataInfo::from_json(&json!({"type":"int","min":3,"max":1})).is_err());
}

#[test]
fn bool() {
    let d = di(json!({"type":"bool"}));
    assert_eq!(d.validate(&json!(true)).unwrap(), json!(true));
    assert_eq!(d.validate(&json!(false)).unwrap(), json!(false));
    assert_eq!(class(&d, json!(1)), WrongType);
    assert_eq!(class(&d, json!("true")), WrongType);
}

#[test]
fn enumeration() {
    let d = di(json!({"type":"enum","members":{"off":0,"on":1,"auto":5}}));
    assert_eq!(d.validate(&json!(5)).unwrap(), json!(5));
    assert_eq!(
        d.validate(&json!("on")).unwrap(),
        json!(1),
        "member name accepted"
    );
    assert_eq!(d.validate(&json!(1.0)).unwrap(), json!(1));
    assert_eq!(class(&d, json!(2)), RangeError);
    assert_eq!(
        class(&d, json!("ON")),
        RangeError,
        "names are case-sensitive"
    );
    assert_eq!(class(&d, json!(1.5)), WrongType);
    assert_eq!(class(&d, json!(null)), WrongType);
    assert!(DataInfo::from_json(&json!({"type":"enum","members":{"a":1,"b":1}})).is_err());
    assert!(DataInfo::from_json(&json!({"type":"enum","members":{"a":1,"A":2}})).is_err());
}

#[test]
fn string() {
    let d = di(json!({"type":"string","minchars":1,"maxchars":3}));
    assert!(d.validate(&json!("abc")).is_ok());
    assert_eq!(class(&d, json!("")), RangeError);
    assert_eq!(class(&d, json!("abcd")), RangeError);
    assert_eq!(
        class(&d, json!("äb")),
        RangeError,
        "isUTF8 defaults to false"
    );
    assert_eq!(class(&d, json!(3)), WrongType);
    let u = di(json!({"type":"string","maxchars":3,"isUTF8":true}));
    assert!(
        u.validate(&json!("äöü")).is_ok(),
        "maxchars counts code points"
    );
    assert_eq!(class(&u, json!("äöüx")), RangeError);
}

#[test]
fn blob() {
    let d = di(json!({"type":"blob","minbytes":1,"maxbytes":5}));
    assert!(d.validate(&json!("U0VDb1A=")).is_ok(), "SECoP is 5 bytes");
    assert_eq!(class(&d, json!("U0VDb1Ah")), RangeError, "6 bytes");
    assert_eq!(class(&d, json!("")), RangeError);
    assert_eq!(class(&d, json!("not base64!")), WrongType);
    assert_eq!(class(&d, json!([1, 2])), WrongType);
    assert!(
        DataInfo::from_json(&json!({"type":"blob"})).is_err(),
        "maxbytes mandatory"
    );
}

#[test]
fn array() {
    let d = di(json!({"type":"array","minlen":1,"maxlen":3,
        "members":{"type":"int","min":0,"max":9}}));
    assert_eq!(d.validate(&json!([1, 2.0])).unwrap(), json!([1, 2]));
    assert_eq!(class(&d, json!([])), RangeError);
    assert_eq!(class(&d, json!([1, 2, 3, 4])), RangeError);
    assert_eq!(class(&d, json!([1, 10])), RangeError);
    assert_eq!(class(&d, json!([1, "x"])), WrongType);
    assert_eq!(class(&d, json!({"a":1})), WrongType);
    let err = d.validate(&json!([1, 10])).unwrap_err();
    assert!(err.text.starts_with("[1]:"), "{}", err.text);
}

#[test]
fn tuple() {
    let d = status_datainfo(&[("IDLE", 100), ("BUSY", 300)]);
    assert_eq!(
        d.validate(&json!(["BUSY", "moving"])).unwrap(),
        json!([300, "moving"])
    );
    assert_eq!(class(&d, json!([100])), WrongType);
    assert_eq!(class(&d, json!([100, "a", 1])), WrongType);
    assert_eq!(class(&d, json!([200, "a"])), RangeError);
    assert_eq!(class(&d, json!("IDLE")), WrongType);
    assert_eq!(d.to_json()["members"][0]["members"]["BUSY"], json!(300));
}

#[test]
fn structure() {
    let d = di(json!({"type":"struct","optional":["d"],"members":{
        "p":{"type":"double"},"i":{"type":"double"},"d":{"type":"double","min":0}}}));
    assert!(d.validate(&json!({"p":1,"i":2,"d":3})).is_ok());
    assert!(
        d.validate(&json!({"p":1,"i":2})).is_ok(),
        "optional member omitted"
    );
    assert_eq!(
        class(&d, json!({"p":1})),
        WrongType,
        "required member missing"
    );
    assert_eq!(
        class(&d, json!({"p":1,"i":2,"x":3})),
        WrongType,
        "unknown member"
    );
    assert_eq!(class(&d, json!({"p":1,"i":2,"d":-1})), RangeError);
    assert_eq!(class(&d, json!([1, 2, 3])), WrongType);
    let filled = d.fill_optional(json!({"i":5,"p":4}), Some(&json!({"p":1,"i":2,"d":3})));
    assert_eq!(filled.to_string(), r#"{"p":4,"i":5,"d":3}"#);
    assert!(
        DataInfo::from_json(&json!({"type":"struct","members":{"a":{"type":"bool"}},
        "optional":["b"]}))
        .is_err()
    );
}

#[test]
fn matrix() {
    let d = di(json!({"type":"matrix","elementtype":"<f4","names":["x","y"],"maxlen":[100,100]}));
    let ok = json!({"len":[2,3],"blob":"AACAPwAAAEAAAEBAAACAQAAAoEAAAMBA"});
    assert!(d.validate(&ok).is_ok());
    assert_eq!(
        class(
            &d,
            json!({"len":[2,2],"blob":"AACAPwAAAEAAAEBAAACAQAAAoEAAAMBA"})
        ),
        WrongType
    );
    assert_eq!(class(&d, json!({"len":[101,0],"blob":""})), RangeError);
    assert_eq!(class(&d, json!({"len":[2],"blob":""})), WrongType);
    assert_eq!(class(&d, json!({"len":[0,0],"blob":"@@"})), WrongType);
    assert_eq!(class(&d, json!([1, 2])), WrongType);
    assert!(DataInfo::from_json(
        &json!({"type":"matrix","elementtype":"<f2","names":["x"],"maxlen":[1]})
    )
    .is_err());
    assert!(DataInfo::from_json(
        &json!({"type":"matrix","elementtype":"<i2","names":["x"],"maxlen":[1,2]})
    )
    .is_err());
}

#[test]
fn command() {
    let d = di(
        json!({"type":"command","argument":{"type":"bool"},"result":{"type":"int","min":0,"max":9}}),
    );
    assert!(d.is_command());
    assert_eq!(class(&d, json!(null)), WrongType);
    match &d.kind {
        Kind::Command {
            argument: Some(a),
            result: Some(_),
        } => {
            assert!(a.validate(&json!(true)).is_ok());
        }
        other => panic!("{other:?}"),
    }
    assert!(DataInfo::from_json(&json!({"type":"command","argument":{"type":"command"}})).is_err());
}

#[test]
fn description_errors_are_explicit() {
    let e = DataInfo::from_json(&json!({"type":"double","mni":0}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mni"), "{e}");
    let e = DataInfo::from_json(&json!({"type":"float"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("float"), "{e}");
    let e = DataInfo::from_json(&json!({"type":"struct","members":{"a":{"type":"int"}}}))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("members.a:"), "{e}");
    assert!(DataInfo::from_json(&json!({"type":"double","fmtstr":"%d"})).is_err());
    assert!(DataInfo::from_json(&json!({"type":"double","_custom":[1]})).is_ok());
}

#[test]
fn defaults_validate() {
    for j in [
        json!({"type":"double","min":5}),
        json!({"type":"int","min":3,"max":9}),
        json!({"type":"enum","members":{"a":7}}),
        json!({"type":"string","minchars":2}),
        json!({"type":"blob","minbytes":2,"maxbytes":4}),
        json!({"type":"array","minlen":2,"maxlen":4,"members":{"type":"bool"}}),
        json!({"type":"struct","members":{"a":{"type":"bool"}}}),
        json!({"type":"matrix","elementtype":">u2","names":["x"],"maxlen":[4]}),
    ] {
        let d = di(j.clone());
        assert!(d.validate(&d.default_value()).is_ok(), "{j}");
    }
}

/// Datainfos come from remote nodes and config files: whatever they hold, parsing
/// gives an `Err` (never a panic), and a datainfo that parses yields a default value
/// without an absurd allocation.
#[test]
fn hostile_datainfo_is_an_error_not_a_panic() {
    let cases = [
        // slicing inside a character
        json!({"type":"double","fmtstr":"%.é"}),
        json!({"type":"double","fmtstr":"%.1é"}),
        json!({"type":"double","fmtstr":"%.é3f"}),
        json!({"type":"scaled","scale":1,"min":0,"max":1,"fmtstr":"%.😀"}),
        json!({"type":"matrix","names":["x"],"maxlen":[1],"elementtype":"<é"}),
        json!({"type":"matrix","names":["x"],"maxlen":[1],"elementtype":"‹é"}),
        json!({"type":"matrix","names":["x"],"maxlen":[1],"elementtype":"aé"}),
        json!({"type":"matrix","names":["x"],"maxlen":[1],"elementtype":"é"}),
        json!({"type":"matrix","names":["x"],"maxlen":[1],"elementtype":"<f"}),
        json!({"type":"matrix","names":["x"],"maxlen":[1],"elementtype":"<f٤"}),
        // a smallest value no message could carry
        json!({"type":"string","minchars":u64::MAX}),
        json!({"type":"string","minchars":1u64 << 40}),
        json!({"type":"blob","minbytes":u64::MAX,"maxbytes":u64::MAX}),
        json!({"type":"blob","minbytes":1u64 << 40,"maxbytes":1u64 << 41}),
        json!({"type":"array","minlen":u64::MAX,"maxlen":u64::MAX,"members":{"type":"bool"}}),
        json!({"type":"array","minlen":1000,"maxlen":1000,"members":
            {"type":"array","minlen":1000,"maxlen":1000,"members":
            {"type":"array","minlen":1000,"maxlen":1000,"members":{"type":"int","min":0,"max":1}}}}),
        json!({"type":"tuple","members":[
            {"type":"string","minchars":1u64 << 30},{"type":"string","minchars":1u64 << 30}]}),
        json!({"type":"struct","members":{
            "a":{"type":"blob","minbytes":1u64 << 28,"maxbytes":1u64 << 28},
            "b":{"type":"blob","minbytes":1u64 << 28,"maxbytes":1u64 << 28}}}),
    ];
    for j in cases {
        assert!(DataInfo::from_json(&j).is_err(), "{j} accepted");
        assert!(DataInfo::from_remote_json(&j).is_err(), "{j} accepted");
    }
    // Still fine: big limits, small minimum.
    for j in [
        json!({"type":"string","maxchars":u64::MAX}),
        json!({"type":"blob","maxbytes":u64::MAX}),
        json!({"type":"array","maxlen":u64::MAX,"members":{"type":"bool"}}),
        json!({"type":"array","minlen":1000,"maxlen":1000,"members":{"type":"double"}}),
        json!({"type":"matrix","names":["x","y"],"maxlen":[u64::MAX,u64::MAX],"elementtype":"<f8"}),
    ] {
        let d = di(j.clone());
        assert!(d.validate(&d.default_value()).is_ok(), "{j}");
    }
}

/// Nesting deeper than any real datainfo is refused before the stack is at risk (a
/// `serde_json::Value` built in code or from TOML has no recursion limit).
#[test]
fn deep_nesting_is_refused() {
    let mut j = json!({"type":"bool"});
    for _ in 0..10_000 {
        // Built by hand: json!() would serialise `j` recursively.
        let mut level = Map::new();
        level.insert("type".into(), json!("array"));
        level.insert("maxlen".into(), json!(1));
        level.insert("members".into(), j);
        j = Value::Object(level);
    }
    let e = DataInfo::from_remote_json(&j).unwrap_err();
    assert_eq!(e.innermost(), &DataInfoError::TooDeep);
    assert!(e.to_string().starts_with("members: members: "), "{e}");
    // serde_json::Value drops recursively; leak the tower instead of blowing the stack.
    std::mem::forget(j);
}

/// Uniqueness checks are not quadratic: a remote enum or struct with many members
/// parses quickly (counted in comparisons, not time: 20 000 members).
#[test]
fn many_members_parse() {
    let members: Map<String, Value> = (0..20_000)
        .map(|i| (format!("m{i}"), Value::from(i)))
        .collect();
    let d = di(json!({"type":"enum","members":members}));
    assert_eq!(d.validate(&json!("m19999")).unwrap(), json!(19999));
    let mut dup = members.clone();
    dup.insert("M5".into(), Value::from(-1));
    assert!(DataInfo::from_json(&json!({"type":"enum","members":dup})).is_err());
    let fields: Map<String, Value> = (0..20_000)
        .map(|i| (format!("f{i}"), json!({"type":"bool"})))
        .collect();
    let names: Vec<String> = (0..20_000).map(|i| format!("f{i}")).collect();
    let d = di(json!({"type":"struct","members":fields,"optional":names}));
    assert!(d.validate(&json!({})).is_ok());
}

/// Found by the randomized pass: a command inside a tuple or struct made a datainfo
/// that no value fits (not even its own default). Like array members, refused.
#[test]
fn no_command_members() {
    for j in [
        json!({"type":"tuple","members":[{"type":"bool"},{"type":"command"}]}),
        json!({"type":"struct","members":{"a":{"type":"command"}}}),
    ] {
        let e = DataInfo::from_remote_json(&j).unwrap_err().to_string();
        assert!(e.contains("command"), "{e}");
    }
}
