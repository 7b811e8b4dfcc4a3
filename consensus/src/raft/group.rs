//! Starting a topic's Raft group on a node.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::{Config, ReadPolicy, SnapshotPolicy};

use super::log_bytes::{Ask, LogBytes};
use super::log_store::{DurableApplied, LogStore};
use super::network::{NetworkFactory, Router, Transport};
use super::snapshot::SnapshotLimits;
use super::state_machine::{self, TopicStateMachine};
use super::{Raft, TypeConfig, blocking};
use crate::bugs::{self, Bug};
use crate::error::Error;
use crate::local::Topics;
use crate::store::{GroupId, GroupStore};

/// Timing of every group on a node, and the sizes its snapshots move in.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// The most snapshot bytes one InstallSnapshot message carries
    /// (openraft's `snapshot_max_chunk_size`).
    pub snapshot_chunk_bytes: u64,
    /// How much of a snapshot a replica reads or writes at once while it
    /// builds or installs one.
    pub snapshot_limits: SnapshotLimits,
    /// A group builds a snapshot after this many log entries since its
    /// last, and then purges its log up to `log_kept` entries before it.
    pub snapshot_every: u64,
    pub log_kept: u64,
    /// And after this many bytes applied since its last, or as many as the
    /// last snapshot's size if that is more; then it keeps about
    /// `log_kept_bytes` of log before it, if that is less than `log_kept`
    /// entries hold (see [`super::log_bytes`]).
    pub snapshot_log_bytes: u64,
    pub log_kept_bytes: u64,
}

/// 1 MiB: well under what one message of the node's transport may carry
/// (a Raft batch of 4 MiB, an overlay message of 16 MiB), and big enough
/// that a large topic does not take a round trip per element.
const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;

impl Default for Timing {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Timing {
    /// Failover within about a second and a half on a LAN: openraft
    /// lets a follower that heard a leader wait out a lease of
    /// `election_max_ms` plus a random election timeout before it stands.
    pub const DEFAULT: Self = Self {
        heartbeat_ms: 100,
        election_min_ms: 400,
        election_max_ms: 700,
        snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        snapshot_limits: SnapshotLimits::DEFAULT,
        snapshot_every: 10_000,
        log_kept: 1_000,
        snapshot_log_bytes: 1 << 30,
        log_kept_bytes: 64 << 20,
    };
}

/// Log entries one AppendEntries carries at most. openraft 0.9 gives each
/// call one heartbeat interval; a catching-up follower must get small
/// enough calls to answer in time. An entry may hold a 1,000-element batch,
/// or a handler's 1,024 keyed outputs, each a command of its own with its
/// cause: 64 such entries took a follower longer to decode than the call
/// was given, so the same call was sent again and again and the follower
/// never caught up (seen after a SIGKILL in a test). The next call goes as
/// soon as one is answered, so small calls cost little. (Under openraft
/// 0.9; 0.10 no longer drops a call after the interval, but a follower
/// still answers small calls sooner.)
const PAYLOAD_ENTRIES_MAX: u64 = 8;

/// Starts (or restarts, from what `store` holds) group `group` as node
/// `node_id`, and registers it with `router`. With `readers`, what the group
/// applies is published to those topics (reads and subscriptions).
///
/// `resume_leading`: a replica that led the group when it stopped leads it
/// again at once, with no election. Only for a group this process stopped
/// itself (put to sleep): its log holds everything it ever sent, synced or
/// about to be (the node's log writer syncs in order). After a crash it
/// must not: a leader sends entries before its own write of them is synced
/// (ADR 28), so its log may have lost entries its followers hold under the
/// same term, and leading that term again would write different entries
/// under the same log ids. It stands for election in a new term instead,
/// which it wins only with a log as complete as a quorum's.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    node_id: u64,
    group: GroupId,
    store: Arc<dyn GroupStore>,
    transport: Arc<dyn Transport>,
    router: &Router,
    timing: Timing,
    readers: Option<&Topics>,
    resume_leading: bool,
) -> Result<Raft, Error> {
    let config = Config {
        cluster_name: "woof".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
        max_payload_entries: PAYLOAD_ENTRIES_MAX,
        max_in_snapshot_log_to_keep: timing.log_kept,
        snapshot_max_chunk_size: timing.snapshot_chunk_bytes,
        enable_leader_restore: Some(resume_leading),
        ..Config::default()
    }
    .validate()
    .map_err(|e| Error::InvalidArgument(format!("raft config: {e}")))?;
    let unreachable = bugs::on(Bug::RestartedGroupUnreachable) && store.last_log(group)?.is_some();
    let durable = DurableApplied::default();
    let log = LogStore::new(store.clone(), group, node_id).sharing_durable(durable.clone());
    let (asks, asked) = tokio::sync::mpsc::channel(UPKEEP_ASKS);
    let mut sm = TopicStateMachine::open(store.clone(), store, group)
        .await?
        .sharing_durable(durable)
        .with_snapshot_limits(timing.snapshot_limits)
        .with_upkeep(
            LogBytes::new(timing.snapshot_log_bytes, timing.log_kept_bytes),
            asks,
        );
    if let Some(topics) = readers {
        sm = sm.publishing_to(topics.clone());
    }
    let raft = Raft::new(
        node_id,
        Arc::new(config),
        NetworkFactory::new(group, transport),
        log,
        sm,
    )
    .await
    .map_err(|e| Error::Storage(format!("starting group {}: {e}", group.0)))?;
    tokio::spawn(upkeep(raft.clone(), asked));
    if !unreachable {
        router.insert(group, raft.clone());
    }
    Ok(raft)
}

/// Asks a group's state machine may have waiting at once; one more is
/// dropped, and made again later (see [`super::log_bytes`]).
const UPKEEP_ASKS: usize = 4;

/// How long a purge waits for openraft to hear of the snapshot that holds
/// it (openraft purges only what its last snapshot holds).
const PURGE_WAITS_FOR_SNAPSHOT: Duration = Duration::from_secs(10);

/// Passes what the group's state machine asks for on to openraft, until the
/// state machine is gone (the group stopped).
async fn upkeep(raft: Raft, mut asked: tokio::sync::mpsc::Receiver<Ask>) {
    while let Some(ask) = asked.recv().await {
        let done = match ask {
            Ask::Snapshot => raft.trigger().snapshot().await.map_err(|e| e.to_string()),
            Ask::PurgeUpTo(index) => {
                let held = raft
                    .wait(Some(PURGE_WAITS_FOR_SNAPSHOT))
                    .metrics(
                        |m| m.snapshot.is_some_and(|s| s.index >= index),
                        "a snapshot that holds the purge",
                    )
                    .await;
                match held {
                    Ok(_) => raft
                        .trigger()
                        .purge_log(index)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        if let Err(e) = done {
            tracing::debug!(?ask, "group upkeep: {e}");
        }
    }
}

/// The most entries [`catch_up`] applies at once.
const CATCH_UP_ENTRIES: u64 = 256;

/// Applies again, without running the group, the entries that `group`'s
/// log holds as committed beyond what its state machine applied, as
/// openraft does when a group starts. A crash takes back what the state
/// machines applied since the store's last flush (`Store::write_applied`);
/// a node calls this for every group it holds when it starts, so that the
/// topics of groups it does not run (asleep) serve readers all their log
/// committed. How many entries it applied.
pub async fn catch_up(store: Arc<dyn GroupStore>, group: GroupId) -> Result<u64, Error> {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
    let storage = |e: std::io::Error| Error::Storage(format!("group {}: {e}", group.0));
    // Only reads and applies: the node id (which appends use) is not needed.
    let mut log = LogStore::new(store.clone(), group, 0);
    let Some(committed) = log.read_committed().await.map_err(storage)? else {
        return Ok(0);
    };
    // One key to read for a group that is not behind (most, at every start).
    let (s, g) = (store.clone(), group);
    let applied = blocking(move || state_machine::applied_log_id(&*s, g)).await?;
    if applied.is_some_and(|a| a.index >= committed.index) {
        return Ok(0);
    }
    let mut sm = TopicStateMachine::open(store.clone(), store, group).await?;
    let (applied, _) = sm.applied_state().await.map_err(storage)?;
    let mut next = applied.map_or(0, |l| l.index + 1);
    let mut count = 0;
    while next <= committed.index {
        let to = committed.index.min(next + CATCH_UP_ENTRIES - 1);
        let entries = log.try_get_log_entries(next..=to).await.map_err(storage)?;
        if entries.first().map(|e| e.log_id.index) != Some(next) {
            // Purged (its snapshot holds them) or missing: openraft deals
            // with it when the group runs.
            break;
        }
        next = entries.last().map_or(to, |e| e.log_id.index) + 1;
        count += entries.len() as u64;
        sm.apply_entries(entries).await.map_err(storage)?;
    }
    Ok(count)
}

/// Confirms, with a quorum of the group, that this replica leads it and
/// has applied everything committed before the call: after `Ok`, what this
/// replica's topic holds is a linearizable answer. Otherwise the error says
/// who leads, if known.
///
/// Openraft's own check waits for what the leader knows committed. A
/// leader that took up its leadership again after a restart could know an
/// older commit than it had acknowledged (the committed log id is not
/// synced, see `LogStore::save_committed`), so this also waits until the
/// leader has applied every entry it held when the read came in: all it
/// acknowledged is among them. They commit as soon as a quorum answers
/// it, or the read fails after [`HELD_APPLIED_WITHIN`]. Since ADR 28 a
/// group restarted from storage never leads again without an election, so
/// the case no longer arises (the simulator's deliberate bug for it found
/// nothing left to break, and was retired); the wait stays, at the cost of
/// a comparison when there is nothing to wait for.
pub async fn confirm_leader(
    raft: &Raft,
) -> Result<(), RaftError<TypeConfig, LinearizableReadError<TypeConfig>>> {
    if bugs::on(Bug::StaleRead) {
        return Ok(());
    }
    let held = raft.metrics().borrow_watched().last_log_index;
    raft.ensure_linearizable(ReadPolicy::ReadIndex).await?;
    if held
        > raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
    {
        raft.wait(Some(HELD_APPLIED_WITHIN))
            .applied_index_at_least(held, "a read waits for what its leader holds")
            .await
            .map_err(|e| {
                RaftError::APIError(LinearizableReadError::QuorumNotEnough(
                    openraft::error::QuorumNotEnough {
                        cluster: format!("the entries this leader held were not applied: {e}"),
                        got: Default::default(),
                    },
                ))
            })?;
    }
    Ok(())
}

/// If `raft` leads its group, hands the leadership to the voter whose log
/// matches the most of this one (openraft's leader transfer: this node
/// stops taking writes, the voters stop waiting out its lease, and the
/// voter stands for election once its log holds all this node's), and
/// waits at most `within` for another node to lead. Returns the node it
/// went to; `None` if this node did not lead, the voters that answered it
/// lately are not a majority without it, or none took over in time (it is
/// then left to an election after the lease, as if this node had just
/// stopped).
pub async fn hand_over(raft: &Raft, within: Duration, gone: &HashSet<u64>) -> Option<u64> {
    let to = {
        let m = raft.metrics().borrow_watched().clone();
        successors(&m, raft.config().heartbeat_interval, gone)
            .into_iter()
            .max_by_key(|(id, matched)| (*matched, std::cmp::Reverse(*id)))?
            .0
    };
    transfer(raft, to, within).await
}

/// The voters that could take over from this node as the group's leader,
/// each with the highest log index it is known to hold: those that
/// answered it within three heartbeats (of `heartbeat_ms`) and are not
/// known `gone` (a node that said it leaves answered moments before it
/// did). None if this node does not lead, or if those are not a majority
/// without it: the next leader could then commit nothing (the last nodes
/// of a cluster stopping; it would only wake the group's handlers there to
/// fail).
pub fn successors(
    m: &super::Metrics,
    heartbeat_ms: u64,
    gone: &HashSet<u64>,
) -> Vec<(u64, Option<u64>)> {
    if m.state != openraft::ServerState::Leader {
        return Vec::new();
    }
    let answered = Duration::from_millis(heartbeat_ms * 3);
    let alive = |id: &u64| {
        m.heartbeat
            .as_ref()
            .and_then(|h| h.get(id).cloned().flatten())
            .is_some_and(|at| openraft::Instant::elapsed(&*at) < answered)
    };
    let matched = |id: u64| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index)
    };
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let others: Vec<(u64, Option<u64>)> = voters
        .iter()
        .copied()
        .filter(|id| *id != m.id && !gone.contains(id) && alive(id))
        .map(|id| (id, matched(id)))
        .collect();
    if others.len() <= voters.len() / 2 {
        return Vec::new();
    }
    others
}

/// Transfers the leadership of `raft`'s group, which this node leads, to
/// the voter `to` (see [`hand_over`]) and waits at most `within` for
/// another node to lead. Returns the node that leads then, `None` if none
/// took over in time.
pub async fn transfer(raft: &Raft, to: u64, within: Duration) -> Option<u64> {
    let me = raft.metrics().borrow_watched().id;
    raft.trigger().transfer_leader(to).await.ok()?;
    let led_elsewhere = raft
        .wait(Some(within))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != me),
            "another node leads",
        )
        .await;
    match led_elsewhere {
        Ok(m) => m.current_leader,
        Err(_) => None,
    }
}

/// The leader of `raft`'s group in a term after `term`, waited for at most
/// `within`; `None` if none is known by then.
pub async fn leader_after(raft: &Raft, term: u64, within: Duration) -> Option<u64> {
    raft.wait(Some(within))
        .metrics(
            |m| m.current_leader.is_some() && m.vote.leader_id().term > term,
            "a leader in a later term",
        )
        .await
        .ok()?
        .current_leader
}

/// How long a read waits for its leader to apply what it held.
const HELD_APPLIED_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);
