//! An in-memory [`Store`]: for unit tests and, later, the simulator.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Op, Store, WriteBatch};
use crate::error::Result;
use crate::topic::{Element, ProducerWindow, TopicId, TopicMeta};

#[derive(Default)]
struct State {
    topics: HashMap<TopicId, TopicMeta>,
    next_topic_id: u64,
    elements: BTreeMap<(TopicId, u64), Element>,
    producers: HashMap<(TopicId, String), ProducerWindow>,
}

/// Everything in a `BTreeMap` behind a mutex. "Synced" means "in the map".
#[derive(Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemStore {
    fn write(&self, batch: &WriteBatch) -> Result<()> {
        let mut s = self.state();
        for op in batch.ops() {
            match op {
                Op::PutTopic(meta) => {
                    s.topics.insert(meta.id, meta.clone());
                }
                Op::DeleteTopic(id) => {
                    s.topics.remove(id);
                    s.elements.retain(|(topic, _), _| topic != id);
                    s.producers.retain(|(topic, _), _| topic != id);
                }
                Op::PutNextTopicId(next) => s.next_topic_id = *next,
                Op::PutElement(topic, e) => {
                    s.elements.insert((*topic, e.seq), e.clone());
                }
                Op::PutProducer(topic, id, w) => {
                    s.producers.insert((*topic, id.clone()), w.clone());
                }
            }
        }
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicMeta>> {
        Ok(self.state().topics.values().cloned().collect())
    }

    fn next_topic_id(&self) -> Result<u64> {
        Ok(self.state().next_topic_id.max(1))
    }

    fn last_seq(&self, topic: TopicId) -> Result<u64> {
        Ok(self
            .state()
            .elements
            .range((topic, 0)..=(topic, u64::MAX))
            .next_back()
            .map_or(0, |((_, seq), _)| *seq))
    }

    fn get(&self, topic: TopicId, seq: u64) -> Result<Option<Element>> {
        Ok(self.state().elements.get(&(topic, seq)).cloned())
    }

    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>> {
        let s = self.state();
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, e) in s.elements.range((topic, from)..=(topic, u64::MAX)) {
            if out.len() >= limit || (!out.is_empty() && bytes + e.payload.len() > bytes_max) {
                break;
            }
            bytes += e.payload.len();
            out.push(e.clone());
        }
        Ok(out)
    }

    fn producer(&self, topic: TopicId, id: &str) -> Result<Option<ProducerWindow>> {
        Ok(self
            .state()
            .producers
            .get(&(topic, id.to_string()))
            .cloned())
    }

    fn trim(&self, topic: TopicId, below_seq: u64) -> Result<()> {
        let mut s = self.state();
        let doomed: Vec<_> = s
            .elements
            .range((topic, 0)..(topic, below_seq))
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            s.elements.remove(&k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::MemStore;

    #[test]
    fn conformance() {
        conformance::run_all(MemStore::new);
    }
}
