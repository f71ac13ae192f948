//! The checks behind the gateway's own fuzz targets (the shared-port sniffer, config
//! loading), shared with the stable-Rust replay test `tests/fuzz_corpus.rs`.
//!
//! Each function takes arbitrary bytes and panics only if the code under test panics
//! or breaks one of the invariants asserted here.

use secop_gateway::sniff::{classify, Verdict};
use secop_gateway::ws_guard::FrameGuard;

/// The sniffer decides on the first line of a connection: its verdict never changes
/// as more bytes arrive, and "HTTP" always means a request line ending in `HTTP/d.d`.
pub fn sniff(data: &[u8]) {
    let data = &data[..data.len().min(4096)];
    let full = classify(data);
    let mut decided = None;
    for n in 0..=data.len() {
        let verdict = classify(&data[..n]);
        match decided {
            None if verdict != Verdict::Undecided => decided = Some(verdict),
            None => {}
            Some(d) => assert_eq!(verdict, d, "verdict changed after {n} bytes"),
        }
    }
    if let Some(d) = decided {
        assert_eq!(d, full);
    }
    if full == Verdict::Http {
        let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() >= 8, "{line:?}");
        let version = &line[line.len() - 8..];
        assert!(version.starts_with(b"HTTP/"), "{line:?}");
        assert_eq!(line.iter().filter(|b| **b == b' ').count(), 2, "{line:?}");
    }
}

/// A config file: loaded and validated as `check-config` and `run` do, it is either
/// refused with a message or gives a description and access rules, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match secop_gateway::config::load_str(text) {
        Ok(loaded) => {
            let description = loaded.description();
            assert!(description.problems().is_empty());
            let _ = loaded.access_rules(None).to_string();
            for i in 0..loaded.config.extra_nodes.len() {
                let _ = loaded.access_rules(Some(i)).to_string();
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// The WebSocket frame guard over client bytes: the first input byte sets the message
/// limit, the second the chunk sizes. Chunking never changes the verdict, a verdict
/// sticks, and without one the unfinished message is within the limit.
pub fn ws_frames(data: &[u8]) {
    let (limit, chunk, stream) = match data {
        [a, b, rest @ ..] => (usize::from(*a) * 16 + 1, usize::from(*b) % 17 + 1, rest),
        _ => return,
    };
    let mut whole = FrameGuard::new(limit);
    let first = whole.inspect_at(stream).map(|(v, _)| v);
    let mut chunked = FrameGuard::new(limit);
    let mut seen = None;
    for piece in stream.chunks(chunk) {
        if let Some((v, at)) = chunked.inspect_at(piece) {
            assert!(at <= piece.len());
            if let Some(earlier) = seen {
                assert_eq!(v, earlier, "a verdict sticks");
            }
            seen = Some(v);
        }
    }
    assert_eq!(first, chunked.violation(), "chunking changed the verdict");
    assert_eq!(first, seen);
    if first.is_none() {
        assert_eq!(whole.unfinished(), chunked.unfinished());
        assert!(
            whole.unfinished() <= limit,
            "{} > {limit}",
            whole.unfinished()
        );
    }
}
