//! `fanout`: S activated subscribers while a writer changes a target at rate R; every
//! subscriber must see every value, in order. `slow-consumer`: the same, and halfway
//! through one more subscriber activates everything, sends many requests and stops
//! reading. `fanout-poll`: the updates come from the node's own polling.

use crate::conn::{self, ConnectOptions, Reader, Writer};
use crate::ctx::{Ctx, ServerWatch};
use crate::node::{abbrev, NodeInfo};
use crate::procstat;
use crate::report::{Report, Summary};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// activated subscribers (S)
    #[arg(long, short = 's', default_value_t = 100)]
    pub subscribers: usize,
    /// changes per second of the writer (R)
    #[arg(long, short = 'r', default_value_t = 100.0)]
    pub rate: f64,
    /// seconds of writing
    #[arg(long, short = 'd', default_value_t = 5.0)]
    pub duration: f64,
    /// the numeric parameter the writer changes
    #[arg(long, default_value = "ps:target")]
    pub target: String,
    /// what subscribers activate: a module (default: the target's module), or "." for
    /// everything
    #[arg(long)]
    pub activate: Option<String>,
    /// seconds to wait after the last change for its updates
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// connections opened at the same time while subscribing
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SlowArgs {
    #[command(flatten)]
    pub fanout: Args,
    /// subscribers that stop reading (they join halfway through)
    #[arg(long, default_value_t = 1)]
    pub slow: usize,
    /// requests each slow subscriber sends (and never reads the replies of)
    #[arg(long, default_value_t = 2000)]
    pub slow_requests: usize,
    /// the request the slow subscriber sends
    #[arg(long, default_value = "describe")]
    pub slow_request: String,
    /// SO_RCVBUF of the slow subscriber, bytes (small: it fills at once)
    #[arg(long, default_value_t = 4096)]
    pub slow_rcvbuf: u32,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PollArgs {
    /// activated subscribers (S)
    #[arg(long, short = 's', default_value_t = 100)]
    pub subscribers: usize,
    /// seconds of measurement
    #[arg(long, short = 'd', default_value_t = 5.0)]
    pub duration: f64,
    /// the polled parameter whose updates are measured
    #[arg(long, default_value = "p:value")]
    pub param: String,
    /// what subscribers activate: a module (default: the parameter's module), or "."
    /// for everything
    #[arg(long)]
    pub activate: Option<String>,
    /// connections opened at the same time while subscribing
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

fn activate_line(activate: &Option<String>, spec: &str) -> String {
    match activate.as_deref() {
        Some(".") | Some("") => "activate".to_owned(),
        Some(m) => format!("activate {m}"),
        None => format!("activate {}", spec.split(':').next().unwrap_or("")),
    }
}

/// Open a connection, activate, and read up to `active` (the initial updates are
/// verified and dropped).
async fn subscribe(
    ctx: &Ctx,
    opts: &ConnectOptions,
    node: &NodeInfo,
    activate: &str,
) -> Result<(Reader, Writer), String> {
    let (mut rd, mut wr) = conn::connect(opts)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    wr.send(activate).await.map_err(|e| format!("send: {e}"))?;
    loop {
        let line = rd
            .next_line_within(ctx.timeout)
            .await
            .map_err(|e| format!("{activate}: {e}"))?
            .ok_or("connection closed while activating")?;
        if line == "active" || line.starts_with("active ") {
            return Ok((rd, wr));
        }
        node.check_update(line)?;
    }
}

/// Subscribe `n` connections, `concurrency` at a time.
async fn subscribe_all(
    ctx: &Arc<Ctx>,
    opts: ConnectOptions,
    node: &Arc<NodeInfo>,
    activate: &str,
    n: usize,
    concurrency: usize,
) -> Vec<(Reader, Writer)> {
    let mut subs = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let k = left.min(concurrency.max(1));
        left -= k;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..k {
            let (ctx, node, activate) = (ctx.clone(), node.clone(), activate.to_owned());
            set.spawn(async move { subscribe(&ctx, &opts, &node, &activate).await });
        }
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok(s)) => subs.push(s),
                Ok(Err(e)) => ctx.counters.fail(format!("subscriber: {e}")),
                Err(e) => ctx.counters.error(format!("subscriber task: {e}")),
            }
        }
    }
    subs
}

/// The values the writer sends: value `i` is `base + i * step`.
struct Sequence {
    n: usize,
    base: f64,
    step: f64,
    sent_ns: Vec<AtomicU64>,
}

impl Sequence {
    fn value(&self, i: usize) -> f64 {
        self.base + i as f64 * self.step
    }

    fn index(&self, v: f64) -> Option<usize> {
        let i = ((v - self.base) / self.step).round();
        if i < 0.0 || i >= self.n as f64 {
            return None;
        }
        let i = i as usize;
        ((v - self.value(i)).abs() < self.step * 0.25).then_some(i)
    }
}

#[derive(Default)]
struct SubResult {
    /// (send time, delivery latency) of each target update, ns
    latencies: Vec<(u64, u64)>,
    distinct: usize,
    reordered: u64,
    duplicates: u64,
    foreign: u64,
    updates: u64,
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    run_with_slow(ctx, a, None).await
}

pub async fn run_slow(ctx: Arc<Ctx>, s: SlowArgs) -> Report {
    let a = s.fanout.clone();
    run_with_slow(ctx, a, Some(s)).await
}

async fn run_with_slow(ctx: Arc<Ctx>, a: Args, slow: Option<SlowArgs>) -> Report {
    let mut r = ctx.report(if slow.is_some() {
        "slow-consumer"
    } else {
        "fanout"
    });
    r.param("subscribers", a.subscribers);
    r.param("rate", a.rate);
    r.param("duration", a.duration);
    r.param("target", a.target.clone());
    if let Some(s) = &slow {
        r.param("slow", s.slow);
        r.param("slow_requests", s.slow_requests);
        r.param("slow_request", s.slow_request.clone());
    }
    let (mut wrd, mut wwr, node) = match ctx.open_described().await {
        Ok(x) => x,
        Err(e) => {
            ctx.counters.fail(e);
            return r;
        }
    };
    if let Err(e) = node.datainfo(&a.target) {
        ctx.counters.error(e);
        return r;
    }
    // the values: inside the target's limits, all different, none equal to the start
    let n = ((a.rate * a.duration).ceil() as usize).max(1);
    let (lo, hi) = node.range(&a.target);
    let (base, step, reset) = match (lo, hi) {
        (Some(lo), Some(hi)) => (
            lo + (hi - lo) * 0.05,
            (hi - lo) * 0.9 / n as f64,
            lo + (hi - lo) * 0.02,
        ),
        _ => (1.0, 0.001, 0.5),
    };
    let seq = Arc::new(Sequence {
        n,
        base,
        step,
        sent_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    // start from a value outside the sequence
    let reset_req = format!("change {} {reset}", a.target);
    let reset_ok = async {
        wwr.send(&reset_req).await.map_err(|e| e.to_string())?;
        let line = wrd
            .next_line_within(ctx.timeout)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("closed")?;
        node.check_reply(line, "changed", &a.target)
    }
    .await;
    if let Err(e) = reset_ok {
        ctx.counters.fail(format!("{reset_req}: {e}"));
        return r;
    }
    let node = Arc::new(node);
    let activate = activate_line(&a.activate, &a.target);
    let t_sub = Instant::now();
    let subs = subscribe_all(
        &ctx,
        ctx.opts,
        &node,
        &activate,
        a.subscribers,
        a.connect_concurrency,
    )
    .await;
    r.metric("subscribe_s", t_sub.elapsed().as_secs_f64(), "s");
    r.metric("subscribers_active", subs.len(), "");
    let alive = subs.len();
    let done = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut keep = Vec::new();
    for (mut rd, wr) in subs {
        keep.push(wr);
        let (ctx, node, seq, done, target) = (
            ctx.clone(),
            node.clone(),
            seq.clone(),
            done.clone(),
            a.target.clone(),
        );
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut res = SubResult::default();
            let mut seen = vec![false; seq.n];
            let mut last: Option<usize> = None;
            loop {
                let line = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    l = rd.next_line() => l,
                };
                let line = match line {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        ctx.counters
                            .error("subscriber: connection closed by the server");
                        break;
                    }
                    Err(e) => {
                        ctx.counters.error(format!("subscriber: {e}"));
                        break;
                    }
                };
                let now = ctx.ns();
                let (spec, rep) = match node.check_update(line) {
                    Ok(x) => x,
                    Err(e) => {
                        ctx.counters.error(e);
                        continue;
                    }
                };
                res.updates += 1;
                if spec != target {
                    continue;
                }
                let Some(i) = rep.value.as_f64().and_then(|v| seq.index(v)) else {
                    res.foreign += 1;
                    continue;
                };
                let sent = seq.sent_ns[i].load(Ordering::Acquire);
                if sent == 0 {
                    res.foreign += 1;
                    continue;
                }
                res.latencies.push((sent, now.saturating_sub(sent)));
                if seen[i] {
                    res.duplicates += 1;
                } else {
                    seen[i] = true;
                    res.distinct += 1;
                }
                if last.is_some_and(|l| i < l) {
                    res.reordered += 1;
                }
                last = Some(last.map_or(i, |l| l.max(i)));
                if i == seq.n - 1 {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            res
        }));
    }

    // the slow subscribers join halfway through
    let slow_state = Arc::new(SlowState::default());
    let slow_task = slow.as_ref().map(|s| {
        let (ctx, node, s, st) = (ctx.clone(), node.clone(), s.clone(), slow_state.clone());
        let at = Instant::now() + Duration::from_secs_f64(a.duration / 2.0);
        tokio::spawn(async move { slow_subscribers(ctx, node, s, at, st).await })
    });

    let watch = ServerWatch::start(&ctx);
    // the writer: changes at rate R, replies read by a task of their own
    let replies = {
        let (ctx, node, seq, target) = (ctx.clone(), node.clone(), seq.clone(), a.target.clone());
        tokio::spawn(async move {
            let mut got = 0;
            for i in 0..seq.n {
                let line = match wrd
                    .next_line_within(ctx.timeout + Duration::from_secs(5))
                    .await
                {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        ctx.counters
                            .error("writer: connection closed by the server");
                        break;
                    }
                    Err(e) => {
                        ctx.counters.fail(format!("writer: changed {target}: {e}"));
                        break;
                    }
                };
                match node.check_reply(line, "changed", &target) {
                    Ok(rep) => {
                        let v = rep.value.as_f64().unwrap_or(f64::NAN);
                        if seq.index(v) != Some(i) {
                            ctx.counters.error(format!(
                                "writer: change {i} ({}) answered with {}",
                                seq.value(i),
                                abbrev(line)
                            ));
                        }
                        got += 1;
                    }
                    Err(e) => ctx.counters.error(format!("writer: {e}")),
                }
            }
            got
        })
    };
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / a.rate);
    for i in 0..n {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        seq.sent_ns[i].store(ctx.ns(), Ordering::Release);
        let req = format!("change {} {}", a.target, seq.value(i));
        if let Err(e) = wwr.send(&req).await {
            ctx.counters.error(format!("writer: send: {e}"));
            break;
        }
    }
    let write_s = start.elapsed().as_secs_f64();
    let changed = replies.await.unwrap_or(0);
    // wait until every subscriber saw the last value, or the grace period is over
    let grace_end = Instant::now() + Duration::from_secs_f64(a.grace);
    while done.load(Ordering::Relaxed) < alive && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let measured_s = start.elapsed().as_secs_f64();
    let rss_split = slow_state.rss_at_split.load(Ordering::Relaxed);
    let split_sampler = slow_state
        .sampler
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let peak_after_split = split_sampler.map_or(0, |s| s.stop());
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    for t in tasks {
        if let Ok(res) = t.await {
            results.push(res);
        }
    }
    let split_ns = slow_state.split_ns.load(Ordering::Relaxed);
    watch.finish(
        &mut r,
        Some((changed as u64 * alive as u64, "delivered_change")),
    );
    drop(keep);

    let updates: u64 = results.iter().map(|s| s.updates).sum();
    let distinct: usize = results.iter().map(|s| s.distinct).sum();
    let expected = n * results.len();
    r.metric("changes_sent", n, "");
    r.metric("changes_per_s", n as f64 / write_s, "1/s");
    r.metric("changed_replies", changed, "");
    r.metric("updates_received", updates, "");
    r.metric("updates_per_s", updates as f64 / measured_s, "1/s");
    r.metric("target_updates_expected", expected, "");
    r.metric(
        "target_updates_missed",
        expected - distinct.min(expected),
        "",
    );
    r.metric(
        "target_updates_reordered",
        results.iter().map(|s| s.reordered).sum::<u64>(),
        "",
    );
    r.metric(
        "target_updates_duplicated",
        results.iter().map(|s| s.duplicates).sum::<u64>(),
        "",
    );
    r.metric(
        "target_updates_foreign",
        results.iter().map(|s| s.foreign).sum::<u64>(),
        "",
    );
    r.metric(
        "subscribers_complete",
        results.iter().filter(|s| s.distinct == n).count(),
        "",
    );
    let all: Vec<(u64, u64)> = results.into_iter().flat_map(|s| s.latencies).collect();
    r.latency(
        "delivery",
        &Summary::of(all.iter().map(|&(_, l)| l).collect()),
    );
    if let (Some(s), Some(task)) = (&slow, slow_task) {
        let slow_conns = task.await.unwrap_or_default();
        let before: Vec<u64> = all
            .iter()
            .filter(|&&(t, _)| split_ns == 0 || t < split_ns)
            .map(|&(_, l)| l)
            .collect();
        let after: Vec<u64> = all
            .iter()
            .filter(|&&(t, _)| split_ns != 0 && t >= split_ns)
            .map(|&(_, l)| l)
            .collect();
        r.latency("before_slow_delivery", &Summary::of(before));
        r.latency("with_slow_delivery", &Summary::of(after));
        r.metric("slow_subscribers", slow_conns.len(), "");
        r.metric("server_rss_at_slow_start_kib", rss_split, "KiB");
        r.metric("server_rss_peak_with_slow_kib", peak_after_split, "KiB");
        r.metric(
            "server_rss_growth_with_slow_kib",
            peak_after_split as i64 - rss_split as i64,
            "KiB",
        );
        // did the server drop the slow subscribers?
        let mut dropped = 0;
        for (mut rd, _wr) in slow_conns {
            if drained_to_eof(&mut rd, Duration::from_secs(3)).await {
                dropped += 1;
            }
        }
        r.metric("slow_dropped_by_server", dropped, "");
        r.notes.push(format!(
            "{} slow subscriber(s) with SO_RCVBUF {} joined after {:.1} s, sent {} x {:?} and stopped reading",
            s.slow, s.slow_rcvbuf, a.duration / 2.0, s.slow_requests, s.slow_request
        ));
    }
    r
}

#[derive(Default)]
struct SlowState {
    split_ns: AtomicU64,
    rss_at_split: AtomicU64,
    /// the server's RSS from the moment the slow subscribers joined
    sampler: std::sync::Mutex<Option<procstat::RssSampler>>,
}

async fn slow_subscribers(
    ctx: Arc<Ctx>,
    node: Arc<NodeInfo>,
    s: SlowArgs,
    at: Instant,
    st: Arc<SlowState>,
) -> Vec<(Reader, Option<Writer>)> {
    tokio::time::sleep_until(at.into()).await;
    let mut opts = ctx.opts;
    opts.recv_buffer = Some(s.slow_rcvbuf);
    let mut conns = Vec::new();
    for _ in 0..s.slow {
        match subscribe(&ctx, &opts, &node, "activate").await {
            Ok(c) => conns.push(c),
            Err(e) => ctx.counters.fail(format!("slow subscriber: {e}")),
        }
    }
    if let Some(p) = ctx.pid.and_then(|p| procstat::sample(p).ok()) {
        st.rss_at_split.store(p.rss_kib, Ordering::Relaxed);
    }
    st.split_ns.store(ctx.ns(), Ordering::Relaxed);
    *st.sampler.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(procstat::RssSampler::start(ctx.pid));
    let reqs = vec![s.slow_request.clone(); s.slow_requests];
    let mut out = Vec::new();
    for (rd, mut wr) in conns {
        // the server stops reading once our replies pile up: never wait for that
        let reqs = reqs.clone();
        let sender = tokio::spawn(async move {
            let _ = wr.send_many(&reqs).await;
            wr
        });
        let wr = match tokio::time::timeout(Duration::from_secs(2), sender).await {
            Ok(Ok(wr)) => Some(wr),
            _ => None, // still blocked in the send: the task keeps the connection open
        };
        out.push((rd, wr));
    }
    out
}

/// Read what is queued; true if the server closed the connection.
async fn drained_to_eof(rd: &mut Reader, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match rd
            .next_line_within(left.min(Duration::from_millis(500)))
            .await
        {
            Ok(Some(_)) => continue,
            Ok(None) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Default)]
struct PollResult {
    /// (timestamp qualifier, delivery latency ns)
    samples: Vec<(f64, u64)>,
    reordered: u64,
    duplicates: u64,
    updates: u64,
}

pub async fn run_poll(ctx: Arc<Ctx>, a: PollArgs) -> Report {
    let mut r = ctx.report("fanout-poll");
    r.param("subscribers", a.subscribers);
    r.param("duration", a.duration);
    r.param("param", a.param.clone());
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
    let activate = activate_line(&a.activate, &a.param);
    let t_sub = Instant::now();
    let subs = subscribe_all(
        &ctx,
        ctx.opts,
        &node,
        &activate,
        a.subscribers,
        a.connect_concurrency,
    )
    .await;
    r.metric("subscribe_s", t_sub.elapsed().as_secs_f64(), "s");
    r.metric("subscribers_active", subs.len(), "");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut keep = Vec::new();
    let wall_start = wall_now();
    let watch = ServerWatch::start(&ctx);
    for (mut rd, wr) in subs {
        keep.push(wr);
        let (ctx, node, param) = (ctx.clone(), node.clone(), a.param.clone());
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut res = PollResult::default();
            let mut last = f64::NEG_INFINITY;
            loop {
                let line = tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    l = rd.next_line() => l,
                };
                let line = match line {
                    Ok(Some(l)) => l,
                    Ok(None) => {
                        ctx.counters
                            .error("subscriber: connection closed by the server");
                        break;
                    }
                    Err(e) => {
                        ctx.counters.error(format!("subscriber: {e}"));
                        break;
                    }
                };
                let now = wall_now();
                let (spec, rep) = match node.check_update(line) {
                    Ok(x) => x,
                    Err(e) => {
                        ctx.counters.error(e);
                        continue;
                    }
                };
                res.updates += 1;
                if spec != param {
                    continue;
                }
                let Some(t) = rep.t else {
                    ctx.counters
                        .error(format!("update without timestamp: {}", abbrev(line)));
                    continue;
                };
                if t < last {
                    res.reordered += 1;
                } else if t == last {
                    res.duplicates += 1;
                }
                last = last.max(t);
                res.samples.push((t, ((now - t).max(0.0) * 1e9) as u64));
            }
            res
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let wall_end = wall_now();
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    for t in tasks {
        if let Ok(res) = t.await {
            results.push(res);
        }
    }
    watch.finish(&mut r, None);
    drop(keep);
    // every subscriber must have every update that any of them got inside the window
    // (margins: the first poll after activation, and updates still in flight at the end)
    let (w0, w1) = (wall_start + 0.2, wall_end - 0.5);
    let in_window = |t: f64| t >= w0 && t <= w1;
    let union: HashSet<u64> = results
        .iter()
        .flat_map(|s| s.samples.iter())
        .filter(|(t, _)| in_window(*t))
        .map(|(t, _)| t.to_bits())
        .collect();
    let mut missed = 0usize;
    for s in &results {
        let mine: HashSet<u64> = s
            .samples
            .iter()
            .filter(|(t, _)| in_window(*t))
            .map(|(t, _)| t.to_bits())
            .collect();
        missed += union.len() - mine.len().min(union.len());
    }
    let updates: u64 = results.iter().map(|s| s.updates).sum();
    let measured = wall_end - wall_start;
    r.metric("updates_received", updates, "");
    r.metric("updates_per_s", updates as f64 / measured, "1/s");
    r.metric("param_updates_in_window", union.len(), "");
    r.metric(
        "param_updates_per_s_per_subscriber",
        union.len() as f64 / (w1 - w0).max(1e-9),
        "1/s",
    );
    r.metric("param_updates_missed", missed, "");
    r.metric(
        "param_updates_reordered",
        results.iter().map(|s| s.reordered).sum::<u64>(),
        "",
    );
    r.metric(
        "param_updates_duplicated",
        results.iter().map(|s| s.duplicates).sum::<u64>(),
        "",
    );
    let lat: Vec<u64> = results
        .into_iter()
        .flat_map(|s| s.samples)
        .filter(|(t, _)| in_window(*t))
        .map(|(_, l)| l)
        .collect();
    r.latency("delivery", &Summary::of(lat));
    r.notes.push(
        "poll delivery latency = arrival (client wall clock) - the update's timestamp qualifier t"
            .to_owned(),
    );
    r
}
