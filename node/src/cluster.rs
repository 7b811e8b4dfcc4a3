//! The node's place in the cluster: its overlay (when it has one), the
//! status it reports, and the nodes it knew last time ([`KnownPeers`], kept
//! in the data directory so a restarted node finds the cluster again
//! without `--join`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use woof_overlay::{Client, Liveness, Multiaddr, NodeInfo, PeerId};
use woof_proto::v1;

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;

/// The most nodes remembered; a restarted node needs only one that answers.
pub const KNOWN_PEERS_MAX: usize = 16;
/// Addresses remembered per node.
const KNOWN_ADDRS_PER_PEER: usize = 4;
/// The file is small; a bigger one is not ours.
const KNOWN_PEERS_BYTES_MAX: u64 = 64 * 1024;
/// How often the remembered nodes are brought up to date.
const KNOWN_PEERS_EVERY: Duration = Duration::from_secs(2);

/// The overlay addresses of the nodes this node last saw alive, one per
/// line in `DATA_DIR/peers`, each with its `/p2p/` id.
#[derive(Clone)]
pub struct KnownPeers {
    path: PathBuf,
}

impl KnownPeers {
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("peers"),
        }
    }

    /// The addresses remembered, but none of `me`'s; nothing if there is no
    /// file. Lines that are not addresses are skipped with a warning.
    pub fn load(&self, me: Option<PeerId>) -> Result<Vec<Multiaddr>> {
        let io = |source| Error::Io {
            context: format!("reading the known nodes in {}", self.path.display()),
            source,
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        if meta.len() > KNOWN_PEERS_BYTES_MAX {
            tracing::warn!(path = %self.path.display(), "the known nodes' file is too large; ignored");
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let mut addrs = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.parse::<Multiaddr>() {
                Ok(a) if me.is_some_and(|me| peer_of(&a) == Some(me)) => {}
                Ok(a) if addrs.len() < KNOWN_PEERS_MAX * KNOWN_ADDRS_PER_PEER => addrs.push(a),
                Ok(_) => break,
                Err(e) => tracing::warn!(path = %self.path.display(), "skipping {line:?}: {e}"),
            }
        }
        Ok(addrs)
    }

    /// Replaces the file (through a temporary file and a rename, so a crash
    /// leaves the old list or the new one).
    pub fn save(&self, addrs: &[Multiaddr]) -> Result<()> {
        let mut text = String::new();
        for a in addrs {
            text.push_str(&a.to_string());
            text.push('\n');
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|source| Error::Io {
                context: format!("writing the known nodes to {}", self.path.display()),
                source,
            })
    }

    /// Keeps the file up to date with the alive members until `shutdown`:
    /// at most [`KNOWN_PEERS_MAX`] nodes, and never an empty list (a node
    /// cut off from all others still remembers them).
    pub async fn keep(self, overlay: Client, shutdown: Shutdown) {
        let mut last: Vec<Multiaddr> = self.load(Some(overlay.peer_id())).unwrap_or_default();
        let mut every = tokio::time::interval(KNOWN_PEERS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.requested() => return,
                _ = every.tick() => {}
            }
            let Ok(members) = overlay.members().await else {
                return;
            };
            let mut alive: Vec<_> = members
                .into_iter()
                .filter(|m| m.liveness == Liveness::Alive && !m.addrs.is_empty())
                .collect();
            // The same order each time, so an unchanged cluster is not rewritten.
            alive.sort_by_key(|m| m.peer);
            let addrs: Vec<Multiaddr> = alive
                .iter()
                .take(KNOWN_PEERS_MAX)
                .flat_map(|m| {
                    m.addrs
                        .iter()
                        .take(KNOWN_ADDRS_PER_PEER)
                        .map(move |a| with_peer(a.clone(), m.peer))
                })
                .collect();
            if addrs.is_empty() || addrs == last {
                continue;
            }
            let (known, saving) = (self.clone(), addrs.clone());
            match tokio::task::spawn_blocking(move || known.save(&saving))
                .await
                .unwrap_or_else(|e| Err(Error::Internal(e.to_string())))
            {
                Ok(()) => {
                    tracing::debug!(
                        nodes = alive.len().min(KNOWN_PEERS_MAX),
                        "known nodes saved"
                    );
                    last = addrs;
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
}

/// The peer id an address ends with, if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(woof_overlay::multiaddr::Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// `addr` ending with `/p2p/PEER`.
fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if peer_of(&addr).is_some() {
        addr
    } else {
        addr.with(woof_overlay::multiaddr::Protocol::P2p(peer))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_peers_round_trip_without_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownPeers::in_dir(dir.path());
        assert!(known.load(None).unwrap().is_empty(), "no file: nobody");
        let me = woof_overlay::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let other = woof_overlay::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let addr = |port: u16, peer| {
            with_peer(format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap(), peer)
        };
        known.save(&[addr(1, me), addr(2, other)]).unwrap();
        assert_eq!(known.load(Some(me)).unwrap(), [addr(2, other)]);
        assert_eq!(known.load(None).unwrap().len(), 2);
        std::fs::write(dir.path().join("peers"), "garbage\n/ip4/127.0.0.1/tcp/3\n").unwrap();
        assert_eq!(
            known.load(Some(me)).unwrap().len(),
            1,
            "a bad line is skipped"
        );
        let many: String = (0..1000)
            .map(|p| format!("/ip4/127.0.0.1/tcp/{p}\n"))
            .collect();
        std::fs::write(dir.path().join("peers"), many).unwrap();
        assert_eq!(
            known.load(None).unwrap().len(),
            KNOWN_PEERS_MAX * KNOWN_ADDRS_PER_PEER
        );
    }
}
