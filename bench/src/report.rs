//! Counters, latency percentiles and the output: a human-readable table and one JSON
//! line for scripts.

use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Errors and timeouts of a run; any of them makes the run fail.
#[derive(Default)]
pub struct Counters {
    errors: AtomicU64,
    timeouts: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Counters {
    pub fn error(&self, what: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.sample(what.into());
    }

    pub fn timeout(&self, what: impl Into<String>) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        self.sample(what.into());
    }

    /// Count `e` as a timeout or an error, by its text.
    pub fn fail(&self, e: impl Into<String>) {
        let e = e.into();
        if crate::node::is_timeout(&e) {
            self.timeout(e)
        } else {
            self.error(e)
        }
    }

    fn sample(&self, what: String) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() < 10 {
            s.push(what);
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    pub fn samples(&self) -> Vec<String> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Percentiles of a set of durations given in nanoseconds, reported in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(mut ns: Vec<u64>) -> Summary {
        if ns.is_empty() {
            return Summary::default();
        }
        ns.sort_unstable();
        let pick = |q: f64| {
            let i = ((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1;
            ns[i] as f64 / 1e3
        };
        Summary {
            count: ns.len(),
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: ns.last().map_or(0.0, |&x| x as f64 / 1e3),
            mean: ns.iter().map(|&x| x as f64).sum::<f64>() / ns.len() as f64 / 1e3,
        }
    }
}

/// The result of one run.
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub params: Map<String, Value>,
    /// (key, value, unit), in the order they are shown
    pub metrics: Vec<(String, Value, &'static str)>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, label: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            label: label.to_owned(),
            params: Map::new(),
            metrics: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn param(&mut self, key: &str, v: impl Into<Value>) {
        self.params.insert(key.to_owned(), v.into());
    }

    pub fn metric(&mut self, key: &str, v: impl Into<Value>, unit: &'static str) {
        let mut v = v.into();
        if let Some(f) = v.as_f64().filter(|_| v.is_f64()) {
            // keep the JSON short: 4 significant digits are plenty
            v = json!(round_sig(f, 4));
        }
        self.metrics.push((key.to_owned(), v, unit));
    }

    /// Percentiles of a latency set (null when there are no samples).
    pub fn latency(&mut self, prefix: &str, s: &Summary) {
        let v = |x: f64| if s.count > 0 { json!(x) } else { Value::Null };
        self.metric(&format!("{prefix}_p50_us"), v(s.p50), "us");
        self.metric(&format!("{prefix}_p90_us"), v(s.p90), "us");
        self.metric(&format!("{prefix}_p99_us"), v(s.p99), "us");
        self.metric(&format!("{prefix}_max_us"), v(s.max), "us");
        self.metric(&format!("{prefix}_mean_us"), v(s.mean), "us");
        self.metric(&format!("{prefix}_samples"), s.count, "");
    }

    /// Print the table and the JSON line; returns whether the run passed.
    pub fn finish(mut self, counters: &Counters, json_out: Option<&std::path::Path>) -> bool {
        let errors = counters.errors();
        let timeouts = counters.timeouts();
        let ok = errors == 0 && timeouts == 0;
        self.metric("errors", errors, "");
        self.metric("timeouts", timeouts, "");
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        println!(
            "== {} against {} ({}): {}",
            self.scenario,
            self.label,
            params.join(" "),
            if ok { "OK" } else { "FAILED" }
        );
        let width = self.metrics.iter().map(|m| m.0.len()).max().unwrap_or(0);
        for (k, v, unit) in &self.metrics {
            let v = match v {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            println!("  {k:<width$}  {v:>14} {unit}");
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
        for s in counters.samples() {
            println!("  error: {s}");
        }
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        let line = json!({
            "scenario": self.scenario,
            "server": self.label,
            "ok": ok,
            "params": self.params,
            "metrics": metrics,
            "notes": self.notes,
            "error_samples": counters.samples(),
        })
        .to_string();
        println!("{line}");
        if let Some(path) = json_out {
            use std::io::Write;
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{line}");
                }
                Err(e) => eprintln!("cannot write {}: {e}", path.display()),
            }
        }
        ok
    }
}

pub fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let mag = x.abs().log10().floor() as i32;
    let factor = 10f64.powi(digits - 1 - mag);
    (x * factor).round() / factor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let s = Summary::of((1..=100).map(|x| x * 1000).collect());
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p90, 90.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);
        assert_eq!(Summary::of(vec![]).count, 0);
    }

    #[test]
    fn timeouts_are_counted_apart() {
        let c = Counters::default();
        c.fail("read p:value: no reply in time");
        c.fail("expected reply p:value, got error_read p:value");
        assert_eq!((c.errors(), c.timeouts()), (1, 1));
    }

    #[test]
    fn rounding_keeps_four_digits() {
        assert_eq!(round_sig(12345.678, 4), 12350.0);
        assert_eq!(round_sig(0.000123456, 4), 0.0001235);
    }
}
