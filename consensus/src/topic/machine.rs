//! The topic state machine: given the topic's state and a command, decide the
//! writes and the answer. No I/O, no clock.

use bytes::Bytes;

use super::producer::Seen;
use super::{Element, Producer, ProducerWindow, Range, Tags, TopicMeta, first_seq};
use crate::bugs::{self, Bug};
use crate::error::{Error, Result};
use crate::store::WriteBatch;

/// The most elements one append (batch) may carry.
pub const BATCH_ELEMENTS_MAX: usize = 10_000;
/// The most payload bytes one append (batch) may carry.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppendOutcome {
    /// Sequence number of the first element appended.
    pub first_seq: u64,
    /// How many elements.
    pub count: u64,
    /// True when this was a producer retry and nothing was written.
    pub duplicate: bool,
}

/// One topic's state as far as deciding appends needs it.
#[derive(Debug, Clone)]
pub struct Machine {
    meta: TopicMeta,
    last_seq: u64,
}

impl Machine {
    pub fn new(meta: TopicMeta, last_seq: u64) -> Self {
        Self { meta, last_seq }
    }

    pub fn meta(&self) -> &TopicMeta {
        &self.meta
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn range(&self) -> Range {
        Range {
            first: first_seq(self.last_seq, self.meta.config.history),
            last: self.last_seq,
        }
    }

    /// Checks an append without deciding anything: sizes and counts. Done
    /// before queueing, so a bad request never waits behind good ones.
    pub fn check_payloads(&self, payloads: &[Bytes]) -> Result<()> {
        check_payloads(self.meta.config.element_max_bytes, payloads)
    }

    /// Decides an append of `payloads` at time `now_ms`: numbers the elements,
    /// adds their writes (and the producer's) to `batch`. `window` is the
    /// producer's window as of all earlier appends; it is updated in place.
    pub fn append(
        &mut self,
        batch: &mut WriteBatch,
        payloads: Vec<Bytes>,
        producer: Option<(&Producer, &mut ProducerWindow)>,
        now_ms: u64,
    ) -> Result<AppendOutcome> {
        self.append_tagged(batch, payloads, producer, now_ms, Tags::default())
    }

    /// [`append`](Self::append), each element keeping `tags` (its cause, or
    /// the handler its append named).
    pub fn append_tagged(
        &mut self,
        batch: &mut WriteBatch,
        payloads: Vec<Bytes>,
        producer: Option<(&Producer, &mut ProducerWindow)>,
        now_ms: u64,
        tags: Tags<'_>,
    ) -> Result<AppendOutcome> {
        self.check_payloads(&payloads)?;
        if let Some(cause) = tags.cause {
            cause.check()?;
        }
        if let Some(handler) = tags.handler {
            super::handlers::check_name(handler)?;
        }
        let count = payloads.len() as u64;
        let producer = producer.filter(|_| !bugs::on(Bug::IgnoreProducerWindow));
        if let Some((producer, window)) = producer {
            match window.check(producer)? {
                Seen::Duplicate { first_seq, count } => {
                    return Ok(AppendOutcome {
                        first_seq,
                        count,
                        duplicate: true,
                    });
                }
                Seen::New => {
                    window.record(producer.seq, self.last_seq + 1, count);
                    window.keep_last(producer.remembered());
                    batch.put_producer(self.meta.id, &producer.id, window);
                }
            }
        }
        let first = self.last_seq + 1;
        for (i, payload) in payloads.into_iter().enumerate() {
            batch.put_element(
                self.meta.id,
                Element {
                    seq: first + i as u64,
                    payload,
                    append_time_ms: now_ms,
                    cause: tags.cause.cloned(),
                    handler: tags.handler.map(str::to_string),
                },
            );
        }
        self.last_seq += count;
        Ok(AppendOutcome {
            first_seq: first,
            count,
            duplicate: false,
        })
    }

    /// Checks that `seq` can be read now.
    pub fn check_readable(&self, seq: u64) -> Result<()> {
        check_readable(self.meta.name.as_str(), self.range(), seq)
    }
}

/// Size checks of an append against a topic's element limit.
pub fn check_payloads(element_max_bytes: u32, payloads: &[Bytes]) -> Result<()> {
    if payloads.is_empty() {
        return Err(Error::InvalidArgument(
            "an append needs at least one element".into(),
        ));
    }
    if payloads.len() > BATCH_ELEMENTS_MAX {
        return Err(Error::InvalidArgument(format!(
            "a batch holds at most {BATCH_ELEMENTS_MAX} elements, this one has {}",
            payloads.len()
        )));
    }
    let mut total = 0usize;
    for (i, p) in payloads.iter().enumerate() {
        if p.len() > element_max_bytes as usize {
            return Err(Error::InvalidArgument(format!(
                "element {i} is {} bytes, over the topic's limit of {element_max_bytes}",
                p.len()
            )));
        }
        total += p.len();
    }
    if total > BATCH_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "a batch holds at most {BATCH_BYTES_MAX} bytes, this one has {total}"
        )));
    }
    Ok(())
}

/// Checks that `seq` lies in `range` of topic `topic`.
pub fn check_readable(topic: &str, range: Range, seq: u64) -> Result<()> {
    if seq == 0 {
        return Err(Error::InvalidArgument(
            "sequence numbers start at 1; 0 is not one".into(),
        ));
    }
    if range.last == 0 || seq < range.first || seq > range.last {
        return Err(Error::OutOfRange {
            topic: topic.to_string(),
            seq,
            first: range.first,
            last: range.last,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Op;
    use crate::topic::{TopicConfig, TopicId, TopicName};

    fn machine(history: u64) -> Machine {
        let meta = TopicMeta {
            id: TopicId(7),
            name: TopicName::new("t").unwrap(),
            config: TopicConfig {
                element_max_bytes: 8,
                history,
            },
            created_at_ms: 1,
            placement: Default::default(),
        };
        Machine::new(meta, 0)
    }

    fn elements(batch: &WriteBatch) -> Vec<u64> {
        batch
            .ops()
            .iter()
            .filter_map(|op| match op {
                Op::PutElement(_, e) => Some(e.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn numbers_are_dense_from_one() {
        let mut m = machine(100);
        let mut b = WriteBatch::default();
        let o = m
            .append(&mut b, vec![Bytes::from_static(b"a")], None, 5)
            .unwrap();
        assert_eq!((o.first_seq, o.count), (1, 1));
        let o = m
            .append(
                &mut b,
                vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")],
                None,
                5,
            )
            .unwrap();
        assert_eq!((o.first_seq, o.count), (2, 2));
        assert_eq!(elements(&b), vec![1, 2, 3]);
        assert_eq!(m.range(), Range { first: 1, last: 3 });
    }

    #[test]
    fn producer_retry_writes_nothing() {
        let mut m = machine(100);
        let p = Producer::new("p".into(), 1).unwrap();
        let mut w = ProducerWindow::default();
        let mut b = WriteBatch::default();
        let first = m
            .append(
                &mut b,
                vec![Bytes::from_static(b"x")],
                Some((&p, &mut w)),
                0,
            )
            .unwrap();
        let mut b2 = WriteBatch::default();
        let retry = m
            .append(
                &mut b2,
                vec![Bytes::from_static(b"x")],
                Some((&p, &mut w)),
                0,
            )
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.first_seq, first.first_seq);
        assert!(b2.ops().is_empty());
        assert_eq!(m.last_seq(), 1);
    }

    #[test]
    fn rejects_oversized_and_empty() {
        let mut m = machine(100);
        let mut b = WriteBatch::default();
        assert!(
            m.append(&mut b, vec![Bytes::from(vec![0; 9])], None, 0)
                .is_err()
        );
        assert!(m.append(&mut b, vec![], None, 0).is_err());
        let many = vec![Bytes::new(); BATCH_ELEMENTS_MAX + 1];
        assert!(m.append(&mut b, many, None, 0).is_err());
        assert!(b.ops().is_empty());
        assert_eq!(m.last_seq(), 0);
    }

    #[test]
    fn readable_range_follows_history() {
        let mut m = machine(10);
        let mut b = WriteBatch::default();
        for _ in 0..100 {
            m.append(&mut b, vec![Bytes::new()], None, 0).unwrap();
        }
        assert!(m.check_readable(91).is_ok());
        assert!(m.check_readable(100).is_ok());
        assert!(matches!(
            m.check_readable(90),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            m.check_readable(101),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            m.check_readable(0),
            Err(Error::InvalidArgument(_))
        ));
    }
}
