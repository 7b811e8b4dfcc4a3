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
