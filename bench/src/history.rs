//! `history`: the memory of the node's value history (`[history]`, `GET /history`)
//! while its parameters update, e.g. 1000 modules polled at 10 Hz.
//!
//! Reads `secop_gateway_history_points` / `_bytes` and the updates emitted from
//! `/metrics` and the server's RSS before and after letting the history fill for its
//! window (plus a margin), then fetches `GET /history` once (size and time). A ring has
//! its final size once it holds more than half of it, so the bytes of another window
//! and resolution follow exactly: every series with a full-size ring (its parameter
//! updates at least once per resolution) takes `16 * ceil(window / resolution)` bytes,
//! the others what they hold now (`--project-window`, `--project-resolution`).
//!
//! With `--disabled` (a node with `[history] enabled = false`) only the updates, CPU
//! and RSS are measured: the same node without a history, for comparison.

use crate::ctx::{Ctx, ServerWatch};
use crate::report::Report;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of one point (two f64).
const POINT_BYTES: f64 = 16.0;
/// The gateway's cap of points per parameter.
const MAX_POINTS: f64 = 100_000.0;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// seconds to let the history fill (default: its window plus 5 s; 60 s with
    /// --disabled)
    #[arg(long)]
    pub fill: Option<f64>,
    /// window (s) to project the steady-state bytes for
    #[arg(long, default_value_t = 3600.0)]
    pub project_window: f64,
    /// resolution (s) to project the steady-state bytes for
    #[arg(long, default_value_t = 1.0)]
    pub project_resolution: f64,
    /// the node's history is disabled: measure updates, CPU and RSS only
    #[arg(long)]
    pub disabled: bool,
    /// fail unless the history has this many parameters
    #[arg(long)]
    pub expect_parameters: Option<usize>,
}

/// `GET path` with Host = the server's address: (status, body).
async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("GET {path}: no reply in time"))??;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no complete response head"))?;
    let head = String::from_utf8_lossy(buf.get(..end).unwrap_or_default());
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
    let body = buf.get(end + 4..).unwrap_or_default();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    match chunked {
        true => Ok((
            status,
            dechunk(body).ok_or_else(|| format!("GET {path}: bad chunked body"))?,
        )),
        false => Ok((status, body.to_vec())),
    }
}

/// The body of a chunked response (`None` if malformed).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(rest.len());
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(rest.get(..line_end)?).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        let data = rest.get(line_end + 2..)?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        rest = data.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

/// The sum of every series of a metric family (`name{...} value`).
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// (history points, history bytes, updates emitted) from /metrics.
async fn gauges(addr: SocketAddr, timeout: Duration) -> Result<(f64, f64, f64), String> {
    let (status, body) = http_get(addr, "/metrics", timeout).await?;
    if status != 200 {
        return Err(format!("GET /metrics: status {status}"));
    }
    let text = String::from_utf8_lossy(&body);
    Ok((
        family_sum(&text, "secop_gateway_history_points"),
        family_sum(&text, "secop_gateway_history_bytes"),
        family_sum(&text, "secop_gateway_updates_emitted_total"),
    ))
}

/// `ceil(window / resolution)` as the gateway computes it, capped.
fn points_per_parameter(window: f64, resolution: f64) -> f64 {
    (window / resolution * (1.0 - 1e-12))
        .ceil()
        .clamp(1.0, MAX_POINTS)
}

pub async fn run(ctx: Arc<Ctx>, a: Args) -> Report {
    let mut r = ctx.report("history");
    r.param("disabled", a.disabled);
    let addr = ctx.opts.addr;
    let fail = |r: Report, e: String| {
        ctx.counters.fail(e);
        r
    };
    let (status, body) = match http_get(addr, "/history", ctx.timeout).await {
        Ok(x) => x,
        Err(e) => return fail(r, e),
    };
    let (window, resolution) = if a.disabled {
        if status != 404 {
            return fail(
                r,
                format!("GET /history: {status}, expected 404 (disabled)"),
            );
        }
        (0.0, 0.0)
    } else {
        let doc: Value = match serde_json::from_slice(&body) {
            Ok(d) if status == 200 => d,
            Ok(_) | Err(_) => return fail(r, format!("GET /history: status {status}")),
        };
        let w = doc["window"].as_f64().unwrap_or(0.0);
        let res = doc["resolution"].as_f64().unwrap_or(1.0);
        r.param("window_s", w);
        r.param("resolution_s", res);
        (w, res)
    };
    let (points0, bytes0, updates0) = match gauges(addr, ctx.timeout).await {
        Ok(x) => x,
        Err(e) => return fail(r, e),
    };
    let rss0 = ctx.server_sample().map(|s| s.rss_kib);
    let fill = a
        .fill
        .unwrap_or(if a.disabled { 60.0 } else { window + 5.0 });
    r.param("fill_s", fill);
    let watch = ServerWatch::start(&ctx);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(fill.max(0.0))).await;
    let (points1, bytes1, updates1) = match gauges(addr, ctx.timeout).await {
        Ok(x) => x,
        Err(e) => return fail(r, e),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let updates = updates1 - updates0;
    r.metric("updates_per_s", updates / elapsed.max(1e-9), "updates/s");
    if let Some(rss0) = rss0 {
        r.metric("server_rss_before_kib", rss0, "KiB");
    }
    // CPU and RSS over the fill, before GET /history adds its own.
    watch.finish(&mut r, Some((updates.max(0.0) as u64, "update")));
    let rss1 = ctx.server_sample().map(|s| s.rss_kib);
    if let (Some(rss0), Some(rss1)) = (rss0, rss1) {
        r.metric("server_rss_growth_kib", rss1 as f64 - rss0 as f64, "KiB");
    }
    if !a.disabled {
        r.metric("history_points_before", points0, "");
        r.metric("history_bytes_before", bytes0, "B");
        r.metric("history_points", points1, "");
        r.metric("history_bytes", bytes1, "B");
        let t = Instant::now();
        let cpu0 = ctx.server_sample();
        match http_get(addr, "/history", Duration::from_secs(120)).await {
            Ok((200, body)) => {
                r.metric("get_history_ms", t.elapsed().as_secs_f64() * 1e3, "ms");
                if let (Some(c0), Some(c1)) = (cpu0, ctx.server_sample()) {
                    r.metric(
                        "get_history_server_cpu_ms",
                        crate::procstat::cpu_between(&c0, &c1) * 1e3,
                        "ms",
                    );
                    r.metric("server_rss_after_get_kib", c1.rss_kib, "KiB");
                }
                r.metric("get_history_bytes", body.len(), "B");
                let doc: Value = serde_json::from_slice(&body).unwrap_or_default();
                let series: Vec<usize> = doc["parameters"]
                    .as_object()
                    .map(|m| {
                        m.values()
                            .map(|v| v.as_array().map_or(0, Vec::len))
                            .collect()
                    })
                    .unwrap_or_default();
                let full_points = points_per_parameter(window, resolution);
                // A ring starts with 16 points and doubles when full: one that holds more
                // than half its final size has reached it. The others (parameters that
                // did not change) keep what they hold.
                let full = series
                    .iter()
                    .filter(|n| **n as f64 > full_points / 2.0)
                    .count() as f64;
                r.metric("parameters", series.len(), "");
                r.metric("full_parameters", full, "");
                if let Some(n) = a.expect_parameters {
                    if n != series.len() {
                        ctx.counters.error(format!(
                            "the history has {} parameters, expected {n}",
                            series.len()
                        ));
                    }
                }
                let ring = POINT_BYTES * full_points;
                r.metric("bytes_per_full_parameter", ring, "B");
                let rest = (bytes1 - full * ring).max(0.0);
                let projected = points_per_parameter(a.project_window, a.project_resolution);
                r.param("project_window_s", a.project_window);
                r.param("project_resolution_s", a.project_resolution);
                r.metric(
                    "projected_bytes_per_full_parameter",
                    POINT_BYTES * projected,
                    "B",
                );
                r.metric(
                    "projected_history_bytes",
                    full * POINT_BYTES * projected + rest,
                    "B",
                );
            }
            Ok((status, _)) => ctx
                .counters
                .error(format!("GET /history after filling: status {status}")),
            Err(e) => ctx.counters.fail(e),
        }
    }
    if let (Some(rss0), Some(rss1)) = (rss0, rss1) {
        if !a.disabled && bytes1 > bytes0 {
            r.metric(
                "rss_growth_per_history_byte",
                (rss1 as f64 - rss0 as f64) * 1024.0 / (bytes1 - bytes0),
                "",
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_summed_over_their_series() {
        let text = "# HELP secop_gateway_history_bytes x\n\
                    secop_gateway_history_bytes{node=\"a\"} 100\n\
                    secop_gateway_history_bytes{node=\"b\"} 28\n\
                    secop_gateway_history_bytes_other 5\n";
        assert_eq!(family_sum(text, "secop_gateway_history_bytes"), 128.0);
        assert_eq!(points_per_parameter(3600.0, 1.0), 3600.0);
        assert_eq!(points_per_parameter(60.0, 0.1), 600.0);
        assert_eq!(points_per_parameter(3600.0, 0.01), 100_000.0);
        assert_eq!(
            dechunk(b"3\r\n{\"a\r\n2;x=1\r\n\":\r\n2\r\n1}\r\n0\r\n\r\n"),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
    }
}
