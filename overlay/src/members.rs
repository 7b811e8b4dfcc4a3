//! The live view of the cluster: who is there, what they advertise, and
//! whether they are alive, suspected or gone. A plain struct fed with what
//! was heard and the time; the event loop drives it, the simulator can too.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId};

use crate::info::NodeInfo;

/// The most members remembered; past this the longest-gone are forgotten.
pub const MEMBERS_MAX: usize = 10_000;
/// The most addresses remembered per member.
const ADDRS_MAX: usize = 8;

/// How long silence may last before a member is suspected, then gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often every member is sent a heartbeat.
    pub heartbeat_ms: u64,
    /// Silent this long: suspected.
    pub suspect_after_ms: u64,
    /// Silent this long: gone.
    pub gone_after_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1_000,
            suspect_after_ms: 3_000,
            gone_after_ms: 10_000,
        }
    }
}

/// A member's state, from how long it has been silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    Suspected,
    Gone,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Alive => "alive",
            Liveness::Suspected => "suspected",
            Liveness::Gone => "gone",
        })
    }
}

/// One member as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    pub info: NodeInfo,
    pub addrs: Vec<Multiaddr>,
    pub liveness: Liveness,
    /// How long ago it was last heard from.
    pub silent_ms: u64,
}

struct Entry {
    info: NodeInfo,
    last_heard_ms: u64,
    /// It said it was leaving, and nothing was heard from it since.
    left: bool,
}

/// Every member heard from, except this node.
pub struct Members {
    timing: Timing,
    entries: HashMap<PeerId, Entry>,
    /// Addresses learnt from Identify, which may come before the first
    /// heartbeat; bounded like the entries.
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

impl Members {
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            entries: HashMap::new(),
            addrs: HashMap::new(),
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// `peer` answered or spoke at `now_ms`, advertising `info`.
    pub fn heard(&mut self, peer: PeerId, info: NodeInfo, now_ms: u64) {
        let entry = self.entries.entry(peer).or_insert_with(|| Entry {
            info: info.clone(),
            last_heard_ms: now_ms,
            left: false,
        });
        entry.info = info;
        entry.last_heard_ms = entry.last_heard_ms.max(now_ms);
        entry.left = false;
        self.bound(now_ms);
    }

    /// `peer` said it is leaving (a planned stop): it is gone at once,
    /// not after [`Timing::gone_after_ms`] of silence, until it is heard
    /// from again. Its silence still counts from when it was last heard,
    /// so what waits on silence (replacing its replicas) waits as before.
    pub fn left(&mut self, peer: &PeerId) {
        if let Some(entry) = self.entries.get_mut(peer) {
            entry.left = true;
        }
    }

    /// An address `peer` can be reached at (from Identify).
    pub fn add_address(&mut self, peer: &PeerId, addr: Multiaddr) {
        if !self.addrs.contains_key(peer) && self.addrs.len() >= MEMBERS_MAX {
            return;
        }
        let addrs = self.addrs.entry(*peer).or_default();
        if !addrs.contains(&addr) && addrs.len() < ADDRS_MAX {
            addrs.push(addr);
        }
    }

    pub fn liveness(&self, peer: &PeerId, now_ms: u64) -> Option<Liveness> {
        self.entries.get(peer).map(|e| self.liveness_of(e, now_ms))
    }

    fn liveness_of(&self, entry: &Entry, now_ms: u64) -> Liveness {
        let silent_ms = now_ms.saturating_sub(entry.last_heard_ms);
        if entry.left || silent_ms >= self.timing.gone_after_ms {
            Liveness::Gone
        } else if silent_ms >= self.timing.suspect_after_ms {
            Liveness::Suspected
        } else {
            Liveness::Alive
        }
    }

    /// Every member, sorted by peer id.
    pub fn snapshot(&self, now_ms: u64) -> Vec<Member> {
        let mut out: Vec<Member> = self
            .entries
            .iter()
            .map(|(peer, e)| {
                let silent_ms = now_ms.saturating_sub(e.last_heard_ms);
                Member {
                    peer: *peer,
                    info: e.info.clone(),
                    addrs: self.addrs.get(peer).cloned().unwrap_or_default(),
                    liveness: self.liveness_of(e, now_ms),
                    silent_ms,
                }
            })
            .collect();
        out.sort_by_key(|m| m.peer);
        out
    }

    /// Forgets the longest-silent members while there are too many.
    fn bound(&mut self, _now_ms: u64) {
        while self.entries.len() > MEMBERS_MAX {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_heard_ms)
                .map(|(p, _)| *p)
                .expect("not empty");
            self.entries.remove(&oldest);
            self.addrs.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::Tier;

    #[test]
    fn silence_turns_alive_into_suspected_then_gone_and_back() {
        let mut m = Members::new(Timing::default());
        let p = PeerId::random();
        m.heard(p, NodeInfo::new(Tier::Edge), 1_000);
        assert_eq!(m.liveness(&p, 2_000), Some(Liveness::Alive));
        assert_eq!(m.liveness(&p, 4_000), Some(Liveness::Suspected));
        assert_eq!(m.liveness(&p, 11_000), Some(Liveness::Gone));
        m.heard(p, NodeInfo::new(Tier::Cloud), 12_000);
        assert_eq!(m.liveness(&p, 12_500), Some(Liveness::Alive));
        assert_eq!(m.snapshot(12_500)[0].info.tier, Tier::Cloud);
        assert_eq!(m.liveness(&PeerId::random(), 0), None);
    }

    #[test]
    fn addresses_learnt_before_the_first_heartbeat_are_kept() {
        let mut m = Members::new(Timing::default());
        let p = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7800".parse().unwrap();
        m.add_address(&p, addr.clone());
        m.add_address(&p, addr.clone());
        assert!(m.snapshot(0).is_empty(), "not a member until heard");
        m.heard(p, NodeInfo::new(Tier::Edge), 10);
        assert_eq!(m.snapshot(10)[0].addrs, vec![addr]);
    }

    #[test]
    fn a_member_that_left_is_gone_until_heard_again() {
        let mut m = Members::new(Timing::default());
        let p = PeerId::random();
        m.left(&p);
        assert!(m.snapshot(0).is_empty(), "leaving does not make a member");
        m.heard(p, NodeInfo::new(Tier::Edge), 1_000);
        m.left(&p);
        assert_eq!(m.liveness(&p, 1_000), Some(Liveness::Gone));
        // Its silence still counts from when it was last heard.
        assert_eq!(m.snapshot(1_500)[0].silent_ms, 500);
        m.heard(p, NodeInfo::new(Tier::Edge), 2_000);
        assert_eq!(m.liveness(&p, 2_000), Some(Liveness::Alive));
    }

    #[test]
    fn late_news_does_not_turn_back_the_clock() {
        let mut m = Members::new(Timing::default());
        let p = PeerId::random();
        m.heard(p, NodeInfo::new(Tier::Edge), 5_000);
        m.heard(p, NodeInfo::new(Tier::Edge), 1_000);
        assert_eq!(m.snapshot(5_000)[0].silent_ms, 0);
    }
}
