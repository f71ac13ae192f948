//! The value history of a node: a bounded series of `(time, value)` points per numeric
//! parameter, so that a page opened after an event still shows it (`GET /history`).
//!
//! - **What is recorded**: parameters whose datainfo is `double`, `scaled`, `int`,
//!   `enum` or `bool` (as 0/1), with their wire value (a `scaled` value is its integer,
//!   as in `update` messages). Strings, blobs, arrays, tuples, structs and matrices are
//!   not. The node records every value it puts into its cache (polls, changes, remote
//!   updates), at the time the update carries.
//! - **Resolution**: at most one point per `resolution` slot (`floor(t / resolution)`):
//!   a newer value in the slot replaces the slot's value. A run of equal values is kept
//!   as its first and last point (a steady parameter, confirmed every second, moves its
//!   last point on instead of filling the ring). Errors are the exception: an
//!   error after a value appends a gap marker (`null` on the wire; once per error
//!   episode, never replaced), and the first value after a gap is appended too.
//! - **Window**: points older than `window` seconds fall out when the series gets a new
//!   point, and are never returned.
//! - **Memory**: each series is a ring of at most `max_points = ceil(window /
//!   resolution)` points of 16 bytes, allocated on the first value with 16 points and
//!   doubled when full until it reaches `max_points` (a parameter that never changes
//!   holds 256 bytes, one updated faster than `resolution` holds `16 * max_points`).
//!   Once a ring has its final size, recording a point is O(1) and allocates nothing;
//!   before that the amortised cost of a doubling is O(1) per point.
//!
//! Values are finite numbers (JSON has no NaN); a non-finite value is ignored, never
//! stored. Internally a gap is a NaN value, so that a point is two `f64`s.

use prometheus::IntGauge;
use secop_proto::{DataInfo, Kind, SecopError};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The largest `ceil(window / resolution)` a configuration may ask for: 100,000 points
/// (1.6 MB) per parameter.
pub const MAX_POINTS_PER_PARAMETER: u64 = 100_000;

/// The first capacity of a ring (points), doubled until `max_points`.
const FIRST_CAPACITY: usize = 16;

/// How far (seconds) an update's timestamp may lie in the future before the history
/// uses the local clock instead (a remote node with a wrong clock).
const FUTURE_SLACK: f64 = 60.0;

/// `[history]` of the configuration, for every node of the gateway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistorySettings {
    /// Seconds of history kept.
    pub window: f64,
    /// Seconds per point (at most one point per slot of this length).
    pub resolution: f64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            window: 3600.0,
            resolution: 1.0,
        }
    }
}

impl HistorySettings {
    /// `ceil(window / resolution)`, saturating; what the configuration check compares
    /// with [`MAX_POINTS_PER_PARAMETER`]. A quotient a rounding error above an integer
    /// (`3600 / 0.036`) counts as that integer.
    pub fn points_per_parameter(&self) -> u64 {
        let n = (self.window / self.resolution * (1.0 - 1e-12)).ceil();
        if n.is_nan() || n < 1.0 {
            1
        } else if n >= u64::MAX as f64 {
            u64::MAX
        } else {
            n as u64
        }
    }

    /// The capacity of a full ring: [`Self::points_per_parameter`], never above
    /// [`MAX_POINTS_PER_PARAMETER`] (the configuration refuses more).
    pub fn max_points(&self) -> usize {
        self.points_per_parameter().min(MAX_POINTS_PER_PARAMETER) as usize
    }
}

/// How a parameter's values become numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numeric {
    /// `double`, `scaled`, `int`, `enum`: the JSON number.
    Number,
    /// `bool`: 0 or 1.
    Bool,
}

impl Numeric {
    /// Whether (and how) a parameter of this datainfo has a history.
    pub fn of(datainfo: &DataInfo) -> Option<Numeric> {
        match datainfo.kind {
            Kind::Double { .. } | Kind::Scaled { .. } | Kind::Int { .. } | Kind::Enum { .. } => {
                Some(Numeric::Number)
            }
            Kind::Bool => Some(Numeric::Bool),
            _ => None,
        }
    }

    /// The value as a finite number, if it is one of this kind.
    fn number(self, value: &Value) -> Option<f64> {
        let x = match self {
            Numeric::Number => value.as_f64()?,
            Numeric::Bool => f64::from(u8::from(value.as_bool()?)),
        };
        x.is_finite().then_some(x)
    }
}

/// What one update contributes to a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    Value(f64),
    /// The parameter's value is an error.
    Gap,
}

/// One point: time (UNIX seconds) and value, NaN for a gap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    t: f64,
    v: f64,
}

impl Point {
    fn is_gap(&self) -> bool {
        self.v.is_nan()
    }
}

/// A ring of points with a capacity that only grows, up to a fixed maximum.
#[derive(Debug, Default)]
struct Ring {
    buf: Box<[Point]>,
    /// Index of the oldest point.
    head: usize,
    len: usize,
}

impl Ring {
    fn index(&self, i: usize) -> usize {
        let j = self.head + i;
        if j >= self.buf.len() {
            j - self.buf.len()
        } else {
            j
        }
    }

    fn get(&self, i: usize) -> Option<&Point> {
        (i < self.len)
            .then(|| self.buf.get(self.index(i)))
            .flatten()
    }

    fn front(&self) -> Option<&Point> {
        self.get(0)
    }

    fn front_mut(&mut self) -> Option<&mut Point> {
        if self.len == 0 {
            return None;
        }
        self.buf.get_mut(self.head)
    }

    fn back(&self) -> Option<&Point> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    fn back_mut(&mut self) -> Option<&mut Point> {
        let i = self.index(self.len.checked_sub(1)?);
        self.buf.get_mut(i)
    }

    fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = self.index(1);
            self.len -= 1;
        }
    }

    /// Append, growing the buffer up to `max` points, then dropping the oldest.
    fn push(&mut self, point: Point, max: usize) {
        if self.len == self.buf.len() {
            if self.buf.len() < max {
                let capacity = (self.buf.len() * 2).clamp(FIRST_CAPACITY.min(max), max);
                let mut buf = Vec::with_capacity(capacity);
                buf.extend(self.iter().copied());
                buf.resize(capacity, Point { t: 0.0, v: 0.0 });
                self.buf = buf.into_boxed_slice();
                self.head = 0;
            } else {
                self.pop_front();
            }
        }
        let Some(slot) = self.buf.get_mut(self.index(self.len)) else {
            return;
        };
        *slot = point;
        self.len += 1;
    }

    /// The points, oldest first.
    fn iter(&self) -> std::iter::Chain<std::slice::Iter<'_, Point>, std::slice::Iter<'_, Point>> {
        let capacity = self.buf.len();
        let end = self.head + self.len;
        let (first, second) = if end <= capacity {
            (self.buf.get(self.head..end), None)
        } else {
            (
                self.buf.get(self.head..capacity),
                self.buf.get(..end - capacity),
            )
        };
        first
            .unwrap_or_default()
            .iter()
            .chain(second.unwrap_or_default().iter())
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val::<[Point]>(&self.buf)
    }
}

/// The history of one parameter.
#[derive(Debug)]
struct Series {
    /// `module:parameter`.
    key: Arc<str>,
    numeric: Numeric,
    ring: Ring,
}

impl Series {
    /// Add a sample at `t` (already checked: finite, not before the last point).
    fn push(&mut self, t: f64, sample: Sample, settings: &HistorySettings, max: usize) {
        let last = self.ring.back().copied();
        match sample {
            Sample::Gap => {
                // Once per episode, and only after a value.
                if last.is_none_or(|p| p.is_gap()) {
                    return;
                }
                self.ring.push(Point { t, v: f64::NAN }, max);
            }
            Sample::Value(v) => {
                let same_slot = last.is_some_and(|p| {
                    !p.is_gap()
                        && (p.t / settings.resolution).floor() == (t / settings.resolution).floor()
                });
                // A flat run is its first and its last point: the same value again
                // (a steady parameter confirmed every second) moves the last point on.
                // The end of a run is never replaced by another value in its slot (the
                // step would become a ramp from the run's start).
                let before_last = self
                    .ring
                    .len
                    .checked_sub(2)
                    .and_then(|i| self.ring.get(i))
                    .copied();
                let run_end = last.is_some_and(|p| before_last.is_some_and(|b| b.v == p.v));
                let flat = run_end && last.is_some_and(|p| p.v == v);
                match self.ring.back_mut() {
                    Some(p) if flat || (same_slot && !run_end) => *p = Point { t, v },
                    _ => self.ring.push(Point { t, v }, max),
                }
            }
        }
        // Points older than the window go; a run that began before the window keeps its
        // start at the window's edge, so a steady value still spans the whole window.
        let oldest = t - settings.window;
        while let Some(front) = self.ring.front().copied() {
            if front.t >= oldest {
                break;
            }
            if self.ring.get(1).is_some_and(|next| next.v == front.v) {
                if let Some(p) = self.ring.front_mut() {
                    p.t = oldest;
                }
                break;
            }
            self.ring.pop_front();
        }
    }
}

/// The histories of all numeric parameters of one node, with the totals for the
/// metrics `secop_gateway_history_points` and `secop_gateway_history_bytes`.
#[derive(Debug)]
pub struct History {
    settings: HistorySettings,
    max_points: usize,
    series: Vec<Series>,
    /// Points held and bytes reserved by all series.
    points: usize,
    bytes: usize,
    gauges: Option<(IntGauge, IntGauge)>,
}

/// Why `GET /history` has nothing to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("the history is disabled ([history] enabled = false)")]
    Disabled,
    #[error("no parameter {0:?} in this node's description")]
    UnknownParameter(String),
    #[error("{0:?} has no history: only numbers, enums and bools are recorded")]
    NotNumeric(String),
}

impl History {
    /// An empty history; `gauges` are (points, bytes) of the node.
    pub fn new(settings: HistorySettings, gauges: Option<(IntGauge, IntGauge)>) -> History {
        History {
            max_points: settings.max_points(),
            settings,
            series: Vec::new(),
            points: 0,
            bytes: 0,
            gauges,
        }
    }

    pub fn settings(&self) -> HistorySettings {
        self.settings
    }

    /// Points held by all series.
    pub fn points(&self) -> usize {
        self.points
    }

    /// Bytes reserved by all rings.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Set the series to these parameters (`module:parameter`, in the order of the ids
    /// [`History::record`] takes); series of parameters that stay keep their points.
    pub fn rebuild(&mut self, keys: Vec<(Arc<str>, Numeric)>) {
        let mut old: HashMap<Arc<str>, Series> =
            self.series.drain(..).map(|s| (s.key.clone(), s)).collect();
        self.series = keys
            .into_iter()
            .map(|(key, numeric)| match old.remove(&key) {
                Some(s) if s.numeric == numeric => s,
                _ => Series {
                    key,
                    numeric,
                    ring: Ring::default(),
                },
            })
            .collect();
        self.recount();
    }

    fn recount(&mut self) {
        self.points = self.series.iter().map(|s| s.ring.len).sum();
        self.bytes = self.series.iter().map(|s| s.ring.bytes()).sum();
        self.publish();
    }

    fn publish(&self) {
        if let Some((points, bytes)) = &self.gauges {
            points.set(i64::try_from(self.points).unwrap_or(i64::MAX));
            bytes.set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        }
    }

    /// Record the value (or error) of series `id` that an update carried at
    /// `timestamp`; `now` is the local clock. A timestamp more than a window old or
    /// more than a minute ahead is replaced by `now`, and one before the series' last
    /// point by that point's time, so that every series is in time order.
    pub fn record(
        &mut self,
        id: usize,
        value: &Result<Value, SecopError>,
        timestamp: f64,
        now: f64,
    ) {
        let Some(series) = self.series.get_mut(id) else {
            return;
        };
        let sample = match value {
            Ok(v) => match series.numeric.number(v) {
                Some(x) => Sample::Value(x),
                None => return,
            },
            Err(_) => Sample::Gap,
        };
        let plausible = timestamp.is_finite()
            && timestamp <= now + FUTURE_SLACK
            && timestamp >= now - self.settings.window;
        let mut t = if plausible { timestamp } else { now };
        if let Some(last) = series.ring.back() {
            t = t.max(last.t);
        }
        let (len, bytes) = (series.ring.len, series.ring.bytes());
        series.push(t, sample, &self.settings, self.max_points);
        let (new_len, new_bytes) = (series.ring.len, series.ring.bytes());
        if (len, bytes) != (new_len, new_bytes) {
            self.points = self.points + new_len - len;
            self.bytes = self.bytes + new_bytes - bytes;
            self.publish();
        }
    }

    /// A copy of the points of the last window newer than `since`, of every series or
    /// of series `only`, for [`Snapshot::to_json`] (which may run on another thread:
    /// the node only copies).
    pub fn snapshot(&self, now: f64, since: Option<f64>, only: Option<usize>) -> Snapshot {
        let oldest = now - self.settings.window;
        let selected: Vec<&Series> = match only {
            Some(id) => self.series.get(id).into_iter().collect(),
            None => self.series.iter().collect(),
        };
        let newer = |p: &&Point| p.t >= oldest && since.is_none_or(|since| p.t > since);
        Snapshot {
            settings: self.settings,
            now,
            series: selected
                .into_iter()
                .map(|s| {
                    (
                        s.key.clone(),
                        s.ring.iter().filter(newer).copied().collect(),
                    )
                })
                .collect(),
        }
    }
}

/// The points [`History::snapshot`] copied.
#[derive(Debug, Clone)]
pub struct Snapshot {
    settings: HistorySettings,
    now: f64,
    series: Vec<(Arc<str>, Vec<Point>)>,
}

impl Snapshot {
    /// Points in the snapshot.
    pub fn points(&self) -> usize {
        self.series.iter().map(|(_, p)| p.len()).sum()
    }

    /// The `GET /history` document in pieces of about `bytes` (at least one point
    /// each), so that it can be sent while it is written; each series' copy is freed
    /// once written. See [`Snapshot::to_json`].
    pub fn into_chunks(self, bytes: usize) -> JsonChunks {
        JsonChunks {
            snapshot: self,
            bytes: bytes.max(1),
            started: false,
            done: false,
            series: 0,
            point: 0,
            opened: false,
        }
    }

    /// The `GET /history` document: `{"window":..,"resolution":..,"now":..,
    /// "parameters":{"mod:param":[[t,v],...],...}}`; `v` is `null` for a gap.
    pub fn to_json(self) -> String {
        self.into_chunks(1 << 16).collect()
    }
}

/// The pieces of a history document; see [`Snapshot::into_chunks`].
#[derive(Debug)]
pub struct JsonChunks {
    snapshot: Snapshot,
    bytes: usize,
    started: bool,
    done: bool,
    /// The series and point written next, and whether that series' key is written.
    series: usize,
    point: usize,
    opened: bool,
}

impl Iterator for JsonChunks {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let mut out = String::with_capacity(self.bytes.saturating_add(64).min(1 << 20));
        if !self.started {
            self.started = true;
            let s = self.snapshot.settings;
            out.push_str("{\"window\":");
            number(&mut out, s.window);
            out.push_str(",\"resolution\":");
            number(&mut out, s.resolution);
            out.push_str(",\"now\":");
            number(&mut out, self.snapshot.now);
            out.push_str(",\"parameters\":{");
        }
        while out.len() < self.bytes {
            let Some((key, points)) = self.snapshot.series.get_mut(self.series) else {
                out.push_str("}}");
                self.done = true;
                break;
            };
            if !self.opened {
                if self.series > 0 {
                    out.push(',');
                }
                out.push_str(&secop_proto::json::to_json(&**key));
                out.push_str(":[");
                self.opened = true;
                continue;
            }
            match points.get(self.point) {
                Some(p) => {
                    if self.point > 0 {
                        out.push(',');
                    }
                    out.push('[');
                    number(&mut out, p.t);
                    out.push(',');
                    if p.is_gap() {
                        out.push_str("null");
                    } else {
                        number(&mut out, p.v);
                    }
                    out.push(']');
                    self.point += 1;
                }
                None => {
                    out.push(']');
                    *points = Vec::new();
                    self.series += 1;
                    self.point = 0;
                    self.opened = false;
                }
            }
        }
        Some(out)
    }
}

/// A finite number as JSON: integers without a fraction, others in the shortest form
/// that reads back the same (`1.5e-7`).
fn number(out: &mut String, x: f64) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if !x.is_finite() {
        out.push_str("null");
    } else if x.fract() == 0.0 && x.abs() < EXACT {
        let _ = write!(out, "{}", x as i64);
    } else {
        let _ = write!(out, "{x:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(window: f64, resolution: f64) -> HistorySettings {
        HistorySettings { window, resolution }
    }

    fn history(window: f64, resolution: f64) -> History {
        let mut h = History::new(settings(window, resolution), None);
        h.rebuild(vec![
            (Arc::from("T:value"), Numeric::Number),
            (Arc::from("p:_fault"), Numeric::Bool),
        ]);
        h
    }

    /// The points of series `id` as (t, value or None for a gap).
    fn points(h: &History, id: usize) -> Vec<(f64, Option<f64>)> {
        h.series[id]
            .ring
            .iter()
            .map(|p| (p.t, (!p.is_gap()).then_some(p.v)))
            .collect()
    }

    fn error() -> Result<Value, SecopError> {
        Err(SecopError::read_failed("sensor broken"))
    }

    /// A time with a fraction, so that times stay floats in JSON.
    const NOW: f64 = 1_800_000_000.25;

    #[test]
    fn derived_points_are_bounded() {
        assert_eq!(settings(3600.0, 1.0).points_per_parameter(), 3600);
        assert_eq!(settings(2.0, 0.5).points_per_parameter(), 4);
        assert_eq!(settings(1.0, 0.3).points_per_parameter(), 4);
        assert_eq!(settings(3600.0, 0.036).points_per_parameter(), 100_000);
        assert_eq!(settings(1000.0, 0.01).points_per_parameter(), 100_000);
        assert_eq!(settings(604800.0, 0.01).points_per_parameter(), 60_480_000);
        assert_eq!(
            settings(604800.0, 0.01).max_points(),
            MAX_POINTS_PER_PARAMETER as usize
        );
        assert_eq!(
            settings(f64::INFINITY, 1.0).points_per_parameter(),
            u64::MAX
        );
    }

    #[test]
    fn one_point_per_resolution_slot_the_latest() {
        let mut h = history(3600.0, 1.0);
        for (i, v) in [1.0, 2.0, 3.0].iter().enumerate() {
            h.record(0, &Ok(json!(v)), NOW + 0.1 + 0.2 * i as f64, NOW + 1.0);
        }
        assert_eq!(points(&h, 0), vec![(NOW + 0.5, Some(3.0))]);
        h.record(0, &Ok(json!(4)), NOW + 1.2, NOW + 2.0);
        assert_eq!(
            points(&h, 0),
            vec![(NOW + 0.5, Some(3.0)), (NOW + 1.2, Some(4.0))]
        );
        assert_eq!(h.points(), 2);
        assert_eq!(h.bytes(), FIRST_CAPACITY * 16);
    }

    #[test]
    fn a_steady_value_is_its_first_and_last_point() {
        let mut h = history(3600.0, 1.0);
        for i in 0..100 {
            h.record(0, &Ok(json!(5)), NOW + f64::from(i), NOW + f64::from(i));
        }
        assert_eq!(
            points(&h, 0),
            vec![(NOW, Some(5.0)), (NOW + 99.0, Some(5.0))],
            "a flat run moves its last point on"
        );
        h.record(0, &Ok(json!(6)), NOW + 100.0, NOW + 100.0);
        h.record(0, &Ok(json!(6)), NOW + 101.0, NOW + 101.0);
        h.record(0, &Ok(json!(6)), NOW + 102.0, NOW + 102.0);
        assert_eq!(
            points(&h, 0),
            vec![
                (NOW, Some(5.0)),
                (NOW + 99.0, Some(5.0)),
                (NOW + 100.0, Some(6.0)),
                (NOW + 102.0, Some(6.0))
            ],
            "a step keeps both runs"
        );
        // another value in the slot of a run's end: a step, not a ramp from its start
        h.record(0, &Ok(json!(7)), NOW + 102.5, NOW + 102.5);
        assert_eq!(
            points(&h, 0)[3..],
            [(NOW + 102.0, Some(6.0)), (NOW + 102.5, Some(7.0))]
        );
    }

    #[test]
    fn a_run_longer_than_the_window_spans_the_window() {
        let mut h = history(10.0, 1.0);
        for i in 0..30 {
            h.record(0, &Ok(json!(5)), NOW + f64::from(i), NOW + f64::from(i));
        }
        assert_eq!(
            points(&h, 0),
            vec![(NOW + 19.0, Some(5.0)), (NOW + 29.0, Some(5.0))]
        );
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        // 2 s at 0.5 s: at most 4 points, however many updates.
        let mut h = history(2.0, 0.5);
        for i in 0..1000 {
            let t = NOW + 0.1 * i as f64;
            h.record(0, &Ok(json!(i)), t, t);
        }
        let p = points(&h, 0);
        assert!(p.len() <= 4, "{p:?}");
        assert_eq!(h.series[0].ring.buf.len(), 4);
        assert_eq!(h.bytes(), 4 * 16);
        assert_eq!(h.points(), p.len());
        let last = p.last().unwrap();
        assert_eq!(last.1, Some(999.0));
        assert!(p.iter().all(|(t, _)| *t >= last.0 - 2.0), "{p:?}");
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0), "{p:?}");
    }

    #[test]
    fn rings_grow_by_doubling_to_their_maximum() {
        let mut h = history(100.0, 1.0);
        for i in 0..17 {
            h.record(0, &Ok(json!(i)), NOW + i as f64, NOW + i as f64);
        }
        assert_eq!(h.series[0].ring.buf.len(), 32);
        for i in 17..300 {
            h.record(0, &Ok(json!(i)), NOW + i as f64, NOW + i as f64);
        }
        assert_eq!(h.series[0].ring.buf.len(), 100);
        assert_eq!(h.bytes(), 1600);
        let p = points(&h, 0);
        // The window keeps t >= newest - 100: 101 slots, of which the ring holds 100.
        assert_eq!(p.len(), 100);
        assert_eq!(p.first().unwrap().1, Some(200.0));
        assert_eq!(p.last().unwrap().1, Some(299.0));
        // Nothing was allocated for the other series.
        assert_eq!(h.series[1].ring.buf.len(), 0);
    }

    #[test]
    fn old_points_fall_out_of_the_window() {
        let mut h = history(10.0, 1.0);
        h.record(0, &Ok(json!(1)), NOW, NOW);
        h.record(0, &Ok(json!(2)), NOW + 5.0, NOW + 5.0);
        h.record(0, &Ok(json!(3)), NOW + 12.0, NOW + 12.0);
        assert_eq!(
            points(&h, 0),
            vec![(NOW + 5.0, Some(2.0)), (NOW + 12.0, Some(3.0))]
        );
        // Not returned once out of the window, even without a new point.
        let doc: Value =
            serde_json::from_str(&h.snapshot(NOW + 16.0, None, Some(0)).to_json()).unwrap();
        assert_eq!(doc["parameters"]["T:value"], json!([[NOW + 12.0, 3]]));
    }

    #[test]
    fn an_error_is_one_gap_marker_per_episode() {
        let mut h = history(3600.0, 1.0);
        // An error before any value: nothing (and no allocation).
        h.record(0, &error(), NOW, NOW);
        assert_eq!(h.bytes(), 0);
        h.record(0, &Ok(json!(1.5)), NOW + 0.1, NOW);
        h.record(0, &error(), NOW + 0.2, NOW);
        h.record(0, &error(), NOW + 0.3, NOW);
        h.record(0, &error(), NOW + 5.0, NOW + 5.0);
        // The first value after the gap is kept in the gap's slot too, and values
        // replace it as usual.
        h.record(0, &Ok(json!(2.5)), NOW + 5.1, NOW + 5.1);
        h.record(0, &Ok(json!(3.5)), NOW + 5.2, NOW + 5.2);
        assert_eq!(
            points(&h, 0),
            vec![
                (NOW + 0.1, Some(1.5)),
                (NOW + 0.2, None),
                (NOW + 5.2, Some(3.5))
            ]
        );
        let doc: Value =
            serde_json::from_str(&h.snapshot(NOW + 6.0, None, Some(0)).to_json()).unwrap();
        assert_eq!(
            doc["parameters"]["T:value"],
            json!([[NOW + 0.1, 1.5], [NOW + 0.2, null], [NOW + 5.2, 3.5]])
        );
    }

    #[test]
    fn a_gap_is_never_replaced() {
        let mut h = history(3600.0, 10.0);
        h.record(0, &Ok(json!(1)), NOW + 1.0, NOW);
        h.record(0, &error(), NOW + 2.0, NOW);
        h.record(0, &Ok(json!(2)), NOW + 3.0, NOW);
        h.record(0, &Ok(json!(3)), NOW + 4.0, NOW);
        h.record(0, &error(), NOW + 5.0, NOW);
        assert_eq!(
            points(&h, 0),
            vec![
                (NOW + 1.0, Some(1.0)),
                (NOW + 2.0, None),
                (NOW + 4.0, Some(3.0)),
                (NOW + 5.0, None)
            ]
        );
    }

    #[test]
    fn only_finite_numbers_are_stored() {
        let mut h = history(3600.0, 1.0);
        for v in [json!("text"), json!(null), json!([1, 2]), json!(true)] {
            h.record(0, &Ok(v), NOW, NOW);
        }
        assert_eq!(h.points(), 0);
        assert_eq!(Numeric::Number.number(&json!(1e308)), Some(1e308));
        assert_eq!(Numeric::Bool.number(&json!(1)), None);
        // bools as 0 and 1
        h.record(1, &Ok(json!(true)), NOW, NOW);
        h.record(1, &Ok(json!(false)), NOW + 1.0, NOW + 1.0);
        assert_eq!(
            points(&h, 1),
            vec![(NOW, Some(1.0)), (NOW + 1.0, Some(0.0))]
        );
        assert!(h
            .series
            .iter()
            .all(|s| s.ring.iter().all(|p| !p.v.is_infinite())));
        // An unknown id is ignored.
        h.record(7, &Ok(json!(1)), NOW, NOW);
    }

    #[test]
    fn timestamps_stay_in_order_and_plausible() {
        let mut h = history(3600.0, 1.0);
        h.record(0, &Ok(json!(1)), NOW + 5.0, NOW + 5.0);
        // Earlier than the last point: at the last point's time (same slot: replaced).
        h.record(0, &Ok(json!(2)), NOW + 3.0, NOW + 5.5);
        // Far in the future, NaN, or older than the window: the local clock.
        h.record(0, &Ok(json!(3)), NOW + 1e6, NOW + 7.0);
        h.record(0, &Ok(json!(4)), f64::NAN, NOW + 9.0);
        h.record(0, &Ok(json!(5)), NOW - 1e5, NOW + 11.0);
        assert_eq!(
            points(&h, 0),
            vec![
                (NOW + 5.0, Some(2.0)),
                (NOW + 7.0, Some(3.0)),
                (NOW + 9.0, Some(4.0)),
                (NOW + 11.0, Some(5.0))
            ]
        );
    }

    #[test]
    fn the_document_filters_by_time_and_parameter() {
        let mut h = history(3600.0, 1.0);
        h.record(0, &Ok(json!(1.25)), NOW, NOW);
        h.record(0, &Ok(json!(2)), NOW + 1.5, NOW + 1.5);
        h.record(1, &Ok(json!(true)), NOW, NOW);
        let doc: Value =
            serde_json::from_str(&h.snapshot(NOW + 2.0, None, None).to_json()).unwrap();
        assert_eq!(
            doc,
            json!({"window": 3600, "resolution": 1, "now": NOW + 2.0, "parameters": {
                "T:value": [[NOW, 1.25], [NOW + 1.5, 2]],
                "p:_fault": [[NOW, 1]],
            }})
        );
        let doc: Value =
            serde_json::from_str(&h.snapshot(NOW + 2.0, Some(NOW + 1.0), Some(0)).to_json())
                .unwrap();
        assert_eq!(doc["parameters"], json!({"T:value": [[NOW + 1.5, 2]]}));
        let doc: Value =
            serde_json::from_str(&h.snapshot(NOW + 2.0, Some(NOW + 9.0), None).to_json()).unwrap();
        assert_eq!(doc["parameters"], json!({"T:value": [], "p:_fault": []}));
        let mut s = String::new();
        for x in [0.5, 1e-7, -3.0, 1e300, 1_800_000_000.123_456] {
            s.clear();
            number(&mut s, x);
            assert_eq!(s.parse::<f64>().unwrap(), x, "{s}");
        }
    }

    #[test]
    fn the_document_comes_in_pieces_of_any_size() {
        let mut h = history(3600.0, 1.0);
        for i in 0..50 {
            h.record(0, &Ok(json!(i)), NOW + i as f64, NOW + i as f64);
        }
        h.record(0, &error(), NOW + 50.0, NOW + 50.0);
        let whole = h.snapshot(NOW + 51.0, None, None).to_json();
        for bytes in [0, 1, 7, 100, 1 << 20] {
            let pieces: Vec<String> = h
                .snapshot(NOW + 51.0, None, None)
                .into_chunks(bytes)
                .collect();
            assert_eq!(pieces.concat(), whole, "{bytes}");
            assert!(pieces.iter().all(|p| !p.is_empty()), "{bytes}");
            assert!(
                bytes < 100 || pieces.len() < 30,
                "{bytes}: {}",
                pieces.len()
            );
        }
        let doc: Value = serde_json::from_str(&whole).unwrap();
        assert_eq!(doc["parameters"]["T:value"].as_array().unwrap().len(), 51);
        assert_eq!(doc["parameters"]["p:_fault"], json!([]));
        assert_eq!(h.snapshot(NOW + 51.0, None, None).points(), 51);
    }

    #[test]
    fn a_rebuild_keeps_the_series_that_stay() {
        let mut h = history(3600.0, 1.0);
        h.record(0, &Ok(json!(1)), NOW, NOW);
        h.record(1, &Ok(json!(true)), NOW, NOW);
        h.rebuild(vec![
            (Arc::from("new:value"), Numeric::Number),
            (Arc::from("T:value"), Numeric::Number),
            // Same name, other kind: a fresh series.
            (Arc::from("p:_fault"), Numeric::Number),
        ]);
        assert_eq!(points(&h, 1), vec![(NOW, Some(1.0))]);
        assert!(points(&h, 0).is_empty() && points(&h, 2).is_empty());
        assert_eq!((h.points(), h.bytes()), (1, FIRST_CAPACITY * 16));
    }

    #[test]
    fn the_gauges_follow_the_totals() {
        let points = IntGauge::new("p", "p").unwrap();
        let bytes = IntGauge::new("b", "b").unwrap();
        let mut h = History::new(settings(3600.0, 1.0), Some((points.clone(), bytes.clone())));
        h.rebuild(vec![(Arc::from("T:value"), Numeric::Number)]);
        h.record(0, &Ok(json!(1)), NOW, NOW);
        h.record(0, &Ok(json!(2)), NOW + 1.0, NOW + 1.0);
        assert_eq!((points.get(), bytes.get()), (2, 256));
    }
}
