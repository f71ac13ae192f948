//! UDP discovery (SECoP RFC-105): answer `{"SECoP":"discover"}` datagrams with the
//! node's port and identity, announce the node at start-up, and find nodes for the
//! `discover` subcommand.
//!
//! The listener binds with SO_REUSEPORT so several gateways (and frappy servers) share
//! port 10767 on one host. Announcements go only to the configured addresses (loopback
//! by default), never to a broadcast address unless an operator lists one.

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

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
    let mut description: &str = &identity.description;
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

/// Answer discovery requests (one datagram per node and port) until the future is
/// dropped. Garbage gets no answer and never stops the listener.
pub async fn serve(socket: UdpSocket, nodes: Vec<(Identity, u16)>) {
    let replies: Vec<Vec<u8>> = nodes.iter().map(|(id, p)| node_datagram(id, *p)).collect();
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
        if !is_discover(&buf[..n]) {
            continue;
        }
        for reply in &replies {
            if let Err(e) = socket.send_to(reply, from).await {
                tracing::debug!(%from, "discovery reply failed: {e}");
            }
        }
    }
}

/// Announce the nodes once to each configured address.
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
}
