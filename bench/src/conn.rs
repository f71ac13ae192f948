//! One SECoP connection over raw TCP (one message per LF-terminated line) or WebSocket
//! (`ws://host:port/ws`, one message per TEXT frame), split into a reading and a
//! writing half so that a scenario can send and receive at the same time.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Tcp,
    Ws,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

/// Options for opening a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// Receive buffer size (SO_RCVBUF) to set before connecting; used to make a slow
    /// consumer fill up quickly.
    pub recv_buffer: Option<u32>,
    pub timeout: Duration,
}

type Ws = WebSocketStream<TcpStream>;

pub enum Reader {
    Tcp {
        rd: BufReader<OwnedReadHalf>,
        buf: Vec<u8>,
    },
    Ws {
        stream: SplitStream<Ws>,
        line: String,
    },
}

pub enum Writer {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<Ws, Message>),
}

/// Why a connection attempt failed, for the failure counters of the `connections`
/// scenario.
#[derive(Debug)]
pub enum ConnectError {
    Refused,
    Reset,
    Timeout,
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused => write!(f, "connection refused"),
            ConnectError::Reset => write!(f, "connection reset"),
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Other(e) => write!(f, "{e}"),
        }
    }
}

fn classify(e: io::Error) -> ConnectError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectError::Refused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ConnectError::Reset,
        io::ErrorKind::TimedOut => ConnectError::Timeout,
        _ => ConnectError::Other(e.to_string()),
    }
}

/// Open a connection (TCP connect, and for WebSocket the upgrade handshake).
pub async fn connect(opts: &ConnectOptions) -> Result<(Reader, Writer), ConnectError> {
    let fut = async {
        let socket = if opts.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(classify)?;
        if let Some(size) = opts.recv_buffer {
            socket.set_recv_buffer_size(size).map_err(classify)?;
        }
        let stream = socket.connect(opts.addr).await.map_err(classify)?;
        stream.set_nodelay(true).map_err(classify)?;
        match opts.transport {
            Transport::Tcp => {
                let (rd, wr) = stream.into_split();
                Ok((
                    Reader::Tcp {
                        rd: BufReader::with_capacity(64 * 1024, rd),
                        buf: Vec::with_capacity(256),
                    },
                    Writer::Tcp(wr),
                ))
            }
            Transport::Ws => {
                let url = format!("ws://{}/ws", opts.addr);
                let (ws, _resp) =
                    tokio_tungstenite::client_async(url, stream)
                        .await
                        .map_err(|e| match e {
                            tokio_tungstenite::tungstenite::Error::Io(e) => classify(e),
                            e => ConnectError::Other(format!("websocket handshake: {e}")),
                        })?;
                let (sink, stream) = ws.split();
                Ok((
                    Reader::Ws {
                        stream,
                        line: String::new(),
                    },
                    Writer::Ws(sink),
                ))
            }
        }
    };
    match tokio::time::timeout(opts.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

impl Reader {
    /// The next message, without its LF (and CR); `Ok(None)` at end of stream. The
    /// line borrows a buffer of the reader that the next call reuses.
    pub async fn next_line(&mut self) -> io::Result<Option<&str>> {
        match self {
            Reader::Tcp { rd, buf } => {
                buf.clear();
                let n = rd.read_until(b'\n', buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                } else {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a line",
                    ));
                }
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                std::str::from_utf8(buf)
                    .map(Some)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "reply is not UTF-8"))
            }
            Reader::Ws { stream, line } => loop {
                match stream.next().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Text(t))) => {
                        line.clear();
                        line.push_str(t.as_str());
                        if line.ends_with('\n') {
                            line.pop();
                        }
                        return Ok(Some(line.as_str()));
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "BINARY frame from the server",
                        ))
                    }
                    Some(Ok(Message::Close(_))) => return Ok(None),
                    // ping/pong are answered by tungstenite while we read
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// `next_line` with a timeout; a timeout is an error of kind `TimedOut`.
    pub async fn next_line_within(&mut self, timeout: Duration) -> io::Result<Option<&str>> {
        match tokio::time::timeout(timeout, self.next_line()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time")),
        }
    }
}

impl Writer {
    /// Send one message (for TCP, `line` must not contain the LF; it is added).
    pub async fn send(&mut self, line: &str) -> io::Result<()> {
        match self {
            Writer::Tcp(wr) => {
                let mut b = Vec::with_capacity(line.len() + 1);
                b.extend_from_slice(line.as_bytes());
                b.push(b'\n');
                wr.write_all(&b).await
            }
            Writer::Ws(sink) => sink
                .send(Message::text(line.to_owned()))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Send many messages at once (one write for TCP; frames flushed together for
    /// WebSocket).
    pub async fn send_many(&mut self, lines: &[String]) -> io::Result<()> {
        match self {
            Writer::Tcp(wr) => {
                let total: usize = lines.iter().map(|l| l.len() + 1).sum();
                let mut b = Vec::with_capacity(total);
                for l in lines {
                    b.extend_from_slice(l.as_bytes());
                    b.push(b'\n');
                }
                wr.write_all(&b).await
            }
            Writer::Ws(sink) => {
                for l in lines {
                    sink.feed(Message::text(l.clone()))
                        .await
                        .map_err(io::Error::other)?;
                }
                sink.flush().await.map_err(io::Error::other)
            }
        }
    }

    pub async fn close(&mut self) {
        match self {
            Writer::Tcp(wr) => {
                let _ = wr.shutdown().await;
            }
            Writer::Ws(sink) => {
                let _ = sink.close().await;
            }
        }
    }
}
