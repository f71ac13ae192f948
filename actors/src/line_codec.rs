//! LF-delimited framing with a hard line-length limit.
//!
//! A line longer than the limit is not buffered: its first bytes are kept (so the
//! error reply can echo its action and specifier), the rest is discarded up to the
//! next LF, where reading resumes. Memory per connection stays bounded whatever the
//! client sends. Bytes are not decoded here; the session checks UTF-8 so that a bad
//! line gets an error reply instead of ending the stream.

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
        let newline = buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| i + self.scanned);
        match (newline, self.discarding.take()) {
            (Some(pos), Some((prefix, length))) => {
                let _ = buf.split_to(pos + 1);
                self.scanned = 0;
                Ok(Some(Inbound::TooLong {
                    prefix,
                    length: length + pos,
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
                self.discarding = Some((prefix, length + buf.len()));
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
        // A last line without LF before the client half-closed: still a request.
        if let Some((prefix, length)) = self.discarding.take() {
            return Ok(Some(Inbound::TooLong { prefix, length }));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        self.scanned = 0;
        Ok(Some(Inbound::Line(trim_cr(buf.split().freeze()))))
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
        b.extend_from_slice(b"tail");
        assert_eq!(
            c.decode_eof(&mut b).unwrap(),
            Some(Inbound::Line(Bytes::from_static(b"tail")))
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
