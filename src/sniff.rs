//! Deciding what a new connection speaks, without consuming its bytes.
//!
//! RFC-107 puts WebSocket on the SECoP port: a connection that starts as HTTP is HTTP,
//! anything else is line-based SECoP. "Starts as HTTP" is judged on the whole first
//! line, not on `GET /`: a connection whose first line is an HTTP request line (any
//! RFC 9110 method token, a request-target and `HTTP/d.d`) always goes to the HTTP
//! service. Otherwise a browser could send `POST /` with a body of SECoP lines to the
//! port (cross-origin, without a preflight), and the SECoP parser would run them.
//! No SECoP message has that shape (its third word is JSON, never `HTTP/1.1`), so the
//! rule costs SECoP clients nothing.
//!
//! We peek, so the bytes stay in the socket for whichever side takes the connection.

use std::io;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What a connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Secop,
    Http,
    /// The client closed before sending anything.
    Closed,
    /// The client started something that may be an HTTP request line but did not finish
    /// it in time (or was idle too long).
    TimedOut,
}

/// How much of the first line is looked at. A request line longer than this is still
/// taken for HTTP (actix answers it with an error status); a SECoP line is recognised
/// within its first three words.
const MAX_PEEK: usize = 8192;

/// The verdict on the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Http,
    Secop,
    /// Still a possible request line: wait for more bytes.
    Undecided,
}

/// RFC 9110 `tchar`: the characters of a method token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Judge the first bytes of a connection: is the first line an HTTP request line
/// (`token SP target SP HTTP/d.d CRLF`, RFC 9112 section 3)?
pub fn classify(bytes: &[u8]) -> Verdict {
    let mut rest = bytes;
    // method = 1*tchar, then one SP
    let method = rest.iter().take_while(|b| is_tchar(**b)).count();
    if method == 0 && !rest.is_empty() {
        return Verdict::Secop;
    }
    rest = &rest[method..];
    match rest.first() {
        None => return Verdict::Undecided,
        Some(b' ') => rest = &rest[1..],
        Some(_) => return Verdict::Secop,
    }
    // request-target: visible ASCII, then one SP
    let target = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    if target == 0 && !rest.is_empty() {
        return Verdict::Secop;
    }
    rest = &rest[target..];
    match rest.first() {
        None => return Verdict::Undecided,
        Some(b' ') => rest = &rest[1..],
        Some(_) => return Verdict::Secop,
    }
    // HTTP-version = "HTTP/" DIGIT "." DIGIT, then CRLF (a bare LF is tolerated)
    const VERSION: &[u8] = b"HTTP/d.d";
    for (i, expected) in VERSION.iter().enumerate() {
        let Some(&b) = rest.get(i) else {
            return Verdict::Undecided;
        };
        let fits = match expected {
            b'd' => b.is_ascii_digit(),
            e => b == *e,
        };
        if !fits {
            return Verdict::Secop;
        }
    }
    match &rest[VERSION.len()..] {
        [] | [b'\r'] => Verdict::Undecided,
        [b'\n', ..] | [b'\r', b'\n', ..] => Verdict::Http,
        _ => Verdict::Secop,
    }
}

/// Classify a fresh connection.
///
/// A client that sends nothing is a legitimate SECoP client waiting to speak: without
/// an `idle_timeout` we wait for its first byte. Once bytes have arrived, a first line
/// that may still become an HTTP request line must be completed within
/// `handshake_timeout` (SECoP clients send whole lines, so they are decided at once).
pub async fn detect(
    stream: &TcpStream,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
) -> io::Result<Detected> {
    let first = async {
        let mut buf = [0u8; 1];
        match stream.peek(&mut buf).await? {
            0 => Ok::<_, io::Error>(None),
            _ => Ok(Some(buf[0])),
        }
    };
    let first = match idle_timeout {
        Some(t) => match tokio::time::timeout(t, first).await {
            Ok(r) => r?,
            Err(_) => return Ok(Detected::TimedOut),
        },
        None => first.await?,
    };
    match first {
        None => return Ok(Detected::Closed),
        Some(b) if !is_tchar(b) => return Ok(Detected::Secop),
        Some(_) => {}
    }
    match tokio::time::timeout(handshake_timeout, first_line(stream)).await {
        Ok(r) => r,
        Err(_) => Ok(Detected::TimedOut),
    }
}

/// Peek until the first line is known to be a request line or known not to be one.
async fn first_line(stream: &TcpStream) -> io::Result<Detected> {
    let mut buf = vec![0u8; MAX_PEEK];
    loop {
        let n = stream.peek(&mut buf).await?;
        let Some(seen) = buf.get(..n) else {
            return Ok(Detected::Secop);
        };
        if n == 0 {
            return Ok(Detected::Closed);
        }
        match classify(seen) {
            Verdict::Http => return Ok(Detected::Http),
            Verdict::Secop => return Ok(Detected::Secop),
            // A request line this long is HTTP's to refuse (414), never SECoP's to run.
            Verdict::Undecided if n == MAX_PEEK => return Ok(Detected::Http),
            Verdict::Undecided => {}
        }
        // peek leaves the socket readable, so a plain loop would spin while only part
        // of the line has arrived: clear tokio's readiness and wait for more bytes.
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
        stream.readable().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_token_is_http() {
        for method in [
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT",
            "PROPFIND", "X-CUSTOM", "get",
        ] {
            let line = format!("{method} / HTTP/1.1\r\nHost: x\r\n");
            assert_eq!(classify(line.as_bytes()), Verdict::Http, "{method}");
        }
        assert_eq!(classify(b"POST /x?y=1 HTTP/1.0\n"), Verdict::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Verdict::Http);
    }

    #[test]
    fn secop_lines_are_secop() {
        for line in [
            "*IDN?\n",
            "describe\n",
            "read T:value\n",
            "change T:target 300\n",
            "change T:target HTTP/1.1x\n",
            "do io:communicate \"HTTP/1.1\"\n",
            "activate\n",
            "ping 1\n",
            "GET\n",
            "GET /\n",
            "GO home\n",
            " x\n",
            "change  1\n",
        ] {
            assert_eq!(classify(line.as_bytes()), Verdict::Secop, "{line:?}");
        }
    }

    #[test]
    fn prefixes_wait_for_more() {
        let full = b"POST /path HTTP/1.1\r\n";
        for n in 1..full.len() - 1 {
            assert_eq!(classify(&full[..n]), Verdict::Undecided, "{n}");
        }
        assert_eq!(classify(&full[..full.len() - 1]), Verdict::Undecided);
        assert_eq!(classify(full), Verdict::Http);
    }
}
