//! Offloaded calls: a device asks its gateway to run a handler on a payload
//! and gets the result back (NanoLambda's remote side; the device's choice
//! of side is `woof_mcu_bridge::offload`).
//!
//! The handler is found by name among the handlers bound to the topics the
//! device may append to (its registered topics without wildcards, in
//! registration order; the first that has one of that name). Its code runs
//! here, on the gateway node, on the payload as if it were element 0, and
//! nothing is appended: what it asked to append comes back to the device
//! instead (the payload of its first output, or nothing if it asked for
//! none). A call is not a write, so it has no effectively-once promise: a
//! device that retransmits gets the first call's answer from its session,
//! and one that gives up may call again.
//!
//! A native handler is built anew for each call, so a call never sees
//! another's state. A Python handler's worker is kept warm between calls
//! (one per handler and version; its module globals are a cache), with the
//! handler's own time budget and memory cap; calls to one handler run one
//! at a time. Bounds: [`OFFLOADS_MAX`] calls at once in a gateway,
//! [`ENGINES_MAX`] warm workers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;
use woof_consensus::topic::handlers::Code;
use woof_mcu_bridge::wire;

use super::clip;
use super::registry::Device;
use crate::api::ClusterTopics;
use crate::handlers::code::Engine;

/// Offloaded calls one gateway runs at once; more are refused as busy.
pub const OFFLOADS_MAX: usize = 64;
/// Python handlers kept warm for offloaded calls.
pub const ENGINES_MAX: usize = 16;
/// The longest result a device gets: what fits in a result frame (a
/// 5-byte header, a 4-byte acked sequence number, the status, the tag).
pub const RESULT_LEN_MAX: usize =
    wire::FRAME_LEN_MAX - wire::HEADER_LEN_MAX - 4 - 1 - wire::TAG_LEN;

/// What a call returns: a status ([`wire::code`], 0 = done) and a payload
/// (the result, or the error's text).
pub type Outcome = (u8, Vec<u8>);

/// The Python handlers kept warm, by (topic, handler).
#[derive(Clone, Default)]
pub struct Engines {
    warm: Arc<std::sync::Mutex<HashMap<(String, String), Warm>>>,
}

struct Warm {
    version: u64,
    engine: Arc<Mutex<Engine>>,
    used: std::time::Instant,
}

impl Engines {
    /// Runs handler `name` for `device` on `payload`.
    pub async fn call(
        &self,
        api: &ClusterTopics,
        device: &Device,
        name: &str,
        payload: Vec<u8>,
    ) -> Outcome {
        let (topic, handler) = match find(api, device, name).await {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let engine = match &handler.spec.code {
            Code::Native(_) => match self.build(api, &topic, &handler) {
                Ok(e) => Arc::new(Mutex::new(e)),
                Err(refused) => return refused,
            },
            Code::Python(_) => match self.warm(api, &topic, &handler) {
                Ok(e) => e,
                Err(refused) => return refused,
            },
        };
        let payload = Bytes::from(payload);
        let ran = engine
            .lock()
            .await
            .run(0, api.now_ms(), &payload, api)
            .await;
        match ran.outputs {
            Ok(outputs) => {
                let result = outputs.into_iter().next().map(|o| o.payload.to_vec());
                let result = result.unwrap_or_default();
                if result.len() > RESULT_LEN_MAX {
                    return failed(format!(
                        "result of {} bytes; at most {RESULT_LEN_MAX} fit",
                        result.len()
                    ));
                }
                (0, result)
            }
            Err(e) => failed(e),
        }
    }

    fn build(
        &self,
        api: &ClusterTopics,
        topic: &str,
        handler: &woof_consensus::topic::handlers::Handler,
    ) -> Result<Engine, Outcome> {
        Engine::build(&handler.spec, topic, &api.me(), api.python())
            .map_err(|e| (wire::code::REFUSED, clip(e.to_string()).into_bytes()))
    }

    /// The warm engine of a Python handler, started for this version.
    fn warm(
        &self,
        api: &ClusterTopics,
        topic: &str,
        handler: &woof_consensus::topic::handlers::Handler,
    ) -> Result<Arc<Mutex<Engine>>, Outcome> {
        let key = (topic.to_string(), handler.spec.name.clone());
        let mut warm = self.warm.lock().expect("engines lock");
        if let Some(w) = warm.get_mut(&key)
            && w.version == handler.version
        {
            w.used = std::time::Instant::now();
            return Ok(w.engine.clone());
        }
        if warm.len() >= ENGINES_MAX && !warm.contains_key(&key) {
            // The least recently used goes (its worker stops when its last
            // call ends).
            if let Some(oldest) = warm
                .iter()
                .min_by_key(|(_, w)| w.used)
                .map(|(k, _)| k.clone())
            {
                warm.remove(&oldest);
            }
        }
        let engine = Arc::new(Mutex::new(self.build(api, topic, handler)?));
        warm.insert(
            key,
            Warm {
                version: handler.version,
                engine: engine.clone(),
                used: std::time::Instant::now(),
            },
        );
        Ok(engine)
    }
}

/// The first of `device`'s append topics with a handler `name`.
async fn find(
    api: &ClusterTopics,
    device: &Device,
    name: &str,
) -> Result<(String, woof_consensus::topic::handlers::Handler), Outcome> {
    for topic in device.topics.iter().filter_map(|p| p.literal()) {
        match api.handlers(topic).await {
            Ok((handlers, _)) => {
                if let Some(h) = handlers.get(name) {
                    return Ok((topic.to_string(), h.clone()));
                }
            }
            Err(crate::error::Error::Log(woof_consensus::Error::TopicNotFound(_))) => {}
            Err(e) => {
                let text = clip(format!("reading {topic}'s handlers: {e}"));
                return Err((wire::code::BUSY, text.into_bytes()));
            }
        }
    }
    Err((
        wire::code::NOT_FOUND,
        clip(format!("no handler {name:?} on this device's topics")).into_bytes(),
    ))
}

fn failed(text: String) -> Outcome {
    (wire::code::HANDLER_FAILED, clip(text).into_bytes())
}
