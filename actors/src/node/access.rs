//! Who may write: the node's side of the access policy.
//!
//! The listener decides per connection (by network and transport, see the gateway's
//! access rules) whether a client is turned away, may only look, or may do everything;
//! a session carries that decision as its [`Access`]. The node enforces it here, in one
//! place, together with the node-wide read-only view: `change` answers `ReadOnly`, `do`
//! (and `check` of a command) answers `Disabled`, and a read-only client is given a
//! description in which every parameter is read-only, so that a client (a web page
//! among them) offers no control it could not use.

use super::{NodeActor, SessionId};
use bytes::Bytes;
use secop_proto::message::line;
use secop_proto::{AccessibleKind, ModuleDescription, SecopError};
use std::net::SocketAddr;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read, change, do.
    Full,
    /// Read, activate, describe; `change` → `ReadOnly`, `do` → `Disabled`.
    ReadOnly,
}

/// How a client reaches a node: the framing a session arrived over, or plain HTTP.
/// Also what an access rule names in config (`"tcp"`, `"websocket"`, `"http"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionTransport {
    Tcp,
    WebSocket,
    /// Plain HTTP (status page, metrics, health): never a session, but access rules
    /// and the audit records of refused HTTP requests name it.
    Http,
}

impl SessionTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionTransport::Tcp => "tcp",
            SessionTransport::WebSocket => "websocket",
            SessionTransport::Http => "http",
        }
    }
}

/// Who a session is: where it connects from, how, and what it may do. Kept by the node
/// for the access checks and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub address: Option<SocketAddr>,
    pub transport: SessionTransport,
    pub access: Access,
}

impl ClientInfo {
    /// A client with full access (tests, tools inside the process).
    pub fn full(address: Option<SocketAddr>, transport: SessionTransport) -> ClientInfo {
        ClientInfo {
            address,
            transport,
            access: Access::Full,
        }
    }
}

impl std::fmt::Display for ClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.address {
            Some(a) => write!(f, "{}:{a}", self.transport.as_str()),
            None => write!(f, "{}:?", self.transport.as_str()),
        }
    }
}

/// Mark every parameter of these modules read-only (a read-only view, or the
/// description shown to a read-only client).
pub(super) fn make_read_only(modules: &mut [ModuleDescription]) {
    for m in modules {
        for a in m.accessibles.iter_mut() {
            if let AccessibleKind::Parameter { readonly } = &mut a.kind {
                *readonly = true;
            }
        }
    }
}

impl NodeActor {
    /// Whether this session may only look (a read-only view, or its access rule).
    fn looks_only(&self, session: SessionId) -> Option<&'static str> {
        if self.settings.read_only {
            return Some("this node is a read-only view");
        }
        match self.sessions.get(&session).map(|s| s.client.access) {
            Some(Access::Full) => None,
            Some(Access::ReadOnly) => Some("this client has read-only access"),
            None => Some("session is not registered"),
        }
    }

    /// May `session` change `module:parameter`? (`ReadOnly` if not.)
    pub(super) fn may_change(&self, session: SessionId, specifier: &str) -> Result<(), SecopError> {
        match self.looks_only(session) {
            None => Ok(()),
            Some(why) => Err(SecopError::read_only(format!("{specifier}: {why}"))),
        }
    }

    /// May `session` run `module:command`? (`Disabled` if not.)
    pub(super) fn may_run(&self, session: SessionId, specifier: &str) -> Result<(), SecopError> {
        match self.looks_only(session) {
            None => Ok(()),
            Some(why) => Err(SecopError::disabled(format!(
                "{specifier}: commands are disabled ({why})"
            ))),
        }
    }

    /// The `describing` line for this session: read-only clients see every parameter
    /// read-only. Built once when the first such client asks.
    pub(super) fn describing_for(&mut self, session: SessionId) -> Bytes {
        let read_only_client = !self.settings.read_only
            && self
                .sessions
                .get(&session)
                .is_some_and(|s| s.client.access == Access::ReadOnly);
        if !read_only_client {
            return self.describing.clone();
        }
        if let Some(d) = &self.describing_read_only {
            return d.clone();
        }
        let mut description = (*self.description).clone();
        make_read_only(&mut description.modules);
        let mut json = Vec::new();
        description.write_json(&mut json);
        let d = Bytes::from(line("describing", ".", Some(&json)));
        self.describing_read_only = Some(d.clone());
        d
    }
}
