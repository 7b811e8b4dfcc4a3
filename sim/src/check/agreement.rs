//! Promise: no two replicas ever hold different elements under the same
//! sequence number. Every element the sampler read from a replica during
//! the run, and every element each replica holds at the end, is compared
//! with the first one seen under that (topic, seq), whoever held it.

use std::collections::BTreeMap;

use super::{Observed, show};

pub fn check(o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    // (topic, seq) -> the first payload seen there, and where.
    let mut truth: BTreeMap<(usize, u64), (&[u8], String)> = BTreeMap::new();
    let observations = o
        .record
        .samples
        .iter()
        .map(|s| {
            (
                s.topic,
                s.seq,
                &s.payload[..],
                format!("n{} at {} ms", s.node, s.at_ms),
            )
        })
        .chain(o.finals.iter().flat_map(|((topic, node), els)| {
            els.iter()
                .map(move |(seq, p)| (*topic, *seq, &p[..], format!("n{node} at the end")))
        }));
    for (topic, seq, payload, source) in observations {
        match truth.get(&(topic, seq)) {
            None => {
                truth.insert((topic, seq), (payload, source));
            }
            Some((first, first_source)) if *first != payload => {
                out.push(format!(
                    "t{topic} seq {seq}: {first_source} held {:?}, {source} holds {:?}",
                    show(first),
                    show(payload)
                ));
            }
            Some(_) => {}
        }
    }
    out
}
