//! Deciding what a new connection speaks, without consuming its bytes.
//!
//! RFC-107: a connection whose first bytes are `GET /` is HTTP (a WebSocket upgrade or
//! one of our pages); anything else is line-based SECoP. We peek, so the bytes stay in
//! the socket for whichever side takes the connection.

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
    /// The client started `GET /` but did not finish it in time (or was idle too long).
    TimedOut,
}

const HTTP_PREFIX: &[u8] = b"GET /";

/// Classify a fresh connection.
///
/// A client that sends nothing is a legitimate SECoP client waiting to speak: without
/// an `idle_timeout` we wait for its first byte forever. Once a `G` has arrived the
/// rest of `GET /` must follow within `handshake_timeout`.
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
        Some(b) if b != HTTP_PREFIX[0] => return Ok(Detected::Secop),
        Some(_) => {}
    }
    match tokio::time::timeout(handshake_timeout, rest_of_prefix(stream)).await {
        Ok(r) => r,
        Err(_) => Ok(Detected::TimedOut),
    }
}

/// Wait until the peeked bytes either are `GET /` or cannot become it.
async fn rest_of_prefix(stream: &TcpStream) -> io::Result<Detected> {
    let mut buf = [0u8; 5];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(Detected::Closed);
        }
        if buf[..n] != HTTP_PREFIX[..n] {
            return Ok(Detected::Secop);
        }
        if n == HTTP_PREFIX.len() {
            return Ok(Detected::Http);
        }
        // peek leaves the socket readable, so a plain loop would spin while only "GE"
        // has arrived: clear tokio's readiness and wait for more bytes.
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
        stream.readable().await?;
    }
}
