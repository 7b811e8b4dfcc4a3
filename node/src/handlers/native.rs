//! Native handlers: Rust functions compiled into the node, by name.
//!
//! A native handler decides; it does no I/O. Given an element it returns
//! the outputs to append ([`Output`]), and the runner appends them, each
//! under a key of its own, so that a re-run never writes one twice. Its
//! config (JSON) is checked when it is deployed ([`build`]).

use bytes::Bytes;
use serde_json::Value;

/// One append a handler asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub topic: String,
    pub payload: Bytes,
}

/// A native handler, built from its config.
///
/// A handler with state (a window, an alarm that is on) rebuilds it from
/// the elements before the first it handles: it asks for [`history`]
/// of them and [`observe`]s each. So a handler that restarts or moves to
/// another node decides as it would have, as long as its state depends on
/// no more than that many elements.
///
/// [`history`]: Native::history
/// [`observe`]: Native::observe
pub trait Native: Send {
    /// How many elements before the first it handles it needs to see.
    fn history(&self) -> usize {
        0
    }

    /// Sees an element it does not handle (rebuilding its state).
    fn observe(&mut self, _seq: u64, _time_ms: u64, _payload: &[u8]) {}

    /// The outputs of element `seq`, appended at `time_ms` (the leader's
    /// clock: the same on every replica, so a re-run decides the same), or
    /// why it failed.
    fn handle(&mut self, seq: u64, time_ms: u64, payload: &[u8]) -> Result<Vec<Output>, String>;
}

/// The most elements a stateful builtin looks back on.
pub const HISTORY_MAX: usize = 1024;

/// Every builtin, with what it does.
pub const BUILTINS: &[(&str, &str)] = &[
    (
        "forward",
        "copies each element to the topic `to`; with `field` and `equals`, only JSON elements \
         whose field has that value",
    ),
    (
        "window",
        "for each JSON element, appends to `to` the count, mean, min and max of the numeric \
         `field` over the last `count` elements (1 to 1024) that had it, or over those appended \
         in the last `seconds` (at most 1024 of them)",
    ),
    (
        "threshold",
        "appends an alert to `to` when the numeric JSON `field` rises above `above`, and \
         another when it falls below `below` (default: `above`) again: hysteresis",
    ),
    (
        "vibration",
        "NanoLambda's predictive-maintenance detector: keeps the vibration magnitude of the last \
         `history` readings (default 32; JSON `magnitude`, or `x`, `y`, `z` accelerations), and \
         appends an alert to `to` when their RMS rises above `limit` (a failing motor), and \
         another when it falls below 0.8 x `limit` again",
    ),
];

/// Builds builtin `name` from `config` (JSON text; empty means `{}`), or
/// says what is wrong with either.
pub fn build(name: &str, config: &str) -> Result<Box<dyn Native>, String> {
    let config: Value = if config.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(config).map_err(|e| format!("config is not JSON: {e}"))?
    };
    match name {
        "forward" => Ok(Box::new(Forward::new(&config)?)),
        "window" => Ok(Box::new(Window::new(&config)?)),
        "threshold" => Ok(Box::new(Threshold::new(&config)?)),
        "vibration" => Ok(Box::new(Vibration::new(&config)?)),
        other => Err(format!(
            "no native handler {other:?}; there are: {}",
            BUILTINS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The topic `to` of a config, checked.
fn target(config: &Value, builtin: &str) -> Result<String, String> {
    let to = config
        .get("to")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{builtin} needs a config with \"to\": the topic to append to"))?;
    woof_consensus::topic::TopicName::new(to).map_err(|e| e.to_string())?;
    Ok(to.to_string())
}

/// The string `key` of a config.
fn text(config: &Value, key: &str, builtin: &str) -> Result<String, String> {
    config
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{builtin} needs a config with {key:?} (a string)"))
}

/// The number `key` of a config.
fn number(config: &Value, key: &str, builtin: &str) -> Result<f64, String> {
    config
        .get(key)
        .and_then(Value::as_f64)
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("{builtin} needs a config with {key:?} (a number)"))
}

/// The numeric `field` of a JSON element, if it is one and has it.
fn reading(payload: &[u8], field: &str) -> Option<f64> {
    serde_json::from_slice::<Value>(payload)
        .ok()?
        .get(field)?
        .as_f64()
        .filter(|n| n.is_finite())
}

fn json_output(to: &str, value: Value) -> Output {
    Output {
        topic: to.to_string(),
        payload: Bytes::from(value.to_string()),
    }
}

/// `forward`: copies elements to another topic, optionally only those whose
/// JSON `field` equals `equals`.
struct Forward {
    to: String,
    filter: Option<(String, Value)>,
}

impl Forward {
    fn new(config: &Value) -> Result<Self, String> {
        let to = target(config, "forward")?;
        let filter = match (config.get("field"), config.get("equals")) {
            (None, None) => None,
            (Some(Value::String(f)), Some(v)) => Some((f.clone(), v.clone())),
            _ => return Err("forward filters with both \"field\" (a name) and \"equals\"".into()),
        };
        Ok(Self { to, filter })
    }
}

impl Native for Forward {
    fn handle(&mut self, _seq: u64, _time_ms: u64, payload: &[u8]) -> Result<Vec<Output>, String> {
        if let Some((field, value)) = &self.filter {
            // An element that is not JSON, or lacks the field, does not match.
            let matches = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get(field).cloned())
                .is_some_and(|v| &v == value);
            if !matches {
                return Ok(Vec::new());
            }
        }
        Ok(vec![Output {
            topic: self.to.clone(),
            payload: Bytes::copy_from_slice(payload),
        }])
    }
}

/// `window`: statistics of a numeric field over the last `count` readings,
/// or over those appended in the last `seconds`.
struct Window {
    to: String,
    field: String,
    span: Span,
    /// (append time, reading), oldest first; at most [`HISTORY_MAX`].
    values: std::collections::VecDeque<(u64, f64)>,
}

/// What a window covers.
#[derive(Debug, Clone, Copy)]
enum Span {
    Count(usize),
    /// The readings appended in the last this many ms (the newest one's
    /// append time included).
    Millis(u64),
}

/// The longest time window: a day.
const WINDOW_SECONDS_MAX: f64 = 86_400.0;

impl Window {
    fn new(config: &Value) -> Result<Self, String> {
        let span = match (config.get("count"), config.get("seconds")) {
            (Some(_), None) => {
                let count = number(config, "count", "window")?;
                if !(1.0..=HISTORY_MAX as f64).contains(&count) || count.fract() != 0.0 {
                    return Err(format!(
                        "window \"count\" is a whole number from 1 to {HISTORY_MAX}"
                    ));
                }
                Span::Count(count as usize)
            }
            (None, Some(_)) => {
                let seconds = number(config, "seconds", "window")?;
                if !(seconds > 0.0 && seconds <= WINDOW_SECONDS_MAX) {
                    return Err(format!(
                        "window \"seconds\" is above 0 and at most {WINDOW_SECONDS_MAX}"
                    ));
                }
                Span::Millis((seconds * 1000.0).ceil() as u64)
            }
            _ => {
                return Err(
                    "window needs a config with either \"count\" (readings) or \"seconds\"".into(),
                );
            }
        };
        Ok(Self {
            to: target(config, "window")?,
            field: text(config, "field", "window")?,
            span,
            values: Default::default(),
        })
    }

    fn push(&mut self, time_ms: u64, payload: &[u8]) -> bool {
        let Some(v) = reading(payload, &self.field) else {
            return false;
        };
        let keep = match self.span {
            Span::Count(n) => n,
            Span::Millis(_) => HISTORY_MAX,
        };
        if self.values.len() == keep {
            self.values.pop_front();
        }
        self.values.push_back((time_ms, v));
        if let Span::Millis(ms) = self.span {
            // Appended before the window opened; times come from the
            // leader's clock, which a leader change may set back a little:
            // a reading is never dropped for being newer than the last.
            let from = time_ms.saturating_sub(ms);
            while self.values.front().is_some_and(|&(t, _)| t < from) {
                self.values.pop_front();
            }
        }
        true
    }
}

impl Native for Window {
    fn history(&self) -> usize {
        match self.span {
            Span::Count(n) => n,
            Span::Millis(_) => HISTORY_MAX,
        }
    }

    fn observe(&mut self, _seq: u64, time_ms: u64, payload: &[u8]) {
        self.push(time_ms, payload);
    }

    fn handle(&mut self, seq: u64, time_ms: u64, payload: &[u8]) -> Result<Vec<Output>, String> {
        if !self.push(time_ms, payload) {
            return Ok(Vec::new());
        }
        let values = || self.values.iter().map(|&(_, v)| v);
        let n = self.values.len() as f64;
        let min = values().fold(f64::INFINITY, f64::min);
        let max = values().fold(f64::NEG_INFINITY, f64::max);
        let mean = values().sum::<f64>() / n;
        Ok(vec![json_output(
            &self.to,
            serde_json::json!({
                "seq": seq, "field": self.field, "count": self.values.len(),
                "mean": mean, "min": min, "max": max,
            }),
        )])
    }
}

/// `threshold`: an alert when a reading rises above `above`, and one when
/// it falls below `below` again.
struct Threshold {
    to: String,
    field: String,
    above: f64,
    below: f64,
    high: bool,
}

/// Readings `threshold` looks back on to know whether its alarm is on.
const THRESHOLD_HISTORY: usize = 256;

impl Threshold {
    fn new(config: &Value) -> Result<Self, String> {
        let above = number(config, "above", "threshold")?;
        let below = match config.get("below") {
            None => above,
            Some(_) => number(config, "below", "threshold")?,
        };
        if below > above {
            return Err("threshold \"below\" must not exceed \"above\"".into());
        }
        Ok(Self {
            to: target(config, "threshold")?,
            field: text(config, "field", "threshold")?,
            above,
            below,
            high: false,
        })
    }

    /// Moves the alarm with one element; `Some` when it changed.
    fn step(&mut self, payload: &[u8]) -> Option<(bool, f64)> {
        let v = reading(payload, &self.field)?;
        if !self.high && v > self.above {
            self.high = true;
            return Some((true, v));
        }
        if self.high && v < self.below {
            self.high = false;
            return Some((false, v));
        }
        None
    }
}

impl Native for Threshold {
    fn history(&self) -> usize {
        THRESHOLD_HISTORY
    }

    fn observe(&mut self, _seq: u64, _time_ms: u64, payload: &[u8]) {
        self.step(payload);
    }

    fn handle(&mut self, seq: u64, _time_ms: u64, payload: &[u8]) -> Result<Vec<Output>, String> {
        Ok(match self.step(payload) {
            None => Vec::new(),
            Some((high, value)) => vec![json_output(
                &self.to,
                serde_json::json!({
                    "seq": seq, "field": self.field, "value": value,
                    "alert": if high { "above" } else { "back below" },
                    "limit": if high { self.above } else { self.below },
                }),
            )],
        })
    }
}

/// `vibration`: the predictive-maintenance detector of the NanoLambda paper.
/// A motor's accelerometer is read 5 times a second; the detector keeps the
/// vibration magnitude of the last `history` readings and flags the motor
/// as failing when their root mean square passes `limit` (a bearing wearing
/// out shakes more, and steadily: one knock does not move the RMS of 32
/// readings much). It says so once, and once more when the RMS is back
/// below [`VIBRATION_CLEAR`] of the limit.
struct Vibration {
    to: String,
    history: usize,
    limit: f64,
    magnitudes: std::collections::VecDeque<f64>,
    failing: bool,
}

/// The RMS, as a share of the limit, below which a failing motor is well
/// again (hysteresis, so a motor near the limit does not flap).
const VIBRATION_CLEAR: f64 = 0.8;

impl Vibration {
    fn new(config: &Value) -> Result<Self, String> {
        let history = match config.get("history") {
            None => 32.0,
            Some(_) => number(config, "history", "vibration")?,
        };
        if !(1.0..=HISTORY_MAX as f64).contains(&history) || history.fract() != 0.0 {
            return Err(format!(
                "vibration \"history\" is a whole number from 1 to {HISTORY_MAX}"
            ));
        }
        let limit = number(config, "limit", "vibration")?;
        if limit <= 0.0 {
            return Err("vibration \"limit\" (an RMS magnitude) must be above 0".into());
        }
        Ok(Self {
            to: target(config, "vibration")?,
            history: history as usize,
            limit,
            magnitudes: Default::default(),
            failing: false,
        })
    }

    /// A reading's magnitude: its `magnitude`, or the length of its
    /// (`x`, `y`, `z`) acceleration.
    fn magnitude(payload: &[u8]) -> Option<f64> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        let m = match v.get("magnitude") {
            Some(m) => m.as_f64()?,
            None => {
                let axis = |k: &str| v.get(k).and_then(Value::as_f64);
                let (x, y, z) = (axis("x")?, axis("y")?, axis("z")?);
                (x * x + y * y + z * z).sqrt()
            }
        };
        m.is_finite().then_some(m.abs())
    }

    /// Takes one reading; `Some((failing, rms))` when the verdict changed.
    fn step(&mut self, payload: &[u8]) -> Option<(bool, f64)> {
        let m = Self::magnitude(payload)?;
        if self.magnitudes.len() == self.history {
            self.magnitudes.pop_front();
        }
        self.magnitudes.push_back(m);
        if self.magnitudes.len() < self.history {
            // Not enough readings yet to judge the motor.
            return None;
        }
        let rms = (self.magnitudes.iter().map(|m| m * m).sum::<f64>()
            / self.magnitudes.len() as f64)
            .sqrt();
        if !self.failing && rms > self.limit {
            self.failing = true;
            return Some((true, rms));
        }
        if self.failing && rms < self.limit * VIBRATION_CLEAR {
            self.failing = false;
            return Some((false, rms));
        }
        None
    }
}

impl Native for Vibration {
    fn history(&self) -> usize {
        // Its window, and as far back again to know whether it was failing.
        (self.history * 8).min(HISTORY_MAX)
    }

    fn observe(&mut self, _seq: u64, _time_ms: u64, payload: &[u8]) {
        self.step(payload);
    }

    fn handle(&mut self, seq: u64, _time_ms: u64, payload: &[u8]) -> Result<Vec<Output>, String> {
        Ok(match self.step(payload) {
            None => Vec::new(),
            Some((failing, rms)) => vec![json_output(
                &self.to,
                serde_json::json!({
                    "seq": seq,
                    "alert": if failing { "motor failing" } else { "motor well again" },
                    "rms": rms, "limit": self.limit, "readings": self.magnitudes.len(),
                }),
            )],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_copies_and_filters() {
        let mut all = build("forward", r#"{"to": "out"}"#).unwrap();
        assert_eq!(
            all.handle(1, 0, b"x").unwrap(),
            vec![Output {
                topic: "out".into(),
                payload: Bytes::from_static(b"x")
            }]
        );
        let mut hot = build(
            "forward",
            r#"{"to": "alerts", "field": "hot", "equals": true}"#,
        )
        .unwrap();
        assert_eq!(hot.handle(1, 0, br#"{"hot": true}"#).unwrap().len(), 1);
        assert!(hot.handle(2, 0, br#"{"hot": false}"#).unwrap().is_empty());
        assert!(hot.handle(3, 0, b"not json").unwrap().is_empty());
    }

    fn values(outputs: &[Output], key: &str) -> Vec<Value> {
        outputs
            .iter()
            .map(|o| serde_json::from_slice::<Value>(&o.payload).unwrap()[key].clone())
            .collect()
    }

    #[test]
    fn window_keeps_the_last_count_readings_and_rebuilds_them() {
        let config = r#"{"to": "stats", "field": "t", "count": 3}"#;
        let mut w = build("window", config).unwrap();
        let mut means = Vec::new();
        for (i, t) in [1.0, 2.0, 3.0, 10.0].iter().enumerate() {
            let out = w
                .handle(i as u64 + 1, 0, format!(r#"{{"t": {t}}}"#).as_bytes())
                .unwrap();
            means.extend(values(&out, "mean"));
        }
        assert_eq!(means, vec![1.0, 1.5, 2.0, 5.0]);
        assert!(
            w.handle(5, 0, b"{}").unwrap().is_empty(),
            "no reading, no output"
        );
        // A fresh instance that observed the same history decides the same.
        let mut again = build("window", config).unwrap();
        assert_eq!(again.history(), 3);
        for (i, t) in [2.0, 3.0, 10.0].iter().enumerate() {
            again.observe(i as u64 + 2, 0, format!(r#"{{"t": {t}}}"#).as_bytes());
        }
        let out = again.handle(6, 0, br#"{"t": 0}"#).unwrap();
        assert_eq!(values(&out, "mean"), vec![Value::from(13.0 / 3.0)]);
        assert_eq!(values(&out, "max"), vec![Value::from(10.0)]);
    }

    #[test]
    fn threshold_alerts_once_per_crossing_with_hysteresis() {
        let config = r#"{"to": "alerts", "field": "v", "above": 10, "below": 8}"#;
        let mut t = build("threshold", config).unwrap();
        let mut alerts = Vec::new();
        for (i, v) in [5, 11, 12, 9, 11, 7, 9, 12].iter().enumerate() {
            let out = t
                .handle(i as u64 + 1, 0, format!(r#"{{"v": {v}}}"#).as_bytes())
                .unwrap();
            alerts.extend(values(&out, "seq"));
        }
        // Up at #2, down only below 8 (#6), up again at #8.
        assert_eq!(alerts, vec![Value::from(2), Value::from(6), Value::from(8)]);
        // Rebuilt from history, the alarm is on, so 11 is no new alert.
        let mut again = build("threshold", config).unwrap();
        again.observe(1, 0, br#"{"v": 12}"#);
        assert!(again.handle(2, 0, br#"{"v": 11}"#).unwrap().is_empty());
        assert!(
            build(
                "threshold",
                r#"{"to": "a", "field": "v", "above": 1, "below": 2}"#
            )
            .is_err()
        );
    }

    #[test]
    fn a_time_window_keeps_what_was_appended_in_its_last_seconds() {
        let config = r#"{"to": "stats", "field": "t", "seconds": 2}"#;
        let mut w = build("window", config).unwrap();
        let mut counts = Vec::new();
        // Appended at 0 s, 1 s, 1.5 s, 3.2 s and 3.3 s.
        for (i, (at, t)) in [(0, 1.0), (1000, 2.0), (1500, 3.0), (3200, 4.0), (3300, 5.0)]
            .iter()
            .enumerate()
        {
            let out = w
                .handle(i as u64 + 1, *at, format!(r#"{{"t": {t}}}"#).as_bytes())
                .unwrap();
            counts.extend(values(&out, "count"));
        }
        // At 3.2 s only 1.5 s and later are within 2 s.
        let counts: Vec<u64> = counts.iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(counts, vec![1, 2, 3, 2, 3]);
        // Rebuilt from the same history, it decides the same.
        let mut again = build("window", config).unwrap();
        assert_eq!(again.history(), HISTORY_MAX);
        for (seq, at, t) in [(1, 0, 1.0), (2, 1000, 2.0), (3, 1500, 3.0), (4, 3200, 4.0)] {
            again.observe(seq, at, format!(r#"{{"t": {t}}}"#).as_bytes());
        }
        let out = again.handle(5, 3300, br#"{"t": 5}"#).unwrap();
        assert_eq!(values(&out, "mean"), vec![Value::from(4.0)]);
        assert!(build("window", r#"{"to": "s", "field": "t", "seconds": 0}"#).is_err());
        assert!(
            build(
                "window",
                r#"{"to": "s", "field": "t", "seconds": 1, "count": 3}"#
            )
            .err()
            .unwrap()
            .contains("either")
        );
    }

    #[test]
    fn vibration_flags_a_motor_whose_rms_passes_the_limit_once() {
        let config = r#"{"to": "alerts", "history": 4, "limit": 2.0}"#;
        let mut v = build("vibration", config).unwrap();
        let mut alerts = Vec::new();
        // Quiet, one knock (the RMS of 4 stays under 2), then a steady
        // shake, then quiet again.
        let readings = [
            1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 1.0, 1.0, 0.5, 0.5,
        ];
        for (i, m) in readings.iter().enumerate() {
            let out = v
                .handle(
                    i as u64 + 1,
                    0,
                    format!(r#"{{"magnitude": {m}}}"#).as_bytes(),
                )
                .unwrap();
            alerts.extend(values(&out, "seq").into_iter().zip(values(&out, "alert")));
        }
        assert_eq!(
            alerts,
            vec![
                (Value::from(9), Value::from("motor failing")),
                (Value::from(14), Value::from("motor well again")),
            ]
        );
        // x, y, z accelerations work too, and bad readings are skipped.
        let mut v = build("vibration", r#"{"to": "a", "history": 1, "limit": 4}"#).unwrap();
        assert!(v.handle(1, 0, b"not json").unwrap().is_empty());
        assert!(v.handle(2, 0, br#"{"x": 1}"#).unwrap().is_empty());
        let out = v.handle(3, 0, br#"{"x": 3, "y": 4, "z": 0}"#).unwrap();
        assert_eq!(values(&out, "rms"), vec![Value::from(5.0)]);
        // A fresh instance that observed the history knows the motor fails.
        let mut again = build("vibration", config).unwrap();
        for (i, m) in readings[..9].iter().enumerate() {
            again.observe(
                i as u64 + 1,
                0,
                format!(r#"{{"magnitude": {m}}}"#).as_bytes(),
            );
        }
        assert!(
            again
                .handle(10, 0, br#"{"magnitude": 3}"#)
                .unwrap()
                .is_empty()
        );
        assert!(
            build("vibration", r#"{"to": "a"}"#)
                .err()
                .unwrap()
                .contains("limit")
        );
        assert!(build("vibration", r#"{"to": "a", "limit": 1, "history": 0}"#).is_err());
    }

    #[test]
    fn bad_names_and_configs_are_refused_with_a_reason() {
        assert!(build("window", r#"{"to": "s", "field": "t", "count": 0}"#).is_err());
        assert!(build("window", r#"{"to": "s", "field": "t", "count": 1.5}"#).is_err());
        assert!(
            build("threshold", r#"{"to": "s", "field": "t"}"#)
                .err()
                .unwrap()
                .contains("above")
        );
        assert!(build("nope", "{}").err().unwrap().contains("forward"));
        assert!(build("forward", "{").err().unwrap().contains("JSON"));
        assert!(build("forward", "{}").err().unwrap().contains("\"to\""));
        assert!(build("forward", r#"{"to": "Bad Name"}"#).is_err());
        assert!(build("forward", r#"{"to": "o", "field": "x"}"#).is_err());
    }
}
