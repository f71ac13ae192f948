//! What every scenario needs: how to connect, the counters, a common clock, and the
//! server's resource usage over the run.

use crate::conn::{self, ConnectOptions, Reader, Writer};
use crate::node::{self, NodeInfo};
use crate::procstat::{self, ProcSample, RssSampler};
use crate::report::{Counters, Report};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Ctx {
    pub opts: ConnectOptions,
    pub pid: Option<u32>,
    pub label: String,
    pub timeout: Duration,
    pub counters: Arc<Counters>,
    t0: Instant,
}

impl Ctx {
    pub fn new(opts: ConnectOptions, pid: Option<u32>, label: String) -> Ctx {
        Ctx {
            timeout: opts.timeout,
            opts,
            pid,
            label,
            counters: Arc::new(Counters::default()),
            t0: Instant::now(),
        }
    }

    /// Nanoseconds since the start of the program (a clock shared by all tasks).
    pub fn ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    pub fn report(&self, scenario: &str) -> Report {
        let mut r = Report::new(scenario, &self.label);
        r.param("transport", self.opts.transport.as_str());
        r.param("addr", self.opts.addr.to_string());
        r
    }

    pub async fn open(&self) -> Result<(Reader, Writer), String> {
        conn::connect(&self.opts)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.opts.addr))
    }

    /// Connect and run `*IDN?` + `describe`.
    pub async fn open_described(&self) -> Result<(Reader, Writer, NodeInfo), String> {
        let (mut rd, mut wr) = self.open().await?;
        let info = node::handshake(&mut rd, &mut wr, self.timeout).await?;
        Ok((rd, wr, info))
    }

    pub fn server_sample(&self) -> Option<ProcSample> {
        self.pid.and_then(|p| procstat::sample(p).ok())
    }
}

/// The server's CPU time and memory over a measured interval, and ours.
pub struct ServerWatch {
    pid: Option<u32>,
    before: Option<ProcSample>,
    client_cpu_before: f64,
    pub sampler: RssSampler,
    started: Instant,
}

impl ServerWatch {
    pub fn start(ctx: &Ctx) -> ServerWatch {
        ServerWatch {
            pid: ctx.pid,
            before: ctx.server_sample(),
            client_cpu_before: procstat::own_cpu_s(),
            sampler: RssSampler::start(ctx.pid),
            started: Instant::now(),
        }
    }

    /// Add the server's figures to the report: CPU seconds, share of one core, CPU per
    /// unit of work (`per` = (count, name)), RSS now and peak.
    pub fn finish(self, r: &mut Report, per: Option<(u64, &str)>) {
        let wall = self.started.elapsed().as_secs_f64();
        let client_cpu = procstat::own_cpu_s() - self.client_cpu_before;
        let pid = self.pid;
        let peak = self.sampler.stop();
        let after = pid.and_then(|p| procstat::sample(p).ok());
        match (self.before, after) {
            (Some(b), Some(a)) => {
                let cpu = procstat::cpu_between(&b, &a);
                r.metric("server_cpu_s", cpu, "s");
                r.metric(
                    "server_cpu_pct",
                    100.0 * cpu / wall.max(1e-9),
                    "% of one core",
                );
                if let Some((n, name)) = per {
                    if n > 0 {
                        r.metric(
                            &format!("server_cpu_us_per_{name}"),
                            cpu * 1e6 / n as f64,
                            "us",
                        );
                    }
                }
                r.metric("server_rss_kib", a.rss_kib, "KiB");
                r.metric("server_rss_peak_kib", peak.max(a.rss_kib), "KiB");
                r.metric("server_vmhwm_kib", a.hwm_kib, "KiB (peak over its life)");
                r.metric("server_threads", a.threads, "");
            }
            _ => r
                .notes
                .push("server pid unknown: no server CPU/RSS figures".to_owned()),
        }
        r.metric("client_cpu_s", client_cpu, "s");
        r.metric("measured_wall_s", wall, "s");
    }
}
