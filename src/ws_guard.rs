//! A look at WebSocket frame headers as the bytes arrive, before actix decodes them.
//!
//! actix-http only checks a frame's size after buffering the whole frame, so a header
//! announcing 1 GiB would make us buffer until the limit fires. This guard reads each
//! frame header from the raw client bytes and stops the connection as soon as a frame
//! or a fragmented message announces more than the limit (close 1009). It also spots
//! what actix reports with ambiguous errors (reserved bits, bad opcodes, oversized or
//! fragmented control frames, invalid close payloads), so that each gets its own
//! close code. It never changes the bytes.

/// What the guard found wrong, and the close code it calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame or message larger than allowed: 1009.
    TooBig,
    /// A framing rule broken: 1002.
    Protocol,
    /// A close frame whose reason is not UTF-8: 1007.
    InvalidCloseReason,
}

impl Violation {
    pub fn close_code(self) -> u16 {
        match self {
            Violation::TooBig => 1009,
            Violation::Protocol => 1002,
            Violation::InvalidCloseReason => 1007,
        }
    }
}

#[derive(Debug)]
enum State {
    /// Collecting the header of the next frame.
    Header,
    /// Skipping (or, for close frames, collecting) the payload.
    Payload { left: u64 },
}

/// See the module documentation.
#[derive(Debug)]
pub struct FrameGuard {
    max_message: u64,
    state: State,
    header: Vec<u8>,
    /// Bytes of the fragmented message in progress.
    message: u64,
    in_fragmented: bool,
    /// Payload bytes of the data message in progress received so far (its earlier
    /// fragments and the current frame): what the connection holds unfinished.
    received: u64,
    /// FIN bit, opcode and mask key of the current frame.
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    close_payload: Vec<u8>,
    violation: Option<Violation>,
}

impl FrameGuard {
    pub fn new(max_message: usize) -> Self {
        FrameGuard {
            max_message: max_message as u64,
            state: State::Header,
            header: Vec::with_capacity(14),
            message: 0,
            in_fragmented: false,
            received: 0,
            fin: false,
            opcode: 0,
            mask: [0; 4],
            close_payload: Vec::new(),
            violation: None,
        }
    }

    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Bytes of the data message in progress that have arrived (0 between messages).
    pub fn unfinished(&self) -> usize {
        usize::try_from(self.received).unwrap_or(usize::MAX)
    }

    /// Look at the next bytes from the client; returns the first violation seen.
    #[cfg(test)]
    pub fn inspect(&mut self, bytes: &[u8]) -> Option<Violation> {
        self.inspect_at(bytes).map(|(v, _)| v)
    }

    /// Like [`inspect`](Self::inspect), also returning where in `bytes` the offending
    /// frame starts (0 if it started in an earlier chunk), so that the valid frames
    /// before it can still be delivered.
    pub fn inspect_at(&mut self, bytes: &[u8]) -> Option<(Violation, usize)> {
        if let Some(v) = self.violation {
            return Some((v, 0));
        }
        let total = bytes.len();
        let mut bytes = bytes;
        let mut frame_start = 0;
        while self.violation.is_none() && !bytes.is_empty() {
            match self.state {
                State::Header => {
                    if self.header.is_empty() {
                        frame_start = total - bytes.len();
                    }
                    let need = header_len(&self.header);
                    let take = (need - self.header.len()).min(bytes.len());
                    let had = self.header.len();
                    self.header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    // Judge the first two bytes as soon as they are here: actix's decoder
                    // rejects reserved bits from them too, and must not be first.
                    if had < 2 && self.header.len() >= 2 {
                        self.violation = first_bytes_violation(
                            self.header[0],
                            self.header[1],
                            self.in_fragmented,
                        );
                        if self.violation.is_some() {
                            break;
                        }
                    }
                    if self.header.len() == header_len(&self.header) {
                        self.start_frame();
                    }
                }
                State::Payload { left } => {
                    let take = (left.min(bytes.len() as u64)) as usize;
                    if self.opcode == 0x8 {
                        self.close_payload.extend_from_slice(&bytes[..take]);
                    } else if self.opcode & 0x8 == 0 {
                        self.received += take as u64;
                    }
                    bytes = &bytes[take..];
                    let left = left - take as u64;
                    self.state = State::Payload { left };
                    if left == 0 {
                        self.end_frame();
                    }
                }
            }
        }
        self.violation.map(|v| (v, frame_start))
    }

    fn start_frame(&mut self) {
        let h = std::mem::take(&mut self.header);
        let fin = h[0] & 0x80 != 0;
        let rsv = h[0] & 0x70;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let len7 = u64::from(h[1] & 0x7f);
        let (len, ext) = match len7 {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 2),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), 8)
            }
            n => (n, 0),
        };
        if masked {
            self.mask.copy_from_slice(&h[2 + ext..6 + ext]);
        }
        let control = opcode & 0x8 != 0;
        let known = matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA);
        if rsv != 0 || !known || !masked || (control && (!fin || len > 125)) || len >> 63 != 0 {
            self.violation = Some(Violation::Protocol);
            return;
        }
        if !control {
            match (opcode, self.in_fragmented) {
                (0x0, false) => {
                    self.violation = Some(Violation::Protocol);
                    return;
                }
                (0x1 | 0x2, true) => {
                    self.violation = Some(Violation::Protocol);
                    return;
                }
                (0x0, true) => self.message = self.message.saturating_add(len),
                _ => self.message = len,
            }
            self.in_fragmented = !fin;
            if self.message > self.max_message {
                self.violation = Some(Violation::TooBig);
                return;
            }
        }
        self.opcode = opcode;
        self.fin = fin;
        self.close_payload.clear();
        self.state = State::Payload { left: len };
        if len == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        if self.opcode & 0x8 == 0 && self.fin {
            self.received = 0;
        }
        if self.opcode == 0x8 {
            let payload: Vec<u8> = self
                .close_payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ self.mask[i % 4])
                .collect();
            if payload.len() == 1 {
                self.violation = Some(Violation::Protocol);
            } else if payload.len() >= 2 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                    self.violation = Some(Violation::Protocol);
                } else if std::str::from_utf8(&payload[2..]).is_err() {
                    self.violation = Some(Violation::InvalidCloseReason);
                }
            }
        }
        self.state = State::Header;
    }
}

/// Framing rules that the first two header bytes alone decide.
fn first_bytes_violation(b0: u8, b1: u8, in_fragmented: bool) -> Option<Violation> {
    let fin = b0 & 0x80 != 0;
    let rsv = b0 & 0x70;
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    let control = opcode & 0x8 != 0;
    let known = matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA);
    let bad_continuation = match opcode {
        0x0 => !in_fragmented,
        0x1 | 0x2 => in_fragmented,
        _ => false,
    };
    let bad =
        rsv != 0 || !known || !masked || (control && (!fin || len7 > 125)) || bad_continuation;
    bad.then_some(Violation::Protocol)
}

/// Bytes the header needs, given what we have of it so far.
fn header_len(partial: &[u8]) -> usize {
    let Some(b1) = partial.get(1) else {
        return 2;
    };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn normal_traffic_passes_even_byte_by_byte() {
        let mut g = FrameGuard::new(1000);
        let mut bytes = frame(0x81, b"*IDN?");
        bytes.extend(frame(0x01, &[b'a'; 600]));
        bytes.extend(frame(0x89, b"ping"));
        bytes.extend(frame(0x80, &[b'b'; 400]));
        bytes.extend(frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        for b in bytes.chunks(1) {
            assert_eq!(g.inspect(b), None);
        }
    }

    #[test]
    fn announced_size_is_refused_before_the_payload_arrives() {
        let mut g = FrameGuard::new(1 << 20);
        // header only: a 1 GiB text frame
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&(1u64 << 30).to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(g.inspect(&h), Some(Violation::TooBig));
        // fragmented message growing past the limit
        let mut g = FrameGuard::new(1000);
        assert_eq!(g.inspect(&frame(0x01, &[0; 600])), None);
        assert_eq!(g.inspect(&frame(0x00, &[0; 600])), Some(Violation::TooBig));
    }

    #[test]
    fn valid_frames_before_a_violation_are_located() {
        let mut g = FrameGuard::new(1000);
        let mut bytes = frame(0x81, b"hello");
        let good = bytes.len();
        bytes.extend(frame(0xC1, b"x"));
        assert_eq!(g.inspect_at(&bytes), Some((Violation::Protocol, good)));
    }

    #[test]
    fn reserved_bits_are_seen_from_the_first_two_bytes() {
        let mut g = FrameGuard::new(1000);
        let bad = frame(0xC1, b"xyz");
        assert_eq!(g.inspect(&bad[..1]), None);
        assert_eq!(
            g.inspect(&bad[1..2]),
            Some(Violation::Protocol),
            "before the mask key"
        );
    }

    #[test]
    fn unfinished_message_bytes_are_known() {
        let mut g = FrameGuard::new(100_000);
        let first = frame(0x01, &[b'a'; 600]);
        assert_eq!(g.inspect(&first[..300]), None);
        assert_eq!(g.unfinished(), 300 - 8, "payload after the 8-byte header");
        assert_eq!(g.inspect(&first[300..]), None);
        assert_eq!(g.unfinished(), 600, "a fragment ended, the message did not");
        assert_eq!(g.inspect(&frame(0x89, b"ping")), None);
        assert_eq!(
            g.unfinished(),
            600,
            "control frames in between do not count"
        );
        assert_eq!(g.inspect(&frame(0x80, &[b'b'; 400])), None);
        assert_eq!(g.unfinished(), 0, "the message is complete");
        assert_eq!(g.inspect(&frame(0x81, b"whole")), None);
        assert_eq!(g.unfinished(), 0);
    }

    #[test]
    fn framing_violations() {
        for bad in [
            frame(0xC1, b"x"),          // RSV1
            frame(0x83, b"x"),          // reserved opcode
            frame(0x09, b"x"),          // fragmented ping
            frame(0x89, &[0; 126]),     // control frame too long
            frame(0x80, b"x"),          // continuation without start
            frame(0x88, &[0x03]),       // close payload of 1 byte
            frame(0x88, &[0x03, 0xec]), // close code 1004 reserved
        ] {
            assert_eq!(
                FrameGuard::new(1000).inspect(&bad),
                Some(Violation::Protocol),
                "{bad:?}"
            );
        }
        let mut unmasked = frame(0x81, b"x");
        unmasked[1] &= 0x7f;
        assert_eq!(
            FrameGuard::new(1000).inspect(&unmasked[..3]),
            Some(Violation::Protocol)
        );
        let mut g = FrameGuard::new(1000);
        assert_eq!(g.inspect(&frame(0x01, b"a")), None);
        assert_eq!(
            g.inspect(&frame(0x81, b"b")),
            Some(Violation::Protocol),
            "new message inside a fragmented one"
        );
        assert_eq!(
            FrameGuard::new(1000).inspect(&frame(0x88, &[0x03, 0xe8, 0xff])),
            Some(Violation::InvalidCloseReason)
        );
    }
}
