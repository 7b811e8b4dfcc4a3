//! Idempotent producers: remembering which producer sequences were committed.

use std::collections::VecDeque;

use crate::error::{Error, Result};

/// How many recent producer sequences are remembered per producer.
pub const PRODUCER_WINDOW: usize = 64;
/// The longest producer id, in bytes.
pub const PRODUCER_ID_BYTES_MAX: usize = 128;
/// How the ids a node gives the appends it forwards for clients that named
/// no producer begin; clients' ids may not. Such an id never has more than
/// one append in flight (a retry repeats the last one), so its window
/// remembers only the last append: a fraction of the bytes written with
/// each append.
pub const NODE_PRODUCER_PREFIX: char = '~';

/// Identifies an append for deduplication: a producer's id and its own
/// sequence number for this append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    pub id: String,
    pub seq: u64,
}

impl Producer {
    pub fn new(id: String, seq: u64) -> Result<Self> {
        if id.is_empty() || id.len() > PRODUCER_ID_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "producer id must be 1 to {PRODUCER_ID_BYTES_MAX} bytes, not {}",
                id.len()
            )));
        }
        if seq == 0 {
            return Err(Error::InvalidArgument(
                "producer sequence must be at least 1".into(),
            ));
        }
        Ok(Self { id, seq })
    }

    /// A producer named by a client: as [`new`](Self::new), and its id may
    /// not begin with [`NODE_PRODUCER_PREFIX`].
    pub fn from_client(id: String, seq: u64) -> Result<Self> {
        if id.starts_with(NODE_PRODUCER_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "producer ids beginning with {NODE_PRODUCER_PREFIX:?} are the nodes' own"
            )));
        }
        Self::new(id, seq)
    }

    /// How many of its recent appends its window remembers.
    pub fn remembered(&self) -> usize {
        if self.id.starts_with(NODE_PRODUCER_PREFIX) {
            1
        } else {
            PRODUCER_WINDOW
        }
    }
}

/// One committed append of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    producer_seq: u64,
    first_seq: u64,
    count: u64,
}

/// The last [`PRODUCER_WINDOW`] appends of one producer, oldest first, with
/// increasing producer sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerWindow {
    entries: VecDeque<Entry>,
}

/// What a producer sequence means against the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen and newer than all seen: append it.
    New,
    /// Already committed as `count` elements from `first_seq`.
    Duplicate { first_seq: u64, count: u64 },
}

impl ProducerWindow {
    /// Classifies `producer.seq`, or explains why it can be neither.
    pub fn check(&self, producer: &Producer) -> Result<Seen> {
        let Some(newest) = self.entries.back() else {
            return Ok(Seen::New);
        };
        if producer.seq > newest.producer_seq {
            return Ok(Seen::New);
        }
        if let Some(e) = self.entries.iter().find(|e| e.producer_seq == producer.seq) {
            return Ok(Seen::Duplicate {
                first_seq: e.first_seq,
                count: e.count,
            });
        }
        let why = if producer.seq < self.entries[0].producer_seq {
            "older than the retries this node remembers"
        } else {
            "lower than a sequence already committed and was never committed itself"
        };
        Err(Error::ProducerSeq {
            id: producer.id.clone(),
            seq: producer.seq,
            why: why.to_string(),
        })
    }

    /// Records a committed append. `producer_seq` must be newer than all seen.
    pub fn record(&mut self, producer_seq: u64, first_seq: u64, count: u64) {
        assert!(
            self.entries
                .back()
                .is_none_or(|e| e.producer_seq < producer_seq),
            "producer sequence {producer_seq} recorded after a newer one"
        );
        if self.entries.len() == PRODUCER_WINDOW {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            producer_seq,
            first_seq,
            count,
        });
    }

    /// Forgets all but the newest `n` appends (at least one is kept).
    pub fn keep_last(&mut self, n: usize) {
        while self.entries.len() > n.max(1) {
            self.entries.pop_front();
        }
    }

    /// How many appends it remembers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The remembered appends, oldest first: (producer sequence, first
    /// element, count). How `crate::codec::window` stores it.
    pub fn appends(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.entries
            .iter()
            .map(|e| (e.producer_seq, e.first_seq, e.count))
    }

    /// A window of `appends` as [`appends`](Self::appends) lists them, or
    /// `None` if they are more than [`PRODUCER_WINDOW`] or their producer
    /// sequences do not increase.
    pub fn from_appends(appends: impl Iterator<Item = (u64, u64, u64)>) -> Option<Self> {
        let mut entries = VecDeque::new();
        for (producer_seq, first_seq, count) in appends {
            let newer = entries
                .back()
                .is_none_or(|e: &Entry| e.producer_seq < producer_seq);
            if !newer || entries.len() == PRODUCER_WINDOW {
                return None;
            }
            entries.push_back(Entry {
                producer_seq,
                first_seq,
                count,
            });
        }
        Some(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seq: u64) -> Producer {
        Producer::new("sensor-1".into(), seq).unwrap()
    }

    #[test]
    fn new_duplicate_and_stale() {
        let mut w = ProducerWindow::default();
        assert_eq!(w.check(&p(5)).unwrap(), Seen::New);
        w.record(5, 1, 1);
        w.record(7, 2, 3);
        assert_eq!(
            w.check(&p(5)).unwrap(),
            Seen::Duplicate {
                first_seq: 1,
                count: 1
            }
        );
        assert_eq!(
            w.check(&p(7)).unwrap(),
            Seen::Duplicate {
                first_seq: 2,
                count: 3
            }
        );
        assert_eq!(w.check(&p(8)).unwrap(), Seen::New);
        assert!(matches!(w.check(&p(6)), Err(Error::ProducerSeq { .. })));
        assert!(matches!(w.check(&p(1)), Err(Error::ProducerSeq { .. })));
    }

    #[test]
    fn window_forgets_the_oldest() {
        let mut w = ProducerWindow::default();
        for i in 1..=(PRODUCER_WINDOW as u64 + 10) {
            w.record(i, i, 1);
        }
        assert!(w.check(&p(10)).is_err());
        assert!(matches!(
            w.check(&p(11)),
            Ok(Seen::Duplicate { first_seq: 11, .. })
        ));
        assert_eq!(w.len(), PRODUCER_WINDOW);
        let round = ProducerWindow::from_appends(w.appends()).unwrap();
        assert_eq!(round, w);
    }

    #[test]
    fn a_node_lane_remembers_its_last_append_only() {
        let lane = Producer::new("~peer/3".into(), 2).unwrap();
        assert_eq!(lane.remembered(), 1);
        assert_eq!(p(1).remembered(), PRODUCER_WINDOW);
        let mut w = ProducerWindow::default();
        for seq in 1..=3 {
            w.record(seq, seq * 10, 1);
            w.keep_last(lane.remembered());
        }
        assert_eq!(w.len(), 1);
        // Its retry is recognised; an older append is refused, never
        // applied again.
        let retry = Producer::new("~peer/3".into(), 3).unwrap();
        assert_eq!(
            w.check(&retry).unwrap(),
            Seen::Duplicate {
                first_seq: 30,
                count: 1
            }
        );
        let old = Producer::new("~peer/3".into(), 2).unwrap();
        assert!(matches!(w.check(&old), Err(Error::ProducerSeq { .. })));
    }

    #[test]
    fn bad_producers_and_bytes() {
        assert!(Producer::new(String::new(), 1).is_err());
        assert!(Producer::new("x".repeat(129), 1).is_err());
        assert!(Producer::new("x".into(), 0).is_err());
        assert!(Producer::from_client("~node/1".into(), 1).is_err());
        assert!(Producer::from_client("sensor-1".into(), 1).is_ok());
    }
}
