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
pub trait Native: Send {
    /// The outputs of element `seq`, or why it failed.
    fn handle(&mut self, seq: u64, payload: &[u8]) -> Result<Vec<Output>, String>;
}

/// Every builtin, with what it does.
pub const BUILTINS: &[(&str, &str)] = &[(
    "forward",
    "copies each element to the topic `to`; with `field` and `equals`, only JSON elements \
     whose field has that value",
)];

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

/// `forward`: copies elements to another topic, optionally only those whose
/// JSON `field` equals `equals`.
struct Forward {
    to: String,
    filter: Option<(String, Value)>,
}

impl Forward {
    fn new(config: &Value) -> Result<Self, String> {
        let to = config
            .get("to")
            .and_then(Value::as_str)
            .ok_or("forward needs a config with \"to\": the topic to copy to")?;
        woof_consensus::topic::TopicName::new(to).map_err(|e| e.to_string())?;
        let filter = match (config.get("field"), config.get("equals")) {
            (None, None) => None,
            (Some(Value::String(f)), Some(v)) => Some((f.clone(), v.clone())),
            _ => return Err("forward filters with both \"field\" (a name) and \"equals\"".into()),
        };
        Ok(Self {
            to: to.to_string(),
            filter,
        })
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

    #[test]
    fn bad_names_and_configs_are_refused_with_a_reason() {
        assert!(build("nope", "{}").err().unwrap().contains("forward"));
        assert!(build("forward", "{").err().unwrap().contains("JSON"));
        assert!(build("forward", "{}").err().unwrap().contains("\"to\""));
        assert!(build("forward", r#"{"to": "Bad Name"}"#).is_err());
        assert!(build("forward", r#"{"to": "o", "field": "x"}"#).is_err());
    }
}
