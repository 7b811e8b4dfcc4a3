//! Where a topic's replicas live: by default the R live nodes nearest the
//! topic's name in Kademlia distance; a constraint can instead ask for nodes
//! with given attributes (`tier=cloud`), or so many of each kind
//! (`tier=edge:1,tier=cloud:2`). Pure: it gets the candidates, returns peers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use woof_overlay::{PeerId, Tier};

use crate::error::{Error, Result};

/// The replication factors a topic may have.
pub const REPLICATION_FACTORS: [usize; 3] = [1, 3, 5];
/// The most clauses in one constraint.
const CLAUSES_MAX: usize = 8;
/// The longest constraint accepted (it is echoed in errors and kept with the topic).
const CONSTRAINT_BYTES_MAX: usize = 512;

/// A node placement may choose.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub peer: PeerId,
    pub tier: Tier,
    pub attrs: BTreeMap<String, String>,
    /// What it can run (handler placement's `capability(...)`).
    pub capabilities: std::collections::BTreeSet<String>,
    pub alive: bool,
}

/// One `key=value[:count]` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    key: String,
    value: String,
    count: Option<usize>,
}

impl Clause {
    fn matches(&self, c: &Candidate) -> bool {
        if self.key == "tier" {
            c.tier.to_string() == self.value
        } else {
            c.attrs.get(&self.key) == Some(&self.value)
        }
    }
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)?;
        if let Some(n) = self.count {
            write!(f, ":{n}")?;
        }
        Ok(())
    }
}

/// A replica constraint: one clause for every replica, or counted clauses
/// whose counts add up to the replication factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    clauses: Vec<Clause>,
}

impl fmt::Display for Constraint {
    /// The constraint as it is written, so that it parses back the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, clause) in self.clauses.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{clause}")?;
        }
        Ok(())
    }
}

impl FromStr for Constraint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() > CONSTRAINT_BYTES_MAX {
            return Err(Error::Usage(format!(
                "a replica constraint is at most {CONSTRAINT_BYTES_MAX} bytes, not {}",
                s.len()
            )));
        }
        let bad = |why: String| Error::Usage(format!("bad replica constraint {s:?}: {why}"));
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let (selector, count) = match part.rsplit_once(':') {
                Some((sel, n)) => {
                    let n: usize = n
                        .parse()
                        .map_err(|_| bad(format!("{n:?} is not a count")))?;
                    if n == 0 {
                        return Err(bad("a count must be at least 1".into()));
                    }
                    (sel, Some(n))
                }
                None => (part, None),
            };
            let (key, value) = selector
                .split_once('=')
                .ok_or_else(|| bad(format!("{selector:?} is not key=value")))?;
            if key.is_empty() || value.is_empty() {
                return Err(bad(format!("{selector:?} is not key=value")));
            }
            if key == "tier" {
                value.parse::<Tier>()?;
            }
            clauses.push(Clause {
                key: key.to_string(),
                value: value.to_string(),
                count,
            });
        }
        if clauses.len() > CLAUSES_MAX {
            return Err(bad(format!("at most {CLAUSES_MAX} clauses")));
        }
        let counted = clauses.iter().filter(|c| c.count.is_some()).count();
        if counted != 0 && counted != clauses.len() {
            return Err(bad("give a count on every clause or on none".into()));
        }
        if counted == 0 && clauses.len() > 1 {
            return Err(bad(
                "several clauses need counts, such as tier=edge:1,tier=cloud:2".into(),
            ));
        }
        Ok(Self { clauses })
    }
}

/// Chooses `replication` live nodes for `topic`.
pub fn place(
    topic: &str,
    replication: usize,
    constraint: Option<&Constraint>,
    candidates: &[Candidate],
) -> Result<Vec<PeerId>> {
    if !REPLICATION_FACTORS.contains(&replication) {
        return Err(Error::Usage(format!(
            "replication must be 1, 3 or 5, not {replication}"
        )));
    }
    let mut alive: Vec<&Candidate> = candidates.iter().filter(|c| c.alive).collect();
    let mut order: Vec<PeerId> = alive.iter().map(|c| c.peer).collect();
    woof_overlay::distance::sort_nearest(topic.as_bytes(), &mut order);
    alive.sort_by_key(|c| order.iter().position(|p| *p == c.peer));

    let wanted: Vec<(Option<&Clause>, usize)> = match constraint {
        None => vec![(None, replication)],
        Some(c) if c.clauses[0].count.is_none() => vec![(Some(&c.clauses[0]), replication)],
        Some(c) => {
            let total: usize = c.clauses.iter().filter_map(|c| c.count).sum();
            if total != replication {
                return Err(Error::Usage(format!(
                    "the constraint asks for {total} replicas but replication is {replication}"
                )));
            }
            c.clauses
                .iter()
                .map(|c| (Some(c), c.count.unwrap_or(0)))
                .collect()
        }
    };
    let mut chosen: Vec<PeerId> = Vec::with_capacity(replication);
    for (clause, count) in wanted {
        let picks: Vec<PeerId> = alive
            .iter()
            .filter(|c| !chosen.contains(&c.peer) && clause.is_none_or(|cl| cl.matches(c)))
            .take(count)
            .map(|c| c.peer)
            .collect();
        if picks.len() < count {
            return Err(Error::Usage(match clause {
                None => format!(
                    "replication {replication} needs {replication} live nodes; {} are alive",
                    alive.len()
                ),
                Some(cl) => format!(
                    "replica constraint {cl} wants {count} live nodes, {} match",
                    picks.len()
                ),
            }));
        }
        chosen.extend(picks);
    }
    Ok(chosen)
}

/// Chooses a live node to replace a lost replica of `topic`, whose other
/// replicas `keep` stay: the nearest by Kademlia distance that is not one of
/// them and that the constraint wants (for counted clauses, a node of the
/// first clause that now falls short).
pub fn replacement(
    topic: &str,
    constraint: Option<&Constraint>,
    keep: &[PeerId],
    candidates: &[Candidate],
) -> Result<PeerId> {
    let clause = match constraint {
        None => None,
        Some(c) if c.clauses[0].count.is_none() => Some(&c.clauses[0]),
        Some(c) => {
            let kept: Vec<&Candidate> = candidates
                .iter()
                .filter(|cand| keep.contains(&cand.peer))
                .collect();
            c.clauses.iter().find(|cl| {
                let have = kept.iter().filter(|k| cl.matches(k)).count();
                have < cl.count.unwrap_or(0)
            })
        }
    };
    let mut order: Vec<PeerId> = candidates
        .iter()
        .filter(|c| c.alive && !keep.contains(&c.peer) && clause.is_none_or(|cl| cl.matches(c)))
        .map(|c| c.peer)
        .collect();
    woof_overlay::distance::sort_nearest(topic.as_bytes(), &mut order);
    order.first().copied().ok_or_else(|| {
        Error::Usage(match clause {
            Some(cl) => format!("no live node outside the topic's replicas matches {cl}"),
            None => "no live node outside the topic's replicas".into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn node(tier: Tier, site: &str) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            tier,
            attrs: [("site".to_string(), site.to_string())].into(),
            capabilities: Default::default(),
            alive: true,
        }
    }

    fn cluster() -> Vec<Candidate> {
        vec![
            node(Tier::Edge, "north"),
            node(Tier::Edge, "south"),
            node(Tier::Cloud, "eu"),
            node(Tier::Cloud, "eu"),
            node(Tier::Cloud, "us"),
        ]
    }

    #[test]
    fn default_placement_spreads_topics_over_every_node() {
        let nodes = cluster();
        let mut load: HashMap<PeerId, usize> = HashMap::new();
        for i in 0..200 {
            let replicas = place(&format!("t/{i}"), 3, None, &nodes).unwrap();
            assert_eq!(replicas.len(), 3);
            let distinct: std::collections::HashSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3, "three different nodes");
            for r in replicas {
                *load.entry(r).or_default() += 1;
            }
        }
        assert_eq!(load.len(), 5, "every node holds replicas: {load:?}");
        assert!(load.values().all(|&n| n >= 60), "roughly even: {load:?}");
        // The same topic always lands on the same nodes.
        assert_eq!(
            place("t/1", 3, None, &nodes).unwrap(),
            place("t/1", 3, None, &nodes).unwrap()
        );
    }

    #[test]
    fn constraints_pick_matching_nodes() {
        let nodes = cluster();
        let tier_of = |p: &PeerId| nodes.iter().find(|c| c.peer == *p).unwrap().tier;
        let cloud: Constraint = "tier=cloud".parse().unwrap();
        for r in place("t", 3, Some(&cloud), &nodes).unwrap() {
            assert_eq!(tier_of(&r), Tier::Cloud);
        }
        let mixed: Constraint = "tier=edge:1,tier=cloud:2".parse().unwrap();
        let r = place("t", 3, Some(&mixed), &nodes).unwrap();
        assert_eq!(r.iter().filter(|p| tier_of(p) == Tier::Edge).count(), 1);
        assert_eq!(r.iter().filter(|p| tier_of(p) == Tier::Cloud).count(), 2);
        let eu: Constraint = "site=eu".parse().unwrap();
        assert_eq!(place("t", 1, Some(&eu), &nodes).unwrap().len(), 1);
    }

    #[test]
    fn impossible_placements_are_clear_errors() {
        let mut nodes = cluster();
        for (replication, constraint, expect) in [
            (4, None, "1, 3 or 5"),
            (5, Some("tier=cloud"), "wants 5 live nodes, 3 match"),
            (3, Some("tier=edge:1,tier=cloud:1"), "asks for 2 replicas"),
            (3, Some("site=mars"), "0 match"),
        ] {
            let c = constraint.map(|c| c.parse::<Constraint>().unwrap());
            let err = place("t", replication, c.as_ref(), &nodes)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err}");
        }
        nodes[0].alive = false;
        nodes[1].alive = false;
        nodes[2].alive = false;
        let err = place("t", 3, None, &nodes).unwrap_err().to_string();
        assert!(err.contains("2 are alive"), "{err}");
        for bad in [
            "",
            "tier",
            "tier=fog",
            "tier=edge:0",
            "a=b,c=d",
            "a=b:1,c=d",
            "=x",
            "k=v:x",
        ] {
            assert!(bad.parse::<Constraint>().is_err(), "{bad:?}");
        }
        let long = format!("site={}", "x".repeat(600));
        let err = long.parse::<Constraint>().unwrap_err().to_string();
        assert!(
            err.contains("at most 512 bytes") && err.len() < 100,
            "{err}"
        );
    }

    #[test]
    fn a_replacement_keeps_the_constraint_and_avoids_the_replicas() {
        let nodes = cluster();
        let c: Constraint = "tier=edge:1,tier=cloud:2".parse().unwrap();
        let chosen = place("t", 3, Some(&c), &nodes).unwrap();
        // The edge replica is lost: its replacement is the other edge node.
        let edge = chosen
            .iter()
            .find(|p| nodes.iter().any(|n| n.peer == **p && n.tier == Tier::Edge))
            .copied()
            .unwrap();
        let keep: Vec<PeerId> = chosen.iter().filter(|p| **p != edge).copied().collect();
        let mut dead = nodes.clone();
        for n in &mut dead {
            if n.peer == edge {
                n.alive = false;
            }
        }
        let new = replacement("t", Some(&c), &keep, &dead).unwrap();
        assert!(!chosen.contains(&new));
        assert!(nodes.iter().any(|n| n.peer == new && n.tier == Tier::Edge));
        // Unconstrained: any live node but the kept ones.
        let new = replacement("t", None, &keep, &dead).unwrap();
        assert!(!keep.contains(&new) && new != edge);
        // Nothing left to choose: a clear error.
        let all: Vec<PeerId> = nodes.iter().map(|n| n.peer).collect();
        let e = replacement("t", None, &all, &nodes).unwrap_err();
        assert!(e.to_string().contains("no live node"), "{e}");
    }
}
