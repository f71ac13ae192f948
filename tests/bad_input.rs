//! Bad input over real TCP: each gets its exact error reply, and the connection
//! stays usable afterwards.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

/// After any bad input, the same connection still answers.
fn still_usable(c: &mut Client) {
    assert!(
        c.ask("ping ok").starts_with("pong ok ["),
        "connection still usable"
    );
}

#[test]
fn malformed_requests_get_exact_replies() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    let cases = [
        (
            "foo",
            r#"error_foo  ["ProtocolError","unknown action \"foo\"",{}]"#,
        ),
        (
            "meas:volt?",
            r#"error_meas:volt?  ["ProtocolError","unknown action \"meas:volt?\"",{}]"#,
        ),
        (
            "foo bar [1]",
            r#"error_foo bar ["ProtocolError","unknown action \"foo\"",{}]"#,
        ),
        (
            "read T",
            r#"error_read T ["ProtocolError","malformed specifier \"T\": expected <module>:<accessible>",{}]"#,
        ),
        (
            "read :value",
            r#"error_read :value ["ProtocolError","malformed specifier \":value\": expected <module>:<accessible>",{}]"#,
        ),
        (
            "change T:target {\"a\":",
            r#"error_change T:target ["BadJSON","data is not valid JSON: EOF while parsing a value at line 1 column 5",{}]"#,
        ),
        (
            "change T:target 12 13",
            r#"error_change T:target ["BadJSON","data is not valid JSON: trailing characters at line 1 column 4",{}]"#,
        ),
        (
            "change T:target \"warm\"",
            r#"error_change T:target ["WrongType","T:target: expected a number, got a string",{}]"#,
        ),
        (
            "change T:target 1000",
            r#"error_change T:target ["RangeError","T:target: 1000 is outside [0, 400]",{}]"#,
        ),
        (
            "change ps:mode 1.5",
            r#"error_change ps:mode ["WrongType","ps:mode: expected an integer, got 1.5",{}]"#,
        ),
        (
            "_custom x",
            r#"error__custom x ["ProtocolError","unknown action \"_custom\"",{}]"#,
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(c.ask(request), expected, "request {request:?}");
        still_usable(&mut c);
    }
}

#[test]
fn invalid_utf8_and_control_bytes() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    c.send_raw(b"change T:target \"\xff\xfe\"\n");
    assert_eq!(
        c.line(),
        r#"error_change T:target ["BadJSON","data is not valid UTF-8",{}]"#
    );
    still_usable(&mut c);
    c.send_raw(b"re\xc3ad T:value\n");
    assert_eq!(
        c.line(),
        r#"error_re?ad T:value ["ProtocolError","message is not valid UTF-8",{}]"#
    );
    still_usable(&mut c);
    // Non-ASCII inside valid JSON is fine and is escaped on the way back.
    let reply = c.ask("check T:target \"\u{00e4}\"");
    assert_eq!(
        reply,
        r#"error_check T:target ["WrongType","T:target: expected a number, got a string",{}]"#
    );
    let reply = c.ask("change T:target \"\u{00e4}\u{1F600}\"");
    assert!(reply.is_ascii(), "{reply}");
    still_usable(&mut c);
    // CRLF line ends are accepted
    c.send_raw(b"ping crlf\r\n");
    assert!(c.line().starts_with("pong crlf ["));
    // empty lines get no answer
    c.send_raw(b"\n\r\n");
    still_usable(&mut c);
}

#[test]
fn huge_line_without_lf_has_bounded_memory() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut other = gw.client();
    let mut c = gw.client();
    assert!(c.ask("ping warm").starts_with("pong"));
    let rss_before = gw.rss_kib();
    // 16 MiB without LF, in chunks, while another client is served.
    let chunk = vec![b'x'; 1 << 20];
    c.send_raw(b"change T:target ");
    for i in 0..16 {
        c.stream.write_all(&chunk).expect("send chunk");
        if i % 4 == 0 {
            assert!(other.ask("read T:value").starts_with("reply T:value"));
        }
    }
    let rss_during = gw.rss_kib();
    c.send_raw(b"\n");
    let reply = c.line();
    assert!(
        reply.starts_with(
            r#"error_change T:target ["ProtocolError","message of 16777232 bytes is too long"#
        ),
        "{reply}"
    );
    still_usable(&mut c);
    // The limit is 64 KiB in this config; 16 MiB must not have been buffered.
    assert!(
        rss_during < rss_before + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB"
    );
}

#[test]
fn silent_client_is_not_disturbed() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut c = gw.client();
    // Nothing may be sent to a client before it speaks (frappy reads the first line
    // as the *IDN? reply).
    assert_eq!(c.line_within(Duration::from_millis(1500)), None);
    assert_eq!(c.ask("*IDN?"), "ISSE,SECoP,,v2.0");
}

#[test]
fn client_that_stops_reading_does_not_stall_others() {
    let gw = Gateway::start(&FAST_CONFIG.replace(
        "write_timeout = 3.0",
        "write_timeout = 2.0\ncoalesce_bytes = 4096\nbackpressure_bytes = 8192",
    ));
    let mut stalled = gw.client();
    let mut reader = gw.client();
    assert_eq!(reader.request("activate").1, "active");
    stalled.send("activate");
    // Ask for far more than the kernel's socket buffers hold (3000 x ~6 KB), and never
    // read it: the gateway's writer blocks and the session's queue backs up.
    stalled.send_raw("describe\n".repeat(3000).as_bytes());
    // Make lots of update traffic: the stalled client never reads a byte.
    let mut writer = gw.client();
    let mut received = 0;
    for i in 0..300 {
        let v = 1 + (i % 20);
        assert!(writer
            .ask(&format!("change ps:target {v}"))
            .starts_with("changed"));
        received += reader.events_for(Duration::from_millis(1)).len();
    }
    received += reader.events_for(Duration::from_millis(200)).len();
    assert!(
        received > 300,
        "the reading client kept receiving ({received} updates)"
    );
    // The reader sees the final value promptly.
    assert!(writer.ask("change ps:target 29").starts_with("changed"));
    assert!(reader
        .wait_event(WAIT, |l| l.starts_with("update ps:target [29"))
        .is_some());
    // The stalled client is disconnected after the write timeout; the gateway lives on.
    assert!(
        stalled.closed_within(Duration::from_secs(10)),
        "stalled client was dropped"
    );
    let mut c = gw.client();
    assert!(c.ask("ping alive").starts_with("pong alive"));
}

/// A client that half-closes after a line without LF (`change T:target 291`, maybe cut
/// off from `2910` by a crash) has not sent a request: it is discarded, not executed.
#[test]
fn unfinished_last_line_is_not_executed() {
    let gw = Gateway::start(FAST_CONFIG);
    let mut observer = gw.client();
    let before = value(&observer.ask("read T:target"));
    assert_ne!(before, serde_json::json!(291.0));
    let mut c = gw.client();
    assert!(c.ask("ping first").starts_with("pong first"));
    c.send_raw(b"change T:target 291");
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    // The gateway answers nothing more and closes its side.
    assert_eq!(c.line_within(Duration::from_secs(2)), None);
    assert!(c.closed_within(WAIT), "connection closed after EOF");
    // Unchanged, also for a fresh connection.
    let mut fresh = gw.client();
    assert_eq!(value(&fresh.ask("read T:target")), before);
    assert_eq!(value(&observer.ask("read T:target")), before);
    // And counted.
    let mut http = std::net::TcpStream::connect(gw.addr).expect("connect");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut page = String::new();
    std::io::Read::read_to_string(&mut http, &mut page).expect("metrics page");
    assert!(
        page.contains("secop_gateway_unfinished_lines_total 1"),
        "{page}"
    );
}
