//! `describe`: sequential `describe` round trips on one connection (meant for a node
//! with many modules, e.g. 1000 from a generated config).

use crate::ctx::{Ctx, ServerWatch};
use crate::node::NodeInfo;
use crate::report::{Report, Summary};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// describe round trips measured
    #[arg(long, short = 'n', default_value_t = 100)]
    pub requests: usize,
    /// round trips before the measurement (not counted)
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// fail unless the description lists this many modules
    #[arg(long)]
    pub expect_modules: Option<usize>,
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    let mut r = ctx.report("describe");
    r.param("requests", a.requests);
    let (mut rd, mut wr, node) = match ctx.open_described().await {
        Ok(x) => x,
        Err(e) => {
            ctx.counters.fail(e);
            return r;
        }
    };
    let modules = node.modules.len();
    r.metric("modules", modules, "");
    r.metric("describing_bytes", node.describing_bytes, "B");
    if let Some(m) = a.expect_modules {
        if m != modules {
            ctx.counters
                .error(format!("the node has {modules} modules, expected {m}"));
        }
    }
    let mut watch = None;
    let mut lat = Vec::with_capacity(a.requests);
    for i in 0..a.warmup + a.requests {
        if i == a.warmup {
            watch = Some(ServerWatch::start(&ctx));
        }
        let t = Instant::now();
        if let Err(e) = wr.send("describe").await {
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
                ctx.counters.fail(format!("describe: {e}"));
                break;
            }
        };
        let rtt = t.elapsed().as_nanos() as u64;
        match NodeInfo::from_describing(line) {
            Ok(n) if n.modules.len() == modules => {
                if i >= a.warmup {
                    lat.push(rtt)
                }
            }
            Ok(n) => ctx.counters.error(format!(
                "describe listed {} modules, first {modules}",
                n.modules.len()
            )),
            Err(e) => ctx.counters.error(e),
        }
    }
    let n = lat.len() as u64;
    r.latency("rtt", &Summary::of(lat));
    if let Some(w) = watch {
        w.finish(&mut r, Some((n, "describe")));
    }
    wr.close().await;
    r
}
