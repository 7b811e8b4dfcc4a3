//! Promise: no acknowledged append is lost. An append is acknowledged only
//! once committed (synced on a majority of the topic's replicas), so while a
//! majority survives, its elements stay under the sequence numbers the
//! acknowledgement gave, across repairs too (a replica replaced must have
//! handed on what was acknowledged). Checked at the end, after the faults
//! stopped, every node but the one lost for good came back, and repair
//! replaced that one's replicas: each acknowledged element must be held,
//! under its acknowledged number, by a majority of the topic's voters then.

use super::{Observed, show};
use crate::workload::AppendResult;

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    for a in &o.record.appends {
        let AppendResult::Acked {
            first_seq, count, ..
        } = a.result
        else {
            continue;
        };
        if count != a.payloads.len() as u64 {
            out.push(format!(
                "append#{} ({}:{}) acked {count} elements but carried {}",
                a.op,
                a.producer,
                a.producer_seq,
                a.payloads.len()
            ));
            continue;
        }
        // The topic's voters at the end: repair may have replaced some of
        // the replicas it was created on, and must have copied to the new
        // ones what was acknowledged.
        let replicas = o.voters.get(&a.topic).unwrap_or(&o.plans[a.topic].replicas);
        let majority = replicas.len() / 2 + 1;
        for (i, payload) in a.payloads.iter().enumerate() {
            let seq = first_seq + i as u64;
            let mut holders = 0;
            let mut seen = Vec::new();
            for node in replicas {
                let held = o.finals.get(&(a.topic, *node)).and_then(|els| {
                    els.binary_search_by_key(&seq, |(s, _)| *s)
                        .ok()
                        .map(|i| &els[i].1)
                });
                match held {
                    Some(p) if p == payload => holders += 1,
                    Some(p) => seen.push(format!("n{node} holds {:?}", show(p))),
                    None => seen.push(format!("n{node} holds nothing")),
                }
            }
            if holders < majority {
                out.push(format!(
                    "append#{} by {} at {} ms, acked as t{} seq {seq} = {:?}, is held by {holders} of {} replicas at the end ({})",
                    a.op,
                    a.producer,
                    a.done_ms,
                    a.topic,
                    show(payload),
                    replicas.len(),
                    seen.join(", ")
                ));
            }
        }
    }
    out
}
