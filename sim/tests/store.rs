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

/// A follower's append (`append_log_then_may_wait`) is synced in place while
/// nothing waits for the syncer and the disk is not slow (ADR 45), and goes
/// to the syncer behind what waits there otherwise: each told in order.
#[tokio::test(start_paused = true)]
async fn disk_a_followers_append_is_synced_in_place_only_while_the_syncer_is_idle() {
    use std::sync::{Arc, Mutex};
    let told = Arc::new(Mutex::new(Vec::new()));
    let tell = |n: u64| -> woof_consensus::store::raft_log::AppendDone {
        let told = told.clone();
        Box::new(move |r: woof_consensus::Result<()>| {
            r.unwrap();
            told.lock().unwrap().push(n);
        })
    };
    let s = SimStore::new();
    // Idle: synced before the call returns, and durable.
    s.append_log_then_may_wait(GroupId(1), vec![(1, vec![1])], Box::new(|_| {}), tell(1));
    assert_eq!(*told.lock().unwrap(), [1]);
    // A leader's append handed to the syncer: the follower's goes behind it.
    s.append_log_then(GroupId(2), vec![(1, vec![2])], Box::new(|_| {}), tell(2));
    s.append_log_then_may_wait(GroupId(1), vec![(2, vec![3])], Box::new(|_| {}), tell(3));
    assert_eq!(*told.lock().unwrap(), [1]);
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    assert_eq!(*told.lock().unwrap(), [1, 2, 3]);
    // Idle again: in place again.
    s.append_log_then_may_wait(GroupId(1), vec![(3, vec![4])], Box::new(|_| {}), tell(4));
    assert_eq!(*told.lock().unwrap(), [1, 2, 3, 4]);
    // A slow disk: the syncer takes it, after the delay.
    s.slow_until(
        tokio::time::Instant::now() + std::time::Duration::from_secs(10),
        7,
    );
    s.append_log_then_may_wait(GroupId(1), vec![(4, vec![5])], Box::new(|_| {}), tell(5));
    assert_eq!(told.lock().unwrap().len(), 4);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(*told.lock().unwrap(), [1, 2, 3, 4, 5]);
    s.crash(&mut SimRng::new(0));
    assert_eq!(s.reopen().last_log(GroupId(1)).unwrap(), Some((4, vec![5])));
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

#[test]
fn disk_applied_writes_wait_for_a_flush_and_logged_ones_after_them_do_not() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..100 {
        let s = SimStore::new();
        s.write_applied(&element(1)).unwrap();
        s.persist_applied().unwrap();
        s.write_applied(&element(2)).unwrap();
        s.write_applied(&element(3)).unwrap();
        s.put_value(GroupId(1), "vote", b"v").unwrap();
        assert_eq!(seqs(&s), [1, 2, 3]);
        let crash = s.crash(&mut SimRng::new(seed));
        assert_eq!(crash.since_flush, 3);
        let r = s.reopen();
        // The sync after them does not make them durable: only a flush
        // does, and it keeps a prefix.
        let after = seqs(&r);
        assert_eq!(
            after,
            (1..=1 + crash.flushed.min(2) as u64).collect::<Vec<_>>()
        );
        assert_eq!(
            r.value(GroupId(1), "vote").unwrap().as_deref(),
            Some(&b"v"[..]),
            "seed {seed}"
        );
        outcomes.insert(after.len());
    }
    assert_eq!(outcomes.len(), 3, "each prefix happens: {outcomes:?}");
}

mod purge {
    use std::sync::Arc;

    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use woof_consensus::bugs::Bug;
    use woof_consensus::raft::log_store::LogStore;
    use woof_consensus::raft::state_machine::TopicStateMachine;
    use woof_consensus::raft::{Command, Entry, EntryPayload, LogId, TypeConfig};
    use woof_consensus::store::GroupId;
    use woof_consensus::topic::{TopicConfig, TopicId, TopicMeta, TopicName};
    use woof_sim::rng::SimRng;
    use woof_sim::store::SimStore;

    const GROUP: GroupId = GroupId(1 << 62 | 5);

    fn log_id(index: u64) -> LogId {
        woof_consensus::raft::log_id(1, 1, index)
    }

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn applied_entries() -> Vec<Entry> {
        let meta = TopicMeta {
            id: TopicId(GROUP.0),
            name: TopicName::new("purge/test").unwrap(),
            config: TopicConfig::default(),
            created_at_ms: 1,
            placement: Default::default(),
        };
        let append = Command::Append {
            payloads: vec![bytes::Bytes::from_static(b"one")],
            producer: None,
            time_ms: 2,
            cause: None,
            handler: None,
        };
        vec![entry(1, Command::Create(meta)), entry(2, append)]
    }

    async fn applied_after_crash(s: &SimStore, seed: u64) -> Option<u64> {
        s.crash(&mut SimRng::new(seed));
        let r = Arc::new(s.reopen());
        let mut sm = TopicStateMachine::open(r.clone(), r, GROUP).await.unwrap();
        sm.applied_state().await.unwrap().0.map(|l| l.index)
    }

    /// What the state machine applied survives a crash once the log it came
    /// from is purged (the purge flushes first); without the purge a crash
    /// may take it back, to be applied again from the log.
    #[tokio::test]
    async fn a_purge_makes_what_was_applied_durable_first() {
        // What a crash leaves of a state machine that applied two entries,
        // their log purged first if `purge` (without its flush if `bug`).
        async fn kept(seed: u64, purge: bool, bug: bool) -> Option<u64> {
            let s = Arc::new(SimStore::new());
            let mut sm = TopicStateMachine::open(s.clone(), s.clone(), GROUP)
                .await
                .unwrap();
            sm.apply_entries(applied_entries()).await.unwrap();
            if purge {
                woof_consensus::bugs::set(bug.then_some(Bug::PurgeBeforePersist));
                let purged = LogStore::new(s.clone(), GROUP, 1).purge(log_id(2)).await;
                woof_consensus::bugs::set(None);
                purged.unwrap();
            }
            applied_after_crash(&s, seed).await
        }
        let (mut lost, mut lost_by_bug) = (0, 0);
        for seed in 0..20 {
            assert_eq!(kept(seed, true, false).await, Some(2), "seed {seed}");
            lost += usize::from(kept(seed, false, false).await != Some(2));
            lost_by_bug += usize::from(kept(seed, true, true).await != Some(2));
        }
        assert!(lost > 0, "a crash without a purge never took anything back");
        assert!(lost_by_bug > 0, "a purge without its flush lost nothing");
    }

    /// A snapshot's build makes what was applied durable (off the group's
    /// tasks), and tells the log store: the purge that follows makes no
    /// flush of its own (here it cannot: the purge's flush is switched off
    /// by the deliberate bug), and a crash still keeps what was applied.
    #[tokio::test]
    async fn a_snapshots_build_makes_what_was_applied_durable_for_the_purge_after_it() {
        use openraft::RaftSnapshotBuilder;
        use woof_consensus::raft::log_store::DurableApplied;
        for seed in 0..20 {
            let s = Arc::new(SimStore::new());
            let durable = DurableApplied::default();
            let mut sm = TopicStateMachine::open(s.clone(), s.clone(), GROUP)
                .await
                .unwrap()
                .sharing_durable(durable.clone());
            sm.apply_entries(applied_entries()).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            woof_consensus::bugs::set(Some(Bug::PurgeBeforePersist));
            let purged = LogStore::new(s.clone(), GROUP, 1)
                .sharing_durable(durable)
                .purge(log_id(2))
                .await;
            woof_consensus::bugs::set(None);
            purged.unwrap();
            assert_eq!(applied_after_crash(&s, seed).await, Some(2), "seed {seed}");
        }
    }

    /// A purge past what the state machine applied (openraft 0.9 purges a
    /// follower's log before the state machine has installed the snapshot
    /// that covers it) waits until it is applied; one that never is fails,
    /// purging nothing.
    #[tokio::test(start_paused = true)]
    async fn a_purge_waits_for_the_state_machine_to_apply_what_it_purges() {
        let s = Arc::new(SimStore::new());
        let mut sm = TopicStateMachine::open(s.clone(), s.clone(), GROUP)
            .await
            .unwrap();
        sm.apply_entries(applied_entries()).await.unwrap();
        let mut log = LogStore::new(s.clone(), GROUP, 1);
        let purge = tokio::spawn(async move { log.purge(log_id(3)).await.map(|()| log) });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(
            !purge.is_finished(),
            "the purge went ahead of the state machine"
        );
        let third = Command::Append {
            payloads: vec![bytes::Bytes::from_static(b"two")],
            producer: None,
            time_ms: 3,
            cause: None,
            handler: None,
        };
        sm.apply_entries(vec![entry(3, third)]).await.unwrap();
        let mut log = purge.await.unwrap().unwrap();
        let purged = |state: openraft::storage::LogState<TypeConfig>| state.last_purged_log_id;
        assert_eq!(purged(log.get_log_state().await.unwrap()), Some(log_id(3)));

        assert!(log.purge(log_id(9)).await.is_err());
        assert_eq!(purged(log.get_log_state().await.unwrap()), Some(log_id(3)));
        // As asked, for openraft's storage suite.
        let mut log = LogStore::new(s.clone(), GROUP, 1).purging_as_asked();
        log.purge(log_id(9)).await.unwrap();
        assert_eq!(purged(log.get_log_state().await.unwrap()), Some(log_id(9)));
    }
}
