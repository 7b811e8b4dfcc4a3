//! The checkers: one promise of woof each, checked against what the run
//! recorded (the clients' requests and answers, the subscriptions, the
//! probes after the faults, the replicas' contents sampled during the run,
//! and every replica's store at the end, after the faults stopped and the
//! groups caught up).
//!
//! Layout (one file per promise, each opening with the promise):
//! - `lost_ack.rs`: no acknowledged append is lost;
//! - `agreement.rs`: no two replicas hold different elements under one seq;
//! - `dense.rs`: seqs are dense from 1, and a producer retry never appends
//!   twice;
//! - `subscribers.rs`: every subscriber sees a gap-free, duplicate-free
//!   prefix of the log;
//! - `progress.rs`: after the faults stop, every topic takes an append and
//!   its replicas catch up within bounded simulated time;
//! - `linear.rs`: appends and reads of the latest range are linearizable
//!   per topic;
//! - `repair.rs`: a replica lost past the repair time is replaced, only
//!   made a voter once it holds the log, and every topic ends at full
//!   strength (its replication factor of voters, all up);
//! - `one_name.rs`: at most one topic per name after concurrent creates
//!   (`--concurrent-creates`);
//! - `handled.rs`: every committed element of the handled topic gave its
//!   handler's output exactly once, in order, and the handler caught up.
//!
//! Each takes an [`Observed`] and returns its violations, and is listed in
//! [`all`].

pub mod agreement;
pub mod dense;
pub mod handled;
pub mod linear;
pub mod lost_ack;
pub mod one_name;
pub mod progress;
pub mod repair;
pub mod subscribers;

use std::collections::BTreeMap;

use crate::node::TopicPlan;
use crate::workload::Record;

/// Violations a checker reports at most (the first ones).
pub const REPORTED_MAX: usize = 10;

/// Everything the checkers look at.
pub struct Observed<'a> {
    pub plans: &'a [TopicPlan],
    pub record: &'a Record,
    /// Each topic's voters at the end (repair may have replaced some of
    /// the replicas it was created on).
    pub voters: BTreeMap<usize, Vec<u64>>,
    /// Voters each topic must have.
    pub replication: usize,
    /// Each replica's elements at the end: (topic, node) -> (seq, payload),
    /// in seq order.
    pub finals: Finals,
    /// The handled topic and its handler's outputs at the end, or why the
    /// run could not read them (`None`: the run had no topic).
    pub handled: Option<Result<Handled, String>>,
}

/// What the handler bound to the first topic did, read after the faults.
#[derive(Debug, Clone, Default)]
pub struct Handled {
    /// The handled topic's elements, in order.
    pub input: Vec<(u64, Vec<u8>)>,
    /// The output topic's payloads, in order.
    pub output: Vec<Vec<u8>>,
    /// The last element the handler recorded as finished.
    pub done: u64,
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
        ("handled", handled::check(o)),
        ("subscribers", subscribers::check(o)),
        ("progress", progress::check(o)),
        ("linear", linear::check(o)),
        ("repair", repair::check(o)),
        ("one_name", one_name::check(o)),
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
    use crate::workload::{Append, AppendResult, Probe, Read, ReadResult, Sample, Subscribed};
    use woof_consensus::Start;
    use woof_consensus::store::GroupId;

    fn plans() -> Vec<TopicPlan> {
        vec![TopicPlan {
            index: 0,
            group: GroupId(1),
            name: "sim/t0".into(),
            replicas: vec![1, 2, 3],
            constraint: None,
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
            voters: [(0, vec![1, 2, 3])].into(),
            replication: 3,
            finals,
            handled: Some(Ok(Handled::default())),
        })
        .into_iter()
        .map(|v| v.checker)
        .collect();
        found.dedup();
        found
    }

    /// A record of `appends`, whose one topic took its probe after the heal.
    fn record(appends: Vec<Append>) -> Record {
        let mut r = Record::default();
        r.appends = appends;
        r.progress.healed_ms = 100;
        r.progress.up = vec![1, 2, 3];
        r.progress.probes.push(Probe {
            topic: 0,
            acked_ms: Some(105),
            attempts: 1,
            result: AppendResult::Acked {
                first_seq: 99,
                count: 1,
                duplicate: false,
            },
        });
        r
    }

    /// Append `a` called at `invoked` and answered at `done`.
    fn timed(mut a: Append, invoked: u64, done: u64) -> Append {
        a.invoked_ms = invoked;
        a.done_ms = done;
        a
    }

    fn read(op: u64, invoked: u64, done: u64, last: u64) -> Read {
        Read {
            op,
            client: 1,
            topic: 0,
            invoked_ms: invoked,
            done_ms: done,
            result: ReadResult::Range { first: 1, last },
        }
    }

    fn subscribed(start: Start, from: u64, got: &[(u64, &str)]) -> Subscribed {
        Subscribed {
            op: 9,
            subscriber: 0,
            topic: 0,
            node: 2,
            start,
            from,
            got: got
                .iter()
                .map(|(s, p)| (*s, p.as_bytes().to_vec()))
                .collect(),
            ended: "time up".into(),
        }
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

    #[test]
    fn subscriptions_with_gaps_repeats_or_other_elements_are_caught() {
        let all = ["a", "b", "c"];
        let good = |subs: Vec<Subscribed>| {
            let mut r = record(vec![]);
            r.subscriptions = subs;
            checkers(&r, finals([&all, &all, &all]))
        };
        assert!(
            good(vec![
                subscribed(Start::Seq(1), 1, &[(1, "a"), (2, "b"), (3, "c")]),
                subscribed(Start::Latest, 3, &[(3, "c")]),
            ])
            .is_empty()
        );
        for bad in [
            subscribed(Start::Seq(1), 1, &[(1, "a"), (3, "c")]),
            subscribed(Start::Seq(1), 1, &[(1, "a"), (2, "b"), (2, "b")]),
            subscribed(Start::Seq(1), 1, &[(1, "a"), (2, "x")]),
            subscribed(Start::Seq(2), 3, &[(3, "c")]),
            subscribed(
                Start::Earliest,
                1,
                &[(1, "a"), (2, "b"), (3, "c"), (4, "d")],
            ),
        ] {
            let what = format!("{:?}", bad.got);
            assert_eq!(good(vec![bad]), ["subscribers"], "{what}");
        }
    }

    #[test]
    fn no_probe_a_late_probe_or_lagging_replicas_is_no_progress() {
        let all = ["a"];
        let mut r = record(vec![]);
        r.progress.probes.clear();
        assert_eq!(checkers(&r, finals([&all, &all, &all])), ["progress"]);
        let mut r = record(vec![]);
        r.progress.probes[0].acked_ms = Some(100 + progress::PROGRESS_MS_MAX + 1);
        assert_eq!(checkers(&r, finals([&all, &all, &all])), ["progress"]);
        let mut r = record(vec![]);
        r.progress.probes[0].acked_ms = None;
        assert_eq!(checkers(&r, finals([&all, &all, &all])), ["progress"]);
        let mut r = record(vec![]);
        r.progress.lagging.push((0, vec![Some(1), Some(1), None]));
        assert_eq!(checkers(&r, finals([&all, &all, &all])), ["progress"]);
    }

    #[test]
    fn stale_reads_future_reads_torn_batches_and_misordered_appends_are_not_linear() {
        let all = ["a", "b", "c"];
        // Append ab (seq 1..=2) from 0 to 10, c (seq 3) from 20 to 30.
        let appends = || {
            vec![
                timed(acked(1, 1, 1, &["a", "b"]), 0, 10),
                timed(acked(2, 2, 3, &["c"]), 20, 30),
            ]
        };
        let found = |reads: Vec<Read>| {
            let mut r = record(appends());
            r.reads = reads;
            checkers(&r, finals([&all, &all, &all]))
        };
        // Reads that could have happened: before, during and after.
        assert!(
            found(vec![
                read(3, 0, 5, 0),
                read(4, 5, 15, 2),
                read(5, 12, 25, 3),
                read(6, 31, 40, 3)
            ])
            .is_empty()
        );
        // A read that began after c was acked but missed it.
        assert_eq!(found(vec![read(3, 31, 40, 2)]), ["linear"]);
        // A read that ended before c was appended but saw it.
        assert_eq!(found(vec![read(3, 11, 15, 3)]), ["linear"]);
        // Half of the batch ab.
        assert_eq!(found(vec![read(3, 5, 15, 1)]), ["linear"]);
        // Two reads that went back in time.
        assert_eq!(
            found(vec![read(3, 22, 24, 3), read(4, 25, 28, 2)]),
            ["linear"]
        );
        // Gets: ones that could have happened, then a get of c that ended
        // before c was appended, a get of something else under c's number,
        // and a "not there" for c after it was acknowledged.
        let get = |op: u64, invoked: u64, done: u64, result: ReadResult| Read {
            op,
            client: 1,
            topic: 0,
            invoked_ms: invoked,
            done_ms: done,
            result,
        };
        let c = || b"c".to_vec();
        assert!(
            found(vec![
                get(3, 5, 15, ReadResult::Missing { seq: 3 }),
                get(
                    4,
                    22,
                    25,
                    ReadResult::Element {
                        seq: 3,
                        payload: c()
                    }
                ),
                get(
                    5,
                    31,
                    32,
                    ReadResult::Element {
                        seq: 3,
                        payload: c()
                    }
                ),
            ])
            .is_empty()
        );
        for bad in [
            get(
                3,
                11,
                15,
                ReadResult::Element {
                    seq: 3,
                    payload: c(),
                },
            ),
            get(
                3,
                31,
                32,
                ReadResult::Element {
                    seq: 3,
                    payload: b"x".to_vec(),
                },
            ),
            get(3, 31, 32, ReadResult::Missing { seq: 3 }),
        ] {
            let what = format!("{:?}", bad.result);
            assert_eq!(found(vec![bad]), ["linear"], "{what}");
        }
        // Appends numbered against their real-time order: c acked before
        // ab was called, yet numbered after it.
        let r = record(vec![
            timed(acked(1, 1, 1, &["a", "b"]), 20, 30),
            timed(acked(2, 2, 3, &["c"]), 0, 10),
        ]);
        assert_eq!(checkers(&r, finals([&all, &all, &all])), ["linear"]);
    }

    /// The checkers of a run whose one topic ended with `voters`, with
    /// `lost` lost for good and nodes 1 to 4 up.
    fn at_strength(voters: Vec<u64>, lost: Option<u64>) -> Vec<&'static str> {
        let plans = plans();
        let all = ["a"];
        let mut r = record(vec![acked(1, 1, 1, &all)]);
        r.progress.up = vec![1, 2, 3, 4];
        r.progress.lost = lost;
        let finals: Finals = voters.iter().map(|n| ((0, *n), log(&all))).collect();
        let mut found: Vec<_> = all_checks(&plans, &r, [(0, voters)].into(), finals);
        found.dedup();
        found
    }

    fn all_checks(
        plans: &[TopicPlan],
        record: &Record,
        voters: BTreeMap<usize, Vec<u64>>,
        finals: Finals,
    ) -> Vec<&'static str> {
        all(&Observed {
            plans,
            record,
            voters,
            replication: 3,
            finals,
            handled: Some(Ok(Handled::default())),
        })
        .into_iter()
        .map(|v| v.checker)
        .collect()
    }

    #[test]
    fn a_replica_never_replaced_or_too_few_voters_is_no_repair() {
        // Replaced: n3 lost, n4 in its place.
        assert!(at_strength(vec![1, 2, 4], Some(3)).is_empty());
        assert_eq!(at_strength(vec![1, 2, 3], Some(3)), ["repair"]);
        assert_eq!(at_strength(vec![1, 2], None), ["repair"]);
        assert_eq!(at_strength(vec![1, 2, 5], None), ["repair"]);
    }

    #[test]
    fn two_creates_of_one_name_or_two_groups_seen_is_two_topics() {
        use crate::admin::Race;
        let plans = plans();
        let all = ["a"];
        let finals = || finals([&all, &all, &all]);
        let voters = || BTreeMap::from([(0, vec![1, 2, 3])]);
        let race = |creates: Vec<(u64, Result<u64, String>)>, seen: Vec<(u64, Option<u64>)>| {
            let mut r = record(vec![acked(1, 1, 1, &all)]);
            r.races.push(Race {
                name: "sim/race0".into(),
                creates,
                seen,
            });
            all_checks(&plans, &r, voters(), finals())
        };
        let taken = || Err("topic \"sim/race0\" already exists".to_string());
        assert!(
            race(
                vec![(1, Ok(7)), (2, taken())],
                vec![(1, Some(7)), (2, Some(7))]
            )
            .is_empty()
        );
        assert_eq!(
            race(
                vec![(1, Ok(7)), (2, Ok(8))],
                vec![(1, Some(7)), (2, Some(7))]
            ),
            ["one_name"]
        );
        assert_eq!(
            race(
                vec![(1, Ok(7)), (2, taken())],
                vec![(1, Some(7)), (2, Some(8))]
            ),
            ["one_name"]
        );
    }
}
