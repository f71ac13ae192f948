//! `latency`: C connections doing sequential round trips (`read`, `ping` or `change`)
//! for D seconds; p50/p90/p99/max and requests/s.

use crate::ctx::{Ctx, ServerWatch};
use crate::node::{abbrev, NodeInfo};
use crate::report::{Report, Summary};
use secop_proto::message::split;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    Read,
    Ping,
    Change,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// request kind
    #[arg(long, value_enum, default_value = "read")]
    pub op: Op,
    /// concurrent connections (C)
    #[arg(long, short = 'c', default_value_t = 1)]
    pub connections: usize,
    /// seconds of measurement
    #[arg(long, short = 'd', default_value_t = 5.0)]
    pub duration: f64,
    /// parameter to read (op read)
    #[arg(long, default_value = "p:value")]
    pub param: String,
    /// parameter to change (op change): a numeric target
    #[arg(long, default_value = "ps:target")]
    pub target: String,
    /// seconds of round trips before the measurement (not counted)
    #[arg(long, default_value_t = 0.2)]
    pub warmup: f64,
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    let op_name = match a.op {
        Op::Read => "read",
        Op::Ping => "ping",
        Op::Change => "change",
    };
    let mut r = ctx.report("latency");
    r.param("op", op_name);
    r.param("connections", a.connections);
    r.param("duration", a.duration);
    let node = match ctx.open_described().await {
        Ok((_, _, node)) => node,
        Err(e) => {
            ctx.counters.fail(e);
            return r;
        }
    };
    let spec = match a.op {
        Op::Read => a.param.clone(),
        Op::Change => a.target.clone(),
        Op::Ping => String::new(),
    };
    if !spec.is_empty() {
        r.param("param", spec.clone());
        if let Err(e) = node.datainfo(&spec) {
            ctx.counters.error(e);
            return r;
        }
    }
    // values for change: inside the target's limits, different each time
    let (lo, hi) = node.range(&spec);
    let (base, step) = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo + (hi - lo) * 0.1, (hi - lo) * 0.5 / 100.0),
        _ => (1.0, 0.01),
    };
    let node = Arc::new(node);
    let mut conns = Vec::new();
    for _ in 0..a.connections {
        match ctx.open().await {
            Ok(c) => conns.push(c),
            Err(e) => ctx.counters.fail(e),
        }
    }
    let single = conns.len() == 1;
    let start = Instant::now() + Duration::from_secs_f64(a.warmup);
    let end = start + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    for (ci, (mut rd, mut wr)) in conns.into_iter().enumerate() {
        let (ctx, node, spec) = (ctx.clone(), node.clone(), spec.clone());
        let op = a.op;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(1 << 16);
            let mut k: u64 = 0;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                k += 1;
                let (req, action, rspec, value) = match op {
                    Op::Read => (format!("read {spec}"), "reply", spec.clone(), None),
                    Op::Ping => {
                        let token = format!("c{ci}k{k}");
                        (format!("ping {token}"), "pong", token, None)
                    }
                    Op::Change => {
                        let v = base + ((k + ci as u64) % 100) as f64 * step;
                        (
                            format!("change {spec} {v}"),
                            "changed",
                            spec.clone(),
                            Some(v),
                        )
                    }
                };
                let t = Instant::now();
                if let Err(e) = wr.send(&req).await {
                    ctx.counters.error(format!("send: {e}"));
                    break;
                }
                let line = match rd.next_line_within(ctx.timeout).await {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        ctx.counters.error("connection closed by the server");
                        break;
                    }
                    Err(e) => {
                        ctx.counters.fail(format!("{req}: {e}"));
                        break;
                    }
                };
                let rtt = t.elapsed().as_nanos() as u64;
                match verify(&node, line, action, &rspec, value.filter(|_| single)) {
                    Ok(()) => {
                        if t >= start {
                            samples.push(rtt);
                        }
                    }
                    Err(e) => ctx.counters.error(e),
                }
            }
            wr.close().await;
            samples
        }));
    }
    // the measurement (and the server's CPU) starts after the warm-up
    tokio::time::sleep_until(start.into()).await;
    let watch = ServerWatch::start(&ctx);
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            all.extend(s);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let n = all.len() as u64;
    r.metric("requests", n, "");
    r.metric("requests_per_s", n as f64 / wall, "1/s");
    r.latency("rtt", &Summary::of(all));
    watch.finish(&mut r, Some((n, "request")));
    r
}

fn verify(
    node: &NodeInfo,
    line: &str,
    action: &str,
    spec: &str,
    sent: Option<f64>,
) -> Result<(), String> {
    if action == "pong" {
        let m = split(line);
        if m.action != "pong" || m.specifier != spec {
            return Err(format!("expected pong {spec}, got {}", abbrev(line)));
        }
        if m.data.is_some() {
            crate::node::parse_report(m.data)?;
        }
        return Ok(());
    }
    let rep = node.check_reply(line, action, spec)?;
    if let Some(v) = sent {
        let got = rep.value.as_f64().unwrap_or(f64::NAN);
        if (got - v).abs() > 1e-9 * v.abs().max(1.0) {
            return Err(format!("changed {spec}: sent {v}, got {got}"));
        }
    }
    Ok(())
}
