//! The checkers: one promise of woof each, checked against what the run
//! recorded (the clients' requests and answers, the replicas' contents
//! sampled during the run, and every replica's store at the end, after the
//! faults stopped and the groups caught up).
//!
//! Layout (one file per promise, each opening with the promise):
//! - `lost_ack.rs`: no acknowledged append is lost;
//! - `agreement.rs`: no two replicas hold different elements under one seq;
//! - `dense.rs`: seqs are dense from 1, and a producer retry never appends
//!   twice.
//!
//! To come: `subscribers.rs` (gap-free, duplicate-free subscriptions),
//! `progress.rs` (every topic makes progress again after the faults stop),
//! `linear.rs` (appends and reads are linearizable per topic). Each takes an
//! [`Observed`] and returns its violations, and is added to [`all`].

pub mod agreement;
pub mod dense;
pub mod lost_ack;

use std::collections::BTreeMap;

use crate::node::TopicPlan;
use crate::workload::Record;

/// Violations a checker reports at most (the first ones).
pub const REPORTED_MAX: usize = 10;

/// Everything the checkers look at.
pub struct Observed<'a> {
    pub plans: &'a [TopicPlan],
    pub record: &'a Record,
    /// Each replica's elements at the end: (topic, node) -> (seq, payload),
    /// in seq order.
    pub finals: Finals,
}

/// Each replica's elements: (topic, node) -> (seq, payload), in seq order.
pub type Finals = BTreeMap<(usize, u64), Vec<(u64, Vec<u8>)>>;

/// A broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.checker, self.what)
    }
}

/// Runs every checker.
pub fn all(o: &Observed) -> Vec<Violation> {
    let mut out = Vec::new();
    for (checker, found) in [
        ("lost_ack", lost_ack::check(o)),
        ("agreement", agreement::check(o)),
        ("dense", dense::check(o)),
    ] {
        out.extend(
            found
                .into_iter()
                .take(REPORTED_MAX)
                .map(|what| Violation { checker, what }),
        );
    }
    out
}

/// A payload as text, for reports.
pub(crate) fn show(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

#[cfg(test)]
mod tests {
    //! Each checker catches the breach it exists for, on a made-up run.
    use super::*;
    use crate::workload::{Append, AppendResult, Sample};
    use woof_consensus::store::GroupId;

    fn plans() -> Vec<TopicPlan> {
        vec![TopicPlan {
            index: 0,
            group: GroupId(1),
            name: "sim/t0".into(),
            replicas: vec![1, 2, 3],
        }]
    }

    fn acked(op: u64, pseq: u64, first_seq: u64, payloads: &[&str]) -> Append {
        Append {
            op,
            client: 0,
            topic: 0,
            producer: "c0".into(),
            producer_seq: pseq,
            payloads: payloads.iter().map(|p| p.as_bytes().to_vec()).collect(),
            invoked_ms: 0,
            done_ms: 1,
            attempts: 1,
            result: AppendResult::Acked {
                first_seq,
                count: payloads.len() as u64,
                duplicate: false,
            },
        }
    }

    fn log(payloads: &[&str]) -> Vec<(u64, Vec<u8>)> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, p.as_bytes().to_vec()))
            .collect()
    }

    fn finals(logs: [&[&str]; 3]) -> Finals {
        (1..=3u64)
            .zip(logs)
            .map(|(node, l)| ((0, node), log(l)))
            .collect()
    }

    /// The checkers that found something, once each.
    fn checkers(record: &Record, finals: Finals) -> Vec<&'static str> {
        let plans = plans();
        let mut found: Vec<_> = all(&Observed {
            plans: &plans,
            record,
            finals,
        })
        .into_iter()
        .map(|v| v.checker)
        .collect();
        found.dedup();
        found
    }

    fn record(appends: Vec<Append>) -> Record {
        let mut r = Record::default();
        r.appends = appends;
        r
    }

    #[test]
    fn a_clean_run_passes() {
        let r = record(vec![acked(1, 1, 1, &["a", "b"]), acked(2, 2, 3, &["c"])]);
        let all = ["a", "b", "c"];
        assert!(checkers(&r, finals([&all, &all, &all[..2]])).is_empty());
    }

    #[test]
    fn an_acked_append_held_by_a_minority_is_lost() {
        let r = record(vec![acked(1, 1, 1, &["a"]), acked(2, 2, 2, &["b"])]);
        let found = checkers(&r, finals([&["a", "b"], &["a"], &["a"]]));
        assert_eq!(found, ["lost_ack"]);
    }

    #[test]
    fn replicas_that_differ_disagree() {
        let r = record(vec![]);
        assert_eq!(
            checkers(&r, finals([&["a", "b"], &["a", "x"], &["a", "b"]])),
            ["agreement"]
        );
        // Also against what the sampler saw during the run.
        let mut r = record(vec![]);
        r.samples.push(Sample {
            at_ms: 5,
            node: 2,
            topic: 0,
            seq: 1,
            payload: b"old".to_vec(),
        });
        assert_eq!(
            checkers(&r, finals([&["a"], &["a"], &["a"]])),
            ["agreement"]
        );
    }

    #[test]
    fn gaps_and_double_appends_are_not_dense() {
        let r = record(vec![]);
        let mut f = finals([&["a"], &["a"], &["a"]]);
        f.insert((0, 1), vec![(1, b"a".to_vec()), (3, b"b".to_vec())]);
        assert_eq!(checkers(&r, f), ["dense"]);
        // A retry appended twice.
        let r = record(vec![acked(1, 1, 1, &["a"])]);
        let twice = ["a", "a"];
        assert_eq!(checkers(&r, finals([&twice, &twice, &twice])), ["dense"]);
        // A refused append that is there anyway.
        let mut refused = acked(1, 1, 1, &["a"]);
        refused.result = AppendResult::Refused("no".into());
        let r = record(vec![refused]);
        assert_eq!(checkers(&r, finals([&["a"], &["a"], &["a"]])), ["dense"]);
    }
}
