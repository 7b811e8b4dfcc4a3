//! Causal traces: from an element up the chain of what made it, and down
//! the tree of what it made.
//!
//! Each element a handler appends keeps its [`Cause`] (the element it ran
//! on, the handler, the node, the time), and each replica indexes it by
//! cause (`Store::effects`). Upstream is a walk of causes; downstream asks,
//! for each handler of a topic, each topic that handler's record says it
//! appends to, for the elements it made from the element at hand.

use std::collections::{HashMap, VecDeque};

use woof_consensus::topic::handlers::Handlers;
use woof_consensus::topic::{Cause, Element};

use super::ClusterTopics;
use crate::error::{Error, Result};

/// The longest chain of causes a trace follows upstream.
pub const UPSTREAM_MAX: usize = 64;
/// The most levels of effects a trace follows downstream.
pub const DEPTH_MAX: u32 = 16;
/// The most effects a trace lists; past that it says it stopped.
pub const EFFECTS_MAX: usize = 1000;
/// The most effects one lookup returns (a handler's outputs per element).
const LOOKUP_MAX: u32 = 1024;
/// The most bytes of each element's payload a trace shows.
pub const PREVIEW_BYTES: usize = 256;

/// One element of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub topic: String,
    pub seq: u64,
    pub append_time_ms: u64,
    /// What made it (`None`: a client appended it).
    pub cause: Option<Cause>,
    /// Its payload's first [`PREVIEW_BYTES`] bytes.
    pub preview: bytes::Bytes,
}

impl Step {
    fn of(topic: &str, e: &Element) -> Self {
        Self {
            topic: topic.to_string(),
            seq: e.seq,
            append_time_ms: e.append_time_ms,
            cause: e.cause.clone(),
            preview: e.payload.slice(..e.payload.len().min(PREVIEW_BYTES)),
        }
    }
}

/// An element downstream: what it is, and the index in
/// [`Trace::downstream`] of the element it came from (`None`: the traced
/// element itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub step: Step,
    pub parent: Option<usize>,
    pub depth: u32,
}

/// A trace of one element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The element traced.
    pub element: Step,
    /// Its causes, nearest first: the element its handler ran on, then
    /// that element's cause, and so on to one a client appended.
    pub upstream: Vec<Step>,
    /// Set when the chain upstream ends at an element no longer held
    /// (trimmed, or its topic deleted): why.
    pub upstream_gone: Option<String>,
    /// What it caused, breadth first; each names its parent.
    pub downstream: Vec<Effect>,
    /// Set when the downstream tree was cut at [`EFFECTS_MAX`] effects or
    /// [`DEPTH_MAX`] levels.
    pub truncated: bool,
}

impl ClusterTopics {
    /// Traces element `seq` of `topic`: its causes and its effects.
    pub async fn trace(&self, topic: &str, seq: u64) -> Result<Trace> {
        let element = self.get(topic, seq).await?;
        let mut upstream = Vec::new();
        let mut upstream_gone = None;
        let mut cause = element.cause.clone();
        while let Some(c) = cause {
            if upstream.len() >= UPSTREAM_MAX {
                upstream_gone = Some(format!("stopped after {UPSTREAM_MAX} causes"));
                break;
            }
            match self.get(&c.topic, c.seq).await {
                Ok(e) => {
                    cause = e.cause.clone();
                    upstream.push(Step::of(&c.topic, &e));
                }
                Err(Error::Log(
                    e @ (woof_consensus::Error::OutOfRange { .. }
                    | woof_consensus::Error::TopicNotFound(_)),
                )) => {
                    upstream_gone = Some(format!("element {} of {}: {e}", c.seq, c.topic));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let (downstream, truncated) = self.effects_of(topic, seq).await?;
        Ok(Trace {
            element: Step::of(topic, &element),
            upstream,
            upstream_gone,
            downstream,
            truncated,
        })
    }

    /// The tree of effects of element `seq` of `topic`, breadth first.
    async fn effects_of(&self, topic: &str, seq: u64) -> Result<(Vec<Effect>, bool)> {
        let mut out: Vec<Effect> = Vec::new();
        let mut handlers: HashMap<String, Handlers> = HashMap::new();
        let mut queue = VecDeque::from([(topic.to_string(), seq, None, 0u32)]);
        let mut truncated = false;
        while let Some((topic, seq, parent, depth)) = queue.pop_front() {
            if depth >= DEPTH_MAX {
                truncated = true;
                continue;
            }
            if !handlers.contains_key(&topic) {
                let bound = match self.handlers(&topic).await {
                    Ok((h, _)) => h,
                    // Deleted since: it caused nothing more we can find.
                    Err(Error::Log(woof_consensus::Error::TopicNotFound(_))) => Handlers::default(),
                    Err(e) => return Err(e),
                };
                handlers.insert(topic.clone(), bound);
            }
            let lookups: Vec<(String, String)> = handlers[&topic]
                .iter()
                .flat_map(|h| h.outputs.iter().map(|o| (h.spec.name.clone(), o.clone())))
                .collect();
            for (handler, target) in lookups {
                let found = match self
                    .effects(&target, &topic, &handler, seq, LOOKUP_MAX)
                    .await
                {
                    Ok(found) => found,
                    Err(Error::Log(woof_consensus::Error::TopicNotFound(_))) => continue,
                    Err(e) => return Err(e),
                };
                for e in found {
                    if out.len() >= EFFECTS_MAX {
                        return Ok((out, true));
                    }
                    out.push(Effect {
                        step: Step::of(&target, &e),
                        parent,
                        depth: depth + 1,
                    });
                    queue.push_back((target.clone(), e.seq, Some(out.len() - 1), depth + 1));
                }
            }
        }
        Ok((out, truncated))
    }
}
