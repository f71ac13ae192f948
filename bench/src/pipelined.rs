//! `pipelined`: C connections each send N `read m:p` at once, then collect the N
//! replies (verified in order); repeated until `duration` has passed. Replies/s.

use crate::ctx::{Ctx, ServerWatch};
use crate::node::NodeInfo;
use crate::report::Report;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// concurrent connections (C)
    #[arg(long, short = 'c', default_value_t = 10)]
    pub connections: usize,
    /// requests sent at once per connection and round (N)
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub requests: usize,
    /// parameter to read
    #[arg(long, default_value = "p:value")]
    pub param: String,
    /// repeat rounds until this many seconds have passed (0: one round)
    #[arg(long, default_value_t = 0.0)]
    pub duration: f64,
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    let mut r = ctx.report("pipelined");
    r.param("connections", a.connections);
    r.param("requests", a.requests);
    r.param("param", a.param.clone());
    r.param("duration", a.duration);
    let node = match ctx.open_described().await {
        Ok((_, _, node)) => node,
        Err(e) => {
            ctx.counters.fail(e);
            return r;
        }
    };
    if let Err(e) = node.datainfo(&a.param) {
        ctx.counters.error(e);
        return r;
    }
    let node = Arc::new(node);
    let mut conns = Vec::new();
    for _ in 0..a.connections {
        match ctx.open().await {
            Ok(c) => conns.push(c),
            Err(e) => ctx.counters.fail(e),
        }
    }
    let requests: Arc<Vec<String>> = Arc::new(vec![format!("read {}", a.param); a.requests]);
    let watch = ServerWatch::start(&ctx);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let mut tasks = Vec::new();
    for (mut rd, mut wr) in conns {
        let (ctx, node, requests, param) =
            (ctx.clone(), node.clone(), requests.clone(), a.param.clone());
        tasks.push(tokio::spawn(async move {
            let mut replies = 0u64;
            let mut rounds = 0u64;
            loop {
                let send = wr.send_many(&requests);
                let recv = collect(&ctx, &node, &mut rd, &param, requests.len());
                let (sent, got) = tokio::join!(send, recv);
                if let Err(e) = sent {
                    ctx.counters.error(format!("send: {e}"));
                    break;
                }
                replies += got.0;
                rounds += 1;
                if !got.1 || Instant::now() >= deadline {
                    break;
                }
            }
            wr.close().await;
            (replies, rounds)
        }));
    }
    let mut replies = 0;
    let mut rounds = 0;
    for t in tasks {
        if let Ok((n, k)) = t.await {
            replies += n;
            rounds += k;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    r.metric("replies", replies, "");
    r.metric("rounds", rounds, "");
    r.metric("wall_s", wall, "s");
    r.metric("replies_per_s", replies as f64 / wall, "1/s");
    watch.finish(&mut r, Some((replies, "reply")));
    r
}

/// Read `n` replies; returns (verified replies, whether the connection is still usable).
async fn collect(
    ctx: &Ctx,
    node: &NodeInfo,
    rd: &mut crate::conn::Reader,
    param: &str,
    n: usize,
) -> (u64, bool) {
    let mut ok = 0;
    for _ in 0..n {
        match rd.next_line_within(ctx.timeout).await {
            Ok(Some(line)) => match node.check_reply(line, "reply", param) {
                Ok(_) => ok += 1,
                Err(e) => ctx.counters.error(e),
            },
            Ok(None) => {
                ctx.counters.error("connection closed by the server");
                return (ok, false);
            }
            Err(e) => {
                ctx.counters.fail(format!("read {param}: {e}"));
                return (ok, false);
            }
        }
    }
    (ok, true)
}
