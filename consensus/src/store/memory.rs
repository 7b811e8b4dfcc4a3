//! An in-memory [`Store`]: for unit tests and, later, the simulator.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use super::raft_log::{GroupId, READ_ENTRIES_MAX, RaftLogStore};
use super::{Fixed, Op, SnapshotFile, Store, WriteBatch};
use crate::error::Result;
use crate::topic::{Element, ProducerWindow, TopicId, TopicMeta};

#[derive(Default, Clone)]
struct State {
    topics: BTreeMap<TopicId, TopicMeta>,
    next_topic_id: u64,
    elements: BTreeMap<(TopicId, u64), Element>,
    producers: BTreeMap<(TopicId, String), ProducerWindow>,
    /// The effect index: (topic, source hash, cause seq, seq).
    effects: std::collections::BTreeSet<(TopicId, u64, u64, u64)>,
    raft_log: BTreeMap<(GroupId, u64), Vec<u8>>,
    raft_values: BTreeMap<(GroupId, String), Vec<u8>>,
    /// Kept snapshots; shared, as they never change once kept.
    snapshots: BTreeMap<GroupId, Arc<Vec<u8>>>,
}

/// Everything in `BTreeMap`s (so that every listing comes in one order)
/// behind a mutex. "Synced" means "in the map".
#[derive(Default)]
pub struct MemStore {
    state: Mutex<State>,
}

/// A copy of everything the store holds now (the simulator keeps a disk's
/// durable state apart from what its process sees).
impl Clone for MemStore {
    fn clone(&self) -> Self {
        Self {
            state: Mutex::new(self.state().clone()),
        }
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the topics' data alone (no Raft logs, values or
    /// snapshots): what [`Store::read_fixed`] reads.
    pub fn topics_copy(&self) -> TopicsCopy {
        let s = self.state();
        TopicsCopy(MemStore {
            state: Mutex::new(State {
                topics: s.topics.clone(),
                elements: s.elements.clone(),
                producers: s.producers.clone(),
                ..State::default()
            }),
        })
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
                    s.effects.retain(|(topic, ..)| topic != id);
                }
                Op::PutNextTopicId(next) => s.next_topic_id = *next,
                Op::PutElement(topic, e) => {
                    if let Some(c) = &e.cause {
                        let source = crate::codec::meta::source_hash(&c.topic, &c.handler);
                        s.effects.insert((*topic, source, c.seq, e.seq));
                    }
                    s.elements.insert((*topic, e.seq), e.clone());
                }
                Op::PutProducer(topic, id, w) => {
                    s.producers.insert((*topic, id.clone()), w.clone());
                }
                Op::PutRaftValue(group, name, value) => {
                    s.raft_values.insert((*group, name.clone()), value.clone());
                }
            }
        }
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicMeta>> {
        Ok(self.state().topics.values().cloned().collect())
    }

    fn topic(&self, id: TopicId) -> Result<Option<TopicMeta>> {
        Ok(self.state().topics.get(&id).cloned())
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

    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>> {
        let mut out: Vec<_> = self
            .state()
            .producers
            .iter()
            .filter(|((t, _), _)| *t == topic)
            .map(|((_, id), w)| (id.clone(), w.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.truncate(limit);
        Ok(out)
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
        s.effects
            .retain(|&(t, _, _, seq)| t != topic || seq >= below_seq);
        Ok(())
    }

    fn effects(
        &self,
        topic: TopicId,
        cause_topic: &str,
        handler: &str,
        cause_seq: u64,
        limit: usize,
    ) -> Result<Vec<Element>> {
        let source = crate::codec::meta::source_hash(cause_topic, handler);
        let s = self.state();
        Ok(s.effects
            .range((topic, source, cause_seq, 0)..=(topic, source, cause_seq, u64::MAX))
            .filter_map(|&(_, _, _, seq)| s.elements.get(&(topic, seq)))
            .filter(|e| super::caused_by(e, cause_topic, handler, cause_seq))
            .take(limit)
            .cloned()
            .collect())
    }

    /// A copy: the in-memory store is for tests and the simulator, whose
    /// topics are small.
    fn read_fixed(&self, f: &mut dyn FnMut(&dyn Fixed) -> Result<()>) -> Result<()> {
        f(&self.topics_copy())
    }
}

impl RaftLogStore for MemStore {
    fn append_log(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut s = self.state();
        for (index, bytes) in entries {
            s.raft_log.insert((group, *index), bytes.clone());
        }
        Ok(())
    }

    fn append_log_unsynced(&self, group: GroupId, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.append_log(group, entries)
    }

    fn read_log(
        &self,
        group: GroupId,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .state()
            .raft_log
            .range((group, from)..(group, to))
            .take(limit.min(READ_ENTRIES_MAX))
            .map(|((_, i), b)| (*i, b.clone()))
            .collect())
    }

    fn last_log(&self, group: GroupId) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .state()
            .raft_log
            .range((group, 0)..=(group, u64::MAX))
            .next_back()
            .map(|((_, i), b)| (*i, b.clone())))
    }

    fn truncate_log(&self, group: GroupId, from: u64) -> Result<()> {
        self.state()
            .raft_log
            .retain(|(g, i), _| *g != group || *i < from);
        Ok(())
    }

    fn purge_log(&self, group: GroupId, upto: u64) -> Result<()> {
        self.state()
            .raft_log
            .retain(|(g, i), _| *g != group || *i > upto);
        Ok(())
    }

    fn put_value(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()> {
        self.state()
            .raft_values
            .insert((group, name.to_string()), value.to_vec());
        Ok(())
    }

    fn put_value_unsynced(&self, group: GroupId, name: &str, value: &[u8]) -> Result<()> {
        self.put_value(group, name, value)
    }

    fn value(&self, group: GroupId, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .state()
            .raft_values
            .get(&(group, name.to_string()))
            .cloned())
    }

    fn delete_group(&self, group: GroupId) -> Result<()> {
        let mut s = self.state();
        s.raft_log.retain(|(g, _), _| *g != group);
        s.raft_values.retain(|(g, _), _| *g != group);
        s.snapshots.remove(&group);
        Ok(())
    }

    fn snapshot_create(&self) -> Result<SnapshotFile> {
        Ok(SnapshotFile::memory())
    }

    fn snapshot_keep(&self, group: GroupId, file: SnapshotFile) -> Result<()> {
        let bytes = file.into_bytes()?;
        self.state().snapshots.insert(group, Arc::new(bytes));
        Ok(())
    }

    fn snapshot_open(&self, group: GroupId) -> Result<Option<SnapshotFile>> {
        Ok(self
            .state()
            .snapshots
            .get(&group)
            .map(|b| SnapshotFile::Memory(Cursor::new(b.to_vec()))))
    }

    fn groups(&self) -> Result<Vec<GroupId>> {
        let groups: std::collections::BTreeSet<GroupId> =
            self.state().raft_values.keys().map(|(g, _)| *g).collect();
        Ok(groups.into_iter().collect())
    }
}

/// A [`MemStore`]'s topics as they were when copied.
pub struct TopicsCopy(MemStore);

impl Fixed for TopicsCopy {
    fn scan(
        &self,
        topic: TopicId,
        from: u64,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<Element>> {
        self.0.scan(topic, from, limit, bytes_max)
    }

    fn producers(&self, topic: TopicId, limit: usize) -> Result<Vec<(String, ProducerWindow)>> {
        self.0.producers(topic, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::MemStore;

    #[test]
    fn conformance() {
        conformance::run_all(MemStore::new);
        conformance::run_raft_log(MemStore::new);
    }
}
