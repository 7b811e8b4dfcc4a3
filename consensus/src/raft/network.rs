//! Raft traffic between nodes: the messages, openraft's network for one
//! group, and the per-node router that hands incoming messages to the right
//! group. How bytes travel is not this crate's business: the node passes in
//! a [`Transport`] (the libp2p overlay), the simulator its own.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::errors::Fatal;
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use openraft_legacy::network_v1::{
    Adapter, ChunkedSnapshotReceiver, InstallSnapshotError, InstallSnapshotRequest,
    InstallSnapshotResponse, RaftNetwork,
};

use super::snapshot::SnapshotData;
use super::{Entry, EntryPayload, LogId, Raft, TypeConfig, Vote};
use crate::codec::{decode, encode};
use crate::error::Error;
use crate::store::GroupId;

/// Sends one message to a node and returns its answer.
pub trait Transport: Send + Sync + 'static {
    /// `node.addr` names the target as the transport knows it.
    fn send(
        &self,
        node: &BasicNode,
        message: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, Error>>;

    /// Told before each snapshot chunk a group sends (`first`: the chunk
    /// that begins a snapshot), so a node can count snapshot sends.
    fn snapshot_chunk_sent(&self, _first: bool, _bytes: usize) {}
}

/// A Raft message for one group.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub group: u64,
    pub rpc: Rpc,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A leader hands its leadership to a voter (and tells the others to
    /// stop waiting out its lease).
    TransferLeader(TransferLeaderRequest<TypeConfig>),
}

#[derive(serde::Serialize, serde::Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>),
    Vote(Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<TypeConfig>, RaftError<TypeConfig, InstallSnapshotError>>,
    ),
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>>),
    /// The target does not (or no longer) run this group.
    NoGroup(u64),
}

/// Builds a group's connections to its peers.
#[derive(Clone)]
pub struct NetworkFactory {
    group: GroupId,
    transport: Arc<dyn Transport>,
}

impl NetworkFactory {
    pub fn new(group: GroupId, transport: Arc<dyn Transport>) -> Self {
        Self { group, transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    /// Snapshots travel in pieces (openraft's chunked protocol, kept by
    /// `openraft-legacy`): each piece a message of its own, bounded.
    type Network = Adapter<TypeConfig, GroupClient, SnapshotData>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        GroupClient {
            group: self.group,
            target,
            node: node.clone(),
            transport: self.transport.clone(),
            pending: None,
            synced: None,
            entries_sent: None,
            streaming: false,
            held: None,
        }
        .into_v2()
    }
}

/// How long a group leaves a peer it could not reach before it sends to it
/// again: one heartbeat interval at first, so a peer that was only briefly
/// away is caught up at once; then twice as long each time, up to
/// [`UNREACHABLE_BACKOFF_MAX`], so a peer that is down costs little. (Each
/// attempt reads and encodes up to a call's worth of entries, and an entry
/// may hold a thousand appends: at a fixed 100 ms a dead follower kept a
/// leader's cores busy decoding its own log.) Openraft starts again from
/// the first once a call gets through.
const UNREACHABLE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
const UNREACHABLE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(1600);

/// About how many entry bytes one AppendEntries carries: openraft 0.9 gives
/// each call one heartbeat interval (100 ms), and a follower starved of CPU
/// could not decode and write 8 entries of a handler's 1,024 outputs each in
/// that time, so the same call timed out again and again and the follower
/// never caught up (a CI flake: the other follower then died and the group
/// had no quorum). A call longer than this carries a prefix of its entries
/// (one at least), and a success is reported as a partial one up to the
/// last sent, so openraft goes on from there. (openraft 0.10 hands the
/// interval to the network as advice only; the bound keeps every call a
/// bounded message all the same.)
pub const CALL_ENTRY_BYTES_MAX: usize = 64 << 10;

/// How many of `entries` one call carries: a prefix under
/// [`CALL_ENTRY_BYTES_MAX`], never empty unless `entries` is.
fn entries_per_call(entries: &[Entry]) -> usize {
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        bytes += match &e.payload {
            EntryPayload::Normal(command) => command.approx_bytes(),
            _ => 256,
        };
        if bytes > CALL_ENTRY_BYTES_MAX && i > 0 {
            return i;
        }
    }
    entries.len()
}

/// One group's link to one peer.
pub struct GroupClient {
    group: GroupId,
    target: u64,
    node: BasicNode,
    transport: Arc<dyn Transport>,
    /// The last AppendEntries sent whose answer nobody has taken yet.
    pending: Option<Pending>,
    /// The leader's vote and the last entry the follower said it holds,
    /// from the last call answered with a success on this client, and
    /// when that call was sent.
    synced: Option<(Vote, Option<LogId>, tokio::time::Instant)>,
    /// When this client last carried entries (a heartbeat's never does).
    entries_sent: Option<tokio::time::Instant>,
    /// Whether its last entries came less than [`COMMIT_LINGER`] after
    /// the ones before: the group is in a stream of rounds, and the next
    /// round's entries will likely carry a commit index sooner than the
    /// linger would.
    streaming: bool,
    /// A call that only carried a newer commit index, held back (ADR 47).
    held: Option<tokio::task::AbortHandle>,
}

/// How recent the follower's last success must be (since its call was
/// sent) for a commit-only call to be held back and answered for it: well
/// under openraft's leader lease (`election_timeout_max`), during which a
/// follower votes for no other leader (ADR 47).
pub const SYNCED_WITHIN: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a call that only tells a follower a newer commit index is held
/// back (ADR 47): under load the next round's entries carry it sooner, and
/// it is not sent; idle, a follower applies this much later.
pub const COMMIT_LINGER: std::time::Duration = std::time::Duration::from_millis(10);

/// An AppendEntries on its way, kept past openraft's timeout. Openraft 0.9
/// gives each call one heartbeat interval (100 ms) and then drops it and
/// sends the same entries again; a large entry (a batch of 8 MiB) on a busy
/// disk takes longer than that at the follower, so it was sent, written and
/// dropped again and again while the follower's queue grew, and the group
/// stalled for seconds (lost its leader, even). Now the call runs on in its
/// own task; a retry of the same entries waits for that call's answer
/// instead of sending them again.
struct Pending {
    /// What the call carried: the leader's vote, the entry before the
    /// first sent, and the last sent. The leader's commit index is left
    /// out: a retry that only carries a newer one does not need sending,
    /// the next call carries it. Only a retry that follows at once may take
    /// the answer: any other call in between (a snapshot) drops it.
    key: PendingKey,
    answer: tokio::task::JoinHandle<Result<Vec<u8>, Error>>,
    /// When it was sent: the follower heard from the leader after this.
    sent: tokio::time::Instant,
}

type PendingKey = (Vote, Option<LogId>, Option<LogId>);

impl GroupClient {
    async fn call<E: std::error::Error>(&self, rpc: Rpc) -> Result<Reply, RPCError<TypeConfig, E>> {
        let message = encode(&Envelope {
            group: self.group.0,
            rpc,
        })
        .map_err(broken)?;
        let answer = self.transport.send(&self.node, message).await;
        self.reply(answer)
    }

    /// An AppendEntries call: the one still on its way if it carried the
    /// same entries (see [`Pending`]), else a new one. Its answer, and
    /// when the call was sent.
    async fn append_call<E: std::error::Error>(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<(Reply, tokio::time::Instant), RPCError<TypeConfig, E>> {
        let key = (
            rpc.vote,
            rpc.prev_log_id,
            rpc.entries.last().map(|e| e.log_id),
        );
        if self.pending.as_ref().is_some_and(|p| p.key != key) {
            // Openraft has moved on: that call may still land (harmless,
            // the follower checks it as any other) but nobody waits for it.
            self.pending = None;
        }
        let pending = match &mut self.pending {
            Some(p) => p,
            None => {
                let message = encode(&Envelope {
                    group: self.group.0,
                    rpc: Rpc::AppendEntries(rpc),
                })
                .map_err(broken)?;
                let sent = tokio::time::Instant::now();
                let answer = tokio::spawn(self.transport.send(&self.node, message));
                self.pending.insert(Pending { key, answer, sent })
            }
        };
        let sent = pending.sent;
        // Cancel-safe: dropped here (openraft's timeout), the call stays in
        // `pending` for the retry.
        let answer = (&mut pending.answer).await;
        self.pending = None;
        let answer =
            answer.unwrap_or_else(|e| Err(Error::Network(format!("a Raft call failed: {e}"))));
        Ok((self.reply(answer)?, sent))
    }

    /// Holds back a call that only tells the follower a newer commit index
    /// (openraft sends one on every commit): the follower already holds
    /// everything up to `rpc.prev_log_id` under this vote, as it answered
    /// a call sent less than [`SYNCED_WITHIN`] ago; and the group's rounds
    /// come faster than [`COMMIT_LINGER`] (a lone write's commit goes at
    /// once, so that a read at the follower soon after sees it, as
    /// before). Sent after [`COMMIT_LINGER`] unless the next call, which
    /// carries the commit index too, comes first (ADR 47).
    ///
    /// Answered as the follower answered last: a success. Openraft takes
    /// it as the follower's word that it followed this leader when the
    /// call was made (its leader lease, which reads by `ReadIndex` rely
    /// on); it is, because the follower's real answer came to a call sent
    /// less than [`SYNCED_WITHIN`] before, and a follower votes for no
    /// other leader for a whole lease (`election_timeout_max`) after it
    /// last heard from its own. A leader that was held up longer (frozen,
    /// starved of CPU) sends the call and waits for the answer. A follower
    /// that has since lost entries says so to the next call or heartbeat.
    fn hold_back(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> AppendEntriesResponse<TypeConfig> {
        let (group, transport, node) = (self.group, self.transport.clone(), self.node.clone());
        let send = tokio::spawn(async move {
            tokio::time::sleep(COMMIT_LINGER).await;
            let envelope = Envelope {
                group: group.0,
                rpc: Rpc::AppendEntries(rpc),
            };
            // Its answer says nothing new: the next call's will.
            if let Ok(message) = encode(&envelope) {
                let _ = transport.send(&node, message).await;
            }
        });
        self.held = Some(send.abort_handle());
        AppendEntriesResponse::Success
    }

    /// Reads a peer's answer. (The error is openraft's own type, as the
    /// calls that return it must.)
    #[allow(clippy::result_large_err)]
    fn reply<E: std::error::Error>(
        &self,
        answer: Result<Vec<u8>, Error>,
    ) -> Result<Reply, RPCError<TypeConfig, E>> {
        // The peer is down, cut off, or not running the group: openraft
        // then pauses replication to it for [`UNREACHABLE_BACKOFF`] instead
        // of retrying at once (which read and re-sent the log in a tight
        // loop for as long as a peer was down; found by the simulator).
        let unreachable = |e: Error| RPCError::Unreachable(Unreachable::new(&AnyError::new(&e)));
        let reply: Reply = decode(&answer.map_err(unreachable)?).map_err(broken)?;
        if let Reply::NoGroup(group) = reply {
            return Err(unreachable(Error::Network(format!(
                "node {} does not run group {group}",
                self.target
            ))));
        }
        Ok(reply)
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<TypeConfig, E> {
        RPCError::Network(NetworkError::new(&AnyError::error("mismatched reply")))
    }
}

/// A message that could not be encoded or an answer that could not be read.
fn broken<E: std::error::Error>(e: Error) -> RPCError<TypeConfig, E> {
    RPCError::Network(NetworkError::new(&AnyError::new(&e)))
}

impl RaftNetwork<TypeConfig> for GroupClient {
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::successors(Some(UNREACHABLE_BACKOFF), |d| {
            Some((*d * 2).min(UNREACHABLE_BACKOFF_MAX))
        }))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig, RaftError<TypeConfig>>>
    {
        // This call carries the newest commit index: one held back is not
        // needed any more.
        if let Some(held) = self.held.take() {
            held.abort();
        }
        let now = tokio::time::Instant::now();
        if rpc.entries.is_empty()
            && self.streaming
            && self.synced.is_some_and(|(vote, held, at)| {
                vote == rpc.vote
                    && held == rpc.prev_log_id
                    && now.duration_since(at) < SYNCED_WITHIN
            })
        {
            return Ok(self.hold_back(rpc));
        }
        let keep = entries_per_call(&rpc.entries);
        let cut = keep < rpc.entries.len();
        rpc.entries.truncate(keep);
        let (vote, prev) = (rpc.vote, rpc.prev_log_id);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        if last_sent.is_some() {
            self.streaming = self
                .entries_sent
                .is_some_and(|at| now.duration_since(at) < COMMIT_LINGER);
            self.entries_sent = Some(now);
        }
        self.synced = None;
        let (reply, sent) = self.append_call(rpc).await?;
        let answer = match reply {
            // The follower holds what was sent: that much, and no more.
            Reply::AppendEntries(Ok(AppendEntriesResponse::Success)) if cut => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            Reply::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }?;
        // As of the call's sending (a retry may take an earlier call's
        // answer): the follower heard from this leader after that.
        self.synced = match &answer {
            AppendEntriesResponse::Success => Some((vote, last_sent.or(prev), sent)),
            AppendEntriesResponse::PartialSuccess(held) => Some((vote, *held, sent)),
            _ => None,
        };
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<TypeConfig>,
        RPCError<TypeConfig, RaftError<TypeConfig, InstallSnapshotError>>,
    > {
        // An answer to entries sent before the snapshot describes the
        // follower as it was: taken after it, it would move openraft's view
        // of the follower backwards (which openraft forbids, and the
        // simulator caught: a conflict below what the snapshot matched).
        self.pending = None;
        self.synced = None;
        self.transport
            .snapshot_chunk_sent(rpc.offset == 0, rpc.data.len());
        match self.call(Rpc::InstallSnapshot(rpc)).await? {
            Reply::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig, RaftError<TypeConfig>>> {
        match self.call(Rpc::Vote(rpc)).await? {
            Reply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(Rpc::TransferLeader(rpc)).await? {
            Reply::TransferLeader(r) => {
                r.map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))
            }
            _ => Err(self.unexpected()),
        }
    }
}

/// Starts a group that is not running (a hibernating group woken by a
/// message); `None` if this node has no such group.
pub type Waker = Arc<dyn Fn(GroupId) -> BoxFuture<'static, Option<Raft>> + Send + Sync>;

/// The groups this node runs, by id: where incoming Raft messages go.
#[derive(Default, Clone)]
pub struct Router {
    groups: Arc<RwLock<HashMap<GroupId, Raft>>>,
    waker: Arc<RwLock<Option<Waker>>>,
}

impl Router {
    /// Messages for a group that is not running go to `waker` first
    /// (`None` removes it, and whatever it holds).
    pub fn set_waker(&self, waker: Option<Waker>) {
        *self.waker.write().unwrap_or_else(|e| e.into_inner()) = waker;
    }

    pub fn insert(&self, group: GroupId, raft: Raft) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, raft);
    }

    pub fn remove(&self, group: GroupId) -> Option<Raft> {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group)
    }

    /// Removes and returns every group (for shutdown).
    pub fn drain(&self) -> Vec<Raft> {
        let mut groups: Vec<_> = self
            .groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        // In id order: the simulator repeats a run only if this does.
        groups.sort_by_key(|(g, _)| *g);
        groups.into_iter().map(|(_, raft)| raft).collect()
    }

    /// Every registered group, in id order.
    pub fn list(&self) -> Vec<(GroupId, Raft)> {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = groups.iter().map(|(g, r)| (*g, r.clone())).collect();
        list.sort_by_key(|(g, _)| *g);
        list
    }

    pub fn get(&self, group: GroupId) -> Option<Raft> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    /// Answers one incoming message. Bad bytes get an error, never a panic.
    pub async fn handle(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let envelope: Envelope = decode(message)?;
        let group = GroupId(envelope.group);
        let raft = match self.get(group) {
            Some(raft) => Some(raft),
            None => {
                let waker = self.waker.read().unwrap_or_else(|e| e.into_inner()).clone();
                match waker {
                    Some(wake) => wake(group).await,
                    None => None,
                }
            }
        };
        let Some(raft) = raft else {
            return encode(&Reply::NoGroup(envelope.group));
        };
        let reply = match envelope.rpc {
            Rpc::AppendEntries(r) => Reply::AppendEntries(raft.append_entries(r).await),
            Rpc::Vote(r) => Reply::Vote(raft.vote(r).await),
            Rpc::InstallSnapshot(r) => Reply::InstallSnapshot(raft.install_snapshot(r).await),
            Rpc::TransferLeader(r) => Reply::TransferLeader(raft.handle_transfer_leader(r).await),
        };
        encode(&reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Command, log_id};

    /// An entry appending `n` payloads of `bytes` each.
    fn entry(index: u64, n: usize, bytes: usize) -> Entry {
        Entry {
            log_id: log_id(1, 0, index),
            payload: EntryPayload::Normal(Command::Append {
                payloads: vec![bytes::Bytes::from(vec![0u8; bytes]); n],
                producer: None,
                time_ms: 0,
                cause: None,
                handler: None,
            }),
        }
    }

    /// A peer that answers every AppendEntries with a success, and keeps
    /// what each carried: its entries' count and the commit index.
    #[derive(Default)]
    struct Follower {
        got: std::sync::Mutex<Vec<(usize, Option<LogId>)>>,
    }

    impl Follower {
        fn got(&self) -> Vec<(usize, Option<LogId>)> {
            self.got.lock().unwrap().clone()
        }
    }

    impl Transport for Follower {
        fn send(
            &self,
            _node: &BasicNode,
            message: Vec<u8>,
        ) -> BoxFuture<'static, Result<Vec<u8>, Error>> {
            let envelope: Envelope = decode(&message).unwrap();
            let Rpc::AppendEntries(rpc) = envelope.rpc else {
                panic!("only AppendEntries here");
            };
            self.got
                .lock()
                .unwrap()
                .push((rpc.entries.len(), rpc.leader_commit));
            let reply = encode(&Reply::AppendEntries(Ok(AppendEntriesResponse::Success)));
            Box::pin(async move { reply })
        }
    }

    /// An AppendEntries from leader 1 in term 1 (log ids by index).
    fn call(
        prev: Option<u64>,
        entries: Vec<Entry>,
        commit: Option<u64>,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 0),
            prev_log_id: prev.map(|i| log_id(1, 0, i)),
            leader_commit: commit.map(|i| log_id(1, 0, i)),
            entries,
        }
    }

    /// Calls through `client`, which must answer a success.
    async fn succeeds(client: &mut GroupClient, rpc: AppendEntriesRequest<TypeConfig>) {
        let option = RPCOption::new(std::time::Duration::from_secs(1));
        let answer = client.append_entries(rpc, option).await;
        assert!(
            matches!(answer, Ok(AppendEntriesResponse::Success)),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_call_that_only_carries_a_newer_commit_index_is_held_back() {
        let follower = Arc::new(Follower::default());
        let mut client = GroupClient {
            group: GroupId(5),
            target: 2,
            node: BasicNode::new("n2"),
            transport: follower.clone(),
            pending: None,
            synced: None,
            entries_sent: None,
            streaming: false,
            held: None,
        };
        let c = &mut client;
        let later = || tokio::time::sleep(COMMIT_LINGER * 3);
        let commit = |i| (0, Some(log_id(1, 0, i)));
        let one = |i| vec![entry(i, 1, 10)];
        // A heartbeat's client carries no entries: its calls all go.
        succeeds(c, call(None, vec![], None)).await;
        succeeds(c, call(None, vec![], Some(0))).await;
        assert_eq!(follower.got().len(), 2);
        // A lone round: its commit index goes at once.
        succeeds(c, call(None, one(1), None)).await;
        succeeds(c, call(Some(1), vec![], Some(1))).await;
        assert_eq!(follower.got()[2..], [(1, None), commit(1)]);
        // Rounds in a stream: the commit index after one is held back...
        succeeds(c, call(Some(1), one(2), Some(1))).await;
        succeeds(c, call(Some(2), vec![], Some(2))).await;
        assert_eq!(follower.got().len(), 5);
        // ...and not sent at all when the next entries come first...
        succeeds(c, call(Some(2), one(3), Some(2))).await;
        later().await;
        assert_eq!(
            follower.got()[4..],
            [(1, Some(log_id(1, 0, 1))), (1, Some(log_id(1, 0, 2)))]
        );
        // ...or sent after the linger when nothing comes.
        succeeds(c, call(Some(3), one(4), Some(3))).await;
        succeeds(c, call(Some(4), one(5), Some(3))).await;
        succeeds(c, call(Some(5), vec![], Some(5))).await;
        assert_eq!(follower.got().len(), 8);
        later().await;
        assert_eq!(follower.got()[8..], [commit(5)]);
        // An empty call from below what the follower said it holds (a
        // probe) goes at once.
        succeeds(c, call(Some(1), vec![], Some(5))).await;
        assert_eq!(follower.got().len(), 10);
        // So does a commit-only call when the follower's last answer is
        // too old to answer for it (a leader held up).
        succeeds(c, call(Some(5), one(6), Some(5))).await;
        succeeds(c, call(Some(6), one(7), Some(5))).await;
        tokio::time::sleep(SYNCED_WITHIN).await;
        succeeds(c, call(Some(7), vec![], Some(7))).await;
        assert_eq!(follower.got()[12..], [commit(7)]);
    }

    #[test]
    fn a_call_carries_a_prefix_under_the_byte_bound_and_never_nothing() {
        assert_eq!(entries_per_call(&[]), 0);
        // Small entries: all of them.
        let small: Vec<_> = (1..=8).map(|i| entry(i, 10, 10)).collect();
        assert_eq!(entries_per_call(&small), 8);
        // A handler's 1,024 outputs of 50 bytes (about 67 KiB) each: one a
        // call, even when that one alone is over the bound.
        let big: Vec<_> = (1..=8).map(|i| entry(i, 1024, 50)).collect();
        assert_eq!(entries_per_call(&big), 1);
        // Up to the bound, not past it.
        let half: Vec<_> = (1..=8)
            .map(|i| entry(i, 1, CALL_ENTRY_BYTES_MAX / 3))
            .collect();
        assert_eq!(entries_per_call(&half), 2);
    }
}
