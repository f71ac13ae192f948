//! `soak`: a long run of ordinary life. S activated clients receive updates while a
//! writer keeps T ramping between two targets, and every client reconnects now and
//! then; the server's RSS and open file descriptors are sampled throughout. A leak
//! (of memory, of sockets, of per-session state) shows as a slope; the run reports the
//! first, lowest, highest and last samples and the slope of the second half.

use crate::ctx::Ctx;
use crate::report::Report;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// activated clients (S)
    #[arg(long, short = 's', default_value_t = 50)]
    pub subscribers: usize,
    /// seconds to run
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,
    /// seconds each client stays connected before it reconnects (staggered)
    #[arg(long, default_value_t = 60.0)]
    pub reconnect_every: f64,
    /// seconds between two target changes of the writer (T ramps in between)
    #[arg(long, default_value_t = 20.0)]
    pub change_every: f64,
    /// the two targets the writer alternates between
    #[arg(long, num_args = 2, default_values_t = [280.0, 300.0])]
    pub targets: Vec<f64>,
    /// seconds between two samples of the server's RSS and fds
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// One client's life: connect, activate, read updates, reconnect after `stay`.
async fn subscriber(
    ctx: Arc<Ctx>,
    first_stay: Duration,
    stay: Duration,
    end: Instant,
    updates: Arc<AtomicU64>,
    reconnects: Arc<AtomicU64>,
) {
    let mut stay_now = first_stay;
    while Instant::now() < end {
        let (mut rd, mut wr, node) = match ctx.open_described().await {
            Ok(c) => c,
            Err(e) => {
                ctx.counters.error(e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = wr.send("activate").await {
            ctx.counters.error(format!("activate: {e}"));
            continue;
        }
        let leave = (Instant::now() + stay_now).min(end);
        stay_now = stay;
        loop {
            let left = leave.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, rd.next_line()).await {
                Err(_) => break,
                Ok(Ok(Some(line))) => {
                    if line.starts_with("update ") {
                        if let Err(e) = node.check_update(line) {
                            ctx.counters.error(e);
                        }
                        updates.fetch_add(1, Ordering::Relaxed);
                    } else if line.starts_with("error_update ") {
                        ctx.counters.error(format!("unexpected {line}"));
                    }
                }
                Ok(Ok(None)) => {
                    ctx.counters.error("the server closed a subscriber");
                    break;
                }
                Ok(Err(e)) => {
                    ctx.counters.error(format!("subscriber read: {e}"));
                    break;
                }
            }
        }
        wr.close().await;
        reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// The writer: T's target alternates, so T keeps ramping (BUSY, IDLE, BUSY...).
async fn writer(ctx: Arc<Ctx>, a: Args, end: Instant, changes: Arc<AtomicU64>) {
    let Ok((mut rd, mut wr, _)) = ctx.open_described().await else {
        ctx.counters.fail("the writer cannot connect");
        return;
    };
    let mut i = 0usize;
    while Instant::now() < end {
        let target = a.targets.get(i % 2).copied().unwrap_or(290.0);
        i += 1;
        if let Err(e) = wr.send(&format!("change T:target {target}")).await {
            ctx.counters.fail(format!("writer: {e}"));
            return;
        }
        loop {
            match rd.next_line_within(ctx.timeout).await {
                Ok(Some(l)) if l.starts_with("changed T:target") => break,
                Ok(Some(l)) if l.starts_with("error_") => {
                    ctx.counters.error(format!("writer: {l}"));
                    break;
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    ctx.counters.timeout("writer: no changed");
                    return;
                }
            }
        }
        changes.fetch_add(1, Ordering::Relaxed);
        let pause = Duration::from_secs_f64(a.change_every);
        tokio::time::sleep(pause.min(end.saturating_duration_since(Instant::now()))).await;
    }
}

/// Least-squares slope of `(seconds, value)` samples, per hour.
fn slope_per_hour(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = samples.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den * 3600.0
    }
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    let mut r = ctx.report("soak");
    r.param("subscribers", a.subscribers);
    r.param("duration_s", a.duration);
    r.param("reconnect_every_s", a.reconnect_every);
    r.param("change_every_s", a.change_every);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let updates = Arc::new(AtomicU64::new(0));
    let reconnects = Arc::new(AtomicU64::new(0));
    let changes = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let stay = Duration::from_secs_f64(a.reconnect_every.max(0.1));
    for i in 0..a.subscribers {
        // Staggered, so that reconnects are spread over the period.
        let first = stay.mul_f64((i + 1) as f64 / a.subscribers.max(1) as f64);
        tasks.spawn(subscriber(
            ctx.clone(),
            first,
            stay,
            end,
            updates.clone(),
            reconnects.clone(),
        ));
    }
    tasks.spawn(writer(ctx.clone(), a.clone(), end, changes.clone()));
    let mut rss: Vec<(f64, f64)> = Vec::new();
    let mut fds: Vec<(f64, f64)> = Vec::new();
    let every = Duration::from_secs_f64(a.sample_every.max(0.5));
    loop {
        let t = start.elapsed().as_secs_f64();
        if let Some(s) = ctx.server_sample() {
            rss.push((t, s.rss_kib as f64 / 1024.0));
        }
        if let Some(n) = ctx.pid.and_then(fd_count) {
            fds.push((t, n as f64));
        }
        if Instant::now() >= end {
            break;
        }
        tokio::time::sleep(every.min(end.saturating_duration_since(Instant::now()))).await;
    }
    while tasks.join_next().await.is_some() {}
    for (name, samples, unit) in [("rss", &rss, "MiB"), ("fds", &fds, "")] {
        let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let Some(first) = values.first().copied() else {
            continue;
        };
        let last = values.last().copied().unwrap_or(first);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        r.metric(&format!("{name}_first"), first, unit);
        r.metric(&format!("{name}_min"), min, unit);
        r.metric(&format!("{name}_max"), max, unit);
        r.metric(&format!("{name}_last"), last, unit);
        // The second half: after warm-up, a leak is a steady slope.
        let half = &samples[samples.len() / 2..];
        r.metric(
            &format!("{name}_slope_second_half_per_hour"),
            (slope_per_hour(half) * 100.0).round() / 100.0,
            unit,
        );
    }
    r.metric("updates_received", updates.load(Ordering::Relaxed), "");
    r.metric("reconnects", reconnects.load(Ordering::Relaxed), "");
    r.metric("target_changes", changes.load(Ordering::Relaxed), "");
    r.metric("samples", rss.len(), "");
    r
}
