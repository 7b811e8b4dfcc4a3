//! The behaviour every [`Store`] and [`RaftLogStore`] must show. Each
//! store's tests call [`run_all`] and [`run_raft_log`] with a function that
//! makes a fresh, empty store.

use bytes::Bytes;

use super::raft_log::{GroupId, RaftLogStore};
use super::{Op, Store, WriteBatch};
use crate::topic::{Element, ProducerWindow, TopicConfig, TopicId, TopicMeta, TopicName};

/// Runs every check, each on a fresh store from `fresh`.
pub fn run_all<S: Store>(mut fresh: impl FnMut() -> S) {
    empty_store_is_empty(&fresh());
    fill_then_read(&fresh());
    keys_order_numerically(&fresh());
    scan_respects_limits(&fresh());
    trim_removes_only_below(&fresh());
    delete_topic_leaves_others(&fresh());
    producer_windows_round_trip(&fresh());
    effects_are_indexed_found_and_trimmed(&fresh());
    applied_writes_are_read_at_once(&fresh());
    fixed_reads_miss_later_writes(&fresh());
}

/// What [`Store::read_fixed`] shows stays as it was when it was called,
/// whatever is written, trimmed or deleted meanwhile, and in every way of
/// writing.
fn fixed_reads_miss_later_writes<S: Store>(s: &S) {
    let (t, other) = (TopicId(4), TopicId(5));
    let mut w = ProducerWindow::default();
    w.record(1, 1, 1);
    s.write(&batch([
        Op::PutElement(t, element(1, "one")),
        Op::PutElement(t, element(2, "two")),
        Op::PutProducer(t, "p".into(), w.clone()),
        Op::PutElement(other, element(1, "other")),
    ]))
    .unwrap();
    s.write_applied(&batch([Op::PutElement(t, element(3, "three"))]))
        .unwrap();
    let mut later = w.clone();
    later.record(2, 2, 1);
    let mut seen = 0;
    s.read_fixed(&mut |view| {
        s.write_applied(&batch([
            Op::PutElement(t, element(4, "four")),
            Op::PutProducer(t, "p".into(), later.clone()),
            Op::PutProducer(t, "q".into(), ProducerWindow::default()),
        ]))?;
        s.write_unsynced(&batch([Op::PutElement(t, element(5, "five"))]))?;
        s.trim(t, 3)?;
        s.write(&batch([Op::DeleteTopic(other)]))?;
        let payloads: Vec<Bytes> = view
            .scan(t, 1, 10, 1 << 20)?
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(payloads, ["one", "two", "three"].map(Bytes::from));
        assert_eq!(view.producers(t, 10)?, [("p".to_string(), w.clone())]);
        assert_eq!(view.scan(other, 1, 10, 1 << 20)?.len(), 1);
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 1, "read_fixed calls its function once");
    // The store itself has moved on.
    assert_eq!(
        s.scan(t, 1, 10, 1 << 20).unwrap().first().map(|e| e.seq),
        Some(3)
    );
    assert_eq!(s.producer(t, "p").unwrap(), Some(later));
    assert!(s.scan(other, 1, 10, 1 << 20).unwrap().is_empty());
}

/// What a state machine applied is read back at once, in order with the
/// other writes, whether or not it is durable yet.
fn applied_writes_are_read_at_once<S: Store>(s: &S) {
    s.write(&batch([Op::PutElement(TopicId(9), element(1, "logged"))]))
        .unwrap();
    s.write_applied(&batch([
        Op::PutElement(TopicId(9), element(1, "applied")),
        Op::PutElement(TopicId(9), element(2, "two")),
    ]))
    .unwrap();
    s.write_unsynced(&batch([Op::PutElement(TopicId(9), element(3, "three"))]))
        .unwrap();
    let payloads: Vec<Bytes> = s
        .scan(TopicId(9), 1, 10, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(payloads, ["applied", "two", "three"].map(Bytes::from));
}

fn meta(id: u64, name: &str) -> TopicMeta {
    TopicMeta {
        id: TopicId(id),
        name: TopicName::new(name).unwrap(),
        config: TopicConfig::default(),
        created_at_ms: 1_700_000_000_000 + id,
        placement: Default::default(),
    }
}

fn element(seq: u64, payload: &str) -> Element {
    Element {
        seq,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        append_time_ms: 1_000 + seq,
        cause: None,
        handler: None,
    }
}

/// Element `seq` of a topic, made by handler `handler` of topic `from` from
/// its element `cause_seq`.
fn caused(seq: u64, from: &str, handler: &str, cause_seq: u64) -> Element {
    Element {
        cause: Some(crate::topic::Cause {
            topic: from.into(),
            seq: cause_seq,
            handler: handler.into(),
            node: "n1".into(),
            time_ms: 5,
        }),
        ..element(seq, "out")
    }
}

fn effects_are_indexed_found_and_trimmed<S: Store>(s: &S) {
    // Topic 3 holds outputs of two handlers of "in" and one of "other",
    // interleaved, plus elements nobody caused.
    s.write(&batch([
        Op::PutElement(TopicId(3), element(1, "plain")),
        Op::PutElement(TopicId(3), caused(2, "in", "a", 1)),
        Op::PutElement(TopicId(3), caused(3, "in", "a", 1)),
        Op::PutElement(TopicId(3), caused(4, "in", "b", 1)),
        Op::PutElement(TopicId(3), caused(5, "other", "a", 1)),
        Op::PutElement(TopicId(3), caused(6, "in", "a", 2)),
        Op::PutElement(TopicId(4), caused(1, "in", "a", 1)),
    ]))
    .unwrap();
    let seqs = |from: &str, h: &str, cause: u64| -> Vec<u64> {
        s.effects(TopicId(3), from, h, cause, 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs("in", "a", 1), vec![2, 3]);
    assert_eq!(seqs("in", "b", 1), vec![4]);
    assert_eq!(seqs("other", "a", 1), vec![5]);
    assert_eq!(seqs("in", "a", 2), vec![6]);
    assert!(seqs("in", "a", 3).is_empty());
    assert!(seqs("in", "c", 1).is_empty());
    assert_eq!(s.effects(TopicId(3), "in", "a", 1, 1).unwrap().len(), 1);
    assert_eq!(s.get(TopicId(3), 2).unwrap(), Some(caused(2, "in", "a", 1)));
    // A trim takes the index entries of what it removes, and only those.
    s.trim(TopicId(3), 4).unwrap();
    assert!(seqs("in", "a", 1).is_empty());
    assert_eq!(seqs("in", "b", 1), vec![4]);
    assert_eq!(seqs("in", "a", 2), vec![6]);
    assert_eq!(s.effects(TopicId(4), "in", "a", 1, 10).unwrap().len(), 1);
    s.write(&batch([Op::DeleteTopic(TopicId(4))])).unwrap();
    assert!(s.effects(TopicId(4), "in", "a", 1, 10).unwrap().is_empty());
}

fn batch(ops: impl IntoIterator<Item = Op>) -> WriteBatch {
    let mut b = WriteBatch::default();
    for op in ops {
        b.push(op);
    }
    b
}

fn empty_store_is_empty<S: Store>(s: &S) {
    assert!(s.topics().unwrap().is_empty());
    assert_eq!(s.next_topic_id().unwrap(), 1);
    assert_eq!(s.last_seq(TopicId(1)).unwrap(), 0);
    assert_eq!(s.get(TopicId(1), 1).unwrap(), None);
    assert!(s.scan(TopicId(1), 1, 10, 1 << 20).unwrap().is_empty());
    assert_eq!(s.producer(TopicId(1), "p").unwrap(), None);
}

/// Two topics, a next id and a producer: what [`check_filled`] expects.
pub fn fill<S: Store>(s: &S) {
    let mut w = ProducerWindow::default();
    w.record(3, 2, 1);
    s.write(&batch([
        Op::PutTopic(meta(1, "farm/a")),
        Op::PutTopic(meta(2, "farm/b")),
        Op::PutNextTopicId(3),
    ]))
    .unwrap();
    s.write(&batch((1..=5).map(|i| {
        Op::PutElement(TopicId(1), element(i, &format!("a{i}")))
    })))
    .unwrap();
    s.write(&batch([
        Op::PutElement(TopicId(2), element(1, "b1")),
        Op::PutProducer(TopicId(1), "p".into(), w),
    ]))
    .unwrap();
}

/// Checks what [`fill`] wrote, as a fresh reader (after a reopen) sees it.
pub fn check_filled<S: Store>(s: &S) {
    assert_eq!(s.topic(TopicId(1)).unwrap(), Some(meta(1, "farm/a")));
    assert_eq!(s.topic(TopicId(3)).unwrap(), None);
    let mut topics = s.topics().unwrap();
    topics.sort_by_key(|m| m.id);
    assert_eq!(topics, vec![meta(1, "farm/a"), meta(2, "farm/b")]);
    assert_eq!(s.next_topic_id().unwrap(), 3);
    assert_eq!(s.last_seq(TopicId(1)).unwrap(), 5);
    assert_eq!(s.last_seq(TopicId(2)).unwrap(), 1);
    assert_eq!(s.last_seq(TopicId(3)).unwrap(), 0);
    assert_eq!(s.get(TopicId(1), 3).unwrap(), Some(element(3, "a3")));
    assert_eq!(s.get(TopicId(1), 6).unwrap(), None);
    assert_eq!(s.get(TopicId(2), 1).unwrap(), Some(element(1, "b1")));
    let all: Vec<_> = s.scan(TopicId(1), 1, 100, 1 << 20).unwrap();
    assert_eq!(
        all,
        (1..=5)
            .map(|i| element(i, &format!("a{i}")))
            .collect::<Vec<_>>()
    );
    let mut w = ProducerWindow::default();
    w.record(3, 2, 1);
    assert_eq!(s.producer(TopicId(1), "p").unwrap(), Some(w));
    assert_eq!(s.producer(TopicId(2), "p").unwrap(), None);
}

fn fill_then_read<S: Store>(s: &S) {
    fill(s);
    check_filled(s);
}

/// Sequence 256 must sort after 255 (a little-endian key would not).
fn keys_order_numerically<S: Store>(s: &S) {
    s.write(&batch(
        (250..=260).map(|i| Op::PutElement(TopicId(255), element(i, "x"))),
    ))
    .unwrap();
    s.write(&batch([Op::PutElement(TopicId(256), element(1, "y"))]))
        .unwrap();
    let seqs: Vec<u64> = s
        .scan(TopicId(255), 1, 100, 1 << 20)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (250..=260).collect::<Vec<_>>());
    assert_eq!(s.last_seq(TopicId(255)).unwrap(), 260);
    assert_eq!(s.last_seq(TopicId(256)).unwrap(), 1);
    assert_eq!(s.last_seq(TopicId(254)).unwrap(), 0);
}

fn scan_respects_limits<S: Store>(s: &S) {
    s.write(&batch(
        (1..=10).map(|i| Op::PutElement(TopicId(1), element(i, "0123456789"))),
    ))
    .unwrap();
    assert_eq!(s.scan(TopicId(1), 4, 3, 1 << 20).unwrap().len(), 3);
    assert_eq!(s.scan(TopicId(1), 4, 3, 1 << 20).unwrap()[0].seq, 4);
    // 25 bytes fit two 10-byte payloads, not three.
    assert_eq!(s.scan(TopicId(1), 1, 100, 25).unwrap().len(), 2);
    // One element is returned even if it alone is over the byte bound.
    assert_eq!(s.scan(TopicId(1), 1, 100, 1).unwrap().len(), 1);
    assert!(s.scan(TopicId(1), 11, 100, 1 << 20).unwrap().is_empty());
}

fn trim_removes_only_below<S: Store>(s: &S) {
    s.write(&batch(
        (1..=10).map(|i| Op::PutElement(TopicId(1), element(i, "t"))),
    ))
    .unwrap();
    s.write(&batch(
        (1..=10).map(|i| Op::PutElement(TopicId(2), element(i, "u"))),
    ))
    .unwrap();
    s.trim(TopicId(1), 8).unwrap();
    assert_eq!(s.get(TopicId(1), 7).unwrap(), None);
    assert_eq!(s.get(TopicId(1), 8).unwrap(), Some(element(8, "t")));
    assert_eq!(s.scan(TopicId(1), 1, 100, 1 << 20).unwrap()[0].seq, 8);
    assert_eq!(s.last_seq(TopicId(1)).unwrap(), 10);
    assert_eq!(s.scan(TopicId(2), 1, 100, 1 << 20).unwrap().len(), 10);
    // Trimming again, or below what is already gone, is harmless.
    s.trim(TopicId(1), 8).unwrap();
    s.trim(TopicId(1), 3).unwrap();
    assert_eq!(s.scan(TopicId(1), 1, 100, 1 << 20).unwrap().len(), 3);
}

fn delete_topic_leaves_others<S: Store>(s: &S) {
    fill(s);
    s.write(&batch([Op::DeleteTopic(TopicId(1))])).unwrap();
    let topics = s.topics().unwrap();
    assert_eq!(topics, vec![meta(2, "farm/b")]);
    assert_eq!(s.last_seq(TopicId(1)).unwrap(), 0);
    assert!(s.scan(TopicId(1), 1, 100, 1 << 20).unwrap().is_empty());
    assert_eq!(s.producer(TopicId(1), "p").unwrap(), None);
    assert_eq!(s.get(TopicId(2), 1).unwrap(), Some(element(1, "b1")));
    assert_eq!(s.next_topic_id().unwrap(), 3);
}

fn producer_windows_round_trip<S: Store>(s: &S) {
    let mut w = ProducerWindow::default();
    for i in 1..=100 {
        w.record(i * 2, i, 1);
    }
    let long_id = "p".repeat(crate::topic::PRODUCER_ID_BYTES_MAX);
    s.write(&batch([
        Op::PutProducer(TopicId(1), long_id.clone(), w.clone()),
        Op::PutProducer(TopicId(1), "q".into(), ProducerWindow::default()),
    ]))
    .unwrap();
    assert_eq!(s.producer(TopicId(1), &long_id).unwrap(), Some(w));
    assert_eq!(
        s.producer(TopicId(1), "q").unwrap(),
        Some(ProducerWindow::default())
    );
    assert_eq!(s.producer(TopicId(1), "pp").unwrap(), None);
    let listed: Vec<String> = s
        .producers(TopicId(1), 100)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, [long_id.clone(), "q".to_string()]);
    assert_eq!(s.producers(TopicId(1), 1).unwrap().len(), 1);
    assert!(s.producers(TopicId(2), 100).unwrap().is_empty());
}

/// Runs every Raft log check, each on a fresh store from `fresh`.
pub fn run_raft_log<S: RaftLogStore>(mut fresh: impl FnMut() -> S) {
    empty_raft_log(&fresh());
    {
        let s = fresh();
        fill_raft_log(&s);
        check_raft_log_filled(&s);
    }
    raft_log_reads_ranges(&fresh());
    raft_log_truncates_and_purges(&fresh());
    raft_groups_are_separate(&fresh());
    raft_log_appends_handed_over(&fresh());
    raft_groups_are_listed(&fresh());
    raft_snapshots_are_kept(&fresh());
}

fn read_snapshot(mut f: super::SnapshotFile) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).unwrap();
    bytes
}

/// A group keeps one snapshot; a reader of the one it replaces still reads
/// the old bytes; deleting the group deletes its snapshot.
fn raft_snapshots_are_kept<S: RaftLogStore>(s: &S) {
    use std::io::Write;
    assert!(s.snapshot_open(GroupId(7)).unwrap().is_none());
    let mut f = s.snapshot_create().unwrap();
    f.write_all(b"first").unwrap();
    s.snapshot_keep(GroupId(7), f).unwrap();
    let old = s.snapshot_open(GroupId(7)).unwrap().unwrap();
    let mut f = s.snapshot_create().unwrap();
    f.write_all(b"second").unwrap();
    // Not kept: nobody's.
    let mut dropped = s.snapshot_create().unwrap();
    dropped.write_all(b"dropped").unwrap();
    drop(dropped);
    s.snapshot_keep(GroupId(7), f).unwrap();
    assert_eq!(read_snapshot(old), b"first");
    let new = s.snapshot_open(GroupId(7)).unwrap().unwrap();
    assert_eq!(read_snapshot(new), b"second");
    // Kept from a buffer, not a file of this store.
    let mut buffer = super::SnapshotFile::memory();
    buffer.write_all(b"buffered").unwrap();
    s.snapshot_keep(GroupId(8), buffer).unwrap();
    let kept = s.snapshot_open(GroupId(8)).unwrap().unwrap();
    assert_eq!(read_snapshot(kept), b"buffered");
    s.put_value(GroupId(7), "vote", b"v").unwrap();
    s.delete_group(GroupId(7)).unwrap();
    assert!(s.snapshot_open(GroupId(7)).unwrap().is_none());
    assert!(s.snapshot_open(GroupId(8)).unwrap().is_some());
}

fn entry(i: u64) -> (u64, Vec<u8>) {
    (i, format!("entry-{i}").into_bytes())
}

fn empty_raft_log<S: RaftLogStore>(s: &S) {
    assert_eq!(s.last_log(GroupId(1)).unwrap(), None);
    assert!(s.read_log(GroupId(1), 0, u64::MAX, 100).unwrap().is_empty());
    assert_eq!(s.value(GroupId(1), "vote").unwrap(), None);
}

/// Group 7 holds entries 1..=300 and a vote; group 8 entry 1.
pub fn fill_raft_log<S: RaftLogStore>(s: &S) {
    s.append_log(GroupId(7), &(1..=300).map(entry).collect::<Vec<_>>())
        .unwrap();
    s.append_log(GroupId(8), &[entry(1)]).unwrap();
    s.put_value(GroupId(7), "vote", b"term 3 for node 2")
        .unwrap();
}

/// Checks what [`fill_raft_log`] wrote.
pub fn check_raft_log_filled<S: RaftLogStore>(s: &S) {
    assert_eq!(s.last_log(GroupId(7)).unwrap(), Some(entry(300)));
    assert_eq!(s.last_log(GroupId(8)).unwrap(), Some(entry(1)));
    let all = s.read_log(GroupId(7), 1, 301, 1000).unwrap();
    assert_eq!(all, (1..=300).map(entry).collect::<Vec<_>>());
    assert_eq!(
        s.value(GroupId(7), "vote").unwrap().as_deref(),
        Some(&b"term 3 for node 2"[..])
    );
    assert_eq!(s.value(GroupId(8), "vote").unwrap(), None);
}

fn raft_log_reads_ranges<S: RaftLogStore>(s: &S) {
    s.append_log(GroupId(1), &(1..=20).map(entry).collect::<Vec<_>>())
        .unwrap();
    let indexes = |v: Vec<(u64, Vec<u8>)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(
        indexes(s.read_log(GroupId(1), 5, 8, 100).unwrap()),
        [5, 6, 7]
    );
    assert_eq!(indexes(s.read_log(GroupId(1), 5, 100, 2).unwrap()), [5, 6]);
    assert!(s.read_log(GroupId(1), 8, 5, 100).unwrap().is_empty());
    assert!(s.read_log(GroupId(1), 21, 30, 100).unwrap().is_empty());
    // Re-appending an index replaces it.
    s.append_log(GroupId(1), &[(20, b"new".to_vec())]).unwrap();
    assert_eq!(s.last_log(GroupId(1)).unwrap(), Some((20, b"new".to_vec())));
    // An unsynced append reads back at once, like a synced one.
    s.append_log_unsynced(GroupId(1), &[entry(21), entry(22)])
        .unwrap();
    assert_eq!(
        indexes(s.read_log(GroupId(1), 19, 30, 100).unwrap()),
        [19, 20, 21, 22]
    );
}

fn raft_log_truncates_and_purges<S: RaftLogStore>(s: &S) {
    s.append_log(GroupId(1), &(1..=20).map(entry).collect::<Vec<_>>())
        .unwrap();
    s.truncate_log(GroupId(1), 15).unwrap();
    assert_eq!(s.last_log(GroupId(1)).unwrap(), Some(entry(14)));
    s.purge_log(GroupId(1), 10).unwrap();
    let left = s.read_log(GroupId(1), 0, u64::MAX, 100).unwrap();
    assert_eq!(left, (11..=14).map(entry).collect::<Vec<_>>());
    // Purging everything leaves an empty log, not an error.
    s.purge_log(GroupId(1), u64::MAX).unwrap();
    assert_eq!(s.last_log(GroupId(1)).unwrap(), None);
    s.truncate_log(GroupId(1), 0).unwrap();
}

/// Appends handed over with `append_log_then`, from several threads at
/// once, one at a time per group as a group's Raft does: each is told Ok
/// twice, reads back once told it is written, and every group reads back
/// all its entries, in order. Among them, appends bigger than a store may
/// write together (2 MiB), between small ones.
fn raft_log_appends_handed_over<S: RaftLogStore>(s: &S) {
    const GROUPS: u64 = 6;
    const APPENDS: u64 = 40;
    let big = |i: u64| (i, vec![i as u8; 2 << 20]);
    std::thread::scope(|scope| {
        for g in 0..GROUPS {
            scope.spawn(move || {
                for i in 1..=APPENDS {
                    let e = if g == 0 && i % 10 == 0 {
                        big(i)
                    } else {
                        entry(i)
                    };
                    let (tx, rx) = std::sync::mpsc::channel();
                    let (wtx, wrx) = std::sync::mpsc::channel();
                    s.append_log_then(
                        GroupId(100 + g),
                        vec![e],
                        Box::new(move |outcome| wtx.send(outcome).unwrap()),
                        Box::new(move |outcome| tx.send(outcome).unwrap()),
                    );
                    wrx.recv().unwrap().unwrap();
                    let last = s.last_log(GroupId(100 + g)).unwrap();
                    assert_eq!(last.map(|(i, _)| i), Some(i), "written, not read back");
                    rx.recv().unwrap().unwrap();
                }
            });
        }
    });
    for g in 0..GROUPS {
        let all = s.read_log(GroupId(100 + g), 0, u64::MAX, 1000).unwrap();
        let want: Vec<_> = (1..=APPENDS)
            .map(|i| {
                if g == 0 && i % 10 == 0 {
                    big(i)
                } else {
                    entry(i)
                }
            })
            .collect();
        assert!(
            all == want,
            "group {}: appends lost or out of order",
            100 + g
        );
    }
}

fn raft_groups_are_separate<S: RaftLogStore>(s: &S) {
    // Groups 255 and 256 differ only in their low byte: keys must not mix.
    s.append_log(GroupId(255), &(1..=3).map(entry).collect::<Vec<_>>())
        .unwrap();
    s.append_log(GroupId(256), &(1..=5).map(entry).collect::<Vec<_>>())
        .unwrap();
    s.put_value_unsynced(GroupId(255), "committed", b"1")
        .unwrap();
    s.put_value(GroupId(255), "committed", b"2").unwrap();
    s.put_value_unsynced(GroupId(256), "committed", b"4")
        .unwrap();
    assert_eq!(
        s.value(GroupId(256), "committed").unwrap().as_deref(),
        Some(&b"4"[..]),
        "an unsynced value reads back at once"
    );
    s.truncate_log(GroupId(255), 2).unwrap();
    assert_eq!(s.last_log(GroupId(256)).unwrap(), Some(entry(5)));
    s.delete_group(GroupId(256)).unwrap();
    assert_eq!(s.last_log(GroupId(256)).unwrap(), None);
    assert_eq!(s.value(GroupId(256), "committed").unwrap(), None);
    assert_eq!(s.last_log(GroupId(255)).unwrap(), Some(entry(1)));
    assert_eq!(
        s.value(GroupId(255), "committed").unwrap().as_deref(),
        Some(&b"2"[..])
    );
}

fn raft_groups_are_listed<S: RaftLogStore>(s: &S) {
    assert!(s.groups().unwrap().is_empty());
    // Only values count: a log without values is not a started group.
    s.append_log(GroupId(3), &[entry(1)]).unwrap();
    s.put_value(GroupId(256), "vote", b"v").unwrap();
    s.put_value(GroupId(256), "applied", b"a").unwrap();
    s.put_value(GroupId(255), "vote", b"v").unwrap();
    s.put_value(GroupId(u64::MAX), "vote", b"v").unwrap();
    assert_eq!(
        s.groups().unwrap(),
        [GroupId(255), GroupId(256), GroupId(u64::MAX)]
    );
    s.delete_group(GroupId(256)).unwrap();
    assert_eq!(s.groups().unwrap(), [GroupId(255), GroupId(u64::MAX)]);
}
