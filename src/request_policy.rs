//! The rules every HTTP request of the shared port (and the metrics port) must pass
//! before a handler sees it.
//!
//! A browser is a confused deputy: any page an operator opens can make it send
//! requests to the gateway. The same-origin policy only protects a server that checks
//! what the browser tells it, so each request is checked, in this order:
//!
//! 1. **Host** (exactly one) must name this gateway: an IP literal of the listen
//!    address (any IP literal when listening on all addresses), `localhost`, or a name
//!    in `listen.allowed_hosts`. This defeats DNS rebinding, where a page from
//!    `attacker.example` has its name re-pointed to the gateway and then counts as
//!    same-origin with it. Refused with 421 Misdirected Request.
//! 2. **Method** must be GET: nothing served here changes state over plain HTTP, and a
//!    cross-origin POST is the one request a browser sends without asking first. 405.
//! 3. **Origin** (at most one), when present, must be same-origin with the (allowed)
//!    Host or listed in `listen.websocket.allowed_origins`. Requests without Origin
//!    come from non-browser clients (frappy, Prometheus, curl). 403.
//! 4. **Access rule** of the client's network for this transport (`websocket` for an
//!    upgrade, `http` otherwise) must not be `deny`. 403.
//! 5. A **WebSocket upgrade** must be HTTP/1.1 (RFC 6455 4.2.1; RFC 9110 has HTTP/1.0
//!    ignore Upgrade) with exactly one `Sec-WebSocket-Key`. 400.
//!
//! Refusals carry no data of the node, and are counted by reason.

use crate::access_rules::{AccessRules, Transport};
use actix_service::Service;
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode, Version};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use secop_actors::audit::{AuditLog, AuditOutcome, AuditRecord};
use secop_actors::node::{Access, SessionTransport};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    /// The address the listener is bound to.
    listen_ip: IpAddr,
    /// Allowed host names, lower case, without a trailing dot.
    names: Vec<String>,
    /// `*` in `allowed_hosts`: any Host (not recommended).
    any_host: bool,
    /// Allowed origins besides same-origin, lower case.
    origins: Vec<String>,
    /// `*` in `allowed_origins`: any Origin (not recommended).
    any_origin: bool,
    /// The node's access rules; `None` admits every client (the metrics port of a
    /// gateway whose nodes all admit it).
    access: Option<Arc<AccessRules>>,
    /// Where refusals are recorded, and the node they are recorded for.
    audit: Option<(AuditLog, Arc<str>)>,
}

/// Why a request was refused: the status, a metric label and a short text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub text: &'static str,
}

impl Refusal {
    const fn new(status: StatusCode, reason: &'static str, text: &'static str) -> Refusal {
        Refusal {
            status,
            reason,
            text,
        }
    }

    fn response(self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            response.insert_header((header::ALLOW, "GET"));
        }
        response
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .content_type("text/plain; charset=utf-8")
            .body(format!("{}\n", self.text))
    }
}

/// `host` without port, lower case, without a trailing dot; IPv6 without brackets.
fn host_name(authority: &str) -> &str {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// `scheme://host[:port]` with the scheme's default port made explicit, lower case.
fn normalized_origin(scheme: &str, authority: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let has_port = match authority.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        return format!("{scheme}://{authority}");
    }
    let port = if scheme == "https" { 443 } else { 80 };
    format!("{scheme}://{authority}:{port}")
}

impl RequestPolicy {
    /// The policy of a listener bound to `listen`.
    pub fn new(
        listen: SocketAddr,
        allowed_hosts: &[String],
        allowed_origins: &[String],
        access: Option<Arc<AccessRules>>,
    ) -> RequestPolicy {
        let mut names = vec!["localhost".to_owned()];
        names.extend(
            allowed_hosts
                .iter()
                .filter(|h| h.as_str() != "*")
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
        );
        RequestPolicy {
            listen_ip: listen.ip(),
            names,
            any_host: allowed_hosts.iter().any(|h| h == "*"),
            origins: allowed_origins
                .iter()
                .filter(|o| o.as_str() != "*")
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            any_origin: allowed_origins.iter().any(|o| o == "*"),
            access,
            audit: None,
        }
    }

    /// Record every refusal in the audit trail of node `node`.
    pub fn with_audit(mut self, log: AuditLog, node: &str) -> RequestPolicy {
        self.audit = Some((log, Arc::from(node)));
        self
    }

    /// Put a refusal into the audit trail: a refused request is somebody trying.
    fn record(&self, req: &HttpRequest, refusal: Refusal) {
        let Some((log, node)) = &self.audit else {
            return;
        };
        let transport = if is_websocket_upgrade(req) {
            SessionTransport::WebSocket
        } else {
            SessionTransport::Http
        };
        // The path as sent, bounded: it is the attacker's text.
        let path: String = req.path().chars().take(256).collect();
        log.record(AuditRecord {
            time: SystemTime::now(),
            node: node.clone(),
            client: req.peer_addr(),
            transport,
            session: 0,
            action: Arc::from("http"),
            specifier: format!("{} {path}", req.method()),
            request: req
                .headers()
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .map(|o| serde_json::json!({ "origin": o.chars().take(256).collect::<String>() })),
            outcome: AuditOutcome::Refused {
                reason: refusal.reason,
                text: refusal.text.to_owned(),
            },
        });
    }

    /// Whether a Host header value names this gateway.
    pub fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let name = host_name(host);
        if let Ok(ip) = name.parse::<IpAddr>() {
            // An IP literal cannot be re-pointed by DNS.
            let ip = ip.to_canonical();
            return self.listen_ip.is_unspecified() || ip == self.listen_ip.to_canonical();
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&name)
    }

    /// Whether a browser page of `origin` may use this gateway, reached as `host`.
    pub fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim();
        if self.any_origin {
            return true;
        }
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false; // "null" (sandboxed pages, file:) and garbage
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return false;
        }
        let lowered = origin.trim_end_matches('/').to_ascii_lowercase();
        if self.origins.contains(&lowered) {
            return true;
        }
        // Same-origin: the page was served by the authority the browser is talking to.
        normalized_origin(&scheme, authority) == normalized_origin(&scheme, host)
    }

    /// What a WebSocket client at `peer` may do; `None` when it is denied.
    pub fn websocket_access(&self, peer: Option<SocketAddr>) -> Option<Access> {
        match (&self.access, peer) {
            (None, _) => Some(Access::Full),
            (Some(rules), Some(peer)) => rules.grant(peer.ip(), Transport::WebSocket).access(),
            (Some(_), None) => None,
        }
    }

    /// The refusal for this request, or `None` if it may be served.
    pub fn check(&self, req: &HttpRequest) -> Option<Refusal> {
        let headers = req.headers();
        let mut hosts = headers.get_all(header::HOST);
        let host = match (hosts.next(), hosts.next()) {
            (Some(h), None) => h.to_str().ok(),
            _ => None,
        };
        let Some(host) = host else {
            return Some(Refusal::new(
                StatusCode::BAD_REQUEST,
                "host",
                "exactly one Host header is required",
            ));
        };
        if !self.host_allowed(host) {
            return Some(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host",
                "this gateway does not answer to that host name (see listen.allowed_hosts)",
            ));
        }
        if req.method() != Method::GET {
            return Some(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                "only GET is served here",
            ));
        }
        let mut origins = headers.get_all(header::ORIGIN);
        match (origins.next(), origins.next()) {
            (None, _) => {}
            (Some(origin), None) => {
                let allowed = origin.to_str().is_ok_and(|o| self.origin_allowed(o, host));
                if !allowed {
                    return Some(Refusal::new(
                        StatusCode::FORBIDDEN,
                        "origin",
                        "origin not allowed",
                    ));
                }
            }
            (Some(_), Some(_)) => {
                return Some(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "origin",
                    "more than one Origin header",
                ))
            }
        }
        let upgrade = is_websocket_upgrade(req);
        if let Some(rules) = &self.access {
            let transport = if upgrade {
                Transport::WebSocket
            } else {
                Transport::Http
            };
            let denied = req
                .peer_addr()
                .is_none_or(|p| rules.grant(p.ip(), transport).access().is_none());
            if denied {
                return Some(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "access_denied",
                    "access denied",
                ));
            }
        }
        if upgrade {
            if req.version() != Version::HTTP_11 {
                return Some(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "handshake",
                    "a WebSocket upgrade needs HTTP/1.1",
                ));
            }
            if headers.get_all(header::SEC_WEBSOCKET_KEY).count() != 1 {
                return Some(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "handshake",
                    "exactly one Sec-WebSocket-Key is required",
                ));
            }
        }
        None
    }
}

/// Whether the request asks for a WebSocket (any `Upgrade: websocket`).
pub fn is_websocket_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// The middleware: refuse what the policy refuses, serve the rest.
pub fn enforce<S>(
    policy: &RequestPolicy,
    req: ServiceRequest,
    service: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<BoxBody>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
    S::Future: 'static,
{
    if let Some(refusal) = policy.check(req.request()) {
        secop_actors::metrics::metrics()
            .http_refused
            .with_label_values(&[refusal.reason])
            .inc();
        policy.record(req.request(), refusal);
        tracing::warn!(
            peer = ?req.peer_addr(),
            method = %req.method(),
            path = req.path(),
            host = ?req.headers().get(header::HOST),
            origin = ?req.headers().get(header::ORIGIN),
            status = refusal.status.as_u16(),
            "HTTP request refused: {}",
            refusal.text
        );
        let mut response = req.into_response(refusal.response());
        harden(response.headers_mut());
        return Box::pin(async move { Ok(response) });
    }
    let call = service.call(req);
    Box::pin(async move {
        let mut response = call.await?;
        harden(response.headers_mut());
        Ok(response)
    })
}

/// Headers on every response we serve: a browser must not run our text as a script
/// (`<script src=".../metrics">`), nor show our pages inside another site's frame.
fn harden(headers: &mut header::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listen: &str, hosts: &[&str], origins: &[&str]) -> RequestPolicy {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RequestPolicy::new(
            listen.parse().expect("address"),
            &own(hosts),
            &own(origins),
            None,
        )
    }

    #[test]
    fn hosts() {
        let p = policy("127.0.0.1:10767", &["gw.lab.example"], &[]);
        for ok in [
            "127.0.0.1:10767",
            "127.0.0.1",
            "localhost:10767",
            "LOCALHOST",
            "gw.lab.example:10767",
            "GW.lab.example.",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "attacker.example:10767",
            "127.0.0.2:10767",
            "[::1]:10767",
            "localhost.attacker.example",
            "",
            "gw.lab.example.attacker.example",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let any = policy("0.0.0.0:10767", &[], &[]);
        assert!(any.host_allowed("192.168.7.3:10767"));
        assert!(any.host_allowed("[2001:db8::1]:10767"));
        assert!(!any.host_allowed("rebind.attacker.example:10767"));
        let v6 = policy("[::1]:10767", &[], &[]);
        assert!(v6.host_allowed("[::1]:10767"));
        assert!(!v6.host_allowed("127.0.0.1:10767"));
    }

    #[test]
    fn origins() {
        let p = policy("127.0.0.1:10767", &[], &["http://ecs.lab.example:8080"]);
        assert!(p.origin_allowed("http://127.0.0.1:10767", "127.0.0.1:10767"));
        assert!(p.origin_allowed("http://localhost", "localhost:80"));
        assert!(p.origin_allowed("http://ECS.lab.example:8080", "127.0.0.1:10767"));
        assert!(!p.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:10767"));
        assert!(!p.origin_allowed("null", "127.0.0.1:10767"));
        assert!(!p.origin_allowed("file://", "127.0.0.1:10767"));
        assert!(!p.origin_allowed("http://evil.example", "127.0.0.1:10767"));
    }
}
