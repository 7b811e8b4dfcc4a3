//! openraft's own storage test suite, run against woof's Raft log store and
//! topic state machine, on the in-memory store and on RocksDB.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use woof_consensus::raft::TypeConfig;
use woof_consensus::raft::log_store::LogStore;
use woof_consensus::raft::state_machine::TopicStateMachine;
use woof_consensus::store::{GroupId, MemStore, RaftLogStore, RocksStore, Store};

async fn build<S: Store + RaftLogStore>(
    store: S,
) -> Result<(LogStore, TopicStateMachine), StorageError<TypeConfig>> {
    let store = Arc::new(store);
    let group = GroupId(42);
    // The suite purges logs it never applies.
    let log = LogStore::new(store.clone(), group, 1).purging_as_asked();
    let sm = TopicStateMachine::open(store.clone(), store, group)
        .await
        .expect("open state machine");
    Ok((log, sm))
}

struct InMemory;

impl StoreBuilder<TypeConfig, LogStore, TopicStateMachine, ()> for InMemory {
    async fn build(&self) -> Result<((), LogStore, TopicStateMachine), StorageError<TypeConfig>> {
        let (log, sm) = build(MemStore::new()).await?;
        Ok(((), log, sm))
    }
}

struct OnRocks;

impl StoreBuilder<TypeConfig, LogStore, TopicStateMachine, tempfile::TempDir> for OnRocks {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, TopicStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = build(RocksStore::open(dir.path()).expect("open rocksdb")).await?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_in_memory() {
    Suite::test_all(InMemory).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_on_rocksdb() {
    Suite::test_all(OnRocks).await.unwrap();
}

mod topic_state_machine {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use woof_consensus::raft::{Command, CommandResult, Entry, EntryPayload, log_id};
    use woof_consensus::topic::{TopicConfig, TopicId, TopicMeta, TopicName};

    use super::*;

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: log_id(1, 0, index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn append(payloads: &[&str], producer: Option<(&str, u64)>) -> Command {
        Command::Append {
            payloads: payloads
                .iter()
                .map(|p| bytes::Bytes::from(p.as_bytes().to_vec()))
                .collect(),
            producer: producer.map(|(id, seq)| (id.to_string(), seq)),
            time_ms: 1_000,
            cause: None,
            handler: None,
        }
    }

    fn meta() -> TopicMeta {
        TopicMeta {
            id: TopicId(42),
            name: TopicName::new("farm/a").unwrap(),
            config: TopicConfig {
                element_max_bytes: 16,
                history: 3,
            },
            created_at_ms: 5,
            placement: Default::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_creates_appends_and_refusals_the_same_way_everywhere() {
        let store = Arc::new(MemStore::new());
        let mut sm = TopicStateMachine::open(store.clone(), store.clone(), GroupId(42))
            .await
            .unwrap();
        let results = sm
            .apply_entries(vec![
                entry(1, append(&["early"], None)),
                entry(2, Command::Create(meta())),
                entry(3, append(&["a", "b"], Some(("p", 1)))),
                entry(4, append(&["a", "b"], Some(("p", 1)))),
                entry(5, append(&["this one is far too long"], None)),
                entry(6, append(&["c", "d"], None)),
            ])
            .await
            .unwrap();
        assert!(
            matches!(results[0], CommandResult::Refused(_)),
            "before creation"
        );
        assert_eq!(results[1], CommandResult::Created);
        let CommandResult::Appended(first) = &results[2] else {
            panic!("{results:?}")
        };
        assert_eq!(
            (first.first_seq, first.count, first.duplicate),
            (1, 2, false)
        );
        let CommandResult::Appended(retry) = &results[3] else {
            panic!("{results:?}")
        };
        assert_eq!((retry.first_seq, retry.duplicate), (1, true));
        assert!(matches!(results[4], CommandResult::Refused(_)), "too long");
        assert_eq!(sm.machine().unwrap().last_seq(), 4);
        // History 3: the machine's range says 2..=4.
        assert_eq!(sm.machine().unwrap().range().first, 2);

        // What was applied survives a reopen, with its log position.
        let mut again = TopicStateMachine::open(store.clone(), store.clone(), GroupId(42))
            .await
            .unwrap();
        let (applied, _) = again.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 6);
        assert_eq!(again.machine().unwrap().last_seq(), 4);

        // A snapshot carries the topic to an empty replica, producers included.
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let other = Arc::new(MemStore::new());
        let mut replica = TopicStateMachine::open(other.clone(), other.clone(), GroupId(42))
            .await
            .unwrap();
        replica
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(replica.machine().unwrap().last_seq(), 4);
        assert_eq!(replica.applied_state().await.unwrap().0.unwrap().index, 6);
        let e = other.get(TopicId(42), 4).unwrap().unwrap();
        assert_eq!(&e.payload[..], b"d");
        let results = replica
            .apply_entries(vec![entry(7, append(&["a", "b"], Some(("p", 1))))])
            .await
            .unwrap();
        let CommandResult::Appended(retry) = &results[0] else {
            panic!("{results:?}")
        };
        assert!(
            retry.duplicate,
            "the producer window came with the snapshot"
        );

        // A batch of many clients' appends applies each in order, within
        // one entry: a producer's retry inside it is recognised, a bad one
        // refused alone, and a nested batch refused.
        let results = replica
            .apply_entries(vec![entry(
                8,
                Command::Batch(vec![
                    append(&["e"], Some(("q", 7))),
                    append(&["this one is far too long"], None),
                    append(&["e"], Some(("q", 7))),
                    Command::Batch(vec![append(&["x"], None)]),
                    append(&["f"], None),
                ]),
            )])
            .await
            .unwrap();
        let CommandResult::Batch(inner) = &results[0] else {
            panic!("{results:?}")
        };
        let seqs: Vec<Option<(u64, bool)>> = inner
            .iter()
            .map(|r| match r {
                CommandResult::Appended(o) => Some((o.first_seq, o.duplicate)),
                _ => None,
            })
            .collect();
        assert_eq!(
            seqs,
            [
                Some((5, false)),
                None,
                Some((5, true)),
                None,
                Some((6, false))
            ]
        );
        assert_eq!(replica.machine().unwrap().last_seq(), 6);

        // Delete removes the topic.
        let results = replica
            .apply_entries(vec![entry(9, Command::Delete)])
            .await
            .unwrap();
        assert_eq!(results[0], CommandResult::Deleted);
        assert!(replica.machine().is_none());
        assert!(other.topics().unwrap().is_empty());
    }
}
