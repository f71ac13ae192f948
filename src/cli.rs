//! Command-line interface.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A SECoP 2.0 server that puts laboratory instruments on the network.
#[derive(Debug, Parser)]
#[command(name = "secop-gateway", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Without it, the embedded default (config/gateway.toml,
    /// simulated devices) is used.
    #[arg(short, long, global = true, env = "SECOP_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Listen address of the SECoP TCP listener, overriding listen.address.
    #[arg(short, long, global = true)]
    pub listen: Option<SocketAddr>,

    /// Log level or tracing filter (error, warn, info, debug, trace); overrides log.level.
    /// RUST_LOG takes precedence over both.
    #[arg(long, global = true)]
    pub log_level: Option<String>,

    /// Once listening, write the bound addresses as JSON to this file (for scripts
    /// and tests that listen on port 0).
    #[arg(long, global = true)]
    pub ready_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print the node description; start nothing.
    CheckConfig {
        /// Print the configuration with its templates expanded and its includes read
        /// (TOML, without comments and environment overrides) instead of the description.
        #[arg(long)]
        expanded: bool,
    },
    /// List SEC nodes that answer UDP discovery (SECoP RFC-105).
    Discover {
        /// Where to ask (repeatable), e.g. 127.0.0.1:10767 or a broadcast address such
        /// as 192.168.1.255:10767. Default: 127.0.0.1:10767 and the config's
        /// discovery.announce addresses.
        #[arg(long)]
        target: Vec<std::net::SocketAddr>,
        /// Seconds to wait for answers.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
        /// One JSON object per node instead of a table.
        #[arg(long)]
        json: bool,
    },
}
