//! `connections`: K connections, opened in bursts of B simultaneous connects, each doing
//! `*IDN?` + `describe` and then staying open; time, failures, and the server's RSS per
//! connection. At the end every connection must still answer a `ping`.

use crate::conn::{self, ConnectError, Reader, Writer};
use crate::ctx::{Ctx, ServerWatch};
use crate::node;
use crate::procstat;
use crate::report::{Report, Summary};
use secop_proto::message::split;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// connections to open and keep open (K)
    #[arg(long, short = 'k', default_value_t = 1000)]
    pub count: usize,
    /// connects started at the same moment; the next burst starts when the previous one
    /// is served
    #[arg(long, short = 'b', default_value_t = 1000)]
    pub burst: usize,
    /// seconds to wait with all connections open before measuring the server's RSS
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,
    /// seconds a connect plus handshake may take
    #[arg(long, default_value_t = 15.0)]
    pub connect_timeout: f64,
}

#[derive(Default)]
struct Failures {
    refused: u64,
    reset: u64,
    closed: u64,
    timeout: u64,
    other: u64,
}

enum Fail {
    Connect(ConnectError),
    Handshake(String),
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    let mut r = ctx.report("connections");
    r.param("count", a.count);
    r.param("burst", a.burst);
    let nofile = procstat::raise_nofile();
    r.metric("client_nofile_limit", nofile, "");
    if let Some(pid) = ctx.pid {
        if let Some(l) = procstat::nofile_of(pid) {
            r.metric("server_nofile_limit", l, "");
            if (l as usize) < a.count + 16 {
                r.notes.push(format!(
                    "the server's fd limit ({l}) is below the connection count"
                ));
            }
        }
    }
    if (nofile as usize) < a.count + 64 {
        r.notes.push(format!(
            "our fd limit ({nofile}) is below the connection count"
        ));
    }
    // reference description
    let reference = match ctx.open_described().await {
        Ok((_, mut wr, node)) => {
            wr.close().await;
            node
        }
        Err(e) => {
            ctx.counters.fail(e);
            return r;
        }
    };
    let modules = reference.modules.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = ctx.server_sample();
    let watch = ServerWatch::start(&ctx);
    let mut opts = ctx.opts;
    opts.timeout = Duration::from_secs_f64(a.connect_timeout);
    let mut open: Vec<(Reader, Writer)> = Vec::with_capacity(a.count);
    let mut lat = Vec::with_capacity(a.count);
    let mut fails = Failures::default();
    let mut first_burst_failed = 0u64;
    let mut first_burst_s = 0.0;
    let start = Instant::now();
    let mut left = a.count;
    let mut wave = 0;
    while left > 0 {
        let k = left.min(a.burst.max(1));
        left -= k;
        let t_wave = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..k {
            let timeout = opts.timeout;
            set.spawn(async move {
                let t = Instant::now();
                let (mut rd, mut wr) = conn::connect(&opts).await.map_err(Fail::Connect)?;
                let left = timeout.saturating_sub(t.elapsed());
                let info = node::handshake(&mut rd, &mut wr, left)
                    .await
                    .map_err(Fail::Handshake)?;
                Ok::<_, Fail>((rd, wr, info.modules.len(), t.elapsed()))
            });
        }
        let mut failed = 0;
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok((rd, wr, m, el))) => {
                    if m != modules {
                        ctx.counters
                            .error(format!("describe listed {m} modules, expected {modules}"));
                    }
                    lat.push(el.as_nanos() as u64);
                    open.push((rd, wr));
                }
                Ok(Err(f)) => {
                    failed += 1;
                    let text = match f {
                        Fail::Connect(ConnectError::Refused) => {
                            fails.refused += 1;
                            "connect: refused".to_owned()
                        }
                        Fail::Connect(ConnectError::Reset) => {
                            fails.reset += 1;
                            "connect: reset".to_owned()
                        }
                        Fail::Connect(ConnectError::Timeout) => {
                            fails.timeout += 1;
                            "connect: timed out".to_owned()
                        }
                        Fail::Connect(ConnectError::Other(e)) => {
                            fails.other += 1;
                            format!("connect: {e}")
                        }
                        Fail::Handshake(e) => {
                            if node::is_timeout(&e) {
                                fails.timeout += 1;
                            } else if e.contains("closed") || e.contains("reset") {
                                fails.closed += 1;
                            } else {
                                fails.other += 1;
                            }
                            format!("handshake: {e}")
                        }
                    };
                    ctx.counters.fail(text);
                }
                Err(e) => {
                    failed += 1;
                    fails.other += 1;
                    ctx.counters.error(format!("task: {e}"));
                }
            }
        }
        if wave == 0 {
            first_burst_failed = failed;
            first_burst_s = t_wave.elapsed().as_secs_f64();
        }
        wave += 1;
    }
    let total_s = start.elapsed().as_secs_f64();
    let established = open.len();
    r.metric("established", established, "");
    r.metric("failed_refused", fails.refused, "");
    r.metric("failed_reset", fails.reset, "");
    r.metric("failed_closed_by_server", fails.closed, "");
    r.metric("failed_timeout", fails.timeout, "");
    r.metric("failed_other", fails.other, "");
    r.metric("first_burst_size", a.burst.min(a.count), "");
    r.metric("first_burst_failed", first_burst_failed, "");
    r.metric("first_burst_s", first_burst_s, "s");
    r.metric("total_s", total_s, "s");
    r.metric("connects_per_s", established as f64 / total_s, "1/s");
    r.latency("connect_idn_describe", &Summary::of(lat));

    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let loaded = ctx.server_sample();
    if let (Some(b), Some(l)) = (baseline, loaded) {
        r.metric("server_rss_before_kib", b.rss_kib, "KiB");
        r.metric("server_rss_open_kib", l.rss_kib, "KiB");
        if established > 0 {
            r.metric(
                "server_rss_per_connection_kib",
                (l.rss_kib as f64 - b.rss_kib as f64) / established as f64,
                "KiB",
            );
        }
        r.metric("server_threads_open", l.threads, "");
    }

    // are they all still served?
    let served = ping_all(&ctx, open, a.burst.max(1)).await;
    r.metric("served_ping_ok", served, "");
    if served < established {
        ctx.counters.error(format!(
            "{} of {established} open connections did not answer ping",
            established - served
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(c) = ctx.server_sample() {
        r.metric("server_rss_after_close_kib", c.rss_kib, "KiB");
    }
    watch.finish(&mut r, Some((established as u64, "connection")));
    r
}

/// Ping every connection (`concurrency` at a time), then close them; returns how many
/// answered.
async fn ping_all(ctx: &Arc<Ctx>, conns: Vec<(Reader, Writer)>, concurrency: usize) -> usize {
    let mut served = 0;
    let mut it = conns.into_iter().enumerate();
    loop {
        let mut set = JoinSet::new();
        for (i, (mut rd, mut wr)) in it.by_ref().take(concurrency) {
            let timeout = ctx.timeout;
            set.spawn(async move {
                let token = format!("k{i}");
                wr.send(&format!("ping {token}"))
                    .await
                    .map_err(|e| format!("ping: {e}"))?;
                let line = rd
                    .next_line_within(timeout)
                    .await
                    .map_err(|e| format!("ping: {e}"))?
                    .ok_or("ping: connection closed")?;
                let m = split(line);
                if m.action != "pong" || m.specifier != token {
                    return Err(format!("ping {token}: got {}", node::abbrev(line)));
                }
                wr.close().await;
                Ok::<(), String>(())
            });
        }
        if set.is_empty() {
            break;
        }
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok(())) => served += 1,
                Ok(Err(e)) => ctx.counters.fail(e),
                Err(e) => ctx.counters.error(format!("task: {e}")),
            }
        }
    }
    served
}
