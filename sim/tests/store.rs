//! The simulated disk's crash model: synced writes survive a crash whole;
//! unsynced ones after the last sync survive as a prefix, never out of order.

use bytes::Bytes;
use woof_consensus::store::{GroupId, Op, RaftLogStore, Store, WriteBatch, conformance};
use woof_consensus::topic::{Element, TopicId};
use woof_sim::rng::SimRng;
use woof_sim::store::SimStore;

fn element(seq: u64) -> WriteBatch {
    let mut b = WriteBatch::default();
    b.push(Op::PutElement(
        TopicId(3),
        Element {
            seq,
            payload: Bytes::from(format!("e{seq}")),
            append_time_ms: seq,
            cause: None,
            handler: None,
        },
    ));
    b
}

fn seqs(s: &SimStore) -> Vec<u64> {
    s.scan(TopicId(3), 0, 10_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.seq)
        .collect()
}

#[test]
fn disk_synced_writes_survive_a_crash_whole() {
    for seed in 0..20 {
        let s = SimStore::new();
        conformance::fill(&s);
        conformance::fill_raft_log(&s);
        let crash = s.crash(&mut SimRng::new(seed));
        assert_eq!(crash.pending, 0);
        // The dead incarnation can neither read nor write.
        assert!(s.topics().is_err());
        assert!(s.write(&element(1)).is_err());
        assert!(s.append_log(GroupId(7), &[(301, vec![1])]).is_err());
        let restarted = s.reopen();
        conformance::check_filled(&restarted);
        conformance::check_raft_log_filled(&restarted);
    }
}

#[test]
fn disk_unsynced_writes_survive_as_a_prefix() {
    let mut kept_counts = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let s = SimStore::new();
        s.write(&element(1)).unwrap();
        for seq in 2..=6 {
            s.write_unsynced(&element(seq)).unwrap();
        }
        // The process sees all of them before the crash.
        assert_eq!(seqs(&s), [1, 2, 3, 4, 5, 6]);
        let crash = s.crash(&mut SimRng::new(seed));
        assert_eq!(crash.pending, 5);
        let after = seqs(&s.reopen());
        assert_eq!(after, (1..=1 + crash.kept as u64).collect::<Vec<_>>());
        kept_counts.insert(crash.kept);
    }
    assert_eq!(
        kept_counts.len(),
        6,
        "every prefix length happens: {kept_counts:?}"
    );
}

#[test]
fn disk_a_synced_write_makes_earlier_unsynced_ones_durable() {
    let s = SimStore::new();
    s.write_unsynced(&element(1)).unwrap();
    s.trim(TopicId(3), 1).unwrap();
    s.put_value(GroupId(1), "vote", b"v").unwrap();
    s.write_unsynced(&element(2)).unwrap();
    let crash = s.crash(&mut SimRng::new(0));
    assert_eq!(crash.pending, 1);
    let r = s.reopen();
    assert_eq!(seqs(&r)[0], 1);
    assert_eq!(
        r.value(GroupId(1), "vote").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn disk_an_unsynced_log_append_waits_for_the_next_sync() {
    let mut lost = 0;
    for seed in 0..50 {
        let s = SimStore::new();
        s.append_log(GroupId(1), &[(1, vec![1])]).unwrap();
        s.append_log_unsynced(GroupId(1), &[(2, vec![2])]).unwrap();
        assert_eq!(s.last_log(GroupId(1)).unwrap(), Some((2, vec![2])));
        let crash = s.crash(&mut SimRng::new(seed));
        assert_eq!(crash.pending, 1);
        let last = s.reopen().last_log(GroupId(1)).unwrap();
        if crash.kept == 0 {
            lost += 1;
            assert_eq!(last, Some((1, vec![1])), "seed {seed}");
        } else {
            assert_eq!(last, Some((2, vec![2])), "seed {seed}");
        }
    }
    assert!(
        0 < lost && lost < 50,
        "both outcomes happen: {lost} of 50 lost"
    );
    // A synced call of any group after it makes it durable.
    let s = SimStore::new();
    s.append_log_unsynced(GroupId(1), &[(1, vec![1])]).unwrap();
    s.put_value(GroupId(2), "vote", b"v").unwrap();
    s.crash(&mut SimRng::new(0));
    assert_eq!(s.reopen().last_log(GroupId(1)).unwrap(), Some((1, vec![1])));
}

#[test]
fn disk_a_torn_sync_survives_whole_or_not_at_all_and_is_never_acknowledged() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..100 {
        let s = SimStore::new();
        s.write(&element(1)).unwrap();
        s.write_unsynced(&element(2)).unwrap();
        s.tear_next_sync(seed);
        let mut b = element(3);
        b.push(Op::PutElement(
            TopicId(3),
            Element {
                seq: 4,
                payload: Bytes::from_static(b"e4"),
                append_time_ms: 4,
                cause: None,
                handler: None,
            },
        ));
        assert!(s.write(&b).is_err(), "a torn write is never Ok");
        let crash = s.crashed().expect("the tear crashed the disk");
        assert!(crash.torn);
        let after = seqs(&s.reopen());
        // Element 2 (unsynced) and the batch 3+4 (torn) as a log prefix.
        assert!(
            [vec![1], vec![1, 2], vec![1, 2, 3, 4]].contains(&after),
            "{after:?}"
        );
        outcomes.insert(after);
    }
    assert_eq!(outcomes.len(), 3);
}

#[test]
fn disk_a_failed_write_applies_nothing() {
    let s = SimStore::new();
    s.write(&element(1)).unwrap();
    s.fail_next_write();
    assert!(s.write(&element(2)).is_err());
    assert_eq!(seqs(&s), [1]);
    assert_eq!(s.failed_writes(), 1);
    s.write(&element(3)).unwrap();
    assert_eq!(seqs(&s), [1, 3]);
}
