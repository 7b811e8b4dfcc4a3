//! Promise: sequence numbers are dense (a topic's elements are numbered 1,
//! 2, 3, ... with no gap), and a producer retry never appends twice (each
//! append's elements appear once, together and in order, and an append
//! refused for certain appears nowhere). Checked on every replica's store at
//! the end (the simulator's topics keep their whole history).

use std::collections::BTreeMap;

use super::{Observed, show};
use crate::workload::AppendResult;

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    // Where each payload of a topic first appears: (topic, payload) -> seq.
    let mut placed: BTreeMap<(usize, &[u8]), u64> = BTreeMap::new();
    for ((topic, node), els) in &o.finals {
        for (i, (seq, payload)) in els.iter().enumerate() {
            if *seq != i as u64 + 1 {
                out.push(format!(
                    "t{topic} at n{node}: element {} of the store has seq {seq} (a gap)",
                    i + 1
                ));
                break;
            }
            if let Some(prev) = placed.get(&(*topic, &payload[..]))
                && *prev != *seq
            {
                out.push(format!(
                    "t{topic}: {:?} appended twice, at seq {prev} and seq {seq} (n{node})",
                    show(payload)
                ));
            }
            placed.entry((*topic, &payload[..])).or_insert(*seq);
        }
    }
    for a in &o.record.appends {
        let at: Vec<Option<u64>> = a
            .payloads
            .iter()
            .map(|p| placed.get(&(a.topic, &p[..])).copied())
            .collect();
        match &a.result {
            AppendResult::Refused(why) => {
                if let Some(seq) = at.iter().flatten().next() {
                    out.push(format!(
                        "append#{} ({}:{}) was refused ({why}) but is at t{} seq {seq}",
                        a.op, a.producer, a.producer_seq, a.topic
                    ));
                }
            }
            AppendResult::Acked { first_seq, .. } => {
                let expected: Vec<Option<u64>> = (0..a.payloads.len() as u64)
                    .map(|i| Some(first_seq + i))
                    .collect();
                if at != expected {
                    out.push(format!(
                        "append#{} ({}:{}) acked at t{} seq {first_seq}.., its elements are at {at:?}",
                        a.op, a.producer, a.producer_seq, a.topic
                    ));
                }
            }
            AppendResult::Unknown(_) => {
                // All or nothing, together and in order.
                let ok = match at.first() {
                    Some(Some(s)) => at.iter().enumerate().all(|(i, x)| *x == Some(s + i as u64)),
                    _ => at.iter().all(Option::is_none),
                };
                if !ok {
                    out.push(format!(
                        "append#{} ({}:{}) of unknown outcome is split or out of order at t{}: {at:?}",
                        a.op, a.producer, a.producer_seq, a.topic
                    ));
                }
            }
        }
    }
    out
}
