//! UDP discovery (SECoP RFC-105): answer `{"SECoP":"discover"}` datagrams with the
//! node's port and identity, announce the node at start-up (and the nodes a reload adds
//! or changes), and find nodes for the `discover` subcommand.
//!
//! The listener binds with SO_REUSEPORT so several gateways (and frappy servers) share
//! port 10767 on one host. Announcements go only to the configured addresses (loopback
//! by default), never to a broadcast address unless an operator lists one.
//!
//! A 20-byte request draws up to 508 bytes per node in reply, and UDP source addresses
//! are easily forged, so an unlimited responder is a traffic amplifier aimed at
//! whoever's address is forged. Replies are therefore rate-limited ([`ReplyLimiter`]):
//! at most [`PER_SOURCE_INTERVAL`] apart to one source address, and at most
//! [`GLOBAL_RATE`] per second in all (bursts of [`GLOBAL_BURST`]). Requests over the
//! limit are dropped unanswered and counted in `secop_gateway_discovery_dropped_total`.
//! Discovery is a rare, human-paced operation; a client that got no answer asks again.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Discovery requests answered per second, from all sources together (each answer is
/// one datagram per node).
pub const GLOBAL_RATE: f64 = 20.0;

/// Answers that may go out at once after a quiet spell (the token bucket's size).
pub const GLOBAL_BURST: f64 = 5.0;

/// Least time between two answers to the same source IP address (whatever the port:
/// a forged victim address can carry any port).
pub const PER_SOURCE_INTERVAL: Duration = Duration::from_secs(1);

/// Above this many remembered sources, those older than [`PER_SOURCE_INTERVAL`] are
/// forgotten. Sources are only remembered when answered, so at most
/// `GLOBAL_BURST + GLOBAL_RATE * PER_SOURCE_INTERVAL` (25) are recent: the table stays
/// small whatever the number of (forged) senders.
const PRUNE_AT: usize = 64;

/// The reply rate limit: a global token bucket plus a minimum interval per source.
#[derive(Debug)]
pub struct ReplyLimiter {
    tokens: f64,
    refilled: Instant,
    answered: HashMap<IpAddr, Instant>,
}

impl ReplyLimiter {
    pub fn new(now: Instant) -> Self {
        ReplyLimiter {
            tokens: GLOBAL_BURST,
            refilled: now,
            answered: HashMap::new(),
        }
    }

    /// Whether a request from `source` arriving at `now` may be answered; if so, it is
    /// counted against the limits.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * GLOBAL_RATE).min(GLOBAL_BURST);
        self.refilled = now;
        let recent = |at: &Instant| now.saturating_duration_since(*at) < PER_SOURCE_INTERVAL;
        if self.answered.get(&source).is_some_and(recent) || self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        if self.answered.len() >= PRUNE_AT {
            self.answered.retain(|_, at| recent(at));
        }
        self.answered.insert(source, now);
        true
    }
}

/// The largest UDP payload that is safe everywhere (RFC-105).
pub const MAX_DATAGRAM: usize = 508;

/// What a node says about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub equipment_id: String,
    pub firmware: String,
    pub description: String,
}

/// The `{"SECoP":"node",...}` datagram for one listener port, at most 508 bytes: the
/// description is shortened on a character boundary if needed; equipment_id and
/// firmware are sent whole.
pub fn node_datagram(identity: &Identity, port: u16) -> Vec<u8> {
    let build = |description: &str| {
        let v = json!({
            "SECoP": "node",
            "port": port,
            "equipment_id": identity.equipment_id,
            "firmware": identity.firmware,
            "description": description,
        });
        secop_proto::json::to_json(&v).into_bytes()
    };
    // Start from at most the datagram's size (on a character boundary): the loop below
    // then trims only what escaping adds, not a long description one character at a
    // time.
    let mut description: &str = &identity.description;
    if description.len() > MAX_DATAGRAM {
        let mut cut = MAX_DATAGRAM;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description = &description[..cut];
    }
    loop {
        let datagram = build(description);
        if datagram.len() <= MAX_DATAGRAM || description.is_empty() {
            return datagram;
        }
        // Drop one character at a time from the end (escaping makes sizes uneven).
        let cut = description.char_indices().last().map_or(0, |(i, _)| i);
        description = &description[..cut];
    }
}

/// Whether a datagram is a discovery request.
pub fn is_discover(datagram: &[u8]) -> bool {
    serde_json::from_slice::<Value>(datagram)
        .ok()
        .and_then(|v| {
            v.get("SECoP")
                .and_then(Value::as_str)
                .map(|s| s == "discover")
        })
        .unwrap_or(false)
}

/// Bind a UDP socket with SO_REUSEADDR and SO_REUSEPORT.
pub fn bind_shared(address: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// The nodes of the process and their ports, as discovery answers for them; a reload
/// replaces the list (nodes added, removed, rebound).
pub type Nodes = Vec<(Identity, u16)>;

fn datagrams(nodes: &Nodes) -> Vec<Vec<u8>> {
    nodes.iter().map(|(id, p)| node_datagram(id, *p)).collect()
}

/// Answer discovery requests (one datagram per node and port, for the nodes `nodes`
/// holds at that moment) until the future is dropped, within the rate limit of
/// [`ReplyLimiter`]. Garbage gets no answer and never stops the listener.
pub async fn serve(socket: std::sync::Arc<UdpSocket>, mut nodes: watch::Receiver<Nodes>) {
    let mut replies = datagrams(&nodes.borrow_and_update());
    let mut limiter = ReplyLimiter::new(Instant::now());
    let dropped = &secop_actors::metrics::metrics().discovery_dropped;
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("discovery receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !buf.get(..n).is_some_and(is_discover) {
            continue;
        }
        if !limiter.allow(from.ip(), Instant::now()) {
            dropped.inc();
            continue;
        }
        if nodes.has_changed().unwrap_or(false) {
            replies = datagrams(&nodes.borrow_and_update());
        }
        for reply in &replies {
            if let Err(e) = socket.send_to(reply, from).await {
                tracing::debug!(%from, "discovery reply failed: {e}");
            }
        }
    }
}

/// Announce the nodes once to each configured address (at start, and the nodes a
/// reload added or changed).
pub async fn announce(socket: &UdpSocket, nodes: &[(Identity, u16)], targets: &[SocketAddr]) {
    for (identity, port) in nodes {
        let datagram = node_datagram(identity, *port);
        for target in targets {
            if let Err(e) = socket.send_to(&datagram, target).await {
                tracing::warn!(%target, "discovery announcement failed: {e}");
            }
        }
    }
}

/// Ask `targets` for nodes and collect the answers for `wait`.
pub async fn discover(
    targets: &[SocketAddr],
    wait: Duration,
) -> std::io::Result<Vec<(SocketAddr, Value)>> {
    let any: SocketAddr = if targets.iter().all(SocketAddr::is_ipv4) {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let socket = UdpSocket::bind(any).await?;
    socket.set_broadcast(true)?;
    let request = br#"{"SECoP":"discover"}"#;
    for target in targets {
        socket.send_to(request, target).await?;
    }
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok((n, from))) =
        tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
    {
        if let Ok(v) = serde_json::from_slice::<Value>(&buf[..n]) {
            if v.get("SECoP").and_then(Value::as_str) == Some("node") {
                found.push((from, v));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_fits_and_keeps_identity_whole() {
        let identity = Identity {
            equipment_id: "MLZ_ccr12".into(),
            firmware: "secop-gateway 0.1.0".into(),
            description: "äöü cryostat ".repeat(100),
        };
        let d = node_datagram(&identity, 10767);
        assert!(d.len() <= MAX_DATAGRAM, "{}", d.len());
        let v: Value = serde_json::from_slice(&d).unwrap();
        assert_eq!(v["SECoP"], "node");
        assert_eq!(v["port"], 10767);
        assert_eq!(v["equipment_id"], "MLZ_ccr12");
        assert!(v["description"]
            .as_str()
            .unwrap()
            .starts_with("äöü cryostat"));
        let short = Identity {
            description: "A cryostat".into(),
            ..identity
        };
        let v: Value = serde_json::from_slice(&node_datagram(&short, 1)).unwrap();
        assert_eq!(v["description"], "A cryostat");
    }

    #[test]
    fn only_discover_requests_count() {
        assert!(is_discover(br#"{"SECoP":"discover"}"#));
        assert!(is_discover(br#"{"SECoP": "discover", "future": 1}"#));
        assert!(!is_discover(br#"{"SECoP":"node"}"#));
        assert!(!is_discover(b"\xff\x00garbage"));
        assert!(!is_discover(b"[1,2]"));
    }

    #[test]
    fn one_answer_per_source_and_second() {
        let t0 = Instant::now();
        let mut l = ReplyLimiter::new(t0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(l.allow(a, t0));
        assert!(!l.allow(a, t0 + Duration::from_millis(999)));
        assert!(l.allow(b, t0 + Duration::from_millis(999)));
        assert!(l.allow(a, t0 + Duration::from_secs(1)));
        assert!(!l.allow(a, t0 + Duration::from_millis(1500)));
    }

    #[test]
    fn global_bucket_bounds_answers_to_many_sources() {
        let t0 = Instant::now();
        let mut l = ReplyLimiter::new(t0);
        let source = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // A burst from 1000 (forged) sources at one instant: only the bucket's size.
        let burst = (0..1000).filter(|i| l.allow(source(*i), t0)).count();
        assert_eq!(burst as f64, GLOBAL_BURST);
        // Ten seconds of a flood, 100 new sources every 10 ms.
        let mut answered = 0;
        for step in 1..=1000u32 {
            let now = t0 + Duration::from_millis(10 * u64::from(step));
            answered += (0..100)
                .filter(|i| l.allow(source(10_000 + step * 100 + i), now))
                .count();
        }
        assert!(answered as f64 <= GLOBAL_RATE * 10.0 + 1.0, "{answered}");
        assert!(answered as f64 >= GLOBAL_RATE * 10.0 - 1.0, "{answered}");
        assert!(l.answered.len() <= PRUNE_AT, "{}", l.answered.len());
    }
}
