//! openraft's state machine for one topic: applies [`Command`]s through the
//! topic [`Machine`] into the node's [`Store`], and snapshots the topic.
//!
//! Everything one `apply` call changes (elements, producer windows, the
//! last applied log id and membership) goes to the store in one atomic
//! batch, so a crash can never leave elements without the log position that
//! produced them (a replay would append them twice).
//!
//! With [`TopicStateMachine::publishing_to`], every apply also shows the new
//! range to the node's [`Topics`], which serves reads and subscriptions.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde_bytes::ByteBuf;

use super::{Command, CommandResult, TypeConfig, blocking, decode, encode, quick};
use crate::error::Error;
use crate::store::{GroupId, Op, RaftLogStore, Store, WriteBatch};
use crate::topic::{Element, Machine, Producer, ProducerWindow, TopicId, TopicMeta};
use crate::topics::Topics;

/// The value name under which the applied state is kept.
const APPLIED: &str = "applied";
/// Producer windows a snapshot carries at most.
const SNAPSHOT_PRODUCERS_MAX: usize = 100_000;

type Membership = StoredMembership<u64, BasicNode>;

/// The last applied log id and membership, stored with the data.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Applied {
    last_applied: Option<LogId<u64>>,
    membership: Membership,
}

/// A whole topic at one log position.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotData {
    applied: Applied,
    meta: Option<TopicMeta>,
    elements: Vec<(u64, u64, ByteBuf)>,
    producers: Vec<(String, ByteBuf)>,
}

/// One topic's state machine.
pub struct TopicStateMachine {
    store: Arc<dyn Store>,
    group: GroupId,
    machine: Option<Machine>,
    applied: Applied,
    current: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    /// Where readers learn of what was applied.
    readers: Option<Topics>,
}

fn sm_read(e: Error) -> StorageError<u64> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn sm_write(e: Error) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl TopicStateMachine {
    /// Loads the state machine of `group` (the topic with the same id).
    /// `store` and `raft` are the node's one database seen through its two
    /// traits: the applied state is written through `store`, in the same
    /// batch as the data, and read back through `raft`.
    pub async fn open(
        store: Arc<dyn Store>,
        raft: Arc<dyn RaftLogStore>,
        group: GroupId,
    ) -> Result<Self, Error> {
        let (s, r) = (store.clone(), raft.clone());
        let (machine, applied) = blocking(move || {
            let topic = TopicId(group.0);
            let machine = match s.topic(topic)? {
                Some(meta) => Some(Machine::new(meta, s.last_seq(topic)?)),
                None => None,
            };
            let applied = r
                .value(group, APPLIED)?
                .map(|b| decode::<Applied>(&b))
                .transpose()?
                .unwrap_or_default();
            Ok((machine, applied))
        })
        .await?;
        Ok(Self {
            store,
            group,
            machine,
            applied,
            current: None,
            readers: None,
        })
    }

    /// Publishes every applied change to `topics` (and what is applied now).
    pub fn publishing_to(mut self, topics: Topics) -> Self {
        self.readers = Some(topics);
        self.publish(false);
        self
    }

    /// Shows readers the topic as applied; `existed` says whether there was
    /// a topic before, which is gone if there is none now.
    fn publish(&self, existed: bool) {
        let Some(readers) = &self.readers else { return };
        match &self.machine {
            Some(m) => readers.publish_replica(m.meta(), m.range()),
            None if existed => readers.retire_replica(self.topic()),
            None => {}
        }
    }

    /// The topic as this replica has applied it (`None` before creation).
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    fn topic(&self) -> TopicId {
        TopicId(self.group.0)
    }

    /// Builds a snapshot of the current state.
    fn snapshot(&self) -> Result<(SnapshotMeta<u64, BasicNode>, Vec<u8>), Error> {
        let mut elements = Vec::new();
        if let Some(m) = &self.machine {
            let range = m.range();
            let mut next = range.first.max(1);
            while range.last > 0 && next <= range.last {
                let batch = self.store.scan(self.topic(), next, 1000, 4 << 20)?;
                let Some(last) = batch.last() else { break };
                next = last.seq + 1;
                elements.extend(
                    batch
                        .into_iter()
                        .filter(|e| e.seq <= range.last)
                        .map(|e| (e.seq, e.append_time_ms, ByteBuf::from(e.payload.to_vec()))),
                );
            }
        }
        let producers = self
            .store
            .producers(self.topic(), SNAPSHOT_PRODUCERS_MAX)?
            .into_iter()
            .map(|(id, w)| (id, ByteBuf::from(w.encode())))
            .collect();
        let data = SnapshotData {
            applied: self.applied.clone(),
            meta: self.machine.as_ref().map(|m| m.meta().clone()),
            elements,
            producers,
        };
        let bytes = encode(&data)?;
        let last = self.applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                self.group.0,
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index)
            ),
        };
        Ok((meta, bytes))
    }
}

/// What a stopped group's storage says about its topic, without starting it.
#[derive(Debug, Clone)]
pub struct Peek {
    /// `None` before the topic's creation was applied here.
    pub meta: Option<TopicMeta>,
    pub last_seq: u64,
    /// The voters' addresses (`BasicNode::addr`), as last applied.
    pub voters: Vec<String>,
    pub applied_index: u64,
}

/// Reads what `group` applied, from storage (blocking).
pub fn peek(store: &dyn Store, raft: &dyn RaftLogStore, group: GroupId) -> Result<Peek, Error> {
    let topic = TopicId(group.0);
    let meta = store.topic(topic)?;
    let last_seq = match &meta {
        Some(_) => store.last_seq(topic)?,
        None => 0,
    };
    let applied = raft
        .value(group, APPLIED)?
        .map(|b| decode::<Applied>(&b))
        .transpose()?
        .unwrap_or_default();
    let membership = applied.membership.membership();
    Ok(Peek {
        meta,
        last_seq,
        voters: membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .collect(),
        applied_index: applied.last_applied.map_or(0, |l| l.index),
    })
}

/// A snapshot taken when openraft asked for a builder.
pub struct Builder {
    taken: Result<(SnapshotMeta<u64, BasicNode>, Vec<u8>), Error>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (meta, bytes) = self.taken.clone().map_err(sm_read)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

/// Decides one command into `batch`.
fn apply_command(
    store: &dyn Store,
    machine: &mut Option<Machine>,
    producers: &mut HashMap<String, ProducerWindow>,
    batch: &mut WriteBatch,
    command: Command,
) -> Result<CommandResult, Error> {
    Ok(match command {
        Command::Batch(commands) => {
            let mut results = Vec::with_capacity(commands.len());
            for command in commands {
                results.push(match command {
                    Command::Batch(_) => CommandResult::Refused(Error::InvalidArgument(
                        "a batch inside a batch".into(),
                    )),
                    command => apply_command(store, machine, producers, batch, command)?,
                });
            }
            CommandResult::Batch(results)
        }
        Command::Create(meta) => {
            if machine.is_none() {
                batch.push(Op::PutTopic(meta.clone()));
                *machine = Some(Machine::new(meta, 0));
            }
            CommandResult::Created
        }
        Command::Delete => match machine.take() {
            Some(m) => {
                batch.push(Op::DeleteTopic(m.meta().id));
                producers.clear();
                CommandResult::Deleted
            }
            None => CommandResult::Deleted,
        },
        Command::Append {
            payloads,
            producer,
            time_ms,
        } => {
            let Some(m) = machine.as_mut() else {
                return Ok(CommandResult::Refused(Error::TopicNotFound(String::new())));
            };
            let payloads = payloads
                .into_iter()
                .map(|p| bytes::Bytes::from(p.into_vec()))
                .collect();
            let answer = match producer {
                None => m.append(batch, payloads, None, time_ms),
                Some((id, seq)) => match Producer::new(id, seq) {
                    Err(e) => Err(e),
                    Ok(p) => {
                        if !producers.contains_key(&p.id) {
                            let stored = store.producer(m.meta().id, &p.id)?.unwrap_or_default();
                            producers.insert(p.id.clone(), stored);
                        }
                        let window = producers.get_mut(&p.id).expect("just inserted");
                        m.append(batch, payloads, Some((&p, window)), time_ms)
                    }
                },
            };
            match answer {
                Ok(outcome) => CommandResult::Appended(outcome),
                Err(e) => CommandResult::Refused(e),
            }
        }
    })
}

impl RaftStateMachine<TypeConfig> for TopicStateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let store = self.store.clone();
        let group = self.group;
        let mut machine = self.machine.clone();
        let mut applied = self.applied.clone();
        // Unsynced writes and reads of recent state: done in place.
        let (machine, applied, results) = quick(move || {
            let mut batch = WriteBatch::default();
            let mut producers = HashMap::new();
            let mut results = Vec::with_capacity(entries.len());
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                results.push(match entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::None
                    }
                    EntryPayload::Normal(command) => {
                        apply_command(&*store, &mut machine, &mut producers, &mut batch, command)?
                    }
                });
            }
            batch.push(Op::PutRaftValue(group, APPLIED.into(), encode(&applied)?));
            // Unsynced: the log these entries come from is synced, and a crash
            // that loses this batch makes openraft apply them again. Before
            // the log is purged, its purge point is written synced, which
            // makes this durable too (one WAL).
            store.write_unsynced(&batch)?;
            Ok((machine, applied, results))
        })
        .map_err(sm_write)?;
        let existed = self.machine.is_some();
        self.machine = machine;
        self.applied = applied;
        self.publish(existed);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let taken = self.snapshot();
        if let Ok(taken) = &taken {
            self.current = Some(taken.clone());
        }
        Builder { taken }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = decode(&bytes).map_err(sm_read)?;
        let topic = self.topic();
        let mut batch = WriteBatch::default();
        // Replace whatever this replica had with the snapshot's topic.
        batch.push(Op::DeleteTopic(topic));
        let mut last_seq = 0;
        if let Some(m) = &data.meta {
            batch.push(Op::PutTopic(m.clone()));
            for (seq, time, payload) in &data.elements {
                last_seq = *seq;
                batch.put_element(
                    topic,
                    Element {
                        seq: *seq,
                        payload: bytes::Bytes::from(payload.to_vec()),
                        append_time_ms: *time,
                    },
                );
            }
            for (id, window) in &data.producers {
                let window = ProducerWindow::decode(window).map_err(sm_read)?;
                batch.put_producer(topic, id, &window);
            }
        }
        let applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        batch.push(Op::PutRaftValue(
            self.group,
            APPLIED.into(),
            encode(&applied).map_err(sm_write)?,
        ));
        let store = self.store.clone();
        blocking(move || store.write(&batch))
            .await
            .map_err(sm_write)?;
        let existed = self.machine.is_some();
        self.machine = data.meta.map(|m| Machine::new(m, last_seq));
        self.applied = applied;
        self.publish(existed);
        self.current = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self.current.clone().map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
