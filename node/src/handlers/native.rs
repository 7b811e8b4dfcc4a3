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
    fn observe(&mut self, _seq: u64, _payload: &[u8]) {}

    /// The outputs of element `seq`, or why it failed.
    fn handle(&mut self, seq: u64, payload: &[u8]) -> Result<Vec<Output>, String>;
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
         `field` over the last `count` elements (1 to 1024) that had it",
    ),
    (
        "threshold",
        "appends an alert to `to` when the numeric JSON `field` rises above `above`, and \
         another when it falls below `below` (default: `above`) again: hysteresis",
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
    fn handle(&mut self, _seq: u64, payload: &[u8]) -> Result<Vec<Output>, String> {
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

/// `window`: statistics of a numeric field over the last `count` readings.
struct Window {
    to: String,
    field: String,
    count: usize,
    values: std::collections::VecDeque<f64>,
}

impl Window {
    fn new(config: &Value) -> Result<Self, String> {
        let count = number(config, "count", "window")?;
        if !(1.0..=HISTORY_MAX as f64).contains(&count) || count.fract() != 0.0 {
            return Err(format!(
                "window \"count\" is a whole number from 1 to {HISTORY_MAX}"
            ));
        }
        Ok(Self {
            to: target(config, "window")?,
            field: text(config, "field", "window")?,
            count: count as usize,
            values: Default::default(),
        })
    }

    fn push(&mut self, payload: &[u8]) -> bool {
        let Some(v) = reading(payload, &self.field) else {
            return false;
        };
        if self.values.len() == self.count {
            self.values.pop_front();
        }
        self.values.push_back(v);
        true
    }
}

impl Native for Window {
    fn history(&self) -> usize {
        self.count
    }

    fn observe(&mut self, _seq: u64, payload: &[u8]) {
        self.push(payload);
    }

    fn handle(&mut self, seq: u64, payload: &[u8]) -> Result<Vec<Output>, String> {
        if !self.push(payload) {
            return Ok(Vec::new());
        }
        let n = self.values.len() as f64;
        let min = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let mean = self.values.iter().sum::<f64>() / n;
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

    fn observe(&mut self, _seq: u64, payload: &[u8]) {
        self.step(payload);
    }

    fn handle(&mut self, seq: u64, payload: &[u8]) -> Result<Vec<Output>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_copies_and_filters() {
        let mut all = build("forward", r#"{"to": "out"}"#).unwrap();
        assert_eq!(
            all.handle(1, b"x").unwrap(),
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
        assert_eq!(hot.handle(1, br#"{"hot": true}"#).unwrap().len(), 1);
        assert!(hot.handle(2, br#"{"hot": false}"#).unwrap().is_empty());
        assert!(hot.handle(3, b"not json").unwrap().is_empty());
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
                .handle(i as u64 + 1, format!(r#"{{"t": {t}}}"#).as_bytes())
                .unwrap();
            means.extend(values(&out, "mean"));
        }
        assert_eq!(means, vec![1.0, 1.5, 2.0, 5.0]);
        assert!(
            w.handle(5, b"{}").unwrap().is_empty(),
            "no reading, no output"
        );
        // A fresh instance that observed the same history decides the same.
        let mut again = build("window", config).unwrap();
        assert_eq!(again.history(), 3);
        for (i, t) in [2.0, 3.0, 10.0].iter().enumerate() {
            again.observe(i as u64 + 2, format!(r#"{{"t": {t}}}"#).as_bytes());
        }
        let out = again.handle(6, br#"{"t": 0}"#).unwrap();
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
                .handle(i as u64 + 1, format!(r#"{{"v": {v}}}"#).as_bytes())
                .unwrap();
            alerts.extend(values(&out, "seq"));
        }
        // Up at #2, down only below 8 (#6), up again at #8.
        assert_eq!(alerts, vec![Value::from(2), Value::from(6), Value::from(8)]);
        // Rebuilt from history, the alarm is on, so 11 is no new alert.
        let mut again = build("threshold", config).unwrap();
        again.observe(1, br#"{"v": 12}"#);
        assert!(again.handle(2, br#"{"v": 11}"#).unwrap().is_empty());
        assert!(
            build(
                "threshold",
                r#"{"to": "a", "field": "v", "above": 1, "below": 2}"#
            )
            .is_err()
        );
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
