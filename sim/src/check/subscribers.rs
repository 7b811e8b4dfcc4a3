//! Promise: every subscriber sees a gap-free, duplicate-free prefix of the
//! log. A subscription delivers elements in sequence order from the one it
//! named first (the one asked for; 1 for the earliest, as the simulator's
//! topics trim nothing), with no number skipped or repeated, and each
//! element is the one the topic holds under that number (only committed
//! elements are delivered). Checked on every subscription the run made,
//! against the replicas' contents at the end.

use std::collections::BTreeMap;

use woof_consensus::Start;

use super::{Observed, show};

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    // The log of each topic, as its replicas hold it at the end.
    let mut logs: BTreeMap<(usize, u64), &[u8]> = BTreeMap::new();
    for ((topic, _), els) in &o.finals {
        for (seq, payload) in els {
            logs.entry((*topic, *seq)).or_insert(payload);
        }
    }
    for s in &o.record.subscriptions {
        let name = format!(
            "sub#{} (s{}, t{} at n{})",
            s.op, s.subscriber, s.topic, s.node
        );
        let expected_from = match s.start {
            Start::Seq(seq) => Some(seq),
            Start::Earliest => Some(1),
            Start::Latest => None,
        };
        if let Some(want) = expected_from
            && s.from != want
        {
            out.push(format!(
                "{name} asked for {:?} but starts at seq {}",
                s.start, s.from
            ));
        }
        for (next, (seq, payload)) in (s.from..).zip(&s.got) {
            if *seq != next {
                let what = if *seq < next { "again" } else { "after a gap" };
                out.push(format!("{name} got seq {seq} {what}: expected seq {next}"));
                break;
            }
            match logs.get(&(s.topic, *seq)) {
                Some(held) if *held == &payload[..] => {}
                Some(held) => {
                    out.push(format!(
                        "{name} got {:?} at seq {seq}, the topic holds {:?}",
                        show(payload),
                        show(held)
                    ));
                    break;
                }
                None => {
                    out.push(format!(
                        "{name} got {:?} at seq {seq}, which no replica holds",
                        show(payload)
                    ));
                    break;
                }
            }
        }
    }
    out
}
