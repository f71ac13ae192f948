//! secop-bench: a load generator for SECoP servers (secop-gateway, frappy).
//!
//! It speaks raw SECoP over TCP or WebSocket, verifies every message it receives
//! (action, specifier, and the value against the datainfo from `describe`), and fails
//! (exit status 1) on any error or timeout. Each run prints a table and, as its last
//! line, one JSON object for scripts; the server's CPU time and RSS (from /proc) are
//! reported next to the rates.
//!
//! ```text
//! secop-bench --addr 127.0.0.1:10767 latency --op read --connections 1 --duration 5
//! ```

mod attack;
mod conn;
mod connections;
mod ctx;
mod describe;
mod fanout;
mod history;
mod latency;
mod node;
mod pipelined;
mod procstat;
mod report;
mod soak;

use clap::{Parser, Subcommand};
use conn::{ConnectOptions, Transport};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "secop-bench", version, about)]
struct Cli {
    /// the server's address (loopback)
    #[arg(long, default_value = "127.0.0.1:10767")]
    addr: SocketAddr,
    /// raw SECoP over TCP, or WebSocket (ws://ADDR/ws, one message per TEXT frame)
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// pid of the server process, for its CPU time and RSS (default: the process
    /// listening on the port of --addr)
    #[arg(long)]
    server_pid: Option<u32>,
    /// name of the server in the output
    #[arg(long, default_value = "server")]
    label: String,
    /// tokio worker threads of the load generator (1: a current-thread runtime)
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// seconds to wait for any single reply
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// also append the JSON line to this file
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// C connections each send N reads at once, then collect the N replies
    Pipelined(pipelined::Args),
    /// sequential round trips (read, ping or change) on C connections
    Latency(latency::Args),
    /// S activated subscribers while a writer changes a target at rate R
    Fanout(fanout::Args),
    /// S activated subscribers of a parameter that the node polls
    FanoutPoll(fanout::PollArgs),
    /// fanout, plus subscribers that stop reading halfway through
    SlowConsumer(fanout::SlowArgs),
    /// K connections doing *IDN? + describe, then staying open
    Connections(connections::Args),
    /// sequential describe round trips
    Describe(describe::Args),
    /// the memory of the node's value history (GET /history) while it fills
    History(history::Args),
    /// a long run: activated clients, T ramping, periodic reconnects; RSS and fds sampled
    Soak(soak::Args),
    /// a hostile client (pipelined HTTP, WebSocket non-readers, unfinished lines or
    /// messages, silent connections) while a well-behaved client measures latency
    Attack(attack::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.addr.ip().is_unspecified() {
        eprintln!("secop-bench: give the server's address, not {}", cli.addr);
        return ExitCode::from(2);
    }
    procstat::raise_nofile();
    let pid = cli
        .server_pid
        .or_else(|| procstat::find_pid_by_port(cli.addr.port()));
    let opts = ConnectOptions {
        addr: cli.addr,
        transport: cli.transport,
        recv_buffer: None,
        timeout: Duration::from_secs_f64(cli.timeout),
    };
    let ctx = Arc::new(ctx::Ctx::new(opts, pid, cli.label.clone()));
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("secop-bench: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = cli.threads.max(1);
    let report = rt.block_on(async {
        let c = ctx.clone();
        match cli.scenario {
            Scenario::Pipelined(a) => pipelined::run(c, a).await,
            Scenario::Latency(a) => latency::run(c, a).await,
            Scenario::Fanout(a) => fanout::run(c, a).await,
            Scenario::FanoutPoll(a) => fanout::run_poll(c, a).await,
            Scenario::SlowConsumer(a) => fanout::run_slow(c, a).await,
            Scenario::Connections(a) => connections::run(c, a).await,
            Scenario::Describe(a) => describe::run(c, a).await,
            Scenario::History(a) => history::run(c, a).await,
            Scenario::Soak(a) => soak::run(c, a).await,
            Scenario::Attack(a) => attack::run(c, a).await,
        }
    });
    let mut report = report;
    report.param("client_threads", threads);
    if let Some(pid) = pid {
        report.param("server_pid", pid);
    }
    let ok = report.finish(&ctx.counters, cli.json_out.as_deref());
    // connections may still be open in tasks: do not wait for them
    rt.shutdown_timeout(Duration::from_millis(100));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
