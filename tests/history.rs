//! `GET /history`: the value history of numeric parameters, over real TCP against the
//! real binary. It fills from polls, answers `?since=` and `?parameter=`, keeps to its
//! window and resolution, shows only what the node's description shows, passes the
//! same request policy as every route, and its configuration is checked at load.

mod common;

use common::*;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// An HTTP response: status code, head (lower case) and body.
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` on `addr` with a correct Host and these extra header lines.
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    let text = http_exchange(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let head = head.to_ascii_lowercase();
    let body = match head.contains("transfer-encoding: chunked") {
        true => dechunk(body),
        false => body.to_owned(),
    };
    Response { status, head, body }
}

/// The body of a chunked response.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    get_with(addr, path, "")
}

/// The points of `parameter` in a history document: (t, value or None for a gap).
fn points(doc: &Value, parameter: &str) -> Vec<(f64, Option<f64>)> {
    doc["parameters"][parameter]
        .as_array()
        .unwrap_or_else(|| panic!("no {parameter} in {doc}"))
        .iter()
        .map(|p| {
            let t = p[0].as_f64().expect("a time");
            assert!(p[1].is_null() || p[1].is_number(), "{p}");
            (t, p[1].as_f64())
        })
        .collect()
}

/// The history once `parameter` has at least `n` points (within a bounded wait).
fn history_with(addr: SocketAddr, parameter: &str, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc = get(addr, "/history").json();
        if points(&doc, parameter).len() >= n || Instant::now() > deadline {
            return doc;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_default_config_fills_the_history_from_polls() {
    let gw = Gateway::start_default();
    let doc = history_with(gw.addr, "T:value", 3);
    assert_eq!(doc["window"], 3600);
    assert_eq!(doc["resolution"], 1);
    let now = doc["now"].as_f64().expect("now");
    let t = points(&doc, "T:value");
    assert!(t.len() >= 3, "{doc}");
    // In time order, one per 1 s slot at most, none from the future or beyond the window.
    assert!(
        t.windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].0.floor() < w[1].0.floor()),
        "{t:?}"
    );
    assert!(
        t.iter()
            .all(|(at, v)| *at <= now && *at >= now - 3600.0 && v.is_some()),
        "{t:?}"
    );
    // Numbers, enums and bools; no tuples or strings.
    let names: Vec<&String> = doc["parameters"].as_object().unwrap().keys().collect();
    for numeric in ["T:target", "p:value", "p:_fault", "ps:mode", "ps:_current"] {
        assert!(names.iter().any(|n| *n == numeric), "{numeric}: {names:?}");
    }
    for other in ["T:status", "io:status", "ps:status"] {
        assert!(!names.iter().any(|n| *n == other), "{other}: {names:?}");
    }
    assert_eq!(points(&doc, "p:_fault")[0].1, Some(0.0));

    let r = get(gw.addr, "/history");
    assert_eq!(r.status, 200);
    assert!(
        r.head.contains("content-type: application/json"),
        "{}",
        r.head
    );
    assert!(r.head.contains("cache-control: no-store"), "{}", r.head);

    // ?since= gives only newer points; ?parameter= only that parameter.
    // Between the last two points (a time parsed from JSON may be an ulp off).
    let since = (t[t.len() - 2].0 + t[t.len() - 1].0) / 2.0;
    let doc = get(
        gw.addr,
        &format!("/history?parameter=T:value&since={since}"),
    )
    .json();
    assert_eq!(doc["parameters"].as_object().unwrap().len(), 1, "{doc}");
    let newer = points(&doc, "T:value");
    assert!(
        !newer.is_empty() && newer.iter().all(|(at, _)| *at > since),
        "{newer:?} after {since}"
    );
    // The last point, or a newer value that replaced it in its slot.
    assert!(newer[0].0 >= t[t.len() - 1].0, "{newer:?} {t:?}");
    let doc = get(gw.addr, &format!("/history?since={}", now + 3600.0)).json();
    assert!(points(&doc, "p:value").is_empty(), "{doc}");

    // Unknown, non-numeric and malformed: JSON errors.
    for (path, status, text) in [
        (
            "/history?parameter=T:nothing",
            404,
            "no parameter \"T:nothing\"",
        ),
        ("/history?parameter=nothing:value", 404, "no parameter"),
        ("/history?parameter=T", 404, "no parameter"),
        ("/history?parameter=T:stop", 404, "no parameter"),
        (
            "/history?parameter=T:status",
            404,
            "only numbers, enums and bools",
        ),
        ("/history?since=soon", 400, "bad query"),
        ("/history?since=nan", 400, "finite"),
    ] {
        let r = get(gw.addr, path);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.head.contains("application/json"), "{path}: {}", r.head);
        let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(text), "{path}: {error}");
    }

    // The metrics count what is held.
    let m = metrics(&gw);
    let held = counter(
        &m,
        "secop_gateway_history_points{node=\"secop_gateway_simulation\"}",
    );
    let bytes = counter(
        &m,
        "secop_gateway_history_bytes{node=\"secop_gateway_simulation\"}",
    );
    assert!(
        held >= 3.0 && bytes >= held * 16.0,
        "{held} points, {bytes} bytes"
    );
}

#[test]
fn the_request_policy_applies() {
    let gw = Gateway::start(FAST_CONFIG);
    let r = get_with(gw.addr, "/history", "Origin: http://evil.example\r\n");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.body.contains("parameters"), "{}", r.body);
    let same_origin = format!("Origin: http://{}\r\n", gw.addr);
    assert_eq!(get_with(gw.addr, "/history", &same_origin).status, 200);
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    let text = http_exchange(
        &mut s,
        b"GET /history HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 421"), "{text:.200}");
    assert!(!text.contains("parameters"), "{text}");
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    let text = http_exchange(
        &mut s,
        format!(
            "POST /history HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    );
    assert!(text.starts_with("HTTP/1.1 405"), "{text:.200}");
}

#[test]
fn window_and_resolution_bound_the_points() {
    let config = FAST_CONFIG.replace(
        "[[module]]\nname = \"T\"",
        "[history]\nwindow = 2\nresolution = 0.5\n[[module]]\nname = \"T\"",
    );
    let gw = Gateway::start(&config);
    // p is polled every 0.1 s with noise: 10 values a second, at most 4 points kept.
    let doc = history_with(gw.addr, "p:value", 4);
    std::thread::sleep(Duration::from_secs(2));
    let doc2 = get(gw.addr, "/history").json();
    for doc in [&doc, &doc2] {
        let p = points(doc, "p:value");
        let now = doc["now"].as_f64().unwrap();
        assert!((2..=4).contains(&p.len()), "{p:?}");
        assert!(p.iter().all(|(t, _)| *t >= now - 2.0), "{p:?} at {now}");
        assert!(
            p.windows(2)
                .all(|w| (w[0].0 / 0.5).floor() < (w[1].0 / 0.5).floor()),
            "{p:?}"
        );
    }
    // The window moved on.
    assert!(points(&doc2, "p:value")[0].0 > points(&doc, "p:value")[0].0);

    // Memory: at most 4 points of 16 bytes per numeric parameter.
    let m = metrics(&gw);
    let held = counter(&m, "secop_gateway_history_points{node=\"test_node\"}");
    let bytes = counter(&m, "secop_gateway_history_bytes{node=\"test_node\"}");
    let numeric = get(gw.addr, "/history").json()["parameters"]
        .as_object()
        .unwrap()
        .len() as f64;
    assert!(held <= numeric * 4.0, "{held} points, {numeric} parameters");
    assert!(
        bytes <= numeric * 4.0 * 16.0,
        "{bytes} bytes, {numeric} parameters"
    );
}

#[test]
fn an_error_episode_is_one_gap() {
    let gw = Gateway::start(FAST_CONFIG);
    history_with(gw.addr, "p:value", 2);
    let mut c = gw.client();
    assert!(c.ask("change p:_fault true").starts_with("changed"));
    // p is polled every 0.1 s: several failed polls, one gap marker.
    std::thread::sleep(Duration::from_millis(1500));
    let during = points(
        &get(gw.addr, "/history?parameter=p:value").json(),
        "p:value",
    );
    assert_eq!(
        during.iter().filter(|(_, v)| v.is_none()).count(),
        1,
        "{during:?}"
    );
    assert!(
        during.last().is_some_and(|(_, v)| v.is_none()),
        "{during:?}"
    );
    assert!(c.ask("change p:_fault false").starts_with("changed"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = points(
            &get(gw.addr, "/history?parameter=p:value").json(),
            "p:value",
        );
        if after.last().is_some_and(|(_, v)| v.is_some()) || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        after.iter().filter(|(_, v)| v.is_none()).count(),
        1,
        "{after:?}"
    );
    assert!(after.last().is_some_and(|(_, v)| v.is_some()), "{after:?}");
    let fault = points(
        &get(gw.addr, "/history?parameter=p:_fault").json(),
        "p:_fault",
    );
    let values: Vec<Option<f64>> = fault.iter().map(|(_, v)| *v).collect();
    assert!(values.ends_with(&[Some(1.0), Some(0.0)]), "{fault:?}");
}

#[test]
fn hidden_parameters_have_no_history_and_a_disabled_history_is_404() {
    let config = format!(
        "{FAST_CONFIG}\n[[extra_node]]\nequipment_id = \"view\"\ndescription = \"view\"\n\
         listen = \"127.0.0.1:0\"\nread_only = true\nhide = [\"T:ramp\", \"ps:_current\"]\n"
    );
    let gw = Gateway::start(&config);
    let view = gw.addrs[1];
    let doc = history_with(view, "T:value", 1);
    let names = doc["parameters"].as_object().unwrap();
    assert!(
        names.contains_key("T:value") && names.contains_key("p:value"),
        "{doc}"
    );
    assert!(
        !names.contains_key("T:ramp") && !names.contains_key("ps:_current"),
        "{doc}"
    );
    let r = get(view, "/history?parameter=T:ramp");
    assert_eq!(r.status, 404, "{}", r.body);
    // The main node has them.
    let doc = history_with(gw.addr, "p:value", 1);
    assert!(doc["parameters"]["T:ramp"].is_array(), "{doc}");
    assert!(doc["parameters"]["ps:_current"].is_array(), "{doc}");
    let m = metrics(&gw);
    assert!(
        m.contains("secop_gateway_history_points{node=\"view\"}"),
        "{m}"
    );

    let config = FAST_CONFIG.replace(
        "[[module]]\nname = \"T\"",
        "[history]\nenabled = false\n[[module]]\nname = \"T\"",
    );
    let gw = Gateway::start(&config);
    let r = get(gw.addr, "/history");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("disabled"),
        "{}",
        r.body
    );
    assert!(!metrics(&gw).contains("secop_gateway_history_points{"));
}

/// `check-config` with this config and environment: (exit code, stderr).
fn check_config(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = Gateway::scratch();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secop-gateway"))
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .expect("run check-config");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_history_keys() {
    let with = |history: &str| {
        FAST_CONFIG.replace(
            "[[module]]\nname = \"T\"",
            &format!("[history]\n{history}\n[[module]]\nname = \"T\""),
        )
    };
    for (history, expected) in [
        (
            "window = 0",
            "history.window: 0 s is outside the valid range 1 ..= 604800 s",
        ),
        ("window = 1e7", "history.window: 1e7 s is outside"),
        (
            "resolution = 0.001",
            "history.resolution: 0.001 s is outside the valid range 0.01 ..= 3600 s",
        ),
        (
            "window = 604800\nresolution = 1",
            "more than the maximum of 100000 (history.max_points_per_parameter)",
        ),
        ("enabled = \"maybe\"", "history.enabled"),
    ] {
        let (code, err) = check_config(&with(history), &[]);
        assert_eq!(code, Some(2), "{history}: {err}");
        assert!(
            err.contains(expected),
            "{history}: expected {expected:?} in\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let (code, err) = check_config(
        FAST_CONFIG,
        &[("SECOP_GATEWAY__HISTORY__RESOLUTION", "1e-5")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("environment variable SECOP_GATEWAY__HISTORY__RESOLUTION: history.resolution: 1e-5 s is outside"),
        "{err}"
    );
    let (code, err) = check_config(&with("window = 60\nresolution = 0.1"), &[]);
    assert_eq!(code, Some(0), "{err}");
}
