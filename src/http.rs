//! The HTTP side of the shared port: WebSocket upgrades (on `/` and `/ws`), the web
//! client (`/` and `/assets/`, src/webclient.rs), the value history (`/history`), the
//! optional Autobahn echo endpoint, and 404 for everything else. HTTP parsing
//! is actix-web's; we serve it on connections that the sniffer handed over.
//!
//! Every request passes the [`RequestPolicy`] (src/request_policy.rs) first: Host,
//! method, Origin, access rule and WebSocket handshake are checked before a handler
//! runs, so no page that a browser opens elsewhere can read or drive the node.

use crate::conn_io::{ConnIo, Upgraded};
use crate::request_policy::RequestPolicy;
use crate::websocket::{self, WsSettings};
use actix::Addr;
use actix_http::HttpService;
use actix_service::{map_config, Service, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse};
use secop_actors::input_budget::Holder;
use secop_actors::node::{ClientInfo, GetDescription, GetHistory, NodeActor, SessionTransport};
use secop_actors::outbox::SlowClientStats;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Everything the HTTP handlers need.
pub struct HttpState {
    pub node: Addr<NodeActor>,
    pub ws: WsSettings,
    pub policy: Rc<RequestPolicy>,
    pub echo_endpoint: bool,
    pub stats: Arc<SlowClientStats>,
    pub health: Health,
}

/// What `/healthz` and `/readyz` check: that every node actor answers, and the devices
/// whose modules are marked `required`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The devices behind modules marked `required` (replaced by a reload).
    pub required_devices: Arc<std::sync::RwLock<Vec<String>>>,
    /// The node actors, added as they start (the metrics port serves from its own thread).
    pub nodes: Arc<std::sync::Mutex<Vec<Addr<NodeActor>>>>,
}

/// How long a node may take to answer a health question.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// Why the gateway is not healthy (the `reason` of `/healthz` and `/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    #[error("node list unavailable")]
    NodeList,
    #[error("a node actor has stopped")]
    Stopped,
    #[error("a node actor did not answer in time")]
    Slow,
}

impl Health {
    /// Ask every node actor, each within [`HEALTH_DEADLINE`]: a listener that accepts
    /// but a node that does not answer is not a healthy gateway.
    pub async fn nodes_answer(&self) -> Result<(), Unhealthy> {
        let nodes = match self.nodes.lock() {
            Ok(n) => n.clone(),
            Err(_) => return Err(Unhealthy::NodeList),
        };
        for node in nodes {
            match tokio::time::timeout(HEALTH_DEADLINE, node.send(GetDescription)).await {
                Ok(Ok(d)) => drop(d),
                Ok(Err(_)) => return Err(Unhealthy::Stopped),
                Err(_) => return Err(Unhealthy::Slow),
            }
        }
        Ok(())
    }

    /// The required devices, and those of them whose link is down.
    fn required_and_down(&self) -> (Vec<String>, Vec<String>) {
        let required = match self.required_devices.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        // Looked up without creating series: a device a reload removed has none.
        let up = secop_actors::metrics::metrics().devices_up(&required);
        let down = required
            .iter()
            .zip(up)
            .filter(|(_, up)| *up != Some(true))
            .map(|(d, _)| d.clone())
            .collect();
        (required, down)
    }

    /// Replace the required devices (a reload changed the configuration).
    pub fn set_required_devices(&self, devices: Vec<String>) {
        match self.required_devices.write() {
            Ok(mut r) => *r = devices,
            Err(poisoned) => *poisoned.into_inner() = devices,
        }
    }
}

async fn metrics_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(secop_actors::metrics::render())
}

async fn healthz(health: web::Data<Health>) -> HttpResponse {
    match health.nodes_answer().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"status": "ok"})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "failing", "reason": e.to_string()})),
    }
}

async fn readyz(health: web::Data<Health>) -> HttpResponse {
    if let Err(e) = health.nodes_answer().await {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "failing", "reason": e.to_string()}));
    }
    let (required, down) = health.required_and_down();
    if down.is_empty() {
        HttpResponse::Ok()
            .json(serde_json::json!({"status": "ready", "required_devices": required}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "not ready", "down": down}))
    }
}

/// The operational routes, shared by the node's port and the dedicated metrics port.
pub fn operations(cfg: &mut web::ServiceConfig, health: Health) {
    cfg.app_data(web::Data::new(health))
        .route("/metrics", web::get().to(metrics_page))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// A separate listener for `/metrics`, `/healthz` and `/readyz` (many sites scrape a
/// dedicated port).
pub fn metrics_server(
    address: SocketAddr,
    health: Health,
    policy: RequestPolicy,
) -> std::io::Result<actix_web::dev::Server> {
    let server = actix_web::HttpServer::new(move || {
        let health = health.clone();
        let policy = Rc::new(policy.clone());
        App::new()
            .wrap_fn(move |req, srv| crate::request_policy::enforce(&policy, req, srv))
            .configure(|cfg| operations(cfg, health))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .bind(address)?
    .run();
    Ok(server)
}

fn is_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn root(req: HttpRequest, body: web::Payload, state: web::Data<HttpState>) -> HttpResponse {
    if is_upgrade(&req) {
        return secop_ws(req, body, state).await;
    }
    index(&state).await
}

async fn secop_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<HttpState>,
) -> HttpResponse {
    // The request policy has turned denied clients away already.
    let peer = req.peer_addr();
    let Some(access) = state.policy.websocket_access(peer) else {
        return HttpResponse::Forbidden().body("access denied\n");
    };
    match websocket::accept(&req, body, state.ws.max_message_bytes, holder_of(&req)).await {
        Ok((response, accepted)) => {
            mark_upgraded(&req);
            let client = ClientInfo {
                address: peer,
                transport: SessionTransport::WebSocket,
                access,
            };
            websocket::start_secop_session(
                state.node.clone(),
                accepted,
                state.ws.clone(),
                state.stats.clone(),
                client,
            );
            response
        }
        Err(e) => e.error_response(),
    }
}

async fn echo(req: HttpRequest, body: web::Payload, state: web::Data<HttpState>) -> HttpResponse {
    if !state.echo_endpoint {
        return not_found().await;
    }
    match websocket::accept(&req, body, state.ws.max_message_bytes, holder_of(&req)).await {
        Ok((response, accepted)) => {
            mark_upgraded(&req);
            websocket::start_echo(accepted, state.ws.clone());
            response
        }
        Err(e) => e.error_response(),
    }
}

/// The budget holder (and kill switch) of the connection a request came on, and its
/// switch to WebSocket.
#[derive(Clone)]
struct ConnHolder(Arc<Holder>, Upgraded);

fn holder_of(req: &HttpRequest) -> Option<Arc<Holder>> {
    req.conn_data::<ConnHolder>().map(|h| h.0.clone())
}

/// Mark the connection as a WebSocket from now on (its frames are read as they come).
fn mark_upgraded(req: &HttpRequest) {
    if let Some(h) = req.conn_data::<ConnHolder>() {
        h.1.set();
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().body("not found\n")
}

/// The query of `GET /history`.
#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    /// Only points newer than this (UNIX seconds).
    since: Option<f64>,
    /// Only this parameter, `module:parameter`.
    parameter: Option<String>,
}

/// `{"error": text}` with this status, not to be cached.
fn json_error(status: StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "error": text }))
}

/// History documents being sent at once, in the whole process: each holds a copy of
/// the points it shows (16 bytes a point) until it is sent, so more requests wait for
/// their turn instead of multiplying that memory.
static HISTORY_TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Bytes of JSON written per piece of a history document.
const HISTORY_CHUNK: usize = 64 * 1024;

/// The pieces of a history document, holding a turn until the last is sent.
struct HistoryBody {
    chunks: secop_actors::history::JsonChunks,
    _turn: tokio::sync::SemaphorePermit<'static>,
}

impl Iterator for HistoryBody {
    type Item = Result<bytes::Bytes, std::convert::Infallible>;

    fn next(&mut self) -> Option<Self::Item> {
        self.chunks.next().map(|c| Ok(bytes::Bytes::from(c)))
    }
}

/// `GET /history[?since=<unix s>][&parameter=module:parameter]`: the node's value
/// history of its numeric parameters (see `secop_actors::history`). The node only
/// copies the points; the JSON is written in pieces of 64 KiB as the client takes them
/// (chunked), so a large history neither holds up the node nor its whole text in memory.
async fn history(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let query = match web::Query::<HistoryQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("bad query: {e}")),
    };
    if query.since.is_some_and(|s| !s.is_finite()) {
        return json_error(StatusCode::BAD_REQUEST, "since must be a finite number");
    }
    let Ok(turn) = HISTORY_TURNS.acquire().await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "history unavailable");
    };
    let ask = GetHistory {
        since: query.since,
        parameter: query.parameter,
    };
    match state.node.send(ask).await {
        Ok(Ok(snapshot)) => {
            let body = HistoryBody {
                chunks: snapshot.into_chunks(HISTORY_CHUNK),
                _turn: turn,
            };
            HttpResponse::Ok()
                .content_type("application/json")
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .streaming(futures_util::stream::iter(body))
        }
        // Disabled, a parameter that is not in the description (hidden ones are not),
        // or one that is not a number.
        Ok(Err(e)) => json_error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "node not running"),
    }
}

/// `GET /`: the built-in web client (src/webclient.rs), under the node's name.
async fn index(state: &HttpState) -> HttpResponse {
    let Ok(description) = state.node.send(GetDescription).await else {
        return HttpResponse::ServiceUnavailable().body("node not running\n");
    };
    crate::webclient::index_page(&description.equipment_id)
}

/// An HTTP/1.1 service that serves one accepted connection at a time (per call).
pub type ConnectionService =
    Rc<dyn Fn(ConnIo, SocketAddr) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>;

/// The HTTP service could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot build the HTTP service")]
pub struct ServiceError;

/// Build the HTTP service once; each call serves one connection to its end.
pub async fn service(
    state: HttpState,
    client_timeout: Duration,
) -> Result<ConnectionService, ServiceError> {
    let health = state.health.clone();
    let policy = state.policy.clone();
    let state = web::Data::new(state);
    let app = App::new()
        .wrap_fn(move |req, srv| crate::request_policy::enforce(&policy, req, srv))
        .app_data(state)
        .configure(|cfg| operations(cfg, health))
        .route("/", web::get().to(root))
        .route("/ws", web::get().to(secop_ws))
        .route(
            "/assets/{name}",
            web::get().to(crate::webclient::serve_asset),
        )
        .route("/history", web::get().to(history))
        .route("/echo", web::get().to(echo))
        .default_service(web::to(not_found));
    let factory = HttpService::<ConnIo, _, _>::build()
        .client_request_timeout(client_timeout)
        .on_connect_ext(|io: &ConnIo, ext| {
            ext.insert(ConnHolder(io.holder().clone(), io.upgraded().clone()));
        })
        .h1(map_config(app, |_| AppConfig::default()));
    let handler = Rc::new(factory.new_service(()).await.map_err(|_| ServiceError)?);
    Ok(Rc::new(move |stream: ConnIo, peer: SocketAddr| {
        let handler = handler.clone();
        Box::pin(async move {
            if let Err(e) = handler.call((stream, Some(peer))).await {
                tracing::debug!(%peer, "HTTP connection ended with an error: {e}");
            }
        })
    }))
}
