//! Raft groups on this node, talking to their peers over the overlay.
//!
//! Node-to-node messages travel as overlay requests with a one-byte tag in
//! front (today only [`TAG_RAFT`]); the Raft bytes go to the consensus
//! crate's router, which hands them to the right group.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::{BasicNode, Raft};
use tokio::sync::{Semaphore, mpsc};
use woof_consensus::raft::TypeConfig;
use woof_consensus::raft::group::{self, Timing};
use woof_consensus::raft::network::{Router, Transport};
use woof_consensus::store::{GroupId, RocksStore};
use woof_overlay::{Inbound, PeerId};

use crate::error::{Error, Result};

/// A Raft message for the consensus router.
const TAG_RAFT: u8 = 1;
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
            let mut framed = Vec::with_capacity(message.len() + 1);
            framed.push(TAG_RAFT);
            framed.extend_from_slice(&message);
            client
                .request(peer, framed)
                .await
                .map_err(|e| woof_consensus::Error::Network(e.to_string()))
        }
        .boxed()
    }
}

/// This node's Raft groups.
#[derive(Clone)]
pub struct Groups {
    node_id: u64,
    store: Arc<RocksStore>,
    router: Router,
    transport: Arc<dyn Transport>,
}

impl Groups {
    /// Groups over `overlay`, storing into `store`; serves `inbound` peer
    /// requests until the overlay closes it.
    pub fn new(
        store: Arc<RocksStore>,
        client: woof_overlay::Client,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Self {
        let router = Router::default();
        tokio::spawn(serve(inbound, router.clone()));
        Self {
            node_id: node_id(&client.peer_id()),
            store,
            router,
            transport: Arc::new(OverlayTransport { client }),
        }
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

    /// Stops every group.
    pub async fn shutdown(&self) {
        for raft in self.router.drain() {
            let _ = raft.shutdown().await;
        }
    }
}

/// Answers peer requests; a malformed one is dropped (the peer sees a
/// refusal), never a panic.
async fn serve(mut inbound: mpsc::Receiver<Inbound>, router: Router) {
    let limit = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
    while let Some(request) = inbound.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let answer: std::result::Result<Vec<u8>, Error> = match request.payload.split_first() {
                Some((&TAG_RAFT, rest)) => router.handle(rest).await.map_err(Error::from),
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
}
