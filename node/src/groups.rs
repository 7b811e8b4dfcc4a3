//! Raft groups on this node, talking to their peers over the overlay.
//!
//! Node-to-node messages travel as overlay requests with a one-byte tag in
//! front: [`TAG_RAFT`] bytes go to the consensus crate's router, which hands
//! them to the right group; [`TAG_CONTROL`] carries a [`Control`] message
//! (start a group, write through a group from a node that is not its
//! leader), CBOR-encoded like the Raft traffic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::{BasicNode, Raft};
use tokio::sync::{Semaphore, mpsc};
use woof_consensus::raft::group::{self, Timing};
use woof_consensus::raft::network::{Router, Transport};
use woof_consensus::raft::{Command, CommandResult, TypeConfig, decode, encode};
use woof_consensus::store::{GroupId, RocksStore};
use woof_overlay::{Inbound, PeerId};

use crate::error::{Error, Result};

/// A Raft message for the consensus router.
const TAG_RAFT: u8 = 1;
/// A [`Control`] message.
const TAG_CONTROL: u8 = 2;
/// How many times a write follows a leader hint or tries another member.
const WRITE_ATTEMPTS: usize = 40;
/// The pause between write attempts while a group elects a leader.
const WRITE_BACKOFF: Duration = Duration::from_millis(100);

/// Node-to-node requests besides Raft's own.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Control {
    /// Start `group` here; with `initialize`, also make it a group of `members`.
    StartGroup {
        group: u64,
        members: Vec<String>,
        initialize: bool,
    },
    /// Write `command` through `group`, if this node leads it.
    Write { group: u64, command: Command },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum ControlReply {
    Started,
    Written(CommandResult),
    /// Not the leader; the leader's peer id if known.
    NotLeader(Option<String>),
    NoGroup,
    Failed(String),
}
/// Peer requests handled at once; past this they wait in the overlay's queue.
const INBOUND_CONCURRENCY: usize = 256;

/// The Raft node id of a peer: the low 64 bits of its peer id, the same on
/// every node.
pub fn node_id(peer: &PeerId) -> u64 {
    let bytes = peer.to_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[bytes.len() - 8..]);
    u64::from_be_bytes(id)
}

/// The overlay as a Raft transport: `BasicNode::addr` is the peer id.
struct OverlayTransport {
    client: woof_overlay::Client,
}

impl Transport for OverlayTransport {
    fn send(
        &self,
        node: &BasicNode,
        message: Vec<u8>,
    ) -> BoxFuture<'static, woof_consensus::Result<Vec<u8>>> {
        let client = self.client.clone();
        let peer = node.addr.parse::<PeerId>();
        async move {
            let peer = peer.map_err(|e| {
                woof_consensus::Error::InvalidArgument(format!("not a peer id: {e}"))
            })?;
            request(&client, peer, TAG_RAFT, &message).await
        }
        .boxed()
    }
}

/// Sends a tagged message to `peer`.
async fn request(
    client: &woof_overlay::Client,
    peer: PeerId,
    tag: u8,
    message: &[u8],
) -> woof_consensus::Result<Vec<u8>> {
    let mut framed = Vec::with_capacity(message.len() + 1);
    framed.push(tag);
    framed.extend_from_slice(message);
    client
        .request(peer, framed)
        .await
        .map_err(|e| woof_consensus::Error::Network(e.to_string()))
}

/// This node's Raft groups.
#[derive(Clone)]
pub struct Groups {
    node_id: u64,
    store: Arc<RocksStore>,
    router: Router,
    transport: Arc<dyn Transport>,
    client: woof_overlay::Client,
}

impl Groups {
    /// Groups over `overlay`, storing into `store`. The returned task serves
    /// `inbound` peer requests until the overlay closes it; await it after
    /// shutting the overlay down, so that nothing holds the store any more.
    pub fn new(
        store: Arc<RocksStore>,
        client: woof_overlay::Client,
        inbound: mpsc::Receiver<Inbound>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let router = Router::default();
        let groups = Self {
            node_id: node_id(&client.peer_id()),
            store,
            router,
            transport: Arc::new(OverlayTransport {
                client: client.clone(),
            }),
            client,
        };
        let task = tokio::spawn(serve(inbound, groups.clone()));
        (groups, task)
    }

    /// This node's id in every group.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The store the groups write into.
    pub fn store(&self) -> &Arc<RocksStore> {
        &self.store
    }

    /// Starts (or restarts from storage) a group on this node.
    pub async fn start(&self, group: GroupId) -> Result<Raft<TypeConfig>> {
        if let Some(raft) = self.router.get(group) {
            return Ok(raft);
        }
        Ok(group::start(
            self.node_id,
            group,
            self.store.clone(),
            self.transport.clone(),
            &self.router,
            Timing::default(),
        )
        .await?)
    }

    /// Starts `group` on every one of `members` (this node included, if it
    /// is one) and makes them its voters. Starting a group twice is harmless.
    pub async fn create(&self, group: GroupId, members: &[PeerId]) -> Result<()> {
        let names: Vec<String> = members.iter().map(ToString::to_string).collect();
        // The first member initializes, once every member runs the group.
        for (i, peer) in members.iter().enumerate().rev() {
            let control = Control::StartGroup {
                group: group.0,
                members: names.clone(),
                initialize: i == 0,
            };
            match self.control(*peer, control).await? {
                ControlReply::Started => {}
                other => {
                    return Err(Error::Internal(format!(
                        "starting group {} on {peer}: {other:?}",
                        group.0
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes `command` through `group`, whose voters are `members`: on this
    /// node if it leads, else at the leader (following its hint), trying
    /// each member in turn while the group elects one. Bounded in attempts.
    pub async fn write(
        &self,
        group: GroupId,
        members: &[PeerId],
        command: Command,
    ) -> Result<CommandResult> {
        let Some(&first) = members.first() else {
            return Err(Error::Usage(format!("group {} has no members", group.0)));
        };
        let mut target = first;
        let mut last = String::from("no member answered");
        for attempt in 0..WRITE_ATTEMPTS {
            let control = Control::Write {
                group: group.0,
                command: command.clone(),
            };
            match self.control(target, control).await {
                Ok(ControlReply::Written(result)) => return Ok(result),
                Ok(ControlReply::NotLeader(Some(leader))) => {
                    if let Ok(peer) = leader.parse() {
                        target = peer;
                        continue;
                    }
                }
                Ok(other) => last = format!("{target}: {other:?}"),
                Err(e) => last = format!("{target}: {e}"),
            }
            // No usable hint: try the next member after a pause.
            target = members[(attempt + 1) % members.len()];
            tokio::time::sleep(WRITE_BACKOFF).await;
        }
        Err(Error::Log(woof_consensus::Error::Network(format!(
            "no leader for group {} after {WRITE_ATTEMPTS} attempts; last: {last}",
            group.0
        ))))
    }

    /// Sends a control message to `peer`, or handles it here if `peer` is us.
    async fn control(&self, peer: PeerId, control: Control) -> Result<ControlReply> {
        if peer == self.client.peer_id() {
            return Ok(self.handle_control(control).await);
        }
        let answer = request(&self.client, peer, TAG_CONTROL, &encode(&control)?).await?;
        Ok(decode(&answer)?)
    }

    async fn handle_control(&self, control: Control) -> ControlReply {
        match control {
            Control::StartGroup {
                group,
                members,
                initialize,
            } => {
                let raft = match self.start(GroupId(group)).await {
                    Ok(raft) => raft,
                    Err(e) => return ControlReply::Failed(e.to_string()),
                };
                if initialize {
                    let mut voters = BTreeMap::new();
                    for m in &members {
                        let Ok(peer) = m.parse::<PeerId>() else {
                            return ControlReply::Failed(format!("{m:?} is not a peer id"));
                        };
                        voters.insert(node_id(&peer), BasicNode::new(m.clone()));
                    }
                    // A second initialize (a retry) is refused by openraft; fine.
                    if let Err(e) = raft.initialize(voters).await {
                        tracing::debug!(group, "initialize: {e}");
                    }
                }
                ControlReply::Started
            }
            Control::Write { group, command } => {
                let Some(raft) = self.router.get(GroupId(group)) else {
                    return ControlReply::NoGroup;
                };
                match raft.client_write(command).await {
                    Ok(r) => ControlReply::Written(r.data),
                    Err(e) => match e.forward_to_leader::<BasicNode>() {
                        Some(f) => {
                            ControlReply::NotLeader(f.leader_node.as_ref().map(|n| n.addr.clone()))
                        }
                        None => ControlReply::Failed(e.to_string()),
                    },
                }
            }
        }
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        for raft in self.router.drain() {
            let _ = raft.shutdown().await;
        }
    }
}

/// Answers peer requests; a malformed one is dropped (the peer sees a
/// refusal), never a panic.
async fn serve(mut inbound: mpsc::Receiver<Inbound>, groups: Groups) {
    let limit = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
    let mut running = tokio::task::JoinSet::new();
    while let Some(request) = inbound.recv().await {
        while running.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let groups = groups.clone();
        running.spawn(async move {
            let _permit = permit;
            let answer: std::result::Result<Vec<u8>, Error> = match request.payload.split_first() {
                Some((&TAG_RAFT, rest)) => groups.router.handle(rest).await.map_err(Error::from),
                Some((&TAG_CONTROL, rest)) => match decode::<Control>(rest) {
                    Ok(control) => {
                        encode(&groups.handle_control(control).await).map_err(Error::from)
                    }
                    Err(e) => Err(e.into()),
                },
                _ => Err(Error::Usage("unknown peer message".into())),
            };
            match answer {
                Ok(bytes) => {
                    let _ = request.reply.send(bytes);
                }
                Err(e) => tracing::debug!(peer = %request.peer, "peer request refused: {e}"),
            }
        });
    }
    // Let the requests under way finish, so that none outlives the node.
    while running.join_next().await.is_some() {}
}
