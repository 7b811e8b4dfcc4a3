//! Raft groups on this node, talking to their peers over the overlay.
//!
//! Every topic of a cluster is one Raft group. This module runs this node's
//! share of them and routes requests to the groups it does not lead.
//! Node-to-node messages travel as overlay requests with a one-byte tag in
//! front: [`TAG_RAFT_BATCH`] carries Raft messages for the consensus crate's
//! router, which hands each to its group (coalesced per peer, see
//! [`transport`]); [`TAG_CONTROL`] carries a [`control::Control`] message (start a
//! group, write or read through its leader, list, sleep, remove),
//! CBOR-encoded like the Raft traffic.
//!
//! Layout, by role. Each decision is a plain function or struct that takes
//! what was observed and the time and returns what to do, tested on its own;
//! the code around it only carries the decision out.
//!
//! | file | role | decides (pure, unit-tested) |
//! |---|---|---|
//! | [`slots`] | one state per group (asleep, starting, running, leaving) and its legal changes | the transitions |
//! | [`lifecycle`] | starting, waking, putting to sleep, removing, stopping the groups | |
//! | [`hibernate`] | idle groups sleep | [`hibernate::is_idle_leader`] |
//! | [`balance`] | leaderships spread over the nodes | [`balance::moves`] |
//! | [`client`] | this node's requests to groups: routing to the leader | [`route::LeaderSearch`] |
//! | [`lanes`] | producer identities for forwarded appends that name none, so retries never apply twice | |
//! | [`server`] | answering peers' requests | [`server::must_confirm`] |
//! | [`propose`] | group commit on a leader | [`woof_consensus::batch::fill`] |
//! | [`membership`] | replacing a replica | |
//! | [`status`] | what a replica reports | |
//! | [`transport`] | Raft traffic, batched per peer | [`woof_consensus::batch::fill`] |
//! | [`control`] | the control messages on the wire | |
//! | [`net`] | what the groups need of the overlay, as a trait the simulator implements too | |
//! | [`tasks`] | the layer's tasks, tracked and counted by kind | |
//!
//! Every task the layer spawns is tracked, and [`Groups::shutdown`] returns
//! only once all of them ended, so a stopped node holds nothing open.

use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::mpsc;
use woof_consensus::Topics;
use woof_consensus::bugs::{self, Bug};
use woof_consensus::raft::Raft;
use woof_consensus::raft::network::Router;
use woof_consensus::store::{GroupId, GroupStore};
use woof_overlay::{Inbound, PeerId};

mod balance;
mod client;
mod control;
mod hibernate;
mod lanes;
mod lifecycle;
mod membership;
mod net;
mod propose;
mod route;
mod server;
mod slots;
mod status;
mod tasks;
mod transport;

pub use control::{HandlerInvoke, HandlerLease, InvokeReply, Read, ReadReply, ReplicaStatus};
pub use net::Net;

use crate::error::{Error, Result};
use control::{Control, ControlReply};

/// Raft messages for the consensus router (see [`transport`]).
const TAG_RAFT_BATCH: u8 = 3;
/// A [`control::Control`] message.
const TAG_CONTROL: u8 = 2;

/// The Raft node id of a peer: the low 64 bits of its peer id, the same on
/// every node.
pub fn node_id(peer: &PeerId) -> u64 {
    let bytes = peer.to_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[bytes.len() - 8..]);
    u64::from_be_bytes(id)
}

/// Waits `period`, for a supervisor's next round: false if the groups
/// shut down meanwhile (`stop`, from [`Groups::stopping`], turned true).
async fn wait_unless_stopped(
    stop: &mut tokio::sync::watch::Receiver<bool>,
    period: std::time::Duration,
) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        _ = tokio::time::sleep(period) => true,
    }
}

/// A group running on this node: its Raft instance and its proposer.
#[derive(Clone)]
struct Member {
    raft: Raft,
    proposer: propose::Shared,
}

/// This node's Raft groups.
#[derive(Clone)]
pub struct Groups {
    node_id: u64,
    store: Arc<dyn GroupStore>,
    /// Where the groups publish what they apply; reads are served from it.
    topics: Topics,
    /// Hands each Raft message to its group (a running group is in both the
    /// router and [`Groups::slots`]; the slot is what counts).
    router: Router,
    transport: Arc<transport::OverlayTransport>,
    client: Arc<dyn Net>,
    /// Every group this node holds, in its one state.
    slots: Arc<slots::Slots<Member>>,
    /// Where requests go (leader hints, suspected peers).
    routes: Arc<client::Routes>,
    /// Producer identities for the appends this node forwards without one
    /// (see [`lanes`]); made on first use, as the epoch is read from storage.
    lanes: Arc<tokio::sync::OnceCell<Arc<lanes::Lanes>>>,
    /// Every task the layer spawned; [`Groups::shutdown`] waits for them.
    tasks: tasks::Tasks,
    /// Turns true when the groups shut down.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Handler leases from topics' leaders, for the node's supervisor.
    leases: Arc<Leases>,
    /// Invocations asked of this node, for its handlers' invoker.
    invokes: Arc<Invokes>,
    /// Leader changes and snapshot sends, for the metrics.
    counters: Arc<crate::metrics::RaftCounters>,
    /// Groups for which a client request here has asked for an election
    /// and waits for its outcome: the requests that woke a group together
    /// ask once (see `Groups::serving`).
    electing: Arc<Elections>,
    /// Every group's timing and snapshot sizes.
    timing: woof_consensus::raft::group::Timing,
    /// Whether the balance hands leaderships over ([`balance`]); on
    /// unless [`Groups::balance_leaders`] turns it off.
    balancing: Arc<std::sync::atomic::AtomicBool>,
}

/// The groups a request here has asked an election for (see
/// `Groups::electing`).
type Elections = std::sync::Mutex<std::collections::HashSet<GroupId>>;

/// An invocation asked of this node, and where its answer goes (or why
/// this node will not run it).
pub type Invocation = (
    HandlerInvoke,
    tokio::sync::oneshot::Sender<std::result::Result<InvokeReply, String>>,
);

/// Invocations waiting for the invoker (bounded: a full queue refuses, and
/// the runner runs the element elsewhere).
type Invokes = (
    mpsc::Sender<Invocation>,
    std::sync::Mutex<Option<mpsc::Receiver<Invocation>>>,
);
const INVOKES_QUEUED_MAX: usize = 256;

/// Leases waiting for the supervisor (bounded: a full queue refuses, and
/// the leader sends again a second later).
type Leases = (
    mpsc::Sender<HandlerLease>,
    std::sync::Mutex<Option<mpsc::Receiver<HandlerLease>>>,
);
const LEASES_QUEUED_MAX: usize = 1024;

impl Groups {
    /// Groups over the overlay `client`, storing into `store` and
    /// publishing to `topics`, with every group `store` holds loaded
    /// ([`load_all`](Self::load_all); their count is returned). Only then
    /// does the returned task serve the peer requests of every `inbound`
    /// queue (each with its own bound on what it handles at once, so that
    /// the Raft traffic on the links never waits behind slow control
    /// requests), until the overlay closes them; await it after shutting
    /// the overlay down.
    ///
    /// The order matters: a peer's message wakes its group, and a group
    /// woken while `load_all` applied its log again (after a crash) ran a
    /// second state machine from the older applied point, which published
    /// a range shorter than the first had (a panic, seen in the failover
    /// benchmark after a SIGKILL restart).
    pub async fn open(
        store: Arc<dyn GroupStore>,
        topics: Topics,
        client: Arc<dyn Net>,
        inbound: Vec<mpsc::Receiver<Inbound>>,
        timing: woof_consensus::raft::group::Timing,
    ) -> Result<(Self, usize, tokio::task::JoinHandle<()>)> {
        let groups = Self::new(store, topics, client, timing);
        let held = match groups.load_all().await {
            Ok(held) => held,
            Err(e) => {
                // Its tasks hold the store, which the caller closes next.
                if let Err(stop) = groups.shutdown().await {
                    tracing::warn!("after a failed start: {stop}");
                }
                return Err(e);
            }
        };
        let serving: Vec<_> = inbound
            .into_iter()
            .map(|inbound| server::serve(inbound, groups.clone()))
            .collect();
        let task = tokio::spawn(futures::future::join_all(serving).map(drop));
        Ok((groups, held, task))
    }

    fn new(
        store: Arc<dyn GroupStore>,
        topics: Topics,
        client: Arc<dyn Net>,
        timing: woof_consensus::raft::group::Timing,
    ) -> Self {
        let tasks = tasks::Tasks::default();
        let stop = Arc::new(tokio::sync::watch::Sender::new(false));
        let (lease_tx, lease_rx) = mpsc::channel(LEASES_QUEUED_MAX);
        let (invoke_tx, invoke_rx) = mpsc::channel(INVOKES_QUEUED_MAX);
        let counters = Arc::new(crate::metrics::RaftCounters::default());
        let groups = Self {
            invokes: Arc::new((invoke_tx, std::sync::Mutex::new(Some(invoke_rx)))),
            leases: Arc::new((lease_tx, std::sync::Mutex::new(Some(lease_rx)))),
            node_id: node_id(&client.peer_id()),
            store,
            topics,
            router: Router::default(),
            transport: Arc::new(transport::OverlayTransport::new(
                client.clone(),
                tasks.clone(),
                stop.subscribe(),
                counters.clone(),
            )),
            counters,
            client,
            slots: Arc::default(),
            timing,
            routes: Arc::default(),
            lanes: Arc::default(),
            tasks,
            stop,
            electing: Arc::default(),
            balancing: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let waking = groups.clone();
        groups.router.set_waker(Some(Arc::new(move |group| {
            // Its own task: a wake completes even if the message that
            // caused it is answered (or dropped) before.
            let groups = waking.clone();
            waking
                .tasks
                .spawn("wake", async move {
                    let raft = match groups.wake(group).await {
                        Ok(raft) => raft?,
                        Err(e) => {
                            tracing::warn!(group = group.0, "waking the group: {e}");
                            return None;
                        }
                    };
                    let unregistered = groups.router.get(group).is_none();
                    if unregistered && bugs::on(Bug::RestartedGroupUnreachable) {
                        return None;
                    }
                    Some(raft)
                })
                .map(|woken| woken.ok().flatten())
                .boxed()
        })));
        groups.spawn("sleep-supervisor", hibernate::supervise(groups.clone()));
        groups.spawn("leader-balance", balance::supervise(groups.clone()));
        groups
    }

    /// The handler leases this node receives; the first caller gets them.
    pub fn take_leases(&self) -> Option<mpsc::Receiver<HandlerLease>> {
        self.leases.1.lock().ok()?.take()
    }

    /// Asks `peer` to run a handler for a while (see [`HandlerLease`]).
    pub async fn lease(&self, peer: PeerId, lease: HandlerLease) -> Result<()> {
        match self
            .control(peer, Control::Lease(lease), client::CONTROL_TIMEOUT)
            .await?
        {
            ControlReply::Leased => Ok(()),
            ControlReply::Failed(why) => Err(Error::Internal(why)),
            other => Err(Error::Internal(format!("a lease gave {other:?}"))),
        }
    }

    /// The invocations other nodes ask of this one; the first caller gets
    /// them.
    pub fn take_invokes(&self) -> Option<mpsc::Receiver<Invocation>> {
        self.invokes.1.lock().ok()?.take()
    }

    /// Asks `peer` to run a handler on one element, waiting at most
    /// `timeout` for what it gave.
    pub async fn invoke(
        &self,
        peer: PeerId,
        invoke: HandlerInvoke,
        timeout: std::time::Duration,
    ) -> Result<InvokeReply> {
        match self.control(peer, Control::Invoke(invoke), timeout).await? {
            ControlReply::Invoked(reply) => Ok(reply),
            ControlReply::Failed(why) => Err(Error::Internal(why)),
            other => Err(Error::Internal(format!("an invocation gave {other:?}"))),
        }
    }

    /// Runs `task` as one of the layer's, awaited by [`Groups::shutdown`].
    fn spawn(&self, kind: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(kind, task);
    }

    /// What the groups counted (leader changes, snapshot sends).
    pub fn counters(&self) -> &crate::metrics::RaftCounters {
        &self.counters
    }

    /// This node's id in every group.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.client.peer_id()
    }

    /// The store the groups write into.
    pub fn store(&self) -> &Arc<dyn GroupStore> {
        &self.store
    }

    /// Whether [`Groups::shutdown`] was called.
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// A receiver that turns true when the groups shut down.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// The running group `group`, if it runs here.
    fn running(&self, group: GroupId) -> Option<Raft> {
        self.slots.running(group).map(|m| m.raft)
    }
}
