//! The node's place in the cluster: its overlay (when it has one) and the
//! status it reports.

use woof_overlay::{Client, Liveness, NodeInfo};
use woof_proto::v1;

use crate::error::Result;

/// What the node knows of the cluster.
#[derive(Clone)]
pub struct Cluster {
    info: NodeInfo,
    /// `None` for a standalone node.
    overlay: Option<Client>,
}

impl Cluster {
    pub fn new(info: NodeInfo, overlay: Option<Client>) -> Self {
        Self { info, overlay }
    }

    /// This node's peer id; empty for a standalone node.
    pub fn peer_id(&self) -> String {
        self.overlay
            .as_ref()
            .map_or_else(String::new, |o| o.peer_id().to_string())
    }

    /// This node first, then the others as the overlay sees them.
    pub async fn status(&self) -> Result<Vec<v1::NodeStatus>> {
        let mut nodes = vec![v1::NodeStatus {
            peer_id: self.peer_id(),
            tier: self.info.tier.to_string(),
            attrs: self.info.attrs.clone().into_iter().collect(),
            capabilities: self.info.capabilities.iter().cloned().collect(),
            addrs: self.overlay.as_ref().map_or_else(Vec::new, |o| {
                o.listen_addrs().iter().map(ToString::to_string).collect()
            }),
            state: Liveness::Alive.to_string(),
            silent_ms: 0,
            grpc_addr: self.info.grpc_addr.clone().unwrap_or_default(),
            local: true,
        }];
        if let Some(overlay) = &self.overlay {
            for m in overlay.members().await? {
                nodes.push(v1::NodeStatus {
                    peer_id: m.peer.to_string(),
                    tier: m.info.tier.to_string(),
                    attrs: m.info.attrs.into_iter().collect(),
                    capabilities: m.info.capabilities.into_iter().collect(),
                    addrs: m.addrs.iter().map(ToString::to_string).collect(),
                    state: m.liveness.to_string(),
                    silent_ms: m.silent_ms,
                    grpc_addr: m.info.grpc_addr.unwrap_or_default(),
                    local: false,
                });
            }
        }
        Ok(nodes)
    }
}
