//! LF-delimited framing with a hard line-length limit.
//!
//! A line longer than the limit is not buffered: its first bytes are kept (so the
//! error reply can echo its action and specifier), the rest is discarded up to the
//! next LF, where reading resumes. Memory per connection stays bounded whatever the
//! client sends. Bytes are not decoded here; the session checks UTF-8 so that a bad
//! line gets an error reply instead of ending the stream.
//!
//! Only a line ended by LF is a line. What is left without LF when the input ends
//! (a client half-closing after `change T:target 291`, which a crash may have cut off
//! from `2910`) is discarded unexecuted and counted in
//! `secop_gateway_unfinished_lines_total`.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// How much of an over-long line is kept for the error reply.
const KEPT_PREFIX: usize = 256;

/// One framed unit from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A complete line, without LF and without a CR before it.
    Line(Bytes),
    /// A line over the limit: its first bytes and its total length.
    TooLong { prefix: Bytes, length: usize },
}

/// See the module documentation.
#[derive(Debug)]
pub struct LineCodec {
    max_line: usize,
    scanned: usize,
    discarding: Option<(Bytes, usize)>,
}

impl LineCodec {
    pub fn new(max_line: usize) -> Self {
        LineCodec {
            max_line,
            scanned: 0,
            discarding: None,
        }
    }

    /// Whether an over-long line is being skipped (its LF has not come yet). A reader
    /// that treats an over-long line as fatal (an upstream node) can stop here rather
    /// than read on to the LF.
    pub fn is_discarding(&self) -> bool {
        self.discarding.is_some()
    }
}

fn trim_cr(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

impl Decoder for LineCodec {
    type Item = Inbound;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, Self::Error> {
        // `scanned` is where the last call stopped looking; a buffer that is shorter
        // now (not the one we scanned) is searched from its start.
        let from = if self.scanned <= buf.len() {
            self.scanned
        } else {
            0
        };
        let newline = buf
            .get(from..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
            .map(|i| i + from);
        match (newline, self.discarding.take()) {
            (Some(pos), Some((prefix, length))) => {
                let _ = buf.split_to(pos + 1);
                self.scanned = 0;
                Ok(Some(Inbound::TooLong {
                    prefix,
                    length: length.saturating_add(pos),
                }))
            }
            (Some(pos), None) => {
                let mut line = buf.split_to(pos + 1).freeze();
                line.truncate(pos);
                self.scanned = 0;
                if line.len() > self.max_line {
                    let length = line.len();
                    line.truncate(KEPT_PREFIX.min(length));
                    return Ok(Some(Inbound::TooLong {
                        prefix: line,
                        length,
                    }));
                }
                Ok(Some(Inbound::Line(trim_cr(line))))
            }
            (None, Some((prefix, length))) => {
                self.discarding = Some((prefix, length.saturating_add(buf.len())));
                buf.clear();
                self.scanned = 0;
                Ok(None)
            }
            (None, None) => {
                if buf.len() > self.max_line {
                    let length = buf.len();
                    let prefix = Bytes::copy_from_slice(&buf[..KEPT_PREFIX.min(length)]);
                    self.discarding = Some((prefix, length));
                    buf.clear();
                    self.scanned = 0;
                } else {
                    self.scanned = buf.len();
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, Self::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        // A last line without LF (over-long or not) is unfinished: never a request.
        let unfinished = self.discarding.take().is_some() || !buf.is_empty();
        buf.clear();
        self.scanned = 0;
        if unfinished {
            crate::metrics::metrics().unfinished_lines.inc();
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(codec: &mut LineCodec, buf: &mut BytesMut, data: &[u8]) -> Vec<Inbound> {
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn lines_and_cr() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        assert_eq!(
            feed(&mut c, &mut b, b"a\r\nb\nc"),
            [
                Inbound::Line(Bytes::from_static(b"a")),
                Inbound::Line(Bytes::from_static(b"b"))
            ]
        );
        assert_eq!(
            feed(&mut c, &mut b, b"d\n"),
            [Inbound::Line(Bytes::from_static(b"cd"))]
        );
        b.extend_from_slice(b"last\n");
        assert_eq!(
            c.decode_eof(&mut b).unwrap(),
            Some(Inbound::Line(Bytes::from_static(b"last")))
        );
        assert_eq!(c.decode_eof(&mut b).unwrap(), None);
    }

    /// A last line without LF when the peer half-closes is unfinished: never a request
    /// (`change T:target 291` cut off by a crash could be `2910`), only counted.
    #[test]
    fn unfinished_last_line_is_discarded_and_counted() {
        let counter = &crate::metrics::metrics().unfinished_lines;
        let before = counter.get();
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::new();
        assert_eq!(
            feed(&mut c, &mut b, b"ping a\nchange T:target 291"),
            [Inbound::Line(Bytes::from_static(b"ping a"))]
        );
        assert_eq!(c.decode_eof(&mut b).unwrap(), None);
        assert!(b.is_empty());
        assert_eq!(c.decode_eof(&mut b).unwrap(), None, "counted once");
        assert!(counter.get() > before, "counted");
        // Also when the unfinished line was over the limit (and being discarded).
        let before = counter.get();
        let mut c = LineCodec::new(8);
        assert!(feed(&mut c, &mut b, b"change T:target 2910000000").is_empty());
        assert_eq!(c.decode_eof(&mut b).unwrap(), None);
        assert!(counter.get() > before, "counted");
        // An empty last line is nothing at all.
        let mut c = LineCodec::new(8);
        assert_eq!(c.decode_eof(&mut BytesMut::new()).unwrap(), None);
    }

    /// The codec keeps its place in a buffer it did not fill itself (a caller that
    /// clears or swaps the buffer): no index past its end.
    #[test]
    fn a_shrunk_buffer_is_no_panic() {
        let mut c = LineCodec::new(100);
        let mut b = BytesMut::from(&b"partial line"[..]);
        assert_eq!(c.decode(&mut b).unwrap(), None);
        let mut fresh = BytesMut::from(&b"ok\n"[..]);
        assert_eq!(
            c.decode(&mut fresh).unwrap(),
            Some(Inbound::Line(Bytes::from_static(b"ok")))
        );
    }

    #[test]
    fn over_long_line_is_discarded_and_reading_resumes() {
        let mut c = LineCodec::new(8);
        let mut b = BytesMut::new();
        assert!(feed(&mut c, &mut b, b"change m:p 1234").is_empty());
        assert!(b.is_empty(), "nothing buffered while discarding");
        assert!(feed(&mut c, &mut b, &[b'5'; 1000]).is_empty());
        let out = feed(&mut c, &mut b, b"6\nping x\n");
        assert_eq!(
            out,
            [
                Inbound::TooLong {
                    prefix: Bytes::from_static(b"change m:p 1234"),
                    length: 1016
                },
                Inbound::Line(Bytes::from_static(b"ping x"))
            ]
        );
        // a long line arriving in one piece
        let out = feed(&mut c, &mut b, b"0123456789\nok\n");
        assert_eq!(
            out,
            [
                Inbound::TooLong {
                    prefix: Bytes::from_static(b"0123456789"),
                    length: 10
                },
                Inbound::Line(Bytes::from_static(b"ok"))
            ]
        );
    }
}
