//! Promise: appends and reads of a topic's latest range are linearizable
//! per topic: each takes effect at one instant between its call and its
//! answer. For a log this comes down to positions: an append stands at the
//! last sequence number it was given (a batch is atomic), a read that saw
//! the log end at `last` stands just after the append that ended there; if
//! one operation finished before another began, the first must not stand
//! after the second. So a read never misses an append acknowledged before
//! it began, never sees one that began after it ended, never sees half a
//! batch, and appends are numbered in the order they happened.
//!
//! Checked per topic in O(n log n): operations sorted by when they ended,
//! each one checked against the furthest position of those that ended
//! before it began. Appends of unknown outcome count where the replicas
//! hold them (as never finished), or not at all; failed reads do not count.
//!
//! A get of one element only says that the log reached it (or not): it must
//! return the element the log holds under that number, never one whose
//! append began after the get ended, and never "out of range" for one whose
//! append was acknowledged before the get began.

use std::collections::{BTreeMap, BTreeSet};

use super::{Observed, show};
use crate::workload::{AppendResult, ReadResult};

/// One operation, placed.
struct Op {
    what: String,
    invoked_ms: u64,
    /// `u64::MAX`: never finished (an append of unknown outcome).
    done_ms: u64,
    /// Twice the last seq for an append; twice the seen end plus one for a read.
    position: u64,
}

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    // Where each payload of a topic is held at the end: (topic, payload) -> seq.
    let mut held: BTreeMap<(usize, &[u8]), u64> = BTreeMap::new();
    for ((topic, _), els) in &o.finals {
        for (seq, payload) in els {
            held.entry((*topic, &payload[..])).or_insert(*seq);
        }
    }
    let mut ops: BTreeMap<usize, Vec<Op>> = BTreeMap::new();
    // Seqs at which a batch ends, per topic.
    let mut ends: BTreeSet<(usize, u64)> = BTreeSet::new();
    // The append that holds each seq: (topic, seq) -> (op, invoked, done).
    let mut holder: BTreeMap<(usize, u64), (u64, u64, u64)> = BTreeMap::new();
    for a in &o.record.appends {
        let count = a.payloads.len() as u64;
        let (first, done_ms) = match &a.result {
            AppendResult::Acked { first_seq, .. } => (*first_seq, a.done_ms),
            AppendResult::Unknown(_) => match a
                .payloads
                .first()
                .and_then(|p| held.get(&(a.topic, &p[..])))
            {
                Some(seq) => (*seq, u64::MAX),
                None => continue,
            },
            AppendResult::Refused(_) => continue,
        };
        if count == 0 {
            continue;
        }
        let last = first + count - 1;
        ends.insert((a.topic, last));
        for seq in first..=last {
            holder.insert((a.topic, seq), (a.op, a.invoked_ms, done_ms));
        }
        ops.entry(a.topic).or_default().push(Op {
            what: format!(
                "append#{} ({}:{}) at seq {first}..={last}",
                a.op, a.producer, a.producer_seq
            ),
            invoked_ms: a.invoked_ms,
            done_ms,
            position: 2 * last,
        });
    }
    // What each topic's replicas hold at the end: (topic, seq) -> payload.
    let mut log: BTreeMap<(usize, u64), &[u8]> = BTreeMap::new();
    for ((topic, _), els) in &o.finals {
        for (seq, payload) in els {
            log.entry((*topic, *seq)).or_insert(payload);
        }
    }
    for r in &o.record.reads {
        let (first, last) = match &r.result {
            ReadResult::Range { first, last } => (*first, *last),
            ReadResult::Element { seq, payload } => {
                match (log.get(&(r.topic, *seq)), holder.get(&(r.topic, *seq))) {
                    (Some(held), _) if *held != &payload[..] => out.push(format!(
                        "read#{} got {:?} as t{} seq {seq}, the topic holds {:?}",
                        r.op,
                        show(payload),
                        r.topic,
                        show(held)
                    )),
                    (None, _) => out.push(format!(
                        "read#{} got {:?} as t{} seq {seq}, which no replica holds",
                        r.op,
                        show(payload),
                        r.topic
                    )),
                    (_, Some((op, invoked, _))) if *invoked > r.done_ms => out.push(format!(
                        "read#{} got t{} seq {seq} at {} ms, before append#{op} that wrote it began ({invoked} ms)",
                        r.op, r.topic, r.done_ms
                    )),
                    _ => {}
                }
                continue;
            }
            ReadResult::Missing { seq } => {
                if let Some((op, _, done)) = holder.get(&(r.topic, *seq))
                    && *done < r.invoked_ms
                {
                    out.push(format!(
                        "read#{} of t{} seq {seq} (from {} ms) found nothing, but append#{op} had it acknowledged at {done} ms",
                        r.op, r.topic, r.invoked_ms
                    ));
                }
                continue;
            }
            ReadResult::Failed(_) => continue,
        };
        if last > 0 && !ends.contains(&(r.topic, last)) {
            out.push(format!(
                "read#{} of t{} saw the log end at seq {last}, inside a batch or past every append",
                r.op, r.topic
            ));
        }
        if last > 0 && first != 1 {
            out.push(format!(
                "read#{} of t{} saw the log start at seq {first} (nothing is trimmed)",
                r.op, r.topic
            ));
        }
        ops.entry(r.topic).or_default().push(Op {
            what: format!("read#{} (c{}) saw ..={last}", r.op, r.client),
            invoked_ms: r.invoked_ms,
            done_ms: r.done_ms,
            position: 2 * last + 1,
        });
    }
    for (topic, ops) in ops {
        let mut by_done: Vec<&Op> = ops.iter().collect();
        by_done.sort_by_key(|op| op.done_ms);
        let mut by_invoked: Vec<&Op> = ops.iter().collect();
        by_invoked.sort_by_key(|op| op.invoked_ms);
        // The op furthest along of those that ended before the current one began.
        let mut furthest: Option<&Op> = None;
        let mut next = 0;
        for b in by_invoked {
            while next < by_done.len() && by_done[next].done_ms < b.invoked_ms {
                let a = by_done[next];
                if furthest.is_none_or(|f| a.position > f.position) {
                    furthest = Some(a);
                }
                next += 1;
            }
            if let Some(a) = furthest
                && a.position > b.position
            {
                out.push(format!(
                    "t{topic}: {} (from {} ms) comes before {} (ended at {} ms), which ended first",
                    b.what, b.invoked_ms, a.what, a.done_ms
                ));
            }
        }
    }
    out
}
