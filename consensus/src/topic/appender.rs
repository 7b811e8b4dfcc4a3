//! The one appender both writers of a topic use: the standalone writer
//! ([`crate::local`]) and a group's state machine ([`crate::raft`]).
//!
//! An append is decided by the topic's [`Machine`]; what it needs beyond
//! the machine is the window of the producer that sent it. [`Windows`]
//! holds those windows as of every append decided so far: read from the
//! store the first time a producer is seen, then kept up to date by each
//! decision, so that a group of appends holding several from one producer
//! (or a retry of one in the same group) is judged against the appends
//! before it, which are not yet written.

use std::collections::HashMap;

use bytes::Bytes;

use super::{AppendOutcome, Machine, Producer, ProducerWindow, Tags};
use crate::error::Result;
use crate::store::{Store, WriteBatch};

/// Producer windows a writer keeps before it drops them all and reads them
/// again as producers come back.
pub const WINDOWS_CACHED_MAX: usize = 4096;

/// The producer windows of one topic, as of every append decided so far.
///
/// Valid only as long as every batch the decisions filled is written: a
/// writer whose write failed must [`clear`](Self::clear) them.
#[derive(Debug, Default)]
pub struct Windows {
    cached: HashMap<String, ProducerWindow>,
}

impl Windows {
    /// Forgets every window (after a failed write, a snapshot installed or
    /// the topic deleted): each is read again from the store when needed.
    pub fn clear(&mut self) {
        self.cached.clear();
    }

    /// Keeps the cache bounded. Called between groups, never inside one:
    /// a window decided in a group that is not yet written is only here.
    pub fn bound(&mut self) {
        if self.cached.len() > WINDOWS_CACHED_MAX {
            self.cached.clear();
        }
    }

    fn get<'a>(
        &'a mut self,
        store: &dyn Store,
        machine: &Machine,
        id: &str,
    ) -> Result<&'a mut ProducerWindow> {
        if !self.cached.contains_key(id) {
            let stored = store.producer(machine.meta().id, id)?.unwrap_or_default();
            self.cached.insert(id.to_string(), stored);
        }
        Ok(self.cached.get_mut(id).expect("just inserted"))
    }
}

/// Decides one append into `batch`: checks its producer's window (read from
/// `store` on first use), numbers its elements, and records it in the
/// window. A retry of an append already decided writes nothing and answers
/// as the first did. Each element keeps `tags`.
#[allow(clippy::too_many_arguments)]
pub fn append(
    store: &dyn Store,
    machine: &mut Machine,
    windows: &mut Windows,
    batch: &mut WriteBatch,
    payloads: Vec<Bytes>,
    producer: Option<&Producer>,
    now_ms: u64,
    tags: Tags<'_>,
) -> Result<AppendOutcome> {
    match producer {
        None => machine.append_tagged(batch, payloads, None, now_ms, tags),
        Some(p) => {
            let window = windows.get(store, machine, &p.id)?;
            machine.append_tagged(batch, payloads, Some((p, window)), now_ms, tags)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::topic::{TopicConfig, TopicId, TopicMeta, TopicName};

    fn machine() -> Machine {
        Machine::new(
            TopicMeta {
                id: TopicId(3),
                name: TopicName::new("t").unwrap(),
                config: TopicConfig {
                    element_max_bytes: 64,
                    history: 100,
                },
                created_at_ms: 0,
                placement: Default::default(),
            },
            0,
        )
    }

    fn one(
        store: &MemStore,
        m: &mut Machine,
        w: &mut Windows,
        b: &mut WriteBatch,
        seq: u64,
    ) -> AppendOutcome {
        let p = Producer::new("p".into(), seq).unwrap();
        append(
            store,
            m,
            w,
            b,
            vec![Bytes::from_static(b"x")],
            Some(&p),
            0,
            Tags::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_retry_inside_one_unwritten_group_is_found() {
        let store = MemStore::new();
        let (mut m, mut w, mut b) = (machine(), Windows::default(), WriteBatch::default());
        let first = one(&store, &mut m, &mut w, &mut b, 1);
        let retry = one(&store, &mut m, &mut w, &mut b, 1);
        assert!(!first.duplicate);
        assert!(retry.duplicate);
        assert_eq!(retry.first_seq, first.first_seq);
        assert_eq!(m.last_seq(), 1);
    }

    #[test]
    fn windows_come_back_from_the_store_once_written() {
        let store = MemStore::new();
        let (mut m, mut w, mut b) = (machine(), Windows::default(), WriteBatch::default());
        one(&store, &mut m, &mut w, &mut b, 1);
        store.write(&b).unwrap();
        // A writer that lost its cache (or another node's fresh one) still
        // finds the retry, in the store.
        w.clear();
        let retry = one(&store, &mut m, &mut w, &mut WriteBatch::default(), 1);
        assert!(retry.duplicate);
        let next = one(&store, &mut m, &mut w, &mut WriteBatch::default(), 2);
        assert_eq!((next.duplicate, next.first_seq), (false, 2));
    }

    #[test]
    fn the_cache_is_bounded_between_groups() {
        let store = MemStore::new();
        let (mut m, mut w, mut b) = (machine(), Windows::default(), WriteBatch::default());
        for i in 0..=WINDOWS_CACHED_MAX {
            let p = Producer::new(format!("p{i}"), 1).unwrap();
            append(
                &store,
                &mut m,
                &mut w,
                &mut b,
                vec![Bytes::new()],
                Some(&p),
                0,
                Tags::default(),
            )
            .unwrap();
        }
        assert_eq!(w.cached.len(), WINDOWS_CACHED_MAX + 1);
        w.bound();
        assert!(w.cached.is_empty());
    }
}
