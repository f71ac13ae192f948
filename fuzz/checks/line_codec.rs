//! The check behind the line codec fuzz target, shared with the stable-Rust replay test
//! (`actors/tests/fuzz_corpus.rs` includes this file).
//!
//! The input's first byte picks the line limit, the second the chunking; the rest is
//! fed to [`LineCodec`] in those chunks. The output is compared with a model (split at
//! LF, over-long lines reported with their full length, an unfinished last line
//! dropped), and the codec's buffer must never hold much more than the limit.

use bytes::BytesMut;
use secop_actors::line_codec::{Inbound, LineCodec};
use tokio_util::codec::Decoder;

/// What the codec must produce for `input`.
fn model(input: &[u8], max_line: usize) -> Vec<(bool, Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    parts.pop(); // after the last LF: unfinished (or empty)
    for line in parts {
        if line.len() > max_line {
            out.push((false, line.to_vec(), line.len()));
        } else {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            out.push((true, line.to_vec(), line.len()));
        }
    }
    out
}

pub fn line_codec(data: &[u8]) {
    let (max_line, chunking, input) = match data {
        [a, b, rest @ ..] => (usize::from(*a % 64) + 1, *b, rest),
        _ => return,
    };
    let mut codec = LineCodec::new(max_line);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut rest = input;
    let mut step = 0usize;
    while !rest.is_empty() {
        // Chunk sizes vary from 1 byte up to 8 x the limit.
        let size = 1 + (usize::from(chunking).wrapping_mul(step + 7) % (8 * max_line));
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        step += 1;
        buf.extend_from_slice(chunk);
        while let Some(item) = codec.decode(&mut buf).expect("decode never fails") {
            got.push(item);
        }
        assert!(
            buf.len() <= max_line,
            "{} bytes buffered with limit {max_line}",
            buf.len()
        );
    }
    while let Some(item) = codec.decode_eof(&mut buf).expect("decode_eof never fails") {
        got.push(item);
    }
    assert!(buf.is_empty(), "left over after EOF");
    let want = model(input, max_line);
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (item, (ok, line, length)) in got.iter().zip(&want) {
        match item {
            Inbound::Line(l) => {
                assert!(ok, "{l:?} should be too long");
                assert_eq!(&l[..], &line[..]);
            }
            Inbound::TooLong { prefix, length: n } => {
                assert!(!ok, "{prefix:?} should be a line");
                assert_eq!(n, length);
                assert!(prefix.len() <= 256 && line.starts_with(prefix));
            }
        }
    }
}
