//! secop-gateway as a library: configuration, the shared-port listener, the HTTP and
//! WebSocket side, access rules, and [`app`], which starts and stops a whole gateway.
//! The `secop-gateway` binary is a thin CLI around [`app::run`]; keeping the rest here
//! lets tests, fuzz targets and tools use the same code in-process.

pub mod access_rules;
pub mod app;
pub mod config;
pub mod conn_io;
pub mod discovery;
pub mod http;
pub mod request_policy;
pub mod server;
pub mod sniff;
pub mod webclient;
pub mod websocket;
pub mod ws_guard;
